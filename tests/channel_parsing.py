"""Shared by the channel tests: one channel's parse paths as single calls (fast path with its fallbacks,
per-event path) and its rules."""
from __future__ import annotations

from collections import Counter

import pyarrow as pa

from spy_streamer.channels import CHANNELS, channel_for
from spy_streamer.channels.base import empty_table
from spy_streamer.channels.parsing import parse_frames, rest_results_with_reasons, rows_with_reasons, ws_row
from spy_streamer.channels.rules import ChannelRules


def frames_to_table(frames: list, channel: str = "A", subscribed: tuple[str, ...] | None = None) -> tuple[pa.Table, Counter]:
    """`channel`'s rows of `frames` as the writer parses them (with `subscribed` channels, default: that one)."""
    channels = {name: CHANNELS[name] for name in (subscribed or (channel,))}
    tables, rejected = parse_frames(channels, frames)
    parts = tables.get(channel) or [empty_table(channels[channel])]
    return pa.concat_tables(parts), rejected


def events_one_by_one(events, channel: str = "A", received_ns: int = 0) -> tuple[pa.Table, Counter]:
    """The per-event path over decoded events."""
    chosen = channel_for(channel)
    return rows_with_reasons(chosen, events, lambda event: _ws_row_of(chosen, event), received_ns, "ws")


def _ws_row_of(channel, event):
    from spy_streamer.channels.base import InvalidEvent
    if type(event) is dict and event.get("ev") != channel.name:
        raise InvalidEvent("wrong_event")
    return ws_row(channel, event)


def rules(subscriptions: tuple[str, ...], channel: str = "A") -> ChannelRules:
    return ChannelRules(channel_for(channel), subscriptions)


def rest_table(symbol: str, results, channel: str = "A", received_ns: int = 0) -> tuple[pa.Table, Counter]:
    return rest_results_with_reasons(channel_for(channel), symbol, results, received_ns)
