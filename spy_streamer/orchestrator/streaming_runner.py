"""The supervisor (main thread): signals, the open/close timer, and the threads it owns.

Signal handlers only record the signal in an Inbox (orchestrator/inbox.py); the main loop waits on it
until the next `schedule` job is due (no polling: a signal ends the wait at once), and turns signals into
a graceful shutdown. The calendar is the one
source of the open/close instants: each transition schedules a one-off `schedule` job for the next one,
and a reconcile pass makes the state match the calendar, so a start at 11:00 begins a session at once.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from datetime import datetime, timedelta
from typing import Callable

import pyarrow as pa
import schedule

from ..market.calendar_refresh import seconds_to_next_refresh
from ..clock import SystemClock
from ..config import Config
from ..storage.compaction import CompactionStats
from ..exit_codes import EX_CONFIG, EX_LOCKED, EX_OK, EX_SOFTWARE
from ..monitoring.health_check import heartbeat_path
from ..monitoring.heartbeat_monitor import HeartbeatMonitor
from ..instance_lock import InstanceLock, InstanceLocked, UnsafeLockFile
from ..log_setup import reopen_log_files
from .repeat_limiter import RepeatLimiter
from ..market.market_hours import NO_SESSION_IN_SIGHT, MarketCalendar, Session
from .clock_watch import WallClockWatch
from ..monitoring.metrics import MetricsPublisher
from ..monitoring.systemd_notify import notify, start_watchdog
from ..storage.parquet_sink import ParquetSink
from ..capture.pipeline_stats import BackfillStats, ReaderStats, WriterStats
from ..channels import frame_columns
from ..data_sources.client_library import LIBRARY
from ..data_sources.polygon_client import AuthRejected
from ..data_sources.polygon_rest import make_rest_client
from .after_close import AfterClose
from .capture_session import CaptureSession, open_capture_session
from .inbox import Inbox
from .service import Service

log = logging.getLogger(__name__)

SHUTDOWN_DEADLINE_SECONDS = 10.0     # supervisord's stopwaitsecs must be above this
# The deadline's last part, kept for the heartbeat thread to see its stop: a lake commit that hangs is
# abandoned that much earlier (safe: logged, the batch stays staged) instead of leaving the idle heartbeat
# thread no time at all (seen: exit 70, "abandoned: heartbeat", whenever a commit ran to the deadline).
HEARTBEAT_STOP_SECONDS = 1.0
CLOSE_GRACE_SECONDS = 5.0            # Polygon sends a second's bar ~2 s after it ends
RECONCILE_EVERY_SECONDS = 30         # safety net; the loop wakes at least this often, so a wall clock that
                                     # jumped is followed within it (transitions have their own jobs)
# supervisord's startsecs=0 (so that exit 78 is final) also means no back-off before a restart: a
# daemon that fails at once would be respawned several times a second. It lingers this long instead.
MIN_UPTIME_BEFORE_FAILING_SECONDS = 10.0


class StreamingRunner:
    def __init__(self, config: Config, calendar: MarketCalendar, api_key: str, clock=None,
                 close_grace_seconds: float = CLOSE_GRACE_SECONDS,
                 refresh_calendar: Callable[[], bool] | None = None,
                 min_uptime_before_failing_seconds: float = MIN_UPTIME_BEFORE_FAILING_SECONDS):
        """`refresh_calendar()` learns Polygon's holidays into `calendar` (True when it got an answer); the
        runner calls it on a one-shot thread at start and on its timer, never on its own thread."""
        self.config = config
        self.calendar = calendar
        self.refresh_calendar = refresh_calendar
        self.min_uptime_before_failing = min_uptime_before_failing_seconds
        self.api_key = api_key
        self.clock = clock or SystemClock()
        self.close_grace = timedelta(seconds=close_grace_seconds)
        self.sink = ParquetSink(config.paths.data_dir) if config.storage.kind != "iceberg" \
            else _lake_backed_sink(config, calendar)
        self.reader_stats = ReaderStats()
        self.writer_stats = WriterStats()
        self.backfill_stats = BackfillStats()
        self.compaction_stats = CompactionStats()
        self.rest_client = make_rest_client(api_key, config.polygon.rest_base_url)
        self.lake = _lake_committer(config, self.clock) if config.storage.kind == "iceberg" else None
        self.monitor = HeartbeatMonitor(
            heartbeat_path(config), calendar,
            interval_seconds=config.monitoring.heartbeat_interval_seconds,
            alert_threshold_seconds=config.monitoring.alert_threshold_seconds,
            write_interval_seconds=config.batching.write_interval_seconds,
            subscriptions=config.polygon.subscriptions, reader=self.reader_stats, writer=self.writer_stats,
            backfill=self.backfill_stats, queue_fill=self._queue_fill, on_stall=self._on_stall, clock=self.clock,
            metrics=MetricsPublisher(config.paths.heartbeat_dir, config.monitoring.metrics_port,
                                     config.monitoring.metrics_address),
            lake=None if self.lake is None else self.lake.stats, compaction=self.compaction_stats)
        self.scheduler = schedule.Scheduler()
        self.exit_reason: str | None = None      # one line for stderr when the exit code is not 0
        self._events = Inbox()
        self._exit_code: int | None = None
        self._interrupted = False
        self._session: CaptureSession | None = None
        self._after_close: tuple[AfterClose, threading.Thread] | None = None
        self._calendar_refresh: threading.Thread | None = None
        self._announced_next_open: datetime | None = None
        self._no_session_announced = False
        self._wall_clock = WallClockWatch(self.clock)
        self._lake_thread: threading.Thread | None = None
        self._signal_lines = RepeatLimiter(monotonic=self.clock.monotonic)

    # --- signals: record only (no logging, no locks) ---

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self._interrupted:
            os._exit(130)  # a second Ctrl-C: the user wants out now
        self._interrupted = self._interrupted or signum == signal.SIGINT
        self._events.put_nowait(("signal", signum))

    def _install_signal_handlers(self) -> None:
        # SIGHUP and SIGUSR1/2 would kill the process by default (losing what the writer holds); a
        # `postrotate kill -HUP` recipe must only make it reopen its log.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, self._on_signal)
        self._events.wake_on_signals()

    # --- main loop ---

    def run(self) -> int:
        lock = InstanceLock(self.config.paths.data_dir)
        try:
            lock.acquire()
        except InstanceLocked as exc:
            self.exit_reason = str(exc)
            log.error("%s", exc, extra={"event": "already_running", "holder_pid": exc.holder_pid})
            return EX_LOCKED
        except UnsafeLockFile as exc:   # a planted symlink: a person must look, a restart would not help
            self.exit_reason = str(exc)
            log.error("%s", exc, extra={"event": "lock_file_refused"})
            return EX_CONFIG
        except OSError as exc:
            # The disk refuses even the lock file (full, read-only, not mounted yet): capture anyway, holding
            # rows in memory until writes work, rather than lose the session; the writes will say more.
            log.error("cannot lock %s (%s); running without the one-instance guard", lock.path,
                      exc.strerror or exc, extra={"event": "lock_unavailable"})
        try:
            return self._run_locked()
        finally:
            self._events.stop_waking_on_signals()
            lock.release()

    def _start_metrics_server(self) -> bool:
        try:
            self.monitor.metrics.start_server()
        except OSError as exc:
            self.exit_reason = (f"{self.config.source}: streaming.monitoring.metrics_port: cannot serve on port "
                                f"{self.config.monitoring.metrics_port}: {exc.strerror or exc}")
            log.error("%s", self.exit_reason, extra={"event": "metrics_port_unavailable"})
            return False
        return True

    def _run_locked(self) -> int:
        started = time.monotonic()
        if not self._start_metrics_server():
            return EX_CONFIG
        self._install_signal_handlers()
        log.info("spy-streamer started (config %s)", self.config.source,
                 extra={"event": "started", "pid": os.getpid(), "subscriptions": list(self.config.polygon.subscriptions),
                        "client": str(LIBRARY), "frame_parser": frame_columns.NAME,
                        "arrow_memory_pool": pa.default_memory_pool().backend_name})
        if not frame_columns.AVAILABLE:
            log.warning("the compiled frame parser is not built (no C compiler at install?): frames are parsed "
                        "at about half the speed; run scripts/setup.sh on a machine with gcc",
                        extra={"event": "frame_parser_slow"})
        self.sink.remove_temp_files()
        heartbeat_thread = self._start_service(self.monitor)
        if self.lake is not None:  # for the whole process: batches flushed after the close go up overnight
            self._lake_thread = self._start_service(self.lake)
        self.scheduler.every(RECONCILE_EVERY_SECONDS).seconds.do(self.reconcile)
        self._schedule_calendar_refresh(succeeded=True)
        try:
            self._refresh_calendar_in_background()
            self.reconcile()
            notify("READY=1")
            start_watchdog(self.scheduler, self._capture_progress, 2 * self.config.batching.write_interval_seconds + 1)
            while self._exit_code is None:
                self._watch_wall_clock()
                self.scheduler.run_pending()
                self._wait_for_event(self._seconds_to_next_job())
        except Exception as exc:  # the supervisor itself: still flush and stop in order, and say so
            log.exception("the supervisor crashed", extra={"event": "thread_crashed", "thread_name": "supervisor"})
            self._fail(EX_SOFTWARE, f"the supervisor crashed: {type(exc).__name__}")
        self._shutdown(heartbeat_thread)
        if self._exit_code == EX_SOFTWARE:
            self._linger(started + self.min_uptime_before_failing)
        return self._exit_code

    def _linger(self, until: float) -> None:
        """Everything is flushed and stopped; wait out the minimum uptime (a signal ends the wait)."""
        while (remaining := until - time.monotonic()) > 0:
            try:
                kind, _ = self._events.get(timeout=remaining)
            except queue.Empty:
                return
            if kind == "signal":
                return

    def _seconds_to_next_job(self) -> float:
        """Until the next job (the open or close, a reconcile, a calendar refresh, a watchdog pet): the
        loop sleeps that long unless an event (a signal included) comes first."""
        idle = self.scheduler.idle_seconds
        return RECONCILE_EVERY_SECONDS if idle is None else max(idle, 0.0)

    def _wait_for_event(self, timeout: float) -> None:
        try:
            kind, detail = self._events.get(timeout=timeout)
        except queue.Empty:
            return
        if kind == "signal":
            self._act_on_signal(detail)
        elif kind == "calendar":
            self._schedule_calendar_refresh(succeeded=detail)
            self.reconcile()  # what was learned (a closure today, an earlier close) takes effect at once
        else:
            self._fail(*detail)

    def _act_on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            reopen_log_files()
            self._log_signal(name, "received SIGHUP; log file reopened", "log_reopened")
        elif signum in (signal.SIGUSR1, signal.SIGUSR2):
            self._log_signal(name, f"received {name}; it has no meaning here, ignored", "signal_ignored")
        elif self._exit_code is None:
            log.info("received %s; shutting down", name, extra={"event": "shutdown_requested"})
            self._exit_code = EX_OK

    def _log_signal(self, name: str, message: str, event: str) -> None:
        """One line per signal name a minute at most (a flood must not fill the log); the next line
        written says how many were held back."""
        held_back = self._signal_lines.admit(name)
        if held_back is None:
            return
        if held_back:
            message += f" ({held_back} more {name} since the last such line, not logged one by one)"
        log.info("%s", message, extra={"event": event, "signal_name": name, "signals_not_logged": held_back})

    def _fail(self, exit_code: int, reason: str) -> None:
        """Stop with `exit_code`; the first failure is the one reported."""
        if self._exit_code not in (None, EX_OK):
            return
        self._exit_code, self.exit_reason = exit_code, reason
        if exit_code == EX_SOFTWARE:
            self.monitor.mark_failed(reason)
            self.monitor.send_heartbeat()

    def _shutdown(self, heartbeat_thread: threading.Thread) -> None:
        deadline = self.clock.monotonic() + SHUTDOWN_DEADLINE_SECONDS
        notify("STOPPING=1")
        if self._session is not None:
            self._end_session("shutdown", deadline)
        self._join_after_close(deadline)
        self._stop_lake_commits(deadline - HEARTBEAT_STOP_SECONDS)
        self.monitor.stop()
        heartbeat_thread.join(max(0.0, deadline - self.clock.monotonic()))
        if heartbeat_thread.is_alive():
            self._abandoned(["heartbeat"])
        self.monitor.send_heartbeat(status="failed" if self._exit_code == EX_SOFTWARE else "stopped")
        log.info("spy-streamer stopped (exit %d)", self._exit_code,
                 extra={"event": "stopped", "exit_code": self._exit_code,
                        "rows_written": self.writer_stats.rows_written})

    def _stop_lake_commits(self, deadline: float) -> None:
        """The commit thread's last pass commits what the writer's final flush staged. A commit in flight
        may outlast the deadline; abandoning it is safe (the batch stays staged and the commit ledger
        recognises it next time), so it is logged, not failed on, and the staged rows counted."""
        if self._lake_thread is None:
            return
        self.lake.stop()
        self._lake_thread.join(max(0.0, deadline - self.clock.monotonic()))
        self.lake.count_staged()   # the final heartbeat tells what is still only on local disk
        if self._lake_thread.is_alive() or self.lake.stats.upload_backlog:
            log.warning("%d staged file(s), %d rows, are not in the lake at the stop (%s); they stay on local "
                        "disk and are committed at the next start", self.lake.stats.upload_backlog,
                        self.lake.stats.upload_backlog_rows, "a commit was still running at the deadline"
                        if self._lake_thread.is_alive() else self.lake.stats.last_error or "not committed",
                        extra={"event": "lake_commit_abandoned", "upload_backlog": self.lake.stats.upload_backlog})

    def _abandoned(self, thread_names: list[str]) -> None:
        """Threads still running at the deadline: a fact to log and to exit non-zero on."""
        pending = self.writer_stats.rows_pending
        log.error("threads did not stop in time and were abandoned: %s (%d rows not written)",
                  ", ".join(thread_names), pending,
                  extra={"event": "stop_timeout", "thread_names": thread_names, "rows_pending": pending})
        self._fail(EX_SOFTWARE, f"threads did not stop in time: {', '.join(thread_names)}")

    # --- thread ownership ---

    def _start_thread(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """Start a named thread whose failure is logged with its name and ends the process."""
        def guarded() -> None:
            try:
                target()
            except AuthRejected as exc:
                self._events.put(("fatal", (EX_CONFIG, f"Polygon rejected the API key: {exc}")))
            except Exception as exc:  # RecursionError and MemoryError included: no thread dies silently
                # The event first: even if logging failed, the process would still stop.
                self._events.put(("fatal", (EX_SOFTWARE, f"thread {name} crashed: {type(exc).__name__}")))
                log.exception("thread %s crashed", name, extra={"event": "thread_crashed", "thread_name": name})

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        return thread

    def _start_service(self, service: Service) -> threading.Thread:
        return self._start_thread(service.thread_name, service.run)

    def _join_after_close(self, deadline: float) -> None:
        if self._after_close is None:
            return
        after_close, thread = self._after_close
        after_close.stop()
        thread.join(max(0.0, deadline - self.clock.monotonic()))
        if not thread.is_alive():
            return
        if after_close.holds_rows:
            self._abandoned([thread.name])
        else:  # only the compaction was left: atomic, the micro-batches stay readable, `compact` redoes it
            log.warning("the end-of-day compaction was interrupted by the stop; run `spy-streamer compact` "
                        "for that day", extra={"event": "compaction_interrupted"})

    # --- the calendar's background refresh ---

    def _schedule_calendar_refresh(self, succeeded: bool) -> None:
        if self.refresh_calendar is None:
            return
        self.scheduler.clear("calendar")
        seconds = seconds_to_next_refresh(self.calendar, self.clock.now(), succeeded)
        self.scheduler.every(seconds).seconds.do(self._refresh_calendar_in_background).tag("calendar")

    def _refresh_calendar_in_background(self) -> None:
        """A REST call may take seconds: never on the supervisor thread, and never two at once."""
        running = self._calendar_refresh
        if self.refresh_calendar is None or (running is not None and running.is_alive()):
            return
        self._calendar_refresh = self._start_thread(
            "calendar-refresh", lambda: self._events.put(("calendar", self.refresh_calendar())))

    # --- the wall clock ---

    def _watch_wall_clock(self) -> None:
        """A wall clock that jumped moves the day the session belongs to: reconcile at once. The scheduler
        times its jobs by the wall clock, so a jump back would also hold every job (the reconcile safety
        net included) for as long as the clock went back."""
        if self._wall_clock.jumped() is None:
            return
        for job in self.scheduler.get_jobs():
            job._schedule_next_run()   # (schedule's own method: the next run counted from the new time)
        self.reconcile()

    # --- market transitions ---

    def reconcile(self) -> None:
        """Make the running state match the calendar now, then schedule the next transition."""
        now = self.clock.now()
        if self._session is not None:
            self._follow_calendar_changes()
        if self._session is not None and now < self._session.market_session.open:
            # The clock went back before this session's open (it had jumped ahead): not a close, no
            # after-close work; the session of the day the clock now says begins below.
            self._end_session("clock_moved_back", self.clock.monotonic() + SHUTDOWN_DEADLINE_SECONDS)
        if self._session is not None and now >= self._session.market_session.close + self.close_grace:
            self._end_session("market_close", self.clock.monotonic() + SHUTDOWN_DEADLINE_SECONDS)
        if self._session is None:
            self._begin_or_announce(self.calendar.current_or_next_session(now), now)
        self._schedule_next_transition(now)

    def _begin_or_announce(self, upcoming: Session | None, now: datetime) -> None:
        if upcoming is None:
            self._announce_no_session()
        elif upcoming.open <= now:
            self._begin_session(upcoming)
        elif self._announced_next_open != upcoming.open:
            self._announce_closed(upcoming, now)

    def _announce_no_session(self) -> None:
        """A calendar that closes the next month (a poisoned list): said once; the daemon keeps beating and
        refreshing the list, and the reconcile safety net opens a session as soon as the calendar has one."""
        if not self._no_session_announced:
            self._no_session_announced = True
            log.warning("%s; capturing nothing until the calendar has one", NO_SESSION_IN_SIGHT,
                        extra={"event": "no_session_in_sight"})
            self.monitor.send_heartbeat()

    def _follow_calendar_changes(self) -> None:
        """The calendar may have learned (a refresh) that today is closed or closes early: act at once."""
        running = self._session.market_session
        latest = self.calendar.session_on(self.calendar.trading_day(running.open))
        if latest is None:
            special = self.calendar.special_day(self.calendar.trading_day(running.open))
            reason = special.name if special is not None else "not a trading day"
            log.warning("the calendar now says the market is closed today (%s); ending the session", reason,
                        extra={"event": "session_cancelled", "reason": reason})
            self._end_session("calendar_closed", self.clock.monotonic() + SHUTDOWN_DEADLINE_SECONDS)
        elif latest.close != running.close:
            log.warning("the calendar moved today's close to %s", latest.close.astimezone(self.calendar.tz).isoformat(),
                        extra={"event": "close_moved", "close": latest.close.isoformat()})
            self._session.market_session = latest

    def _schedule_next_transition(self, now: datetime) -> None:
        self.scheduler.clear("transition")
        if self._session is not None:
            at = self._session.market_session.close + self.close_grace
        else:
            upcoming = self.calendar.current_or_next_session(now)
            if upcoming is None:
                return   # the reconcile safety net looks again every RECONCILE_EVERY_SECONDS
            at = upcoming.open
        # schedule loops forever on a zero interval, so never ask for less than a millisecond.
        seconds = max((at - now).total_seconds(), 0.001)
        self.scheduler.every(seconds).seconds.do(self._transition).tag("transition")

    def _transition(self):
        self.reconcile()
        return schedule.CancelJob  # reconcile() scheduled the next one

    def _announce_closed(self, upcoming: Session, now: datetime) -> None:
        self._announced_next_open = upcoming.open
        self._no_session_announced = False
        local_open = upcoming.open.astimezone(self.calendar.tz)
        log.info("market closed (%s); next open %s", self.calendar.closed_reason(now), local_open.isoformat(),
                 extra={"event": "market_closed", "next_open": local_open.isoformat(),
                        "seconds_until_open": round((upcoming.open - now).total_seconds())})
        self.monitor.send_heartbeat()

    def _begin_session(self, market_session: Session) -> None:
        self._stop_after_close_of(self.calendar.trading_day(market_session.open))
        self._session = open_capture_session(market_session, self)
        self._announced_next_open = None
        self._no_session_announced = False
        log.info("market open; streaming until %s", market_session.close.astimezone(self.calendar.tz).isoformat(),
                 extra={"event": "market_open", "close": market_session.close.isoformat()})
        self.monitor.session_started()
        self._session.start(self._start_service)
        self.monitor.send_heartbeat()

    def _stop_after_close_of(self, day) -> None:
        """The clock went back into a day whose close had been passed (it jumped ahead): that day's
        compaction is cancelled (its gap bars are still written) and done again at the real close."""
        after_close = self._after_close[0] if self._after_close is not None else None
        if after_close is not None and after_close.day == day and not after_close.stop_requested.is_set():
            log.warning("the session of %s resumes: its after-close work is cancelled and redone at the close",
                        day, extra={"event": "after_close_cancelled"})
            after_close.stop()

    def _end_session(self, reason: str, deadline: float) -> None:
        session, self._session = self._session, None
        abandoned = session.stop(deadline, self.clock.monotonic)
        self.monitor.session_ended()
        self.reader_stats.state = "idle"
        log.info("session ended (%s)", reason,
                 extra={"event": "session_ended", "reason": reason, "rows_written": self.writer_stats.rows_written,
                        "rows_pending": self.writer_stats.rows_pending})
        if abandoned:
            self._abandoned(abandoned)
        elif reason == "market_close":
            after_close = AfterClose(session, self.calendar.trading_day(session.market_session.open), self.config,
                                     self.lake, self.compaction_stats, self.monitor.send_heartbeat)
            self._after_close = after_close, self._start_service(after_close)
        self.monitor.send_heartbeat()

    # --- hooks for the heartbeat monitor ---

    def _queue_fill(self) -> tuple[int, float]:
        """(frames waiting, fraction of the queue's byte bound in use)."""
        session = self._session
        return (0, 0.0) if session is None else session.queue_fill()

    def _capture_progress(self) -> dict[str, int]:
        session = self._session
        return {} if session is None else session.progress()

    def _on_stall(self) -> None:
        session = self._session
        if session is not None:
            session.stream.force_reconnect()


def _lake_committer(config: Config, clock):
    """The Iceberg committer (pyiceberg is an optional extra, imported only when the lake is configured)."""
    from ..storage.iceberg_committer import IcebergCommitter
    from ..storage.lake_catalog import location_of, open_catalog
    location = location_of(config)
    return IcebergCommitter(lambda: open_catalog(location, config.paths.data_dir), config.paths.data_dir,
                            location.namespace, clock=clock)


def _lake_backed_sink(config: Config, calendar: MarketCalendar):
    """The local sink, whose rows-already-stored also include what the committer moved into the table."""
    from ..channels import CHANNELS
    from ..storage.lake_catalog import location_of, open_catalog
    from ..storage.lake_keys import LakeBackedSink
    location = location_of(config)
    return LakeBackedSink(config.paths.data_dir, lambda: open_catalog(location, config.paths.data_dir),
                          location.namespace, calendar.tz,
                          {name: channel.time_column for name, channel in CHANNELS.items()})
