"""The heartbeat's figures for Prometheus, through prometheus-client (no hand-formatted exposition text).

One collector turns the latest heartbeat into metric families, so the counters have exactly one source
(the stats the heartbeat serializes). They are published two ways: a node_exporter textfile
`<heartbeat_dir>/spy_streamer.prom`, replaced atomically at every heartbeat, and, when
`streaming.monitoring.metrics_port` is set, an HTTP endpoint on `metrics_address` (metrics_http).
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

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
    ("clock_skew_seconds", "clock_skew_seconds", "Wall clock minus the bars' time, when over a minute"),
)
TIMESTAMPS = (
    ("heartbeat_timestamp_seconds", "updated_at", "When the heartbeat was written (Unix time)"),
    ("last_message_timestamp_seconds", "last_message_at", "When the last data frame arrived (Unix time)"),
    ("last_flush_timestamp_seconds", "last_flush_at", "When the last Parquet file was written (Unix time)"),
    ("next_open_timestamp_seconds", "next_open", "The next session's open (Unix time)"),
    ("next_close_timestamp_seconds", "next_close", "The current or next session's close (Unix time)"),
)


class HeartbeatCollector:
    """A prometheus-client collector over the latest heartbeat document."""

    def __init__(self):
        self._heartbeat: dict[str, Any] = {}
        self._lock = threading.Lock()   # the HTTP thread reads while the heartbeat thread updates

    def update(self, heartbeat: dict[str, Any]) -> None:
        with self._lock:
            self._heartbeat = dict(heartbeat)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            heartbeat = self._heartbeat
        if not heartbeat:
            return
        yield from _counters(heartbeat)
        yield from _gauges(heartbeat)
        yield _status(heartbeat)


def _counters(heartbeat: dict[str, Any]) -> Iterator[Metric]:
    for name, key, help_text in COUNTERS:
        yield CounterMetricFamily(PREFIX + name, help_text, value=heartbeat.get(key) or 0)
    by_channel = CounterMetricFamily(PREFIX + "channel_rows_written", "Rows made durable, by channel",
                                     labels=["channel"])
    for channel, rows in sorted((heartbeat.get("rows_written_by_channel") or {}).items()):
        by_channel.add_metric([channel], rows)
    yield by_channel
    rejected = CounterMetricFamily(PREFIX + "rejected_events", "Events not stored, by reason", labels=["reason"])
    for reason, key in REJECTIONS:
        rejected.add_metric([reason], heartbeat.get(key) or 0)
    reasons = heartbeat.get("rejected_reasons") or {}
    for reason, count in sorted(reasons.items()):
        rejected.add_metric([f"invalid_{reason}"], count)
    if not reasons:
        rejected.add_metric(["invalid"], heartbeat.get("rejected_invalid") or 0)
    yield rejected


def _gauges(heartbeat: dict[str, Any]) -> Iterator[Metric]:
    for name, key, help_text in GAUGES:
        value = heartbeat.get(key)
        if value is not None:
            yield GaugeMetricFamily(PREFIX + name, help_text, value=float(value))
    for name, key, help_text in TIMESTAMPS:
        if heartbeat.get(key):
            yield GaugeMetricFamily(PREFIX + name, help_text, value=datetime.fromisoformat(heartbeat[key]).timestamp())


def _status(heartbeat: dict[str, Any]) -> Metric:
    status = GaugeMetricFamily(PREFIX + "status", "1 for the daemon's current status", labels=["status"])
    for name in STATUSES:
        status.add_metric([name], 1.0 if heartbeat.get("status") == name else 0.0)
    return status


class MetricsPublisher:
    """Writes the textfile at each heartbeat; serves HTTP on `port` when one is given."""

    def __init__(self, heartbeat_dir: Path, port: int | None = None, address: str = "127.0.0.1"):
        self.path = metrics_textfile_path(heartbeat_dir)
        self.port, self.address = port, address
        self.collector = HeartbeatCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self._write_streak = FailureStreak("metrics_write", log, "metrics_write_failed", "metrics_write_recovered",
                                           logging.ERROR)

    def start_server(self) -> None:
        """Serve /metrics (only) on the configured address; OSError when the port is taken."""
        if self.port is not None:
            serve_metrics(self.address, self.port, self.registry)
            log.info("serving Prometheus metrics at http://%s:%d/metrics", self.address, self.port,
                     extra={"event": "metrics_serving"})

    def publish(self, heartbeat: dict[str, Any]) -> None:
        self.collector.update(heartbeat)
        try:
            # not prometheus-client's write_to_textfile: its temp name (`<path>.<pid>.<thread>`) is predictable
            write_bytes_atomically(self.path, generate_latest(self.registry))
        except OSError as exc:
            self._write_streak.failed(exc, "cannot write the metrics file %s", self.path)
        else:
            self._write_streak.succeeded("the metrics file is written again")
