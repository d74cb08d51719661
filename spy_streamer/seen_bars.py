"""Which (symbol, start) bars of one trading day are already stored.

One byte per second of the session per symbol (23.4 KB a symbol for 09:30-16:00), instead of a set of
tuples that would grow by ~100 bytes a row: memory stays flat however many bars or repeats a day brings,
and a whole batch is checked with C-level loops (`map` over the bytearray) rather than Python code per bar.
The span is the session's, not the whole day's: under a wildcard subscription (~11,000 tickers) a day-wide
bitmap would cost about 1 GB. Bars that do not start on a whole second of the span (never seen from
Polygon's one-second aggregates inside the session) go to a set.
"""
from __future__ import annotations

from collections import deque
from itertools import repeat

import pyarrow as pa
import pyarrow.compute as pc


class SeenBars:
    def __init__(self, first_ms: int, seconds: int):
        """Bars starting in [first_ms, first_ms + seconds s) get the bitmap; any other start, the set."""
        self.first_ms = first_ms
        self.seconds = max(0, seconds)
        self._symbol_ids: dict[str, int] = {}
        self._seen = bytearray()                 # `seconds` bytes per symbol, in id order
        self._irregular: set[tuple[str, int]] = set()

    def add(self, symbols: pa.Array, starts_ms: pa.Array) -> pa.BooleanArray:
        """Record a batch of bars; True where a bar was not seen before (earlier in the batch included)."""
        offsets = pc.subtract(starts_ms, self.first_ms)
        seconds = pc.divide(offsets, 1000)
        regular = pc.and_(pc.equal(pc.multiply(seconds, 1000), offsets),
                          pc.and_(pc.greater_equal(offsets, 0), pc.less(seconds, self.seconds)))
        if not pc.all(regular).as_py():
            return self._add_one_by_one(symbols.to_pylist(), starts_ms.to_pylist())
        keys = pc.add(pc.multiply(self._ids_of(symbols), self.seconds), seconds).to_pylist()
        if len(set(keys)) != len(keys):  # repeats inside the batch: only the first one is new
            return self._add_one_by_one(symbols.to_pylist(), starts_ms.to_pylist())
        seen = pa.Array.from_buffers(pa.uint8(), len(keys), [None, pa.py_buffer(bytes(map(self._seen.__getitem__, keys)))])
        deque(map(self._seen.__setitem__, keys, repeat(1)), maxlen=0)  # mark all, at C speed
        return pc.equal(seen, 0)

    def latest_start(self, symbol: str) -> int | None:
        """The latest whole-second bar start recorded for `symbol` (where a gap would begin), or None."""
        symbol_id = self._symbol_ids.get(symbol)
        if symbol_id is None:
            return None
        first = symbol_id * self.seconds
        second = self._seen.rfind(1, first, first + self.seconds)
        return None if second < 0 else self.first_ms + (second - first) * 1000

    def _ids_of(self, symbols: pa.Array) -> pa.Array:
        encoded = pc.dictionary_encode(symbols)
        ids = [self._symbol_id(name) for name in encoded.dictionary.to_pylist()]
        return pa.array(ids, pa.int64()).take(encoded.indices)

    def _symbol_id(self, symbol: str) -> int:
        symbol_id = self._symbol_ids.get(symbol)
        if symbol_id is None:
            symbol_id = self._symbol_ids[symbol] = len(self._symbol_ids)
            self._seen.extend(bytes(self.seconds))
        return symbol_id

    def memory_bytes(self) -> int:
        """Bytes of the bitmap (the set of irregular starts not included)."""
        return len(self._seen)

    def _add_one_by_one(self, symbols: list[str], starts_ms: list[int]) -> pa.BooleanArray:
        return pa.array([self._add_single(symbol, start) for symbol, start in zip(symbols, starts_ms)], pa.bool_())

    def _add_single(self, symbol: str, start_ms: int) -> bool:
        second, remainder = divmod(start_ms - self.first_ms, 1000)
        if remainder or not 0 <= second < self.seconds:
            key = (symbol, start_ms)
            if key in self._irregular:
                return False
            self._irregular.add(key)
            return True
        index = self._symbol_id(symbol) * self.seconds + second
        if self._seen[index]:
            return False
        self._seen[index] = 1
        return True
