"""What travels on the queue from the reader (and the backfill thread) to the writer.

Live frames, by far the most, are plain `(received_ns, raw_frame)` tuples so the hot path allocates
nothing else; the rare control items below are told apart by identity or type.
"""
from __future__ import annotations

import queue
from dataclasses import KW_ONLY, dataclass

END_OF_STREAM = None          # the runner's last item: flush and stop
# The reader lost its connection or dropped frames: bars may be missing from here on, so the writer
# remembers the last bar it has and asks REST for the gap once the next live bar shows where it ends.
GAP_POSSIBLE = "gap possible"


@dataclass(frozen=True)
class RestBars:
    """Rows fetched by the gap backfill (or `verify --repair`), as Polygon's REST `results` of `channel` (bars,
    trades or quotes). `requested`: the first and last row time asked for (ms, both inclusive); a row
    outside it is refused and counted, whatever the server sends."""
    symbol: str
    results: list
    received_ns: int
    channel: str = "A"
    _: KW_ONLY
    requested: tuple[int, int]


class FrameQueue(queue.Queue):
    """A queue.Queue bounded by the bytes it holds rather than the number of items: a frame may carry one
    bar (A.SPY) or hundreds (a firehose), and memory is what the bound protects."""

    def __init__(self, max_bytes: int):
        super().__init__(maxsize=max_bytes)
        self._bytes = 0

    def items_waiting(self) -> int:
        with self.mutex:
            return len(self.queue)

    @staticmethod
    def _size(item) -> int:
        # Never 0: Queue.get() takes a size of 0 for "empty".
        return len(item[1]) + 1 if type(item) is tuple else 1

    def _qsize(self) -> int:
        return self._bytes

    def _put(self, item) -> None:
        self._bytes += self._size(item)
        self.queue.append(item)

    def _get(self):
        item = self.queue.popleft()
        self._bytes -= self._size(item)
        return item
