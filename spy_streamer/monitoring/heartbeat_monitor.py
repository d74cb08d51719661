"""The heartbeat: proof of progress in `<heartbeat_dir>/polygon.json`, and the stall alert.

`record_message()` is the only call on the reader's hot path: a counter and a monotonic time, no I/O,
no logging. Everything else runs on the heartbeat thread (or the runner at transitions).
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import psutil

from ..clock import SystemClock
from ..storage.durable_files import write_json_atomically
from ..market.market_hours import MarketCalendar
from ..capture.pipeline_stats import BackfillStats, ReaderStats, WriterStats
from ..orchestrator.service import Service
from .failure_streak import FailureStreak, active_streaks
from .rejection_watch import RejectionWatch

log = logging.getLogger(__name__)

MAX_CHECK_TICK_SECONDS = 1.0   # while the market is open: a stall is seen within this of its threshold



MAX_DISAGREEMENTS = 5      # the heartbeat names the nearest few days Polygon's list overrides; `status` all


def _iso(instant: datetime | None) -> str | None:
    return None if instant is None else instant.isoformat(timespec="milliseconds")


def _serializable(fields: dict[str, Any]) -> dict[str, Any]:
    """Stats as JSON values: instants as ISO 8601 text."""
    return {key: _iso(value) if isinstance(value, datetime) else value for key, value in fields.items()}


class HeartbeatMonitor(Service):
    thread_name = "heartbeat"

    def __init__(self, path: Path, calendar: MarketCalendar, *, interval_seconds: float,
                 alert_threshold_seconds: float, subscriptions: tuple[str, ...],
                 reader: ReaderStats, writer: WriterStats, backfill: BackfillStats | None = None,
                 write_interval_seconds: float | None = None,
                 queue_fill: Callable[[], tuple[int, float]] = lambda: (0, 0.0),
                 on_stall: Callable[[], None] = lambda: None, clock=None, metrics=None, lake=None, compaction=None):
        super().__init__()
        self.path = path
        self.calendar = calendar
        self.interval_seconds = interval_seconds
        self.alert_threshold_seconds = alert_threshold_seconds
        self.subscriptions = subscriptions
        self.reader = reader
        self.writer = writer
        self.backfill = backfill or BackfillStats()
        self.write_interval_seconds = write_interval_seconds
        self.queue_fill = queue_fill
        self.on_stall = on_stall
        self.metrics = metrics          # a MetricsPublisher, or None: the same figures for Prometheus
        if metrics is not None:
            metrics.read_live_from(self.snapshot)   # a scrape reads the stats now, not the last heartbeat
        self.lake = lake                # the Iceberg committer's LakeStats, with storage.kind iceberg
        self.compaction = compaction    # the after-close compactions' CompactionStats (local layout)
        self.clock = clock or SystemClock()
        self.started_at = self.clock.now()
        self.messages_total = 0
        self._last_message_mono: float | None = None
        self._messages_at_last_beat = 0
        self._session_started_mono: float | None = None
        self._stalled_since_mono: float | None = None
        self._write_streak = FailureStreak("heartbeat_write", log, "heartbeat_write_failed",
                                           "heartbeat_write_recovered", logging.ERROR)
        self._failure: str | None = None
        self._rejections = RejectionWatch(writer, write_interval_seconds or interval_seconds, self.clock.monotonic)
        # The heartbeat thread and the runner (at open, close and stop) both write the file.
        self._write_lock = threading.Lock()

    # --- hot path (reader thread) ---

    def record_message(self) -> None:
        self.messages_total += 1
        self._last_message_mono = self.clock.monotonic()

    # --- transitions (runner) ---

    def session_started(self) -> None:
        self._session_started_mono = self.clock.monotonic()
        self._stalled_since_mono = None

    def session_ended(self) -> None:
        self._session_started_mono = None
        self._stalled_since_mono = None

    def mark_failed(self, reason: str) -> None:
        """A thread crashed: every heartbeat from now on says `failed`, whatever else is still running."""
        self._failure = reason

    # --- heartbeat thread ---

    def run(self) -> None:
        """Until stop(): beat at start and every interval. While the market is open, check for a stall at
        least once a second; while it is closed, sleep from beat to beat (or to the open): no compute at night."""
        self.send_heartbeat()
        next_beat = self.clock.monotonic() + self.interval_seconds
        while not self.stop_requested.wait(self._seconds_to_next_check(next_beat)):
            self.check_stalled_stream()
            self.check_rejections()
            if self.clock.monotonic() >= next_beat:
                self.send_heartbeat()
                next_beat += self.interval_seconds

    def _seconds_to_next_check(self, next_beat: float) -> float:
        until_beat = max(0.0, next_beat - self.clock.monotonic())
        tick = min(MAX_CHECK_TICK_SECONDS, self.alert_threshold_seconds / 4)
        # 0 while open; infinite with no session in sight (then the beats alone wake it)
        until_open = self.calendar.seconds_until_market_open(self.clock.now())
        return min(until_beat, max(until_open, tick))

    def silence_seconds(self) -> float | None:
        """Seconds since the last message of this session (or since it started); None outside a session."""
        if self._session_started_mono is None:
            return None
        reference = self._session_started_mono
        if self._last_message_mono is not None and self._last_message_mono > reference:
            reference = self._last_message_mono
        return self.clock.monotonic() - reference

    def check_stalled_stream(self) -> bool:
        """Alert once when the open market has been silent too long; log once when messages resume."""
        silence = self.silence_seconds()
        if silence is None or not self.calendar.is_market_open(self.clock.now()):
            self._stalled_since_mono = None
            return False
        if self._stalled_since_mono is not None:
            if silence < self.clock.monotonic() - self._stalled_since_mono:
                self._recovered()
            return self._stalled_since_mono is not None
        if silence > self.alert_threshold_seconds:
            self._stalled(silence)
            return True
        return False

    def check_rejections(self) -> None:
        """Once per write interval: are rows arriving only to be rejected? A change is beaten at once."""
        if self._rejections.tick():
            self.send_heartbeat()

    def _stalled(self, silence: float) -> None:
        self._stalled_since_mono = self.clock.monotonic()
        log.error("no message for %.0f s while the market is open", silence,
                  extra={"event": "stream_stalled", "silence_seconds": round(silence, 1)})
        self.send_heartbeat()
        self.on_stall()

    def _recovered(self) -> None:
        stalled_for = self.clock.monotonic() - self._stalled_since_mono
        self._stalled_since_mono = None
        log.info("messages are arriving again", extra={"event": "stream_recovered",
                                                       "stalled_seconds": round(stalled_for, 1)})
        self.send_heartbeat()

    def status(self) -> str:
        if self._failure is not None:
            return "failed"
        if self._session_started_mono is None:
            return "market_closed"
        if self._stalled_since_mono is not None:
            return "stalled"
        return self.reader.state if self.reader.state != "idle" else "connecting"

    def snapshot(self, status: str | None = None) -> dict[str, Any]:
        now = self.clock.now()
        last_message_at = None
        if self._last_message_mono is not None:
            last_message_at = now - timedelta(seconds=self.clock.monotonic() - self._last_message_mono)
        queue_depth, queue_fill_ratio = self.queue_fill()
        heartbeat = {
            "source": "polygon",
            "pid": os.getpid(),
            "status": status or self.status(),
            "failure": self._failure,
            "connected": self.reader.connected,
            "subscriptions": list(self.subscriptions),
            "started_at": _iso(self.started_at),
            "updated_at": _iso(now),
            "last_message_at": _iso(last_message_at),
            "messages_total": self.messages_total,
            "messages_since_last_heartbeat": self.messages_total - self._messages_at_last_beat,
            **_serializable(asdict(self.writer)),
            **_serializable(asdict(self.backfill)),
            **_serializable(asdict(self.reader)),
            "queue_depth": queue_depth,
            "queue_fill_ratio": round(queue_fill_ratio, 4),
            "memory_rss_bytes": psutil.Process().memory_info().rss,
            **self._market_state(now),
            **self._rejections.fields(),
            "heartbeat_interval_seconds": self.interval_seconds,
            "write_interval_seconds": self.write_interval_seconds,
            "failing": active_streaks(),
        }
        heartbeat.pop("state")  # the reader's own state is folded into `status`
        if self.compaction is not None:
            heartbeat.update(asdict(self.compaction))
        if self.lake is not None:
            heartbeat["upload_backlog"] = self.lake.upload_backlog
            heartbeat["lake"] = asdict(self.lake)
        return heartbeat

    def _market_state(self, now: datetime) -> dict[str, Any]:
        """The market now, so `check` and `status` can judge the daemon without a calendar or a key."""
        session = self.calendar.current_or_next_session(now)
        market_open = session is not None and session.open <= now
        following = self.calendar.current_or_next_session(session.close) if market_open else session
        special = None if session is None else self.calendar.special_day(self.calendar.trading_day(session.open))
        return {
            "market_open": market_open,
            "closed_reason": self.calendar.closed_reason(now),
            "session_in_sight": session is not None,
            "next_open": _iso(None if following is None else following.open),
            "next_close": _iso(None if session is None else session.close),
            "session_special_day": special.name if special is not None else None,
            "calendar_disagreements": [item.as_row() for item in
                                       self.calendar.polygon_only_days(self.calendar.trading_day(now))[:MAX_DISAGREEMENTS]],
        }

    def _write(self, heartbeat: dict[str, Any]) -> None:
        try:
            write_json_atomically(self.path, heartbeat)
        except OSError as exc:
            self._write_streak.failed(exc, "cannot write heartbeat %s", self.path)
        else:
            self._write_streak.succeeded("the heartbeat is written again")

    def send_heartbeat(self, status: str | None = None) -> dict[str, Any]:
        """Write the heartbeat file and one summary log line; a failed write is logged, never raised."""
        with self._write_lock:
            heartbeat = self.snapshot(status)
            self._messages_at_last_beat = self.messages_total
            self._write(heartbeat)
            if self.metrics is not None:
                self.metrics.publish(heartbeat)
        log.info("heartbeat", extra={"event": "heartbeat", **{key: heartbeat[key] for key in SUMMARY_FIELDS}})
        return heartbeat


SUMMARY_FIELDS = ("status", "connected", "messages_since_last_heartbeat", "rows_written", "rows_pending",
                  "rejected_late", "rejected_invalid", "duplicates", "dropped_queue_full", "reconnects",
                  "queue_depth", "memory_rss_bytes")
