"""Compatibility names for code written before channels (`spy_streamer/channels/`): the `A` channel's
schema and row helpers under their old names. New code uses `spy_streamer.channels` directly."""
from __future__ import annotations

import pyarrow as pa

from .channels import SECOND_AGGREGATES
from .channels.parsing import rest_results_with_reasons as _rest_results, rest_row, rows_with_reasons, ws_row
from .channels.subscriptions import symbols_of

CHANNEL = SECOND_AGGREGATES.name
SCHEMA = SECOND_AGGREGATES.schema


def subscribed_symbols(subscriptions: tuple[str, ...]) -> tuple[str, ...]:
    """Symbols of the `A` subscriptions, in order ("A.SPY" -> "SPY"); a wildcard names none."""
    return symbols_of(CHANNEL, subscriptions)


def ws_bar(event) -> dict:
    """One WebSocket "A" event as a row dict; `channels.base.InvalidEvent` when it is not one."""
    if type(event) is dict and event.get("ev") != CHANNEL:
        from .channels.base import InvalidEvent
        raise InvalidEvent("wrong_event")
    return ws_row(SECOND_AGGREGATES, event)


def rest_bar(result, symbol: str) -> dict:
    return rest_row(SECOND_AGGREGATES, result, symbol)


def rows_to_table(items: list, to_row, received_ns: int, source: str) -> tuple[pa.Table, int]:
    """Map each item with `to_row`; (table of the good ones, count of the bad ones)."""
    table, rejected = rows_with_reasons(SECOND_AGGREGATES, items, to_row, received_ns, source)
    return table, sum(rejected.values())


def rest_results_to_table(symbol: str, results: list, received_ns: int) -> tuple[pa.Table, int]:
    table, rejected = _rest_results(SECOND_AGGREGATES, symbol, results, received_ns)
    return table, sum(rejected.values())
