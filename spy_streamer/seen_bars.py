"""Which (symbol, start) bars of one trading day are already stored.

One bit per second of the local day per symbol (11 KB a symbol), instead of a set of tuples that would
grow by ~100 bytes a row: memory stays flat however many bars or repeats a day brings. Bars that do not
start on a whole second of the day (never seen from Polygon's one-second aggregates) go to a set.
"""
from __future__ import annotations

DAY_SECONDS = 25 * 3600  # the longest local day: the autumn DST change


class SeenBars:
    def __init__(self, day_start_ms: int):
        self.day_start_ms = day_start_ms
        self._bits: dict[str, bytearray] = {}
        self._irregular: set[tuple[str, int]] = set()

    def add(self, symbol: str, start_ms: int) -> bool:
        """Record the bar; True if it was not seen before."""
        second, remainder = divmod(start_ms - self.day_start_ms, 1000)
        if remainder or not 0 <= second < DAY_SECONDS:
            return self._add_irregular((symbol, start_ms))
        bits = self._bits.get(symbol)
        if bits is None:
            bits = self._bits[symbol] = bytearray(DAY_SECONDS // 8 + 1)
        index, mask = second >> 3, 1 << (second & 7)
        if bits[index] & mask:
            return False
        bits[index] |= mask
        return True

    def _add_irregular(self, key: tuple[str, int]) -> bool:
        if key in self._irregular:
            return False
        self._irregular.add(key)
        return True
