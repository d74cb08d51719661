"""What operators do to a running daemon: signals from logrotate recipes and process managers, a second
instance started by mistake, a SIGTERM while a REST request hangs. The real daemon, as a subprocess."""
from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import write_settings
from daemon_harness import Daemon, log_events, recent_start_ms, stored_keys, wait_for, window_settings
from fake_polygon import session_timeline

AGGS = "/v2/aggs/ticker/SPY/range/1/second/"


def test_sighup_reopens_the_log_and_sigusr_change_nothing(start, fake):
    """Seen: SIGHUP (`postrotate kill -HUP`) or SIGUSR1 killed the process at once, pending rows lost."""
    run = start()
    assert fake.wait_for_subscribers(1, timeout=15)
    bars = session_timeline(recent_start_ms(300), 30)
    fake.push(bars[:10], frame_size=1)
    wait_for(lambda: len(stored_keys(run.data_dir)) == 10, what="first rows")
    rotated = run.log_file.with_name("spy_streamer.log.1")
    run.log_file.rename(rotated)                          # a rotation by copy-less move, then HUP
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        run.daemon.process.send_signal(sig)
        time.sleep(0.3)
        assert run.daemon.process.poll() is None, f"{sig.name} ended the daemon"
    wait_for(lambda: run.events("log_reopened"), what="log reopened in the new file")
    fake.push(bars[10:], frame_size=1)
    wait_for(lambda: len(stored_keys(run.data_dir)) == 30, what="all rows")
    code, _ = run.daemon.stop()
    assert code == 0
    assert len(run.events("signal_ignored")) == 2 and run.events("stopped")


def test_a_second_instance_on_the_same_data_dir_exits_75_naming_the_holder(start, fake):
    """Seen: two instances stored every bar twice and shared one heartbeat file."""
    run = start()
    assert fake.wait_for_subscribers(1, timeout=15)
    second = Daemon(run.config_path)
    assert second.wait_exit(timeout=60) == 75
    _, stderr = second.output()
    assert f"pid {run.daemon.process.pid}" in stderr and len(stderr.strip().splitlines()) == 1
    assert fake.connections_total == 1                    # the second never connected
    run.daemon.process.send_signal(signal.SIGKILL)        # the lock dies with its holder...
    run.daemon.process.wait(timeout=5)
    run.restart()                                         # ...so a restart after a crash is not refused
    assert fake.wait_for_subscribers(1, timeout=15)
    assert run.daemon.stop()[0] == 0


def test_a_signal_flood_adds_at_most_one_line_per_kind(start, fake, record_figure):
    """Measured: 3,000 SIGHUP/SIGUSR1/SIGUSR2 in 20 s added 3,037 log lines."""
    run = start()
    assert fake.wait_for_subscribers(1, timeout=15)
    wait_for(lambda: run.events("started"), what="the start line")
    lines_before = len(log_events(run.log_file))
    for _ in range(1000):
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            run.daemon.process.send_signal(sig)
        time.sleep(0.002)
    time.sleep(1.0)   # the last signals handled
    assert run.daemon.process.poll() is None
    added = [entry["event"] for entry in log_events(run.log_file)[lines_before:] if entry.get("event") != "heartbeat"]
    record_figure("signal_flood_log_lines_added", len(added))
    assert len(run.events("log_reopened")) == 1 and len(run.events("signal_ignored")) == 2
    assert len(added) <= 5, f"{len(added)} lines for 3,000 signals: {added[:10]}"   # heartbeats aside
    assert run.daemon.stop()[0] == 0


def test_the_next_signal_line_says_how_many_were_held_back(tmp_path, caplog):
    from conftest import FakeClock, TEST_API_KEY, ny, settings
    from spy_streamer.config import load_config
    from spy_streamer.market.market_hours import MarketCalendar
    from spy_streamer.orchestrator.streaming_runner import StreamingRunner
    config = load_config(write_settings(tmp_path, settings(tmp_path)))
    clock = FakeClock(ny(2026, 11, 24, 11))
    runner = StreamingRunner(config, MarketCalendar(config.market_hours), TEST_API_KEY, clock=clock)
    with caplog.at_level("INFO"):
        for _ in range(5):
            runner._act_on_signal(signal.SIGUSR1)
        runner._act_on_signal(signal.SIGUSR2)            # another kind: its own line
        clock.advance(59)
        runner._act_on_signal(signal.SIGUSR1)            # still within the minute: held back
        clock.advance(2)
        runner._act_on_signal(signal.SIGUSR1)
    lines = [record for record in caplog.records if getattr(record, "event", None) == "signal_ignored"]
    assert [(record.signal_name, record.signals_not_logged) for record in lines] == \
        [("SIGUSR1", 0), ("SIGUSR2", 0), ("SIGUSR1", 5)]
    assert "5 more SIGUSR1" in lines[-1].getMessage()


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_a_planted_lock_file_is_refused_with_exit_78_and_left_untouched(tmp_path, fake, planted):
    """Measured: with the lock file a symlink to another file, the daemon truncated that file and wrote
    its pid into it."""
    config_path = write_settings(tmp_path, window_settings(tmp_path, fake))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock = tmp_path / "data" / ".spy-streamer.lock"
    lock.parent.mkdir()
    lock.symlink_to(victim) if planted == "symlink" else os.mkfifo(lock)
    daemon = Daemon(config_path)
    try:
        assert daemon.wait_exit(timeout=60) == 78
    finally:
        daemon.kill()
    _, stderr = daemon.output()
    assert len(stderr.strip().splitlines()) == 1 and str(lock) in stderr
    assert ("symbolic link" if planted == "symlink" else "not a regular file") in stderr
    assert victim.read_text() == "precious\n"
    assert fake.connections_total == 0


def test_sigterm_during_a_hung_backfill_keeps_every_live_row(start, fake):
    """Seen: the hung backfill used up the whole deadline; 0 of 3,500 rows stored, exit 0."""
    run = start(streaming={"batching": {"write_interval_seconds": 60}})   # rows stay pending until the stop
    fake.set_rest_failure(AGGS, "hang")                   # every backfill request hangs (30 s)
    assert fake.wait_for_subscribers(1, timeout=15)
    bars = session_timeline(recent_start_ms(590), 3500)   # the window opened 600 s ago and lasts an hour
    fake.push(bars, frame_size=100)
    wait_for(lambda: (run.heartbeat() or {}).get("rows_pending") == 3500, timeout=15, what="3,500 rows pending")
    wait_for(lambda: fake.request_count(AGGS) >= 1, what="a backfill request in flight")
    code, seconds = run.daemon.stop(timeout=30)
    assert code == 0 and seconds < 10                     # inside supervisord's stopwaitsecs
    assert len(stored_keys(run.data_dir)) == 3500
    assert run.heartbeat()["rows_pending"] == 0 and run.heartbeat()["status"] == "stopped"
