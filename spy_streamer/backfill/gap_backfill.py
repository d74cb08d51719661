"""Gap backfill: one-second bars the WebSocket missed (a disconnect, a restart) fetched from Polygon's REST
aggregates on a thread of their own, so the live stream is never delayed.

The writer decides which range is missing and calls `request()`; the bars go back to the writer through
the same queue as the live frames, where the one-row-per-(symbol, start) rule drops any overlap. The
thread keeps every request in the day's gap ledger (gap_ledger.py), which is also its work list: a
restart resumes what was not filled, and what could not be filled stays listed for `report`.
"""
from __future__ import annotations

import logging
import queue
import time
from typing import Callable, Iterable, Iterator

from .gap_ledger import Gap, GapEntry, GapLedger, LedgerFull
from ..data_sources.polygon_rest import RestAnswerError
from ..capture.queue_items import RestBars
from ..orchestrator.service import Service

log = logging.getLogger(__name__)

__all__ = ["Gap", "GapBackfiller", "RequestPacer"]

DEFAULT_ATTEMPTS = 5
DEFAULT_RETRY_SECONDS = 2.0
DEFAULT_REQUESTS_PER_SECOND = 20.0
# The ledger is written at most this often while gaps are being filled (and as soon as the thread has
# nothing to do). A request newer than that is lost by a kill, but the live row that closed its gap is
# then almost surely not flushed either (flushes are 30 s apart), so the restart asks for it anyway.
LEDGER_SAVE_SECONDS = 2.0


class RequestPacer:
    """At most `per_second` REST requests a second across the backfill (Polygon throttles a key that asks
    faster, and a wildcard can open thousands of gaps at once). `wait(seconds)` does the waiting (the
    backfill's ends early at stop and takes new requests meanwhile)."""

    def __init__(self, per_second: float, clock, wait: Callable[[float], object]):
        self.interval = 1.0 / per_second
        self.clock = clock
        self.wait = wait
        self._next = 0.0

    def __call__(self) -> None:
        now = self.clock.monotonic()
        wait = self._next - now
        self._next = max(now, self._next) + self.interval
        if wait > 0:
            self.wait(wait)


class GapBackfiller(Service):
    thread_name = "rest-backfill"

    def __init__(self, fetch: Callable[[Gap, Callable[[], None]], Iterable[list]], deliver: Callable[[RestBars], None],
                 stats, clock, attempts: int = DEFAULT_ATTEMPTS, retry_seconds: float = DEFAULT_RETRY_SECONDS,
                 max_requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND, ledger: GapLedger | None = None,
                 durable_pages: Callable[[], int] | None = None):
        """`durable_pages()`: how many of the pages delivered so far the writer has made durable (the
        writer counts them in the same order); without it a delivered page counts as durable."""
        super().__init__()
        self.fetch = fetch          # (gap, pace) -> pages of its channel's REST results; raises RestAnswerError
        self.deliver = deliver
        self.stats = stats
        self.clock = clock
        self.attempts = attempts
        self.retry_seconds = retry_seconds
        self.ledger = ledger or GapLedger(None, None)
        self._writer_durable_pages = durable_pages
        self.durable_pages = durable_pages or (lambda: self._pages_delivered)
        self._pages_delivered = 0
        self._requests: queue.SimpleQueue = queue.SimpleQueue()   # from the writer to this thread
        self._next_save = 0.0
        self.max_requests_per_second = max_requests_per_second
        self.pace = RequestPacer(max_requests_per_second, clock, self._pause)

    def request(self, gap: Gap) -> None:
        """Thread-safe and non-blocking: hand a gap to the backfill thread (which counts it)."""
        self._requests.put(gap)

    def _wake(self) -> None:
        self._requests.put(None)   # stop()'s marker ends a wait for requests

    def run(self) -> None:
        """Resume the day's unfinished gaps, then fill gaps as they come until stop(); what a stop cuts
        short stays pending in the ledger for the next start."""
        self._resume()
        while self._take_requests(wait=not self.ledger.has_pending()):
            entry = self.ledger.next_pending()
            if entry is not None:
                self._fill(entry, self.deliver, retry=True)
            self._save(when_due=True)
        self._save()

    def for_close(self) -> "GapBackfiller":
        """The close-time fill as a backfiller of its own, with its own stop (this one's thread has been
        stopped): the same fetch, ledger, stats and request rate, and the requests still waiting."""
        closing = GapBackfiller(self.fetch, self.deliver, self.stats, self.clock, self.attempts, self.retry_seconds,
                                self.max_requests_per_second, self.ledger, self._writer_durable_pages)
        closing._requests = self._requests
        return closing

    def fill_remaining(self, gaps_left_open: list[Gap], deliver: Callable[[RestBars], None]) -> None:
        """At the close, on the caller's thread (see for_close): the gaps no live row ended, then every gap
        still pending, one try each, still paced to the request rate (a wildcard may leave thousands) until
        stop() (the daemon stopping). What fails stays in the ledger as failed; call save_ledger() once the
        writer has flushed."""
        self._resume()
        for gap in [*self._handed_over(wait=False), *gaps_left_open]:
            if gap is not None:
                self._record(gap)
        while (entry := self.ledger.next_pending()) is not None:
            self._fill(entry, deliver, retry=False)

    def save_ledger(self) -> None:
        self._save()

    # --- the ledger ---

    def _resume(self) -> None:
        """Once per session: the unfinished gaps an earlier process left count as requests again."""
        if self.ledger.loaded:
            return
        resumed = self.ledger.load()
        self.stats.backfill_requests += len(resumed)
        self.stats.gap_ledger_set_aside += self.ledger.set_aside
        if resumed:
            log.info("resuming %d unfinished gap(s) from the gap ledger", len(resumed),
                     extra={"event": "backfill_resumed", "gaps": len(resumed)})

    def _take_requests(self, wait: bool) -> bool:
        """Move the writer's requests into the ledger, first waiting for one when there is nothing else to
        do (the ledger saved before that wait); False once stop() was called."""
        if wait:
            self._save()
        for gap in self._handed_over(wait):
            if gap is None:
                return False
            self._record(gap)
        return not self.stop_requested.is_set()

    def _handed_over(self, wait: bool) -> Iterator[Gap | None]:
        """The requests waiting; with `wait`, the first is waited for (None is stop()'s marker)."""
        try:
            yield self._requests.get(block=wait, timeout=self._idle_timeout() if wait else None)
            while True:
                yield self._requests.get_nowait()
        except queue.Empty:
            return

    def _pause(self, seconds: float) -> bool:
        """Wait `seconds` (a back-off, the pacer's spacing) taking the writer's requests meanwhile, so the
        ledger and the heartbeat show them at once; True when stop() ended the wait. Real time, like
        Event.wait: the injected clock only places instants."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0 and not self.stop_requested.is_set():
            try:
                gap = self._requests.get(timeout=remaining)
            except queue.Empty:
                break
            if gap is not None:
                self._record(gap)
                self._save(when_due=True)
        return self.stop_requested.is_set()

    def _idle_timeout(self) -> float | None:
        """Idle, but filled rows still wait for the writer's flush: wake to record them as filled."""
        return LEDGER_SAVE_SECONDS if self.ledger.dirty else None

    def _record(self, gap: Gap) -> None:
        self.stats.backfill_requests += 1
        try:
            # A request merged into one already waiting is carried by it: requests - finished stays the
            # number of gaps waiting, which is what `check` reports.
            self.stats.backfill_finished += self.ledger.add(gap)
        except LedgerFull as exc:
            self._refuse(gap, exc)

    def _refuse(self, gap: Gap, exc: LedgerFull) -> None:
        """Over the ledger's bound: given up at once, counted (check WARNING), one warning per streak."""
        self.stats.backfill_finished += 1
        self.stats.backfill_failures += 1
        self.stats.gaps_over_bound += 1
        if self.stats.gaps_over_bound == 1:
            log.warning("%s: %s %s rows %d..%d not backfilled, nor are further gaps over the bound (counted in "
                        "the heartbeat's gaps_over_bound)", exc, gap.channel, gap.symbol, gap.from_ms, gap.to_ms,
                        extra={"event": "gap_ledger_full", "symbol": gap.symbol})

    def _save(self, when_due: bool = False) -> None:
        if not self.ledger.dirty or (when_due and self.clock.monotonic() < self._next_save):
            return
        self.ledger.save(self.durable_pages())
        self._next_save = self.clock.monotonic() + LEDGER_SAVE_SECONDS

    # --- filling one gap ---

    def _fill(self, entry: GapEntry, deliver: Callable[[RestBars], None], retry: bool) -> bool:
        """True when filled. Given up (marked failed, one warning) after the attempts, or after the one try
        without `retry`; cut short by stop(): False, left pending for the next start."""
        for attempt in range(1, self.attempts + 1):
            error = self._try(entry, deliver)
            if error is None:
                self.ledger.filled(entry, self._pages_delivered)
                self.stats.backfill_finished += 1
                return True
            if not retry or attempt == self.attempts:
                break
            if self._pause(self.retry_seconds * attempt):
                self.ledger.interrupted(entry)
                return False
        self._give_up(entry)
        return False

    def _try(self, entry: GapEntry, deliver: Callable[[RestBars], None]) -> str | None:
        """One attempt; None when every page was delivered, else the error."""
        gap = entry.gap
        try:
            rows = self._deliver_pages(gap, deliver)
        except RestAnswerError as exc:
            self.ledger.attempted(entry, str(exc))
            return str(exc)
        self.ledger.attempted(entry)
        log.debug("backfilled %s %s gap %d..%d from REST (%d rows)", gap.channel, gap.symbol, gap.from_ms,
                  gap.to_ms, rows, extra={"event": "backfill_done", "symbol": gap.symbol, "rows": rows})
        return None

    def _deliver_pages(self, gap: Gap, deliver: Callable[[RestBars], None]) -> int:
        """Each page goes to the writer as it comes (a retry's repeats are dropped there by key)."""
        rows = 0
        for results in self.fetch(gap, self.pace):
            deliver(RestBars(gap.symbol, results, self.clock.time_ns(), gap.channel,
                             requested=(gap.from_ms, gap.to_ms)))
            self._pages_delivered += 1
            rows += len(results) if type(results) is list else 0
            self._take_requests(wait=False)   # a long fetch must not hold back the record of new gaps
            self._save(when_due=True)
        return rows

    def _give_up(self, entry: GapEntry) -> None:
        self.ledger.failed(entry)
        self.stats.backfill_failures += 1
        self.stats.backfill_finished += 1
        log.warning("could not backfill %s %s rows %d..%d from REST after %d attempt(s): %s", entry.channel,
                    entry.symbol, entry.from_ms, entry.to_ms, entry.attempts, entry.reason,
                    extra={"event": "backfill_failed", "symbol": entry.symbol})
