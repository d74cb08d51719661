"""One market session: the reader, backfill and writer services with the frame queue between them.

The runner opens a session at the open (`open_capture_session`) and stops it at the close or at shutdown
(`CaptureSession.stop`), in the order that keeps every row: producers first, then the writer drains the
queue to its end marker and flushes.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from ..backfill.gap_backfill import GapBackfiller
from ..backfill.gap_ledger import GapLedger
from ..capture.batch_writer import BatchWriter
from ..capture.queue_items import FrameQueue
from ..channels import channel_for
from ..channels.subscriptions import channel_names
from ..data_sources.polygon_client import PolygonStream
from ..market.market_hours import Session
from .service import Service

log = logging.getLogger(__name__)

WRITER_SHARE_SECONDS = 4.0           # of the shutdown deadline, kept for the writer's final flush
QUEUE_MAX_BYTES = 4_000_000         # hours of A.SPY (a ~230-byte bar a frame); 100 frames of 200 events


class CaptureSession:
    def __init__(self, market_session: Session, stream: PolygonStream, writer: BatchWriter,
                 backfiller: GapBackfiller, frames: FrameQueue):
        self.market_session = market_session
        self.stream = stream
        self.writer = writer
        self.backfiller = backfiller
        self.frames = frames
        self._threads: list[threading.Thread] = []

    def start(self, start_service: Callable[[Service], threading.Thread]) -> None:
        self._threads = [start_service(self.writer), start_service(self.backfiller), start_service(self.stream)]

    def progress(self) -> dict[str, int]:
        """The turn counters of the capture loops still running (the systemd watchdog's proof of progress)."""
        counters = {self.writer.thread_name: lambda: self.writer.turns, self.stream.thread_name: lambda: self.stream.turns}
        return {thread.name: counters[thread.name]() for thread in self._threads
                if thread.name in counters and thread.is_alive()}

    def stop(self, deadline: float, monotonic: Callable[[], float]) -> list[str]:
        """Producers first, then drain the queue to its end marker and flush; the names of the threads
        still running at the deadline (abandoned, with whatever they held).

        The writer's final flush is what matters most, so the reader is only waited for until
        WRITER_SHARE_SECONDS before the deadline, and the backfill (a REST request may hang until its
        timeout) only after the writer: a hung request can no longer eat the flush's share."""
        writer_thread, backfill_thread, reader_thread = self._threads
        self.stream.stop()
        self.backfiller.stop()
        reader_thread.join(max(0.0, deadline - WRITER_SHARE_SECONDS - monotonic()))
        self.writer.stop()
        writer_thread.join(max(0.0, deadline - monotonic()))
        if not writer_thread.is_alive() and self.writer.stats.rows_pending:
            self._salvage_writer(deadline, monotonic)  # the writer crashed: keep what it had parsed
        backfill_thread.join(max(0.0, deadline - monotonic()))
        return [thread.name for thread in self._threads if thread.is_alive()]

    def _salvage_writer(self, deadline: float, monotonic: Callable[[], float]) -> None:
        """After a writer crash, flush the rows it had accepted on a one-shot thread (its own is gone)."""
        salvage = threading.Thread(target=self.writer.flush, name="writer-salvage", daemon=True)
        salvage.start()
        salvage.join(max(0.0, deadline - monotonic()))
        self._threads.append(salvage)
        unread = self.frames.items_waiting()
        if unread:
            log.error("%d queued frame(s) were not stored: the writer crashed before reading them", unread,
                      extra={"event": "frames_abandoned", "frames": unread})

    def queue_fill(self) -> tuple[int, float]:
        """(frames waiting, fraction of the queue's byte bound in use)."""
        return self.frames.items_waiting(), self.frames.qsize() / QUEUE_MAX_BYTES


def open_capture_session(market_session: Session, runner) -> CaptureSession:
    """The session's services, wired to the runner's config, calendar, sink, stats and monitor."""
    config, calendar = runner.config, runner.calendar
    frames = FrameQueue(QUEUE_MAX_BYTES)
    ledger = GapLedger(config.paths.data_dir, calendar.trading_day(market_session.open),
                       channel_names(config.polygon.subscriptions))
    backfiller = GapBackfiller(
        lambda gap, pace: channel_for(gap.channel).fetch(runner.rest_client, gap.symbol, gap.from_ms, gap.to_ms, pace),
        frames.put, runner.backfill_stats, runner.clock,
        max_requests_per_second=config.polygon.rest_max_requests_per_second,
        ledger=ledger, durable_pages=lambda: writer.rest_pages_durable)
    writer = BatchWriter(frames, runner.sink, calendar, runner.writer_stats,
                         config.batching.write_interval_seconds, runner.clock,
                         request_backfill=backfiller.request, subscriptions=config.polygon.subscriptions)
    stream = PolygonStream(config.polygon, runner.api_key, calendar, runner.monitor, runner.reader_stats, frames,
                           runner.clock, until=market_session.close)
    return CaptureSession(market_session, stream, writer, backfiller, frames)
