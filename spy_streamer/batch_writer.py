"""The writer thread: drains the queue, keeps the bars that belong to today's session once each, and
flushes them to Parquet every `write_interval_seconds`, on its own timer (and sooner when a batch is big,
so the interval never bounds throughput).

Parsing happens here, not in the reader, so the WebSocket loop never waits on JSON or Arrow; frames are
parsed many at a time into columns. A failed flush keeps the rows in memory and retries at the next
interval, so a full or read-only disk loses nothing once it recovers.

Nothing a server sends stops this thread: an event that is not a plausible bar of a subscribed symbol
(aggregate_bars.BarRules) is counted, by reason, and the day's files hold only bars every reader can open.
"""
from __future__ import annotations

import logging
import queue
from collections import Counter
from datetime import date, datetime
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from .aggregate_bars import CHANNEL, BarRules, rest_results_with_reasons, subscribed_symbols, ws_frames_to_table
from .clock_skew import ClockSkewDetector
from .gap_backfill import Gap
from .market_hours import MarketCalendar
from .parquet_sink import ParquetSink
from .pipeline_stats import WriterStats
from .queue_items import END_OF_STREAM, GAP_POSSIBLE, RestBars
from .seen_bars import SeenBars

log = logging.getLogger(__name__)

MAX_FRAMES_PER_PARSE = 2000      # frames parsed together: amortizes the parser's set-up per call...
MAX_BYTES_PER_PARSE = 1_000_000  # ...but about a MB at most: a batch is held three times (text, NDJSON, Arrow)
MAX_PENDING_ROWS = 50_000        # flush early past this, so memory stays flat under heavy load


class BatchWriter:
    def __init__(self, frames: queue.Queue, sink: ParquetSink, calendar: MarketCalendar,
                 stats: WriterStats, interval_seconds: float, clock,
                 request_backfill: Callable[[Gap], None] | None = None, *, subscriptions: tuple[str, ...]):
        """`subscriptions` as configured ("A.SPY", "A.*"): only bars of those symbols are stored, and the
        symbols named there are the ones whose gaps are backfilled."""
        self.frames = frames
        self.sink = sink
        self.calendar = calendar
        self.stats = stats
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.request_backfill = request_backfill
        self.rules = BarRules(subscriptions)
        self.backfill_symbols = subscribed_symbols(subscriptions) if request_backfill else ()
        self._day: date | None = None
        self._day_start_ms = 0
        self._session_bounds_ms: tuple[int, int] = (0, 0)
        self._seen = SeenBars(0, 0)
        self._gap_from: dict[str, int] = {}      # per symbol: first bar start that may be missing
        self._pending: list[pa.Table] = []
        self._flush_failing = False
        self._skew = ClockSkewDetector()

    # --- thread body ---

    def run(self) -> None:
        """Until END_OF_STREAM: accept items, flush whenever the interval elapses (even if idle)."""
        self.start_day()
        next_flush = self.clock.monotonic() + self.interval_seconds
        while True:
            items = self._next_items(timeout=max(0.0, next_flush - self.clock.monotonic()))
            ended = END_OF_STREAM in items
            self.accept_items([item for item in items if item is not END_OF_STREAM])
            if ended:
                break
            if self.clock.monotonic() >= next_flush or self.stats.rows_pending >= MAX_PENDING_ROWS:
                self.flush()
                next_flush = self.clock.monotonic() + self.interval_seconds
        self.flush()

    def _next_items(self, timeout: float) -> list:
        """Wait up to `timeout` for one item, then take whatever else is already queued (bounded)."""
        try:
            items = [self.frames.get(timeout=timeout)]
        except queue.Empty:
            return []
        size = 0
        while len(items) < MAX_FRAMES_PER_PARSE and size < MAX_BYTES_PER_PARSE and items[-1] is not END_OF_STREAM:
            try:
                item = self.frames.get_nowait()
            except queue.Empty:
                break
            items.append(item)
            if type(item) is tuple:
                size += len(item[1])
        return items

    # --- accepting bars ---

    def accept_items(self, items: list) -> None:
        """Queue items in order: runs of live frames are parsed together; control items between them."""
        run: list = []
        for item in items:
            if type(item) is tuple:
                run.append(item)
                continue
            self._accept_frames(run)
            run = []
            if item is GAP_POSSIBLE:
                self.open_gaps()
            elif isinstance(item, RestBars):
                self.accept_rest_results(item.symbol, item.results, item.received_ns)
        self._accept_frames(run)

    def accept_frame(self, received_ns: int, frame: str | bytes) -> None:
        self._accept_frames([(received_ns, frame)])

    def _accept_frames(self, frames: list) -> None:
        if frames:
            self._keep(*ws_frames_to_table(frames), "ws")

    def accept_rest_results(self, symbol: str, results: list, received_ns: int) -> None:
        self._keep(*rest_results_with_reasons(symbol, results, received_ns), "rest")

    def _keep(self, table: pa.Table, rejected: Counter, source: str) -> None:
        """Drop invalid, late, out-of-session and already stored bars; queue the rest for the next flush."""
        table = self.rules.apply(table, rejected)
        if rejected:
            self._count_rejected(rejected)
        self.stats.events_received += table.num_rows
        if source == "ws" and table.num_rows:
            self._check_clock(table)
        starts = pc.cast(table.column("start"), pa.int64())
        late = pc.less(starts, self._day_start_ms)
        opens, closes = self._session_bounds_ms
        in_session = pc.and_(pc.greater_equal(starts, opens), pc.less(starts, closes))
        late_count = pc.sum(late).as_py() or 0
        self.stats.rejected_late += late_count
        self.stats.outside_session += table.num_rows - late_count - (pc.sum(in_session).as_py() or 0)
        table = table.filter(in_session)
        symbols = table.column("symbol").combine_chunks()
        session_starts = starts.filter(in_session).combine_chunks()
        if self._gap_from and source == "ws":
            self._close_gaps(symbols.to_pylist(), session_starts.to_pylist())
        new = self._seen.add(symbols, session_starts)
        repeats = len(new) - (pc.sum(new).as_py() or 0)
        if source == "ws":  # a REST bar the stream already delivered is expected overlap, not a repeat
            self.stats.duplicates += repeats
        if repeats:
            table = table.filter(new)
        if table.num_rows:
            self._store(table, source)

    def _count_rejected(self, rejected: Counter) -> None:
        self.stats.rejected_invalid += sum(rejected.values())
        # A new dict rather than an update: the heartbeat thread may be iterating the old one.
        merged = Counter(self.stats.rejected_reasons) + rejected
        self.stats.rejected_reasons = dict(sorted(merged.items()))

    def _check_clock(self, table: pa.Table) -> None:
        """Live bars arrive about 2 s after they end; a steady disagreement means the wall clock is wrong."""
        newest_end_ms = pc.max(table.column("end")).cast(pa.int64()).as_py()
        received_ns = pc.max(table.column("received_at")).cast(pa.int64()).as_py() * 1000
        self._skew.observe(received_ns, newest_end_ms, self.clock.monotonic())
        self.stats.clock_skew_seconds = self._skew.skew_seconds

    def _store(self, table: pa.Table, source: str) -> None:
        if not self._pending:
            self.stats.pending_since = self.clock.now()
        self._pending.append(table)
        self.stats.rows_pending += table.num_rows
        if source == "rest":
            self.stats.rows_backfilled += table.num_rows

    # --- day and session bounds ---

    def start_day(self) -> None:
        """Load what is already stored for the current trading day, so no (symbol, start) is written twice."""
        day = self.calendar.trading_day(self.clock.now())
        if day == self._day:
            return
        self._day = day
        session = self.calendar.session_on(day)
        midnight = datetime.combine(day, datetime.min.time(), tzinfo=self.calendar.tz)
        self._day_start_ms = int(midnight.timestamp() * 1000)
        self._session_bounds_ms = (0, 0) if session is None else (
            int(session.open.timestamp() * 1000), int(session.close.timestamp() * 1000))
        opens, closes = self._session_bounds_ms
        self._seen = SeenBars(opens, -(-(closes - opens) // 1000))
        stored = self.sink.stored_bars(CHANNEL, day)
        self._seen.add(stored.column("symbol").combine_chunks(), stored.column("start").combine_chunks())
        # Started (or restarted) mid-session: whatever came before the first live bar may be missing.
        self.open_gaps()

    def _follow_early_close(self) -> None:
        """The calendar may learn of an earlier close during the session (a refresh): from then on, bars
        after it are after-hours. The close only ever moves earlier here; the runner ends a closed day."""
        session = self.calendar.session_on(self._day) if self._day is not None else None
        opens, closes = self._session_bounds_ms
        if session is not None and session.close.timestamp() * 1000 < closes:
            self._session_bounds_ms = (opens, int(session.close.timestamp() * 1000))

    # --- gaps ---

    def open_gaps(self) -> None:
        """The stream may have missed bars from just after the last stored one (or the open) on."""
        opens = self._session_bounds_ms[0]
        for symbol in self.backfill_symbols:
            last = self._seen.latest_start(symbol)
            self._gap_from[symbol] = opens if last is None else max(opens, last + 1000)

    def gaps_left_open(self) -> list[Gap]:
        """Gaps no live bar closed before the session ended (lost connection until the close): up to the close."""
        closes = self._session_bounds_ms[1]
        return [Gap(symbol, gap_from, closes - 1000) for symbol, gap_from in self._gap_from.items()
                if gap_from < closes]

    def _close_gaps(self, symbols: list[str], starts: list[int]) -> None:
        """The first live bar of a symbol after a possible gap tells where the gap ends."""
        for symbol, start in zip(symbols, starts):
            gap_from = self._gap_from.get(symbol)
            if gap_from is None or start < gap_from:
                continue
            del self._gap_from[symbol]
            if start > gap_from:
                self.request_backfill(Gap(symbol, gap_from, start - 1000))
            if not self._gap_from:
                return

    # --- flushing ---

    def flush(self) -> bool:
        """Write the pending rows as one file; on failure keep them for the next attempt."""
        self._follow_early_close()
        if not self._pending:
            return True
        table = pa.concat_tables(self._pending)
        self._pending = [table]
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
        self.stats.pending_since = None
        self.stats.last_flush_at = self.clock.now()
        self._pending = []
