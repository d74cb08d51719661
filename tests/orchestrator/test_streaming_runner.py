"""The supervisor's transitions with an injected clock: start mid-session, stop at 16:00 (and at an
early close) after the grace, sleep over weekends. The reader and writer are real, against the fake."""
from __future__ import annotations

import json
import signal
from datetime import date

import pyarrow.parquet as pq
import pytest

from conftest import FakeClock, TEST_API_KEY, ny, settings, write_settings
from spy_streamer.storage.layout import gap_ledger_path
from daemon_harness import wait_for
from fake_polygon import session_timeline
from spy_streamer.config import load_config
from spy_streamer.market.market_hours import MarketCalendar, SpecialDay
from spy_streamer.channels.subscriptions import symbols_of
from spy_streamer.orchestrator.streaming_runner import StreamingRunner

TUESDAY = date(2026, 11, 24)


@pytest.fixture
def make_runner(tmp_path, fake):
    runners = []

    def make(now, special_days=None, grace=5.0) -> StreamingRunner:
        document = settings(tmp_path, polygon={"ws_feed": fake.ws_feed, "ws_secure": False,
                                               "rest_base_url": fake.rest_base_url},
                            streaming={"batching": {"write_interval_seconds": 0.2}})
        config = load_config(write_settings(tmp_path, document))
        calendar = MarketCalendar(config.market_hours, special_days or {})
        runner = StreamingRunner(config, calendar, TEST_API_KEY, clock=FakeClock(now), close_grace_seconds=grace)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        if runner._session is not None:
            runner._session.stop(runner.clock.monotonic() + 5, runner.clock.monotonic)


def heartbeat(runner) -> dict:
    return json.loads(runner.monitor.path.read_text())


def transition_in_seconds(runner) -> float:
    (job,) = runner.scheduler.get_jobs("transition")
    return job.interval


def ms(instant) -> int:
    return int(instant.timestamp() * 1000)


def test_starts_at_once_mid_session_and_stops_after_the_1600_close(make_runner, fake):
    runner = make_runner(ny(2026, 11, 24, 15, 59, 30))
    runner.reconcile()
    assert runner._session is not None
    assert fake.wait_for_subscribers(1, timeout=10)
    assert transition_in_seconds(runner) == 35          # 30 s to 16:00, then the 5 s grace
    bars = session_timeline(ms(ny(2026, 11, 24, 15, 59, 0)), 60)   # 15:59:00 .. 15:59:59
    late_bar = session_timeline(ms(ny(2026, 11, 24, 16, 0, 0)), 1)  # after-hours: not stored
    fake.push(bars + late_bar)
    wait_for(lambda: runner.monitor.messages_total == 1, what="the frame read")  # (the fake clock holds the flush timer)
    runner.clock.advance(34)
    runner.reconcile()
    assert runner._session is not None                  # inside the grace: the last bars may still come
    runner.clock.advance(1)                             # 16:00:05
    runner.reconcile()
    assert runner._session is None
    wait_for(lambda: fake.active_connections() == 0, what="the connection closed")
    assert runner.writer_stats.rows_written == 60       # the final flush at the close
    # ...then the day's micro-batches were compacted into one file, off the supervisor thread
    runner._after_close[1].join(10)
    (day_file,) = runner.sink.partition_dir("A", TUESDAY).iterdir()     # data only: the gap ledger is outside
    assert gap_ledger_path(runner.sink.data_dir, "A", TUESDAY).is_file()
    assert day_file.name == "day-2026-11-24.parquet" and pq.read_metadata(day_file).num_rows == 60
    assert runner.writer_stats.outside_session == 1
    assert heartbeat(runner)["status"] == "market_closed"
    # Asleep until Wednesday 09:30: 17 h 29 min 55 s away.
    assert transition_in_seconds(runner) == (17 * 60 + 30) * 60 - 5


def test_early_close_ends_the_session_at_1300(make_runner, fake):
    early = SpecialDay(TUESDAY, "Half Day", ny(2026, 11, 24, 9, 30), ny(2026, 11, 24, 13, 0))
    runner = make_runner(ny(2026, 11, 24, 12, 59, 58), special_days={TUESDAY: early})
    runner.reconcile()
    assert fake.wait_for_subscribers(1, timeout=10)
    assert transition_in_seconds(runner) == 7
    runner.clock.advance(7)
    runner.reconcile()
    assert runner._session is None
    wait_for(lambda: fake.active_connections() == 0, what="the connection closed")


@pytest.mark.parametrize("now, seconds_to_open", [
    (ny(2026, 11, 28, 12, 0), (45 * 60 + 30) * 60),        # Saturday noon -> Monday 09:30
    (ny(2026, 11, 24, 16, 0, 5), (17 * 60 + 30) * 60 - 5),  # just after the close
    (ny(2026, 11, 24, 4, 0), (5 * 60 + 30) * 60),           # pre-market is not a session
])
def test_outside_hours_no_connection_and_a_wake_up_at_the_open(make_runner, fake, now, seconds_to_open):
    runner = make_runner(now)
    runner.reconcile()
    runner.reconcile()                                   # a second pass announces nothing new
    assert runner._session is None and fake.connections_total == 0
    assert transition_in_seconds(runner) == seconds_to_open
    assert heartbeat(runner)["status"] == "market_closed"


def test_the_open_starts_a_session(make_runner, fake):
    runner = make_runner(ny(2026, 11, 24, 9, 29, 58))
    runner.reconcile()
    assert runner._session is None and transition_in_seconds(runner) == 2
    runner.clock.advance(2)
    runner.reconcile()
    assert runner._session is not None
    assert fake.wait_for_subscribers(1, timeout=10)


def test_signal_handler_only_records_and_a_second_ctrl_c_exits_at_once(make_runner, monkeypatch):
    runner = make_runner(ny(2026, 11, 28, 12, 0))
    exits = []
    monkeypatch.setattr("spy_streamer.orchestrator.streaming_runner.os._exit", exits.append)
    runner._on_signal(signal.SIGTERM, None)
    runner._on_signal(signal.SIGINT, None)
    assert exits == []                                   # recorded, acted on by the main loop
    assert [runner._events.get_nowait(), runner._events.get_nowait()] == \
        [("signal", signal.SIGTERM), ("signal", signal.SIGINT)]
    runner._on_signal(signal.SIGINT, None)
    assert exits == [130]


@pytest.mark.parametrize("subscriptions, symbols", [
    (("A.SPY",), ("SPY",)), (("A.SPY", "A.QQQ"), ("SPY", "QQQ")), (("A.*",), ()), (("T.SPY", "A.SPY"), ("SPY",)),
])
def test_backfill_covers_the_aggregate_subscriptions(subscriptions, symbols):
    assert symbols_of("A", subscriptions) == symbols


def test_keeping_pandas_out_leaves_every_module_importable_whatever_imports_first():
    """With pandas marked absent, pyarrow's first look for it raises AttributeError: the daemon started only
    because some module happened to swallow that first error (the writer's split changed the import order
    and `run` died at start). `_keep_pandas_out` makes the look itself."""
    import subprocess
    import sys
    code = ("from spy_streamer.cli import _keep_pandas_out; _keep_pandas_out(); "
            "import spy_streamer.channels.base, sys; assert sys.modules['pandas'] is None")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-500:]
