"""Gap backfill: one-second bars the WebSocket missed (a disconnect, a restart) fetched from Polygon's REST
aggregates on a thread of their own, so the live stream is never delayed.

The writer decides which range is missing and calls `request()`; the bars go back to the writer through
the same queue as the live frames, where the one-row-per-(symbol, start) rule drops any overlap.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable

from .polygon_rest import RestAnswerError
from .queue_items import RestBars

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 5
DEFAULT_RETRY_SECONDS = 2.0


@dataclass(frozen=True)
class Gap:
    symbol: str
    from_ms: int   # first missing bar start, inclusive
    to_ms: int     # last missing bar start, inclusive


class GapBackfiller:
    def __init__(self, fetch: Callable[[str, int, int], list], deliver: Callable[[RestBars], None],
                 stats, clock, attempts: int = DEFAULT_ATTEMPTS, retry_seconds: float = DEFAULT_RETRY_SECONDS):
        self.fetch = fetch          # (symbol, from_ms, to_ms) -> results; raises RestAnswerError
        self.deliver = deliver
        self.stats = stats
        self.clock = clock
        self.attempts = attempts
        self.retry_seconds = retry_seconds
        self._gaps: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()

    def request(self, gap: Gap) -> None:
        """Thread-safe and non-blocking: queue a gap for the backfill thread."""
        self.stats.backfill_requests += 1
        self._gaps.put(gap)

    def stop(self) -> None:
        self._stop.set()
        self._gaps.put(None)

    def run(self) -> None:
        while not self._stop.is_set():
            gap = self._gaps.get()
            if gap is None:
                return
            self._fill(gap)

    def fill_now(self, gap: Gap) -> RestBars | None:
        """On the caller's thread, once the backfill thread has stopped (the gaps left at the close):
        the bars, or None after a warning. Without waits between attempts, as stop() cut them short."""
        self.stats.backfill_requests += 1
        return self._fetch(gap)

    def _fill(self, gap: Gap) -> None:
        bars = self._fetch(gap)
        if bars is not None:
            self.deliver(bars)

    def _fetch(self, gap: Gap) -> RestBars | None:
        try:
            return self._fetch_with_retries(gap)
        finally:
            self.stats.backfill_finished += 1

    def _fetch_with_retries(self, gap: Gap) -> RestBars | None:
        for attempt in range(1, self.attempts + 1):
            try:
                results = self.fetch(gap.symbol, gap.from_ms, gap.to_ms)
            except RestAnswerError as exc:
                if attempt == self.attempts or self._stop.wait(self.retry_seconds * attempt):
                    self._give_up(gap, str(exc))
                    return None
                continue
            log.info("backfilled %s gap of %d s from REST (%d bars)", gap.symbol,
                     (gap.to_ms - gap.from_ms) // 1000 + 1, len(results),
                     extra={"event": "backfill_done", "symbol": gap.symbol, "bars": len(results)})
            return RestBars(gap.symbol, results, self.clock.time_ns())
        return None

    def _give_up(self, gap: Gap, reason: str) -> None:
        self.stats.backfill_failures += 1
        log.warning("could not backfill %s bars %d..%d from REST: %s", gap.symbol, gap.from_ms, gap.to_ms,
                    reason, extra={"event": "backfill_failed", "symbol": gap.symbol})
