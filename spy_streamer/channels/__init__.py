"""The supported Polygon stocks channels, one module each, and the registry the rest of the code uses.

Each module defines one `Channel` (base.py): schema, WebSocket and REST field mapping, plausibility
checks, dedup key, sort key, time column and REST backfill source. Adding a channel (say `LULD`) is
adding its module and one entry below; the writer, sink, compaction and `report` take it from here.
"""
from __future__ import annotations

from .base import REASONS, Channel
from .minute_aggregates import CHANNEL as MINUTE_AGGREGATES
from .quotes import CHANNEL as QUOTES
from .second_aggregates import CHANNEL as SECOND_AGGREGATES
from .trades import CHANNEL as TRADES

CHANNELS: dict[str, Channel] = {channel.name: channel for channel in
                                (SECOND_AGGREGATES, MINUTE_AGGREGATES, TRADES, QUOTES)}

__all__ = ["CHANNELS", "REASONS", "Channel", "channel_for", "SECOND_AGGREGATES", "MINUTE_AGGREGATES",
           "TRADES", "QUOTES"]


def channel_for(name: str) -> Channel:
    """The channel called `name` ("A", "AM", "T", "Q"); KeyError naming the supported ones otherwise."""
    try:
        return CHANNELS[name]
    except KeyError:
        raise KeyError(f"unsupported channel {name!r}; supported: {', '.join(CHANNELS)}") from None
