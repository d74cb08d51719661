"""A thread that dies is never a silent zombie: one ERROR `thread_crashed` naming it, a heartbeat that
says `failed`, what the writer held flushed, exit 70. The runner runs for real in this process (signal
handlers and all), against the fake Polygon, with the wall clock frozen inside a session."""
from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from conftest import FakeClock, TEST_API_KEY, ny, settings, write_settings
from daemon_harness import wait_for
from fake_polygon import session_timeline
from spy_streamer.capture.batch_writer import BatchWriter
from spy_streamer.config import load_config
from spy_streamer.backfill.gap_backfill import GapBackfiller
from spy_streamer.monitoring.heartbeat_monitor import HeartbeatMonitor
from spy_streamer.market.market_hours import MarketCalendar
from spy_streamer.data_sources.polygon_client import PolygonStream
from spy_streamer.monitoring.health_check import CRITICAL, evaluate_health
from spy_streamer.orchestrator.streaming_runner import EX_SOFTWARE, StreamingRunner

IN_SESSION = ny(2026, 11, 24, 11, 0)
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


@pytest.fixture
def runner(tmp_path, fake):
    saved = {signum: signal.getsignal(signum) for signum in HANDLED}
    document = settings(tmp_path, polygon={"ws_feed": fake.ws_feed, "ws_secure": False,
                                           "rest_base_url": fake.rest_base_url},
                        streaming={"batching": {"write_interval_seconds": 0.2}})
    config = load_config(write_settings(tmp_path, document))
    yield StreamingRunner(config, MarketCalendar(config.market_hours), TEST_API_KEY, clock=FakeClock(IN_SESSION),
                          min_uptime_before_failing_seconds=0)
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def run_with_watchdog(runner, seconds: float = 30) -> int:
    """runner.run(); a run that never ends by itself is stopped by SIGTERM (and then exits 0, failing the test)."""
    watchdog = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM))
    watchdog.start()
    try:
        return runner.run()
    finally:
        watchdog.cancel()


def crash(*args, **kwargs):
    raise RecursionError("maximum recursion depth exceeded")


def crash_records(caplog):
    return [record for record in caplog.records if getattr(record, "event", None) == "thread_crashed"]


def heartbeat(runner) -> dict:
    return json.loads(runner.monitor.path.read_text())


@pytest.mark.parametrize("thread_name, target", [
    ("ws-reader", (PolygonStream, "stream_realtime")),
    ("rest-backfill", (GapBackfiller, "run")),
    ("heartbeat", (HeartbeatMonitor, "run")),
])
def test_a_crashed_thread_is_logged_once_and_ends_the_process_with_70(runner, caplog, monkeypatch,
                                                                      thread_name, target):
    monkeypatch.setattr(*target, crash)
    assert run_with_watchdog(runner) == EX_SOFTWARE
    (record,) = crash_records(caplog)
    assert record.levelname == "ERROR" and record.thread_name == thread_name and record.exc_info
    assert thread_name in runner.exit_reason
    beat = heartbeat(runner)
    assert beat["status"] == "failed" and thread_name in beat["failure"]
    assert evaluate_health(beat, runner.clock.now()).code == CRITICAL


def test_a_writer_crash_flushes_what_it_held_before_exiting_70(runner, fake, caplog, monkeypatch):
    accept_items = BatchWriter.accept_items
    calls = []

    def accept_then_crash(self, items):
        calls.append(len(items))
        if len(calls) > 1:
            crash()
        accept_items(self, items)

    monkeypatch.setattr(BatchWriter, "accept_items", accept_then_crash)
    monkeypatch.setattr(BatchWriter, "open_gaps", lambda self: None)  # no REST backfill in this test
    runner.clock = runner.monitor.clock = FakeClock(IN_SESSION)       # frozen: no timed flush
    bars = session_timeline(int(ny(2026, 11, 24, 10, 0).timestamp() * 1000), 25)

    def feed():
        assert fake.wait_for_subscribers(1, timeout=10)
        fake.push(bars[:20], frame_size=20)
        wait_for(lambda: runner.writer_stats.rows_pending == 20, what="20 rows held by the writer")
        fake.push(bars[20:], frame_size=5)                             # this frame crashes the writer

    feeder = threading.Thread(target=feed)
    feeder.start()
    assert run_with_watchdog(runner) == EX_SOFTWARE
    feeder.join()
    (record,) = crash_records(caplog)
    assert record.thread_name == "parquet-writer"
    assert runner.writer_stats.rows_written == 20 and runner.writer_stats.rows_pending == 0
    assert heartbeat(runner)["status"] == "failed" and heartbeat(runner)["rows_written"] == 20


def test_a_supervisor_crash_still_stops_in_order_with_70(runner, caplog, monkeypatch):
    """Seen while wiring: an exception in reconcile() ended the process with a traceback and exit 1."""
    monkeypatch.setattr(StreamingRunner, "_begin_session", crash)
    assert run_with_watchdog(runner) == EX_SOFTWARE
    (record,) = crash_records(caplog)
    assert record.thread_name == "supervisor" and "supervisor" in runner.exit_reason
    assert heartbeat(runner)["status"] == "failed"


def test_a_failure_right_after_start_lingers_so_supervisord_does_not_spin(runner, monkeypatch):
    """supervisord's startsecs=0 restarts a failed daemon at once: it waits out a minimum uptime first,
    and a SIGTERM during that wait ends it."""
    import time
    monkeypatch.setattr(HeartbeatMonitor, "run", crash)
    runner.min_uptime_before_failing = 1.5
    started = time.monotonic()
    assert run_with_watchdog(runner) == EX_SOFTWARE
    assert time.monotonic() - started >= 1.5


def test_a_signal_ends_the_lingering_at_once(runner, monkeypatch):
    import time
    monkeypatch.setattr(HeartbeatMonitor, "run", crash)
    runner.min_uptime_before_failing = 30
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    started = time.monotonic()
    assert run_with_watchdog(runner) == EX_SOFTWARE
    assert time.monotonic() - started < 5
