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
from typing import Callable, Iterable

from .polygon_rest import RestAnswerError
from .queue_items import RestBars

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS = 5
DEFAULT_RETRY_SECONDS = 2.0
DEFAULT_REQUESTS_PER_SECOND = 20.0


@dataclass(frozen=True)
class Gap:
    symbol: str
    from_ms: int   # first missing row time (a bar's start), inclusive
    to_ms: int     # last missing row time, inclusive
    channel: str = "A"


class RequestPacer:
    """At most `per_second` REST requests a second across the backfill (Polygon throttles a key that asks
    faster, and a wildcard can open thousands of gaps at once). A wait ends early when `stop` is set."""

    def __init__(self, per_second: float, clock, stop: threading.Event):
        self.interval = 1.0 / per_second
        self.clock = clock
        self.stop = stop
        self._next = 0.0

    def __call__(self) -> None:
        now = self.clock.monotonic()
        wait = self._next - now
        self._next = max(now, self._next) + self.interval
        if wait > 0:
            self.stop.wait(wait)


class GapBackfiller:
    def __init__(self, fetch: Callable[[Gap, Callable[[], None]], Iterable[list]], deliver: Callable[[RestBars], None],
                 stats, clock, attempts: int = DEFAULT_ATTEMPTS, retry_seconds: float = DEFAULT_RETRY_SECONDS,
                 max_requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND):
        self.fetch = fetch          # (gap, pace) -> pages of its channel's REST results; raises RestAnswerError
        self.deliver = deliver
        self.stats = stats
        self.clock = clock
        self.attempts = attempts
        self.retry_seconds = retry_seconds
        self._gaps: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self.pace = RequestPacer(max_requests_per_second, clock, self._stop)

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
            self._fill(gap, self.deliver)

    def fill_now(self, gap: Gap, deliver: Callable[[RestBars], None]) -> bool:
        """On the caller's thread, once the backfill thread has stopped (the gaps left at the close): the
        rows go to `deliver`; False after a warning. Without waits, as stop() cut them short."""
        self.stats.backfill_requests += 1
        return self._fill(gap, deliver)

    def _fill(self, gap: Gap, deliver: Callable[[RestBars], None]) -> bool:
        try:
            return self._fill_with_retries(gap, deliver)
        finally:
            self.stats.backfill_finished += 1

    def _fill_with_retries(self, gap: Gap, deliver: Callable[[RestBars], None]) -> bool:
        for attempt in range(1, self.attempts + 1):
            try:
                rows = self._deliver_pages(gap, deliver)
            except RestAnswerError as exc:
                if attempt == self.attempts or self._stop.wait(self.retry_seconds * attempt):
                    self._give_up(gap, str(exc))
                    return False
                continue
            log.debug("backfilled %s %s gap %d..%d from REST (%d rows)", gap.channel, gap.symbol, gap.from_ms,
                      gap.to_ms, rows, extra={"event": "backfill_done", "symbol": gap.symbol, "rows": rows})
            return True
        return False

    def _deliver_pages(self, gap: Gap, deliver: Callable[[RestBars], None]) -> int:
        """Each page goes to the writer as it comes (a retry's repeats are dropped there by key)."""
        rows = 0
        for results in self.fetch(gap, self.pace):
            deliver(RestBars(gap.symbol, results, self.clock.time_ns(), gap.channel))
            rows += len(results) if type(results) is list else 0
        return rows

    def _give_up(self, gap: Gap, reason: str) -> None:
        self.stats.backfill_failures += 1
        log.warning("could not backfill %s %s rows %d..%d from REST: %s", gap.channel, gap.symbol, gap.from_ms,
                    gap.to_ms, reason, extra={"event": "backfill_failed", "symbol": gap.symbol})
