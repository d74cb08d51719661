"""`polygon.subscriptions` items ("A.SPY", "T.*") read as (channel, symbol)."""
from __future__ import annotations

WILDCARD = "*"


def split(item: str) -> tuple[str, str]:
    """("A", "SPY") for "A.SPY"; the symbol part may hold dots itself ("A.BRK.B")."""
    channel, _, symbol = item.partition(".")
    return channel, symbol


def channel_names(subscriptions: tuple[str, ...]) -> tuple[str, ...]:
    """The channels subscribed to, in first-mention order."""
    return tuple(dict.fromkeys(split(item)[0] for item in subscriptions))


def symbols_of(channel: str, subscriptions: tuple[str, ...]) -> tuple[str, ...]:
    """Symbols named for `channel`, in order ("A.SPY" -> "SPY"); a wildcard names none."""
    return tuple(dict.fromkeys(symbol for name, symbol in map(split, subscriptions)
                               if name == channel and WILDCARD not in symbol))


def has_wildcard(channel: str, subscriptions: tuple[str, ...]) -> bool:
    return f"{channel}.{WILDCARD}" in subscriptions
