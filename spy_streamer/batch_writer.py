"""The writer thread: drains raw frames from the queue, keeps the bars that belong to today's session,
and flushes them to Parquet every `write_interval_seconds`, on its own timer.

Parsing happens here, not in the reader, so the WebSocket loop never waits on JSON or Arrow. A failed
flush keeps the rows in memory and retries at the next interval, so a full or read-only disk loses
nothing once it recovers.
"""
from __future__ import annotations

import json
import logging
import queue
from datetime import date, datetime

from typing import Callable

from .aggregate_bars import CHANNEL, BarColumns, InvalidBar, rest_bar, ws_bar
from .gap_backfill import Gap
from .market_hours import MarketCalendar
from .parquet_sink import ParquetSink
from .pipeline_stats import WriterStats
from .queue_items import DISCONNECTED, END_OF_STREAM, RestBars

log = logging.getLogger(__name__)


class BatchWriter:
    def __init__(self, frames: queue.Queue, sink: ParquetSink, calendar: MarketCalendar,
                 stats: WriterStats, interval_seconds: float, clock,
                 request_backfill: Callable[[Gap], None] | None = None, backfill_symbols: tuple[str, ...] = ()):
        self.frames = frames
        self.sink = sink
        self.calendar = calendar
        self.stats = stats
        self.interval_seconds = interval_seconds
        self.clock = clock
        self._day: date | None = None
        self._session_bounds_ms: tuple[int, int] = (0, 0)
        self._day_start_ms = 0
        self._stored_keys: set[tuple[str, int]] = set()
        self._pending = BarColumns()
        self._flush_failing = False
        self.request_backfill = request_backfill
        self.backfill_symbols = backfill_symbols if request_backfill else ()
        self._last_start: dict[str, int] = {}    # latest bar start stored today, per symbol
        self._gap_from: dict[str, int] = {}      # per symbol: first bar start that may be missing

    # --- thread body ---

    def run(self) -> None:
        """Until END_OF_STREAM: accept frames, flush whenever the interval elapses (even if idle)."""
        self.start_day()
        next_flush = self.clock.monotonic() + self.interval_seconds
        while True:
            timeout = max(0.0, next_flush - self.clock.monotonic())
            try:
                item = self.frames.get(timeout=timeout)
            except queue.Empty:
                pass
            else:
                if item is END_OF_STREAM:
                    break
                self.accept(item)
            if self.clock.monotonic() >= next_flush:
                self.flush()
                next_flush = self.clock.monotonic() + self.interval_seconds
        self.flush()

    def accept(self, item) -> None:
        if type(item) is tuple:
            self.accept_frame(*item)
        elif item is DISCONNECTED:
            self.open_gaps()
        elif isinstance(item, RestBars):
            self.accept_rest_results(item.symbol, item.results, item.received_ns)

    # --- day and session bounds ---

    def start_day(self) -> None:
        """Load what is already stored for the current trading day, so no (symbol, start) is written twice."""
        now = self.clock.now()
        day = self.calendar.trading_day(now)
        if day == self._day:
            return
        self._day = day
        session = self.calendar.session_on(day)
        midnight = datetime.combine(day, datetime.min.time(), tzinfo=self.calendar.tz)
        self._day_start_ms = int(midnight.timestamp() * 1000)
        self._session_bounds_ms = (0, 0) if session is None else (
            int(session.open.timestamp() * 1000), int(session.close.timestamp() * 1000))
        self._stored_keys = self.sink.existing_keys(CHANNEL, day)
        self._last_start = {}
        for symbol, start in self._stored_keys:
            self._last_start[symbol] = max(start, self._last_start.get(symbol, start))
        # Started (or restarted) mid-session: whatever came before the first live bar may be missing.
        self.open_gaps()

    # --- gaps ---

    def open_gaps(self) -> None:
        """The stream may have missed bars from just after the last stored one (or the open) on."""
        opens = self._session_bounds_ms[0]
        for symbol in self.backfill_symbols:
            last = self._last_start.get(symbol)
            self._gap_from[symbol] = opens if last is None else max(opens, last + 1000)

    def _close_gap(self, symbol: str, live_start: int) -> None:
        """The first live bar after a possible gap tells where the gap ends."""
        gap_from = self._gap_from.get(symbol)
        if gap_from is None or live_start < gap_from:
            return
        del self._gap_from[symbol]
        if live_start > gap_from:
            self.request_backfill(Gap(symbol, gap_from, live_start - 1000))

    # --- accepting bars ---

    def accept_frame(self, received_ns: int, frame: str | bytes) -> None:
        try:
            events = json.loads(frame)
        except ValueError:
            self.stats.rejected_invalid += 1
            return
        if not isinstance(events, list):
            self.stats.rejected_invalid += 1
            return
        received_us = received_ns // 1000
        for event in events:
            try:
                row = ws_bar(event)
            except InvalidBar:
                self.stats.rejected_invalid += 1
                continue
            self._keep(row, received_us, "ws")

    def accept_rest_results(self, symbol: str, results: list, received_ns: int) -> None:
        received_us = received_ns // 1000
        for result in results:
            try:
                row = rest_bar(result, symbol)
            except InvalidBar:
                self.stats.rejected_invalid += 1
                continue
            self._keep(row, received_us, "rest")

    def _keep(self, row: dict, received_us: int, source: str) -> None:
        self.stats.events_received += 1
        start = row["start"]
        if start < self._day_start_ms:
            self.stats.rejected_late += 1
            return
        opens, closes = self._session_bounds_ms
        if not opens <= start < closes:
            self.stats.outside_session += 1
            return
        symbol = row["symbol"]
        if self._gap_from and source == "ws":
            self._close_gap(symbol, start)
        key = (symbol, start)
        if key in self._stored_keys:
            if source == "ws":  # a REST bar the stream already delivered is expected overlap
                self.stats.duplicates += 1
            return
        self._stored_keys.add(key)
        if start > self._last_start.get(symbol, start - 1):
            self._last_start[symbol] = start
        self._pending.append(row, received_us, source)
        self.stats.rows_pending = len(self._pending)
        if source == "rest":
            self.stats.rows_backfilled += 1

    # --- flushing ---

    def flush(self) -> bool:
        """Write the pending rows as one file; on failure keep them for the next attempt."""
        if not len(self._pending):
            return True
        table = self._pending.to_table()
        try:
            self.sink.write(CHANNEL, self._day, table, self.clock.time_ns())
        except OSError as exc:
            self._flush_failed(exc, table.num_rows)
            return False
        self._flush_succeeded(table.num_rows)
        return True

    def _flush_failed(self, exc: OSError, rows: int) -> None:
        self.stats.write_errors += 1
        self.stats.last_write_error = f"{type(exc).__name__}: {exc.strerror or exc}"
        if not self._flush_failing:  # one ERROR per failure streak; the heartbeat carries the count
            log.error("cannot write Parquet batch (%d rows kept in memory, retrying every interval): %s",
                      rows, self.stats.last_write_error, extra={"event": "write_failed", "rows_pending": rows})
        self._flush_failing = True

    def _flush_succeeded(self, rows: int) -> None:
        if self._flush_failing:
            log.info("Parquet writes work again", extra={"event": "write_recovered", "rows": rows})
        self._flush_failing = False
        self.stats.last_write_error = None
        self.stats.rows_written += rows
        self.stats.batches_written += 1
        self.stats.rows_pending = 0
        self.stats.last_flush_at = self.clock.now()
        self._pending = BarColumns()
