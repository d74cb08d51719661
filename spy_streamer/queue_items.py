"""What travels on the queue from the reader (and the backfill thread) to the writer.

Live frames, by far the most, are plain `(received_ns, raw_frame)` tuples so the hot path allocates
nothing else; the rare control items below are told apart by identity or type.
"""
from __future__ import annotations

from dataclasses import dataclass

END_OF_STREAM = None          # the runner's last item: flush and stop
DISCONNECTED = "disconnected"  # the reader lost its connection: bars may be missing from here on


@dataclass(frozen=True)
class RestBars:
    """Bars fetched by the gap backfill, as Polygon's REST `results`."""
    symbol: str
    results: list
    received_ns: int
