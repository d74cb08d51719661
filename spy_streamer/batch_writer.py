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

from .aggregate_bars import CHANNEL, BarColumns, InvalidBar, rest_bar, ws_bar
from .market_hours import MarketCalendar
from .parquet_sink import ParquetSink
from .pipeline_stats import WriterStats

log = logging.getLogger(__name__)

END_OF_STREAM = None  # put on the queue by the runner after the reader stopped


class BatchWriter:
    def __init__(self, frames: queue.Queue, sink: ParquetSink, calendar: MarketCalendar,
                 stats: WriterStats, interval_seconds: float, clock):
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
                item = ()
            if item is END_OF_STREAM:
                break
            if item:
                self.accept_frame(*item)
            if self.clock.monotonic() >= next_flush:
                self.flush()
                next_flush = self.clock.monotonic() + self.interval_seconds
        self.flush()

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
        key = (row["symbol"], start)
        if key in self._stored_keys:
            self.stats.duplicates += 1
            return
        self._stored_keys.add(key)
        self._pending.append(row, received_us, source)
        self.stats.rows_pending = len(self._pending)

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
