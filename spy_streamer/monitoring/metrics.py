"""The heartbeat's figures for Prometheus, through prometheus-client (no hand-formatted exposition text).

One collector turns a heartbeat document into metric families, so the counters have exactly one source
(the stats the heartbeat serializes). They are published two ways: a node_exporter textfile
`<heartbeat_dir>/spy_streamer.prom`, replaced atomically at every heartbeat (the heartbeat as written),
and, when `streaming.monitoring.metrics_port` is set, an HTTP endpoint on `metrics_address` (metrics_http),
where the collector reads the live stats at each scrape (as exporters do: a heartbeat every 300 s
would make every scrape in between repeat old values), with the `process_*` metrics and
`spy_streamer_build_info`. Every series exists from the first scrape (a missing value reads 0), so
`rate()` and `absent()` alerts never see one appear or vanish.
"""
from __future__ import annotations

import logging
import platform
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .. import __version__
from ..storage.durable_files import write_bytes_atomically
from ..storage.layout import metrics_textfile_path
from .failure_streak import FailureStreak
from .metrics_http import serve_metrics

log = logging.getLogger(__name__)

PREFIX = "spy_streamer_"
STATUSES = ("streaming", "connecting", "reconnecting", "stalled", "market_closed", "stopped", "failed")

# (metric name without prefix and without _total, heartbeat key, help)
COUNTERS = (
    ("messages", "messages_total", "WebSocket data frames received"),
    ("events_received", "events_received", "Events parsed from the frames and REST backfill"),
    ("rows_written", "rows_written", "Rows made durable in Parquet"),
    ("batches_written", "batches_written", "Parquet files written"),
    ("rows_backfilled", "rows_backfilled", "Rows stored from REST gap backfill"),
    ("write_errors", "write_errors", "Failed Parquet writes (rows kept and retried)"),
    ("dropped_frames", "dropped_queue_full", "Frames dropped because the queue stayed full"),
    ("reconnects", "reconnects", "WebSocket reconnects"),
    ("backfill_requests", "backfill_requests", "Gap backfill requests"),
    ("backfill_failures", "backfill_failures", "Gaps given up after retries"),
)
REJECTIONS = (("late", "rejected_late"), ("duplicate", "duplicates"), ("outside_session", "outside_session"))
# (metric name, heartbeat key, help); booleans become 0/1
GAUGES = (
    ("rows_pending", "rows_pending", "Rows accepted and not yet written"),
    ("queue_frames", "queue_depth", "Frames waiting in the reader-to-writer queue"),
    ("queue_fill_ratio", "queue_fill_ratio", "Share of the queue's byte bound in use"),
    ("memory_rss_bytes", "memory_rss_bytes", "Resident memory of the daemon"),
    ("connected", "connected", "1 while the WebSocket is connected"),
    ("market_open", "market_open", "1 while the market session is open"),
    ("clock_skew_seconds", "clock_skew_seconds", "Wall clock minus the bars' time when over a minute, else 0"),
)
# Unix time; 0 until the event first happens.
TIMESTAMPS = (
    ("heartbeat_timestamp_seconds", "updated_at", "When the heartbeat was written (Unix time)"),
    ("last_message_timestamp_seconds", "last_message_at", "When the last data frame arrived (Unix time)"),
    ("last_flush_timestamp_seconds", "last_flush_at", "When the last Parquet file was written (Unix time)"),
    ("next_open_timestamp_seconds", "next_open", "The next session's open (Unix time)"),
    ("next_close_timestamp_seconds", "next_close", "The current or next session's close (Unix time)"),
)


class HeartbeatCollector:
    """A prometheus-client collector over a heartbeat document: the one `read()` returns at each scrape
    when it is set (the live stats), else the latest given to `update()`."""

    def __init__(self, read: Callable[[], dict[str, Any]] | None = None):
        self.read = read
        self._heartbeat: dict[str, Any] = {}
        self._lock = threading.Lock()   # the HTTP thread reads while the heartbeat thread updates
        self._read_streak = FailureStreak("metrics_live_read", log, "metrics_read_failed", "metrics_read_recovered",
                                          logging.ERROR)

    def update(self, heartbeat: dict[str, Any]) -> None:
        with self._lock:
            self._heartbeat = dict(heartbeat)

    def collect(self) -> Iterator[Metric]:
        heartbeat = self._current()
        if not heartbeat:
            return
        yield from _counters(heartbeat)
        yield from _gauges(heartbeat)
        yield _status(heartbeat)

    def _current(self) -> dict[str, Any]:
        """The live figures; the last heartbeat's if reading them fails (a scrape never errors for it)."""
        if self.read is not None:
            try:
                heartbeat = self.read()
            except Exception as exc:
                self._read_streak.failed(exc, "metrics: cannot read the live stats; serving the last heartbeat's")
            else:
                self._read_streak.succeeded("metrics: the live stats are read again")
                return heartbeat
        with self._lock:
            return self._heartbeat


class BuildInfoCollector:
    """`spy_streamer_build_info{version, python_version} 1`: which build a scrape came from."""

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(PREFIX + "build_info", "The running build: 1, with its version in the labels",
                                 labels=["version", "python_version"])
        info.add_metric([__version__, platform.python_version()], 1.0)
        yield info


def _counters(heartbeat: dict[str, Any]) -> Iterator[Metric]:
    for name, key, help_text in COUNTERS:
        yield CounterMetricFamily(PREFIX + name, help_text, value=heartbeat.get(key) or 0)
    by_channel = CounterMetricFamily(PREFIX + "channel_rows_written", "Rows made durable, by channel",
                                     labels=["channel"])
    subscribed = {subscription.split(".", 1)[0]: 0 for subscription in heartbeat.get("subscriptions") or ()}
    for channel, rows in sorted((subscribed | (heartbeat.get("rows_written_by_channel") or {})).items()):
        by_channel.add_metric([channel], rows)
    yield by_channel
    rejected = CounterMetricFamily(PREFIX + "rejected_events", "Events not stored, by reason", labels=["reason"])
    for reason, key in REJECTIONS:
        rejected.add_metric([reason], heartbeat.get(key) or 0)
    # Loaded at the first scrape, not with this module: `run` marks pandas absent before importing the runner,
    # and channels.base's module-level pa.scalar() fails there if it is the first pyarrow conversion.
    from ..channels import REASONS
    counted = dict.fromkeys(REASONS, 0) | (heartbeat.get("rejected_reasons") or {})
    for reason, count in sorted(counted.items()):
        rejected.add_metric([f"invalid_{reason}"], count)
    yield rejected


def _gauges(heartbeat: dict[str, Any]) -> Iterator[Metric]:
    for name, key, help_text in GAUGES:
        yield GaugeMetricFamily(PREFIX + name, help_text, value=float(heartbeat.get(key) or 0))
    for name, key, help_text in TIMESTAMPS:
        instant = heartbeat.get(key)
        yield GaugeMetricFamily(PREFIX + name, help_text,
                                value=datetime.fromisoformat(instant).timestamp() if instant else 0.0)


def _status(heartbeat: dict[str, Any]) -> Metric:
    status = GaugeMetricFamily(PREFIX + "status", "1 for the daemon's current status", labels=["status"])
    for name in STATUSES:
        status.add_metric([name], 1.0 if heartbeat.get("status") == name else 0.0)
    return status


class MetricsPublisher:
    """Writes the textfile at each heartbeat; serves HTTP on `port` when one is given, read at each scrape
    from `read_live_from()`'s source."""

    def __init__(self, heartbeat_dir: Path, port: int | None = None, address: str = "127.0.0.1"):
        self.path = metrics_textfile_path(heartbeat_dir)
        self.port, self.address = port, address
        self.collector = HeartbeatCollector()          # the textfile: the heartbeat as written
        self.registry = _registry(self.collector)
        self.live = HeartbeatCollector()               # the endpoint: the stats at each scrape
        self.scrape_registry = _registry(self.live)
        # process_* (CPU, memory, open files, start time) where Prometheus scrapes the process itself; not in
        # the textfile, where node_exporter's own process_* would collide with them.
        ProcessCollector(registry=self.scrape_registry)
        self._write_streak = FailureStreak("metrics_write", log, "metrics_write_failed", "metrics_write_recovered",
                                           logging.ERROR)

    def read_live_from(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """The heartbeat monitor's snapshot: what a scrape reads."""
        self.live.read = snapshot

    def start_server(self) -> None:
        """Serve /metrics (only) on the configured address; OSError when the port is taken."""
        if self.port is not None:
            serve_metrics(self.address, self.port, self.scrape_registry)
            log.info("serving Prometheus metrics at http://%s:%d/metrics", self.address, self.port,
                     extra={"event": "metrics_serving"})

    def publish(self, heartbeat: dict[str, Any]) -> None:
        self.collector.update(heartbeat)
        self.live.update(heartbeat)                    # what a scrape serves if the live read fails
        try:
            # not prometheus-client's write_to_textfile: its temp name (`<path>.<pid>.<thread>`) is predictable
            write_bytes_atomically(self.path, generate_latest(self.registry))
        except OSError as exc:
            self._write_streak.failed(exc, "cannot write the metrics file %s", self.path)
        else:
            self._write_streak.succeeded("the metrics file is written again")


def _registry(heartbeat: HeartbeatCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(heartbeat)
    registry.register(BuildInfoCollector())
    return registry
