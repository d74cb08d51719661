"""The supervisor (main thread): signals, the open/close timer, and the threads it owns.

Signal handlers only record the signal on a SimpleQueue; the main loop reads that queue, with a timeout
from `schedule` (at most one second), and turns signals into a graceful shutdown. The calendar is the one
source of the open/close instants: each transition schedules a one-off `schedule` job for the next one,
and a reconcile pass makes the state match the calendar, so a start at 11:00 begins a session at once.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from datetime import datetime, timedelta
from typing import Callable

import pyarrow as pa
import schedule

from .aggregate_bars import subscribed_symbols
from .batch_writer import BatchWriter
from .clock import SystemClock
from .compaction import CompactionError, compact_day
from .config import Config
from .heartbeat_monitor import HeartbeatMonitor, heartbeat_path
from .gap_backfill import GapBackfiller
from .market_hours import MarketCalendar, Session
from .parquet_sink import ParquetSink
from .pipeline_stats import BackfillStats, ReaderStats, WriterStats
from .polygon_client import AuthRejected, PolygonStream
from .polygon_rest import fetch_second_aggs, make_rest_client
from .queue_items import END_OF_STREAM, FrameQueue

log = logging.getLogger(__name__)

EX_OK, EX_SOFTWARE, EX_CONFIG = 0, 70, 78
SHUTDOWN_DEADLINE_SECONDS = 10.0     # supervisord's stopwaitsecs must be above this
CLOSE_GRACE_SECONDS = 5.0            # Polygon sends a second's bar ~2 s after it ends
RECONCILE_EVERY_SECONDS = 60         # safety net against clock jumps; transitions have their own jobs
MAX_WAIT_SECONDS = 1.0               # a signal is acted on within this
QUEUE_MAX_BYTES = 4_000_000         # hours of A.SPY (a ~230-byte bar a frame); 100 frames of 200 events


class CaptureSession:
    """One market session: the reader, backfill and writer threads with the queue between them."""

    def __init__(self, market_session: Session, stream: PolygonStream, writer: BatchWriter,
                 backfiller: GapBackfiller, frames: queue.Queue, start_thread: Callable[..., threading.Thread]):
        self.market_session = market_session
        self.stream = stream
        self.writer = writer
        self.backfiller = backfiller
        self.frames = frames
        self._start_thread = start_thread
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [
            self._start_thread("parquet-writer", self.writer.run),
            self._start_thread("rest-backfill", self.backfiller.run),
            self._start_thread("ws-reader", lambda: self.stream.stream_realtime(until=self.market_session.close)),
        ]

    def stop(self, deadline: float, monotonic: Callable[[], float]) -> bool:
        """Producers first, then drain the queue to its end marker and flush; True if all joined in time."""
        writer_thread, backfill_thread, reader_thread = self._threads
        self.stream.request_stop()
        self.backfiller.stop()
        reader_thread.join(max(0.0, deadline - monotonic()))
        backfill_thread.join(max(0.0, deadline - monotonic()))
        try:
            self.frames.put(END_OF_STREAM, timeout=max(0.0, deadline - monotonic()))
        except queue.Full:
            pass
        writer_thread.join(max(0.0, deadline - monotonic()))
        stuck = [thread.name for thread in self._threads if thread.is_alive()]
        if stuck:
            log.error("threads did not stop in time: %s", ", ".join(stuck), extra={"event": "stop_timeout"})
        return not stuck


class StreamingRunner:
    def __init__(self, config: Config, calendar: MarketCalendar, api_key: str, clock=None,
                 close_grace_seconds: float = CLOSE_GRACE_SECONDS):
        self.config = config
        self.calendar = calendar
        self.api_key = api_key
        self.clock = clock or SystemClock()
        self.close_grace = timedelta(seconds=close_grace_seconds)
        self.sink = ParquetSink(config.paths.data_dir)
        self.reader_stats = ReaderStats()
        self.writer_stats = WriterStats()
        self.backfill_stats = BackfillStats()
        self.rest_client = make_rest_client(api_key, config.polygon.rest_base_url)
        self.monitor = HeartbeatMonitor(
            heartbeat_path(config), calendar,
            interval_seconds=config.monitoring.heartbeat_interval_seconds,
            alert_threshold_seconds=config.monitoring.alert_threshold_seconds,
            subscriptions=config.polygon.subscriptions, reader=self.reader_stats, writer=self.writer_stats,
            backfill=self.backfill_stats, queue_depth=self._queue_depth, on_stall=self._on_stall, clock=self.clock)
        self.scheduler = schedule.Scheduler()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._exit_code: int | None = None
        self._interrupted = False
        self._session: CaptureSession | None = None
        self._announced_next_open: datetime | None = None
        self._heartbeat_stop = threading.Event()

    # --- signals: record only (no logging, no locks) ---

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self._interrupted:
            os._exit(130)  # a second Ctrl-C: the user wants out now
        self._interrupted = self._interrupted or signum == signal.SIGINT
        self._events.put_nowait(("signal", signum))

    def _install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    # --- main loop ---

    def run(self) -> int:
        self._install_signal_handlers()
        # Arrow's default mimalloc pool keeps freed pages per thread; after a burst the system allocator
        # gives more of them back, which keeps the daemon's resident memory lower over a long session.
        pa.set_memory_pool(pa.system_memory_pool())
        log.info("spy-streamer started (config %s)", self.config.source,
                 extra={"event": "started", "pid": os.getpid(), "subscriptions": list(self.config.polygon.subscriptions)})
        self.sink.remove_temp_files()
        heartbeat_thread = self._start_thread("heartbeat", lambda: self.monitor.run(self._heartbeat_stop))
        self.scheduler.every(RECONCILE_EVERY_SECONDS).seconds.do(self.reconcile)
        self.reconcile()
        while self._exit_code is None:
            self.scheduler.run_pending()
            self._wait_for_event(self._seconds_to_next_job())
        self._shutdown(heartbeat_thread)
        return self._exit_code

    def _seconds_to_next_job(self) -> float:
        idle = self.scheduler.idle_seconds
        return MAX_WAIT_SECONDS if idle is None else min(max(idle, 0.0), MAX_WAIT_SECONDS)

    def _wait_for_event(self, timeout: float) -> None:
        try:
            kind, detail = self._events.get(timeout=timeout)
        except queue.Empty:
            return
        if kind == "signal":
            log.info("received %s; shutting down", signal.Signals(detail).name,
                     extra={"event": "shutdown_requested"})
            self._exit_code = EX_OK
        else:
            self._exit_code = detail

    def _shutdown(self, heartbeat_thread: threading.Thread) -> None:
        deadline = self.clock.monotonic() + SHUTDOWN_DEADLINE_SECONDS
        if self._session is not None:
            self._end_session("shutdown", deadline)
        self._heartbeat_stop.set()
        heartbeat_thread.join(max(0.0, deadline - self.clock.monotonic()))
        self.monitor.send_heartbeat(status="stopped")
        log.info("spy-streamer stopped (exit %d)", self._exit_code,
                 extra={"event": "stopped", "exit_code": self._exit_code,
                        "rows_written": self.writer_stats.rows_written})

    # --- thread ownership ---

    def _start_thread(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """Start a named thread whose failure is logged with its name and ends the process."""
        def guarded() -> None:
            try:
                target()
            except AuthRejected:
                self._events.put(("fatal", EX_CONFIG))
            except Exception:
                log.exception("thread %s crashed", name, extra={"event": "thread_crashed", "thread": name})
                self._events.put(("fatal", EX_SOFTWARE))

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        return thread

    # --- market transitions ---

    def reconcile(self) -> None:
        """Make the running state match the calendar now, then schedule the next transition."""
        now = self.clock.now()
        if self._session is not None:
            if now >= self._session.market_session.close + self.close_grace:
                self._end_session("market_close", self.clock.monotonic() + SHUTDOWN_DEADLINE_SECONDS)
        if self._session is None:
            upcoming = self.calendar.current_or_next_session(now)
            if upcoming.open <= now:
                self._begin_session(upcoming)
            elif self._announced_next_open != upcoming.open:
                self._announce_closed(upcoming, now)
        self._schedule_next_transition(now)

    def _schedule_next_transition(self, now: datetime) -> None:
        self.scheduler.clear("transition")
        if self._session is not None:
            at = self._session.market_session.close + self.close_grace
        else:
            at = self.calendar.current_or_next_session(now).open
        # schedule loops forever on a zero interval, so never ask for less than a millisecond.
        seconds = max((at - now).total_seconds(), 0.001)
        self.scheduler.every(seconds).seconds.do(self._transition).tag("transition")

    def _transition(self):
        self.reconcile()
        return schedule.CancelJob  # reconcile() scheduled the next one

    def _announce_closed(self, upcoming: Session, now: datetime) -> None:
        self._announced_next_open = upcoming.open
        local_open = upcoming.open.astimezone(self.calendar.tz)
        log.info("market closed (%s); next open %s", self.calendar.closed_reason(now), local_open.isoformat(),
                 extra={"event": "market_closed", "next_open": local_open.isoformat(),
                        "seconds_until_open": round((upcoming.open - now).total_seconds())})
        self.monitor.send_heartbeat()

    def _begin_session(self, market_session: Session) -> None:
        frames = FrameQueue(QUEUE_MAX_BYTES)
        backfiller = GapBackfiller(
            lambda symbol, from_ms, to_ms: fetch_second_aggs(self.rest_client, symbol, from_ms, to_ms),
            frames.put, self.backfill_stats, self.clock)
        writer = BatchWriter(frames, self.sink, self.calendar, self.writer_stats,
                             self.config.batching.write_interval_seconds, self.clock,
                             request_backfill=backfiller.request,
                             backfill_symbols=subscribed_symbols(self.config.polygon.subscriptions))
        stream = PolygonStream(self.config.polygon, self.api_key, self.calendar, self.monitor,
                               self.reader_stats, frames, self.clock)
        self._session = CaptureSession(market_session, stream, writer, backfiller, frames, self._start_thread)
        self._announced_next_open = None
        log.info("market open; streaming until %s", market_session.close.astimezone(self.calendar.tz).isoformat(),
                 extra={"event": "market_open", "close": market_session.close.isoformat()})
        self.monitor.session_started()
        self._session.start()
        self.monitor.send_heartbeat()

    def _end_session(self, reason: str, deadline: float) -> None:
        session, self._session = self._session, None
        session.stop(deadline, self.clock.monotonic)
        self.monitor.session_ended()
        self.reader_stats.state = "idle"
        log.info("session ended (%s)", reason,
                 extra={"event": "session_ended", "reason": reason, "rows_written": self.writer_stats.rows_written,
                        "rows_pending": self.writer_stats.rows_pending})
        if reason == "market_close":
            self._fill_gaps_left_at_close(session)
            self._compact(self.calendar.trading_day(session.market_session.open))
        self.monitor.send_heartbeat()

    def _fill_gaps_left_at_close(self, session: CaptureSession) -> None:
        """No live bar will end a gap once the session is over, so fetch what is missing up to the close
        now. The session's threads have stopped: its writer is used from this thread alone."""
        for gap in session.writer.gaps_left_open():
            bars = session.backfiller.fill_now(gap)
            if bars is not None:
                session.writer.accept_items([bars])
        session.writer.flush()

    def _compact(self, day) -> None:
        """The day is over: one sorted file per channel and day instead of hundreds of micro-batches."""
        try:
            compact_day(self.config.paths.data_dir, day)
        except CompactionError:
            pass  # logged by compact_day; the micro-batches stay, `spy-streamer compact` can retry
        except Exception:
            log.exception("compaction of %s crashed; the micro-batches stay", day,
                          extra={"event": "compaction_failed"})

    # --- hooks for the heartbeat monitor ---

    def _queue_depth(self) -> int:
        session = self._session
        return 0 if session is None else session.frames.items_waiting()

    def _on_stall(self) -> None:
        session = self._session
        if session is not None:
            session.stream.force_reconnect()
