"""The writer thread: drains the queue, keeps the rows that belong to today's session once each, and
flushes them to Parquet every `write_interval_seconds`, on its own timer (and sooner when a batch is big,
so the interval never bounds throughput).

Parsing happens here, not in the reader, so the WebSocket loop never waits on JSON or Arrow; frames are
parsed many at a time into columns. A failed flush keeps the rows in memory and retries at the next
interval, so a full or read-only disk loses nothing once it recovers.

The writer knows no channel by name: each subscribed channel (spy_streamer/channels/) gets a `Lane`
(capture/lane.py) with its rules, the day's dedup keys, its pending rows and its gaps, and each flush
(capture/flush_pipeline.py) writes one file per channel with rows. Nothing a server sends stops this thread: an event that is not a plausible row of a
subscribed symbol (channels.rules.ChannelRules) is counted, by reason, and the day's files hold only rows
every reader can open.
"""
from __future__ import annotations

import logging
import queue
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date, datetime
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from ..channels import channel_for
from ..channels.base import SESSION, epoch_ms
from ..channels.parsing import parse_frames, rest_results_with_reasons
from ..channels.subscriptions import channel_names
from ..monitoring.clock_skew import ClockSkewDetector
from ..backfill.gap_backfill import Gap
from ..market.market_hours import MarketCalendar
from ..storage.parquet_sink import ParquetSink
from .pipeline_stats import WriterStats
from ..orchestrator.service import Service
from .queue_items import END_OF_STREAM, GAP_POSSIBLE, RestBars
from .flush_pipeline import FlushPipeline
from .lane import Lane

log = logging.getLogger(__name__)

MAX_FRAMES_PER_PARSE = 2000      # frames parsed together: amortizes the parser's set-up per call...
# ...but about 3 MB at most: a batch is held as text and as Arrow, up to PARSERS + 1 of them at once. 2 MB
# batches were a quarter slower (the set-up of a parse, tens of compute calls, paid twice as often); 4 MB
# ones took the peak RSS of a 1M-event burst past 200 MB.
MAX_BYTES_PER_PARSE = 3_000_000
STOP_PATIENCE_SECONDS = 2.0   # for the end marker to find room in a full queue
MAX_PENDING_ROWS = 50_000        # flush early past this, so memory stays flat under heavy load
# A parse costs about 1 ms whatever its size (tens of compute calls, each with a fixed cost): a writer
# that kept up would pay it per frame (550 frames/s of `A.*` saturated a core). So a batch waits up to this
# long for more frames (never past the flush timer, never once END_OF_STREAM is in): a few parses a second.
LINGER_SECONDS = 0.05
# Batches parsed at once, on as many `frame-parser` threads: the parse (the compiled parser or the JSON
# reader, off the GIL, and the rules) is the pipeline's longest stage, and one thread's Python steps would leave the reader idle.
PARSERS = 2
FLUSH_POLL_SECONDS = 0.01   # while a flush is in flight, an idle writer looks this often whether it is done


class BatchWriter(Service):
    thread_name = "parquet-writer"

    def __init__(self, frames: queue.Queue, sink: ParquetSink, calendar: MarketCalendar,
                 stats: WriterStats, interval_seconds: float, clock,
                 request_backfill: Callable[[Gap], None] | None = None, *, subscriptions: tuple[str, ...]):
        """`subscriptions` as configured ("A.SPY", "T.*"): only rows of those channels and symbols are
        stored; the symbols named there (and under a wildcard, every symbol seen today) are backfilled."""
        super().__init__()
        self.frames = frames
        self.sink = sink
        self.calendar = calendar
        self.stats = stats
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.request_backfill = request_backfill
        self.lanes = {name: Lane(channel_for(name), subscriptions, request_backfill is not None, sink.data_dir)
                      for name in channel_names(subscriptions)}
        self.channels = {name: lane.channel for name, lane in self.lanes.items()}
        self._day: date | None = None
        self._day_start_ms = 0
        self._session_bounds_ms: tuple[int, int] = (0, 0)
        self._regular_bounds_ms: tuple[int, int] | None = None   # set when the session has extended hours
        self._skew = ClockSkewDetector()
        self._parsed_runs: deque | None = None   # run() parsed these runs of frames ahead, in order
        self._flushes = FlushPipeline(sink, stats, clock, self.lanes)
        self.rest_pages_accepted = 0   # REST pages (RestBars) accepted; `rest_pages_durable`: of them, on disk
        self.turns = 0   # turns of run()'s loop, read by the supervisor (a hung flush stops the count)

    # --- thread body ---

    def run(self) -> None:
        """Until END_OF_STREAM: accept items, flush whenever the interval elapses (even if idle).

        A batch's frames are parsed (and checked against the channel's rules) on a `frame-parser` thread
        (PARSERS of them, each on its own batch) while this one dedups the batches before it (pyarrow's JSON
        reader runs off the GIL, so they overlap). Batches are still accepted one after another in queue
        order: the first received row of a key is kept. Each interval's rows are written and fsynced on a
        `parquet-flush` thread while this one goes on accepting (one flush at a time; its outcome is taken
        in before the next one starts, and a failed one's rows go back to pending); the last flush, at
        END_OF_STREAM, is waited for."""
        self.start_day()
        next_flush = self.clock.monotonic() + self.interval_seconds
        with ThreadPoolExecutor(PARSERS, thread_name_prefix="frame-parser") as parser, \
                ThreadPoolExecutor(1, thread_name_prefix="parquet-flush") as flusher:
            ahead: deque = deque()   # (items, future of their parsed runs): the batches being parsed, in order
            while True:
                self.turns += 1
                wait = max(0.0, next_flush - self.clock.monotonic())
                if ahead or self._flushes.busy:
                    wait = min(wait, FLUSH_POLL_SECONDS if self._flushes.busy else LINGER_SECONDS)
                items = self._next_items(wait, next_flush)
                ended = END_OF_STREAM in items
                items = [item for item in items if item is not END_OF_STREAM]
                if items:
                    ahead.append((items, parser.submit(self._parse_runs, items)))
                # In queue order: each batch once parsed, the oldest at once when every parser is busy, all
                # when no more came.
                while ahead and (ahead[0][1].done() or len(ahead) > PARSERS or not items):
                    self._accept_parsed(*ahead.popleft())
                if ended:
                    break
                self._flushes.take_in_if_done()
                now = self.clock.monotonic()
                if now >= next_flush:
                    self._start_flush(flusher)
                    next_flush = now + self.interval_seconds
                elif self.stats.rows_pending - self._flushes.rows_in_flight() >= MAX_PENDING_ROWS:
                    self._start_flush(flusher)   # an extra flush: the interval's own stays where it was
            while ahead:
                self._accept_parsed(*ahead.popleft())
        self.flush()   # takes in the flush in flight (the executor waited for it), then writes the rest

    def _wake(self) -> None:
        """The queue's end marker, behind every frame the (stopped) reader queued: drained, then flushed.
        A full queue is given STOP_PATIENCE_SECONDS; a writer that takes nothing in that long is hung, and
        the runner's join says so."""
        try:
            self.frames.put(END_OF_STREAM, timeout=STOP_PATIENCE_SECONDS)
        except queue.Full:
            pass

    def _next_items(self, timeout: float, flush_at: float = 0.0) -> list:
        """Wait up to `timeout` for one item, then gather more until the batch is full or LINGER_SECONDS
        (at most until `flush_at`, monotonic) have passed."""
        try:
            items = [self.frames.get(timeout=timeout)]
        except queue.Empty:
            return []
        linger_until = min(self.clock.monotonic() + LINGER_SECONDS, flush_at)
        size = 0
        while len(items) < MAX_FRAMES_PER_PARSE and size < MAX_BYTES_PER_PARSE and items[-1] is not END_OF_STREAM:
            wait = linger_until - self.clock.monotonic()
            try:
                item = self.frames.get(timeout=wait) if wait > 0 else self.frames.get_nowait()
            except queue.Empty:
                break
            items.append(item)
            if type(item) is tuple:
                size += len(item[1])
        return items

    # --- accepting rows ---

    def _parse_runs(self, items: list) -> list:
        """_parse_checked of each run of live frames in `items`, in the order accept_items meets them (on
        the parser thread: it reads only the channels and their rules)."""
        runs, run = [], []
        for item in items:
            if type(item) is tuple:
                run.append(item)
            elif run:
                runs.append(run)
                run = []
        return [self._parse_checked(run) for run in runs + ([run] if run else [])]

    def _parse_checked(self, frames: list) -> tuple[dict[str, pa.Table], Counter]:
        """({channel: its rows passing its rules}, refusals by reason): what no earlier row can change, so
        the parser thread does it for the next batch while this one dedups the batch before."""
        tables, rejected = parse_frames(self.channels, frames)
        checked = {}
        for name, parts in tables.items():
            table = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
            checked[name] = self.lanes[name].rules.apply(table, rejected)
        return checked, rejected

    def _accept_parsed(self, items: list, parsed: Future) -> None:
        self._parsed_runs = deque(parsed.result())
        try:
            self.accept_items(items)
        finally:
            self._parsed_runs = None

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
                self.rest_pages_accepted += 1
                self.accept_rest_results(item.symbol, item.results, item.received_ns, item.channel, item.requested)
        self._accept_frames(run)

    def accept_frame(self, received_ns: int, frame: str | bytes) -> None:
        self._accept_frames([(received_ns, frame)])

    def _accept_frames(self, frames: list) -> None:
        if not frames:
            return
        tables, rejected = self._parsed_runs.popleft() if self._parsed_runs else self._parse_checked(frames)
        if rejected:
            self._count_rejected(rejected)
        for name, table in tables.items():
            self._keep(self.lanes[name], table, "ws")

    def accept_rest_results(self, symbol: str, results: list, received_ns: int, channel: str,
                            requested: tuple[int, int]) -> None:
        """A REST page: the WebSocket's rules, and each row within the `requested` times (ms, inclusive)."""
        lane = self.lanes.get(channel)
        if lane is None:  # a backfill of a channel this session does not record: nothing to keep
            return
        table, rejected = rest_results_with_reasons(lane.channel, symbol, results, received_ns)
        table = lane.rules.apply(table, rejected, requested)
        if rejected:
            self._count_rejected(rejected)
        self._keep(lane, table, "rest")

    def _keep(self, lane: Lane, table: pa.Table, source: str) -> None:
        """Of rows that passed the channel's rules: drop late, out-of-session and already stored ones;
        queue the rest for the next flush."""
        self.stats.events_received += table.num_rows
        if source == "ws" and table.num_rows:
            self._check_clock(lane, table)
        table = self._in_session(lane, table)
        if lane.gap_from and source == "ws" and table.num_rows:
            for gap in lane.close_gaps(table.column("symbol").to_pylist(), lane.channel.time_ms(table).to_pylist()):
                self.request_backfill(gap)
        new = lane.new_rows(table)
        repeats = len(new) - (pc.sum(new).as_py() or 0)
        if source == "ws":  # a REST row the stream already delivered is expected overlap, not a repeat
            self.stats.duplicates += repeats
        if repeats:
            table = table.filter(new)
        if table.num_rows:
            self._store(lane, self._with_session_column(lane, table), source)

    def _in_session(self, lane: Lane, table: pa.Table) -> pa.Table:
        """Count and drop rows of an earlier day (late) and rows outside the session."""
        times = lane.channel.time_ms(table)
        opens, closes = (pa.scalar(bound, pa.int64()) for bound in self._session_bounds_ms)
        in_session = pc.and_(pc.greater_equal(times, opens), pc.less(times, closes))
        late_count = pc.sum(pc.less(times, pa.scalar(self._day_start_ms, pa.int64()))).as_py() or 0
        self.stats.rejected_late += late_count
        kept = pc.sum(in_session).as_py() or 0
        self.stats.outside_session += table.num_rows - late_count - kept
        return table if kept == table.num_rows else table.filter(in_session)

    def _with_session_column(self, lane: Lane, table: pa.Table) -> pa.Table:
        """With extended hours, each row says which part of the day it belongs to: pre, regular or post."""
        if self._regular_bounds_ms is None:
            return table
        times = lane.channel.time_ms(table)
        opens, closes = self._regular_bounds_ms
        session = pc.if_else(pc.less(times, opens), "pre", pc.if_else(pc.less(times, closes), "regular", "post"))
        return table.append_column(SESSION, session)

    def _count_rejected(self, rejected: Counter) -> None:
        self.stats.rejected_invalid += sum(rejected.values())
        # A new dict rather than an update: the heartbeat thread may be iterating the old one.
        merged = Counter(self.stats.rejected_reasons) + rejected
        self.stats.rejected_reasons = dict(sorted(merged.items()))

    def _check_clock(self, lane: Lane, table: pa.Table) -> None:
        """Live events arrive moments after their exchange time (a bar about 2 s after it ends); a steady
        disagreement, either way, means the wall clock is wrong."""
        times = epoch_ms(table.column("end")) if "end" in table.column_names else lane.channel.time_ms(table)
        newest_ms = pc.max(times).as_py()
        received_ns = pc.max(table.column("received_at")).cast(pa.int64()).as_py() * 1000
        self._skew.observe(received_ns, newest_ms, self.clock.monotonic())
        self.stats.clock_skew_seconds = self._skew.skew_seconds

    def _store(self, lane: Lane, table: pa.Table, source: str) -> None:
        if not any(other.pending for other in self.lanes.values()):
            self._flushes.pending_since = self.clock.now()   # the oldest row not handed to a flush yet
        if not self.stats.rows_pending:
            self.stats.pending_since = self._flushes.pending_since
        lane.add_pending(table)
        self.stats.rows_pending += table.num_rows
        if source == "rest":
            self.stats.rows_backfilled += table.num_rows

    # --- day and session bounds ---

    def start_day(self) -> None:
        """Load what is already stored for the current trading day, so no key is written twice."""
        day = self.calendar.trading_day(self.clock.now())
        if day == self._day:
            return
        self._day = day
        session = self.calendar.session_on(day)
        midnight = datetime.combine(day, datetime.min.time(), tzinfo=self.calendar.tz)
        self._day_start_ms = int(midnight.timestamp() * 1000)
        self._session_bounds_ms = (0, 0) if session is None else (_ms(session.open), _ms(session.close))
        self._regular_bounds_ms = None if session is None or not session.extended else \
            tuple(_ms(instant) for instant in session.regular)
        for lane in self.lanes.values():
            lane.reset()
            for stored in self.sink.stored_rows(lane.channel.name, day, lane.key_schema()):
                lane.remember(stored)
        # Started (or restarted) mid-session: whatever came before the first live row may be missing.
        self.open_gaps()

    def _follow_early_close(self) -> None:
        """The calendar may learn of an earlier close during the session (a refresh): from then on, rows
        after it are after-hours. The close only ever moves earlier here; the runner ends a closed day."""
        session = self.calendar.session_on(self._day) if self._day is not None else None
        opens, closes = self._session_bounds_ms
        if session is not None and _ms(session.close) < closes:
            self._session_bounds_ms = (opens, _ms(session.close))
            if session.extended:
                self._regular_bounds_ms = tuple(_ms(instant) for instant in session.regular)

    # --- gaps ---

    def open_gaps(self) -> None:
        """The stream may have missed rows from just after the last stored one (or the open) on."""
        for lane in self.lanes.values():
            lane.open_gaps(self._session_bounds_ms[0])

    def gaps_left_open(self) -> list[Gap]:
        """Gaps no live row closed before the session ended (lost connection until the close): up to the close."""
        return [gap for lane in self.lanes.values() for gap in lane.gaps_left_open(self._session_bounds_ms[1])]

    # --- flushing (capture/flush_pipeline.py) ---

    def flush(self) -> bool:
        """Write each channel's pending rows as one file, now; on failure keep them for the next attempt.
        A flush still in flight (run's) is waited for and taken in first."""
        self._follow_early_close()
        return self._flushes.flush_now(self._day, self.rest_pages_accepted)

    def _start_flush(self, flusher: ThreadPoolExecutor) -> None:
        self._follow_early_close()
        self._flushes.start(flusher, self._day, self.rest_pages_accepted)

    @property
    def rest_pages_durable(self) -> int:
        return self._flushes.rest_pages_durable


def _ms(instant: datetime) -> int:
    return int(instant.timestamp() * 1000)
