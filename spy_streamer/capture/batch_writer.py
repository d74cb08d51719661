"""The writer thread: drains the queue, keeps the rows that belong to today's session once each, and
flushes them to Parquet every `write_interval_seconds`, on its own timer (and sooner when a batch is big,
so the interval never bounds throughput).

Parsing happens here, not in the reader, so the WebSocket loop never waits on JSON or Arrow; frames are
parsed many at a time into columns. A failed flush keeps the rows in memory and retries at the next
interval, so a full or read-only disk loses nothing once it recovers.

The writer knows no channel by name: each subscribed channel (spy_streamer/channels/) gets a `Lane` with
its rules, the day's dedup keys, its pending rows and its gaps, and each flush writes one file per
channel with rows. Nothing a server sends stops this thread: an event that is not a plausible row of a
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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..channels import Channel, channel_for
from ..channels.base import SESSION, epoch_ms
from ..channels.parsing import parse_frames, rest_results_with_reasons
from ..channels.rules import ChannelRules
from ..channels.subscriptions import channel_names, has_wildcard, symbols_of
from ..monitoring.clock_skew import ClockSkewDetector
from ..backfill.gap_backfill import Gap
from ..market.market_hours import MarketCalendar
from ..storage.parquet_sink import ParquetSink
from .pipeline_stats import WriterStats
from ..monitoring.failure_streak import FailureStreak
from ..orchestrator.service import Service
from .queue_items import END_OF_STREAM, GAP_POSSIBLE, RestBars
from .keep_first import KeepFirst
from .seen_keys import seen_rows_for

log = logging.getLogger(__name__)

MAX_FRAMES_PER_PARSE = 2000      # frames parsed together: amortizes the parser's set-up per call...
MAX_BYTES_PER_PARSE = 2_000_000  # ...but about 2 MB at most: a batch is held three times (text, NDJSON, Arrow)
STOP_PATIENCE_SECONDS = 2.0   # for the end marker to find room in a full queue
MAX_PENDING_ROWS = 50_000        # flush early past this, so memory stays flat under heavy load
# A parse costs about 0.3 ms whatever its size (the JSON reader's set-up, tens of compute calls): a writer
# that kept up would pay it per frame (550 frames/s of `A.*` saturated a core). So a batch waits up to this
# long for more frames (never past the flush timer, never once END_OF_STREAM is in): a few parses a second.
LINGER_SECONDS = 0.05
# Batches parsed at once, on as many `frame-parser` threads: the parse (the JSON reader, off the GIL, and
# the rules) is the pipeline's longest stage, and one thread's Python steps would leave the reader idle.
PARSERS = 2
FLUSH_POLL_SECONDS = 0.01   # while a flush is in flight, an idle writer looks this often whether it is done


class Lane:
    """One channel's share of the writer for the current day: rules, stored keys, pending rows, gaps.

    Per symbol it keeps the latest row time (where a gap would begin) and, while one may be open, the
    gap's first time: two dict entries, about 200 bytes a symbol-day, plus the stored keys (seen_bars.py:
    at most 16 MB in memory, the older ones spilled to a scratch file in `spill_dir`). The latest times
    are read only when a gap opens, so the rows accepted live are folded into them lazily: at each flush,
    from the rows it writes (and before a gap opens, from what is pending), not per batch (a group_by and
    a loop over the batch's symbols were a quarter of the writer's time)."""

    def __init__(self, channel: Channel, subscriptions: tuple[str, ...], backfill: bool, spill_dir=None):
        """`spill_dir`: where the stored keys of older parts of the day go (seen_bars.KeySpill)."""
        self.channel = channel
        self.spill_dir = spill_dir
        self.rules = ChannelRules(channel, subscriptions)
        self.named_symbols = symbols_of(channel.name, subscriptions)
        self.wildcard = has_wildcard(channel.name, subscriptions)
        self.backfill = backfill
        self.seen = seen_rows_for(channel, spill_dir)
        self.latest_ms: dict[str, int] = {}      # per symbol: the latest stored row time today...
        self.unfolded: list[pa.Table] = []       # ...but for these pending tables' rows (fold_latest)
        self.gap_from: dict[str, int] = {}       # per symbol: first row time that may be missing
        self.pending: list[pa.Table] = []

    def key_schema(self) -> pa.Schema:
        """The columns a restart reads back from the day's files: the dedup key and the time."""
        names = dict.fromkeys((*KeepFirst.of(self.channel).dedup_key, self.channel.time_column))
        return pa.schema([self.channel.schema.field(name) for name in names])

    def reset(self) -> None:
        self.seen.close()
        self.seen, self.latest_ms, self.gap_from = seen_rows_for(self.channel, self.spill_dir), {}, {}

    def remember(self, table: pa.Table) -> pa.Array:
        """Record `table`'s keys and latest times at once (rows already stored: they never pass through
        `pending`); True for the rows not stored before."""
        new = self.new_rows(table)
        if self.backfill and table.num_rows:  # the latest times only tell where gaps begin
            self._fold([table if pc.all(new).as_py() else table.filter(new)])
        return new

    def new_rows(self, table: pa.Table) -> pa.Array:
        """Record `table`'s keys; True for the rows not stored before (their times: `add_pending`)."""
        return self.seen.add_table(table)

    def add_pending(self, table: pa.Table) -> None:
        """Rows for the next flush; from now on their times count among the symbols' latest."""
        self.pending.append(table)
        if self.backfill:
            self.unfolded.append(table)

    def fold_latest(self) -> None:
        """Fold the pending rows not folded yet into `latest_ms` (at each flush and before a gap opens)."""
        if self.unfolded:
            tables, self.unfolded = self.unfolded, []
            self._fold(tables)

    def _fold(self, tables: list[pa.Table]) -> None:
        """Each symbol's latest time in `tables`, into `latest_ms`: numpy over the rows, Python per symbol."""
        symbols = pa.concat_arrays([chunk for table in tables for chunk in table.column("symbol").chunks])
        times = pa.concat_arrays([chunk for table in tables for chunk in self.channel.time_ms(table).chunks])
        if times.null_count:
            symbols, times = symbols.filter(times.is_valid()), times.drop_null()
        if not len(times):
            return
        encoded = pc.dictionary_encode(symbols)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        newest = np.full(len(encoded.dictionary), np.iinfo(np.int64).min, np.int64)
        np.maximum.at(newest, codes, times.to_numpy(zero_copy_only=False))
        known = self.latest_ms
        for symbol, time_ms in zip(encoded.dictionary.to_pylist(), newest.tolist()):
            if time_ms > known.get(symbol, time_ms - 1):
                known[symbol] = time_ms

    def symbols_to_backfill(self) -> list[str]:
        """Named symbols, and under a wildcard every symbol seen today."""
        if not self.backfill:
            return []
        self.fold_latest()
        return list(dict.fromkeys([*self.named_symbols, *(self.latest_ms if self.wildcard else ())]))

    def open_gaps(self, opens_ms: int) -> None:
        step = self.channel.gap_step_ms
        for symbol in self.symbols_to_backfill():
            last = self.latest_ms.get(symbol)
            self.gap_from[symbol] = opens_ms if last is None else max(opens_ms, last + step)

    def close_gaps(self, symbols: list[str], times_ms: list[int]) -> list[Gap]:
        """The first live row of a symbol after a possible gap tells where the gap ends."""
        gaps = []
        for symbol, time_ms in zip(symbols, times_ms):
            gap_from = self.gap_from.get(symbol)
            if gap_from is None or time_ms < gap_from:
                continue
            del self.gap_from[symbol]
            if time_ms > gap_from:
                gaps.append(Gap(symbol, gap_from, time_ms - self.channel.gap_step_ms, self.channel.name))
            if not self.gap_from:
                break
        return gaps

    def gaps_left_open(self, closes_ms: int) -> list[Gap]:
        last = closes_ms - max(self.channel.gap_step_ms, 1)
        return [Gap(symbol, gap_from, last, self.channel.name) for symbol, gap_from in self.gap_from.items()
                if gap_from <= last]


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
        self._flush_streak = FailureStreak("parquet_write", log, "write_failed", "write_recovered", logging.ERROR)
        self._skew = ClockSkewDetector()
        self._parsed_runs: deque | None = None   # run() parsed these runs of frames ahead, in order
        self._in_flight: tuple[Future, list, int] | None = None   # a flush: (outcomes, [(lane, table)], REST pages)
        self._pending_since = None               # when the oldest row not handed to a flush was accepted
        # REST pages (RestBars) accepted, and how many of them the last successful flush made durable: the
        # gap ledger records a gap as filled only once its pages are on disk (the backfill counts them alike).
        self.rest_pages_accepted = 0
        self.rest_pages_durable = 0
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
                if ahead or self._in_flight is not None:
                    wait = min(wait, LINGER_SECONDS if self._in_flight is None else FLUSH_POLL_SECONDS)
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
                if self._in_flight is not None and self._in_flight[0].done():
                    self._finish_flush()
                if self.clock.monotonic() >= next_flush or \
                        self.stats.rows_pending - self._rows_in_flight() >= MAX_PENDING_ROWS:
                    self._start_flush(flusher)
                    next_flush = self.clock.monotonic() + self.interval_seconds
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
            self._pending_since = self.clock.now()   # the oldest row not handed to a flush yet
        if not self.stats.rows_pending:
            self.stats.pending_since = self._pending_since
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

    # --- flushing ---

    def flush(self) -> bool:
        """Write each channel's pending rows as one file, now; on failure keep them for the next attempt.
        A flush still in flight (run's) is waited for and taken in first."""
        ok = self._finish_flush()
        batch, rest_pages = self._hand_over()
        if batch:
            written = Future()
            written.set_result(self._write_batch(batch))
            self._in_flight = (written, batch, rest_pages)
        return self._finish_flush() and ok

    def _start_flush(self, flusher: ThreadPoolExecutor) -> None:
        """Hand the pending rows to a flush on `flusher`, once the one before it is taken in."""
        self._finish_flush()
        batch, rest_pages = self._hand_over()
        if batch:
            self._in_flight = (flusher.submit(self._write_batch, batch), batch, rest_pages)

    def _hand_over(self) -> tuple[list, int]:
        """Each lane's pending rows as one table (no longer pending: in flight until taken in)."""
        self._follow_early_close()
        rest_pages = self.rest_pages_accepted   # every row they brought is pending or already written
        batch = []
        for lane in self.lanes.values():
            lane.fold_latest()
            if lane.pending:
                batch.append((lane, pa.concat_tables(lane.pending, promote_options="default")))
                lane.pending = []
        if not batch:
            self.rest_pages_durable = rest_pages
        return batch, rest_pages

    def _write_batch(self, batch: list) -> list:
        """Write each (lane, table) of `batch` as a file of the day; None or the OSError, per table (on the
        `parquet-flush` thread: it touches neither the stats nor the lanes)."""
        outcomes = []
        for lane, table in batch:
            try:
                self.sink.write(lane.channel.name, self._day, table, self.clock.time_ns())
                outcomes.append(None)
            except OSError as exc:
                outcomes.append(exc)
        return outcomes

    def _rows_in_flight(self) -> int:
        return 0 if self._in_flight is None else sum(table.num_rows for _, table in self._in_flight[1])

    def _finish_flush(self) -> bool:
        """Take in the flush in flight (waiting for it): count what was written, return what was not to
        pending. False if a file could not be written."""
        if self._in_flight is None:
            return True
        future, batch, rest_pages = self._in_flight
        self._in_flight = None
        try:
            outcomes = future.result()
        except BaseException:   # not a disk refusing (a bug): the rows stay pending for a salvage
            for lane, table in batch:
                lane.pending.insert(0, table)
            raise
        for (lane, table), failure in zip(batch, outcomes):
            if failure is None:
                self._flush_succeeded(table.num_rows)
                self._count_channel_rows(lane.channel.name, table.num_rows)
            else:
                self._flush_failed(failure, table.num_rows)
                lane.pending.insert(0, table)   # written at the next attempt, with what came since
        ok = not any(outcomes)
        if ok:
            self.rest_pages_durable = rest_pages
        if not any(lane.pending for lane in self.lanes.values()):
            self.stats.rows_pending = 0
            self.stats.pending_since = None
        elif ok:
            self.stats.pending_since = self._pending_since
        return ok

    def _count_channel_rows(self, channel: str, rows: int) -> None:
        # A new dict rather than an update: the heartbeat thread may be serializing the old one.
        counts = self.stats.rows_written_by_channel
        self.stats.rows_written_by_channel = {**counts, channel: counts.get(channel, 0) + rows}

    def _flush_failed(self, exc: OSError, rows: int) -> None:
        self.stats.write_errors += 1
        self.stats.last_write_error = f"{type(exc).__name__}: {exc.strerror or exc}"
        self._flush_streak.failed(exc, "cannot write Parquet batch (%d rows kept in memory, retrying every "
                                  "interval)", rows, rows_pending=rows)

    def _flush_succeeded(self, rows: int) -> None:
        self._flush_streak.succeeded("Parquet writes work again", rows=rows)
        self.stats.last_write_error = None
        self.stats.rows_written += rows
        self.stats.batches_written += 1
        self.stats.rows_pending -= rows
        self.stats.last_flush_at = self.clock.now()


def _ms(instant: datetime) -> int:
    return int(instant.timestamp() * 1000)
