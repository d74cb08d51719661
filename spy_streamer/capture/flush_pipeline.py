"""The writer's flushes: each interval's pending rows, one table per channel, written and fsynced as one
file of the day on the `parquet-flush` thread while the writer goes on accepting; one flush at a time,
its outcome taken in before the next starts (rows written are counted, rows a disk refused go back to
their lane's pending, written with what came since at the next attempt)."""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date

import pyarrow as pa

from ..monitoring.failure_streak import FailureStreak
from ..storage.parquet_sink import ParquetSink
from .lane import Lane
from .pipeline_stats import WriterStats

log = logging.getLogger(__name__)


class FlushPipeline:
    def __init__(self, sink: ParquetSink, stats: WriterStats, clock, lanes: dict[str, Lane]):
        self.sink = sink
        self.stats = stats
        self.clock = clock
        self.lanes = lanes
        self._streak = FailureStreak("parquet_write", log, "write_failed", "write_recovered", logging.ERROR)
        self._in_flight: tuple[Future, list, int] | None = None   # (outcomes, [(lane, table)], REST pages)
        self.pending_since = None   # when the oldest row not handed to a flush was accepted (the writer sets it)
        # How many REST pages (RestBars) the last successful flush made durable: the gap ledger records a
        # gap as filled only once its pages are on disk (the backfill counts them alike).
        self.rest_pages_durable = 0

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    def take_in_if_done(self) -> None:
        if self._in_flight is not None and self._in_flight[0].done():
            self.finish()

    def flush_now(self, day: date, rest_pages: int) -> bool:
        """Write each channel's pending rows as one file, now (on this thread); on failure keep them for the
        next attempt. A flush still in flight is waited for and taken in first. `rest_pages`: the REST
        pages accepted so far (every row they brought is pending or already written)."""
        ok = self.finish()
        batch = self._hand_over(rest_pages)
        if batch:
            written = Future()
            written.set_result(self._write_batch(batch, day))
            self._in_flight = (written, batch, rest_pages)
        return self.finish() and ok

    def start(self, flusher: ThreadPoolExecutor, day: date, rest_pages: int) -> None:
        """Hand the pending rows to a flush on `flusher`, once the one before it is taken in."""
        self.finish()
        batch = self._hand_over(rest_pages)
        if batch:
            self._in_flight = (flusher.submit(self._write_batch, batch, day), batch, rest_pages)

    def _hand_over(self, rest_pages: int) -> list:
        """Each lane's pending rows as one table (no longer pending: in flight until taken in)."""
        batch = []
        for lane in self.lanes.values():
            lane.fold_latest()
            if lane.pending:
                batch.append((lane, pa.concat_tables(lane.pending, promote_options="default")))
                lane.pending = []
        if not batch:
            self.rest_pages_durable = rest_pages
        return batch

    def _write_batch(self, batch: list, day: date) -> list:
        """Write each (lane, table) of `batch` as a file of the day; None or the OSError, per table (on the
        `parquet-flush` thread: it touches neither the stats nor the lanes)."""
        outcomes = []
        for lane, table in batch:
            try:
                self.sink.write(lane.channel.name, day, table, self.clock.time_ns())
                outcomes.append(None)
            except OSError as exc:
                outcomes.append(exc)
        return outcomes

    def rows_in_flight(self) -> int:
        return 0 if self._in_flight is None else sum(table.num_rows for _, table in self._in_flight[1])

    def finish(self) -> bool:
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
                self._succeeded(table.num_rows)
                self._count_channel_rows(lane.channel.name, table.num_rows)
            else:
                self._failed(failure, table.num_rows)
                lane.pending.insert(0, table)   # written at the next attempt, with what came since
        ok = not any(outcomes)
        if ok:
            self.rest_pages_durable = rest_pages
        if not any(lane.pending for lane in self.lanes.values()):
            self.stats.rows_pending = 0
            self.stats.pending_since = None
        elif ok:
            self.stats.pending_since = self.pending_since
        return ok

    def _count_channel_rows(self, channel: str, rows: int) -> None:
        # A new dict rather than an update: the heartbeat thread may be serializing the old one.
        counts = self.stats.rows_written_by_channel
        self.stats.rows_written_by_channel = {**counts, channel: counts.get(channel, 0) + rows}

    def _failed(self, exc: OSError, rows: int) -> None:
        self.stats.write_errors += 1
        self.stats.last_write_error = f"{type(exc).__name__}: {exc.strerror or exc}"
        self._streak.failed(exc, "cannot write Parquet batch (%d rows kept in memory, retrying every "
                            "interval)", rows, rows_pending=rows)

    def _succeeded(self, rows: int) -> None:
        self._streak.succeeded("Parquet writes work again", rows=rows)
        self.stats.last_write_error = None
        self.stats.rows_written += rows
        self.stats.batches_written += 1
        self.stats.rows_pending -= rows
        self.stats.last_flush_at = self.clock.now()
