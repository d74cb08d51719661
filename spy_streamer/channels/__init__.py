"""The supported Polygon stocks channels, one module each, and the registry the rest of the code uses.

Each module defines one `Channel` (base.py) named CHANNEL: schema, WebSocket and REST field mapping,
plausibility checks, dedup key, sort key, time column and REST backfill source. Adding a channel (say
`LULD`) is adding its module and one entry in MODULES; the writer, sink, compaction and `report` take it
from there.

Modules load on first use: the config check (`NAMES`) runs in every command, `check` included, which
must not pay for pyarrow.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Channel

MODULES = {"A": "second_aggregates", "AM": "minute_aggregates", "T": "trades", "Q": "quotes"}
NAMES = tuple(MODULES)

__all__ = ["CHANNELS", "NAMES", "REASONS", "Channel", "channel_for"]


def channel_for(name: str) -> "Channel":
    """The channel called `name` ("A", "AM", "T", "Q"); KeyError naming the supported ones otherwise."""
    if name not in MODULES:
        raise KeyError(f"unsupported channel {name!r}; supported: {', '.join(NAMES)}")
    return import_module(f".{MODULES[name]}", __name__).CHANNEL


def __getattr__(attribute: str):
    """`CHANNELS` ({name: Channel}), `Channel`, `REASONS` and the four channels by title, loaded on use."""
    if attribute == "CHANNELS":
        return {name: channel_for(name) for name in NAMES}
    if attribute in ("Channel", "REASONS"):
        return getattr(import_module(".base", __name__), attribute)
    by_title = {"SECOND_AGGREGATES": "A", "MINUTE_AGGREGATES": "AM", "TRADES": "T", "QUOTES": "Q"}
    if attribute in by_title:
        return channel_for(by_title[attribute])
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
