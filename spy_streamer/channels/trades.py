"""`T`: every trade (tick level), REST source `/v3/trades/{ticker}`.

Times: the WebSocket sends the SIP timestamp in milliseconds (`t`), REST in nanoseconds (`sip_timestamp`);
both are stored as timestamp(ns, UTC), so a row from the stream has a whole number of milliseconds.
Dedup key: Polygon documents the trade id as unique per (ticker, exchange, TRF), hence (symbol, exchange,
trf_id, trade_id): the same in both sources, whatever their timestamp precision.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .base import INT_LIST, NS_UTC, RECEIVED_AT, SOURCE, Channel, Checks, after_epoch, all_of, prices_in_bounds, \
    sequence_at_least_zero, sizes_in_bounds

SCHEMA = pa.schema([
    ("symbol", pa.string()),
    ("sip_timestamp", NS_UTC),           # when the SIP saw the trade (WS `t`, ms; REST ns)
    ("participant_timestamp", NS_UTC),   # when the exchange executed it (REST only)
    ("trf_timestamp", NS_UTC),           # when a TRF reported it (WS `trft`, ms; REST ns)
    ("exchange", pa.int64()),            # Polygon exchange id (`x`)
    ("trade_id", pa.string()),           # `i` / `id`
    ("trf_id", pa.int64()),              # trade reporting facility (`trfi`), off-exchange trades only
    ("tape", pa.int64()),                # 1 NYSE, 2 NYSE American/Arca/regional, 3 Nasdaq (`z`)
    ("price", pa.float64()),             # USD per share (`p`)
    ("size", pa.float64()),              # shares (`s`; REST may send fractional sizes)
    ("conditions", INT_LIST),          # Polygon condition codes (`c`)
    ("correction", pa.int64()),          # REST only
    ("sequence_number", pa.int64()),     # per ticker, increasing over the day (`q`)
    RECEIVED_AT,
    SOURCE,
])
MS_TO_NS = 1_000_000


def trade_checks(col: dict[str, pa.Array]) -> Checks:
    return [("bad_price", prices_in_bounds([col["price"]], optional=False)),
            ("bad_volume", sizes_in_bounds([col["size"]])),
            ("bad_times", after_epoch(col["sip_timestamp"])),
            ("bad_id", all_of([pc.greater(pc.utf8_length(col["trade_id"]), 0),
                               sequence_at_least_zero(col["sequence_number"])]))]


def fetch(client, symbol: str, from_ms: int, to_ms: int, pace=None):
    from ..data_sources.polygon_rest import iter_tick_pages  # the REST client loads only where a backfill runs
    return iter_tick_pages(client, "trades", symbol, from_ms, to_ms, pace=pace)


CHANNEL = Channel(
    name="T", title="trades", schema=SCHEMA, dedup_key=("symbol", "exchange", "trf_id", "trade_id"),
    sort_key=("symbol", "sip_timestamp", "sequence_number"), time_column="sip_timestamp",
    ws_required={"symbol": "sym", "sip_timestamp": "t", "exchange": "x", "trade_id": "i", "price": "p",
                 "size": "s"},
    ws_optional={"trf_timestamp": "trft", "trf_id": "trfi", "tape": "z", "conditions": "c", "sequence_number": "q"},
    rest_required={"sip_timestamp": "sip_timestamp", "exchange": "exchange", "trade_id": "id", "price": "price",
                   "size": "size"},
    rest_optional={"participant_timestamp": "participant_timestamp", "trf_timestamp": "trf_timestamp",
                   "trf_id": "trf_id", "tape": "tape", "conditions": "conditions", "correction": "correction",
                   "sequence_number": "sequence_number"},
    checks=trade_checks, fetch=fetch, rest_path="/v3/trades/{ticker}", gap_step_ms=0,
    ws_scale={"sip_timestamp": MS_TO_NS, "trf_timestamp": MS_TO_NS})
