"""A wall clock that jumps and comes back: the session follows it back. The runner runs in-process on a
FakeClock whose wall time can move alone (`jump`), with the real reader and writer against the fake."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from conftest import FakeClock, ny
from daemon_harness import recent_start_ms, stored_keys, wait_for
from fake_polygon import session_timeline
from test_status_command import run_command
from test_streaming_runner import TUESDAY, make_runner, ms  # noqa: F401 (fixture)

DAY = 86400


def events_named(caplog, name):
    return [record for record in caplog.records if getattr(record, "event", None) == name]


def session_day(runner):
    return runner.calendar.trading_day(runner._session.market_session.open)


def test_the_session_follows_the_clock_back(make_runner, fake, caplog):
    """Seen: the clock ran a day ahead for 40 s; the daemon entered tomorrow's session and stayed there
    after the clock came back, rejecting every bar as late (rows_written frozen)."""
    caplog.set_level(logging.INFO)
    runner = make_runner(ny(2026, 11, 24, 11, 0))
    runner.reconcile()
    assert fake.wait_for_subscribers(1, timeout=10)
    runner.clock.jump(DAY)
    runner.reconcile()                                    # the clock says Wednesday 11:00: Wednesday's session
    assert session_day(runner) == TUESDAY.replace(day=25)
    runner.clock.jump(-DAY)
    runner.reconcile()                                    # the once-a-minute safety net (no jump seen)
    assert session_day(runner) == TUESDAY
    assert [record.reason for record in events_named(caplog, "session_ended")] == ["market_close", "clock_moved_back"]
    assert fake.wait_for_subscribers(1, timeout=10)
    fake.push(session_timeline(ms(ny(2026, 11, 24, 10, 59, 0)), 30))
    wait_for(lambda: runner.writer_stats.events_received >= 30, what="the bars read")
    late = runner.writer_stats.rejected_late
    runner.clock.advance(1)                               # the flush timer
    wait_for(lambda: runner.writer_stats.rows_written == 30, what="Tuesday's bars stored")
    assert runner.writer_stats.rejected_late == late == 0


def test_a_jump_is_seen_on_the_next_pass_and_reconciled_at_once(make_runner, fake, caplog):
    runner = make_runner(ny(2026, 11, 24, 11, 0))
    runner._watch_wall_clock()                            # the first look only takes a reading
    runner.reconcile()
    runner.clock.jump(DAY)
    runner._watch_wall_clock()
    assert session_day(runner) == TUESDAY.replace(day=25)
    runner.clock.advance(40)
    runner._watch_wall_clock()                            # time passing as it should: nothing to do
    runner.clock.jump(-DAY)
    runner._watch_wall_clock()
    assert session_day(runner) == TUESDAY
    assert [record.jump_seconds for record in events_named(caplog, "clock_jumped")] == [DAY, -DAY]


def test_a_jump_back_before_the_open_ends_the_session_without_after_close_work(make_runner, fake):
    runner = make_runner(ny(2026, 11, 24, 9, 45))
    runner.reconcile()
    runner.clock.jump(-3600)                              # 08:45: before the open
    runner.reconcile()
    assert runner._session is None and runner._after_close is None   # no compaction of a day still to come


def test_the_watch_ignores_time_that_passes_and_reports_jumps_both_ways(caplog):
    from spy_streamer.orchestrator.clock_watch import WallClockWatch
    clock = FakeClock(ny(2026, 11, 24, 11, 0))
    watch = WallClockWatch(clock)
    assert watch.jumped() is None
    clock.advance(3600)
    clock.jump(4.9)
    assert watch.jumped() is None
    clock.jump(-3600)
    assert watch.jumped() == -3600
    clock.jump(5.5)
    assert watch.jumped() == 5.5
    assert len(events_named(caplog, "clock_jumped")) == 2


def test_a_jump_past_the_close_and_back_cancels_that_days_close_work(make_runner, fake, caplog):
    runner = make_runner(ny(2026, 11, 24, 15, 0))
    runner.reconcile()
    runner.clock.jump(2 * 3600)                           # 17:00: the close has passed, after-close work begins
    runner.reconcile()
    (after_close, _) = runner._after_close
    assert runner._session is None and after_close.day == TUESDAY
    runner.clock.jump(-2 * 3600)                          # 15:00 again: Tuesday's session resumes
    runner.reconcile()
    assert session_day(runner) == TUESDAY
    assert after_close.stop_requested.is_set()            # its compaction is redone at the real close


LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.mark.slow
@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime is not installed (apt install libfaketime)")
def test_the_daemon_follows_its_clock_a_day_ahead_and_back(tmp_path, fake, start, monkeypatch, record_figure):
    """The measured case, as a subprocess whose wall clock libfaketime moves (its monotonic clock is left
    alone, as on a host whose clock is set by hand): a day ahead for a few seconds, then back. Seen: the
    daemon stayed in tomorrow's session, rejected every bar as late, and `check` said OK."""
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    for name, value in (("LD_PRELOAD", str(LIBFAKETIME)), ("FAKETIME_TIMESTAMP_FILE", str(offset)),
                        ("FAKETIME_CACHE_DURATION", "1"), ("DONT_FAKE_MONOTONIC", "1")):
        monkeypatch.setenv(name, value)
    run = start()
    assert fake.wait_for_subscribers(1, timeout=15)
    fake.push(session_timeline(recent_start_ms(200), 10))
    wait_for(lambda: (run.heartbeat() or {}).get("rows_written") == 10, timeout=15, what="today's rows")
    offset.write_text("+1d\n")                            # tomorrow, same time: tomorrow's session opens
    wait_for(lambda: [e for e in run.events("market_open") if e["close"] > run.events("market_open")[0]["close"]],
             timeout=75, what="tomorrow's session")
    monkeypatch.delenv("LD_PRELOAD")                      # `check` runs on the right clock
    assert fake.wait_for_subscribers(1, timeout=15)

    def rejected_as_late():
        fake.push(session_timeline(recent_start_ms(100) + int(time.time()) % 60 * 1000, 1))
        return run_command("check", run.config_path).stdout.startswith("SPY-STREAMER CRITICAL")

    wait_for(rejected_as_late, timeout=30, interval=0.5, what="check CRITICAL while every bar is late")
    assert "every row is rejected" in run_command("check", run.config_path).stdout
    offset.write_text("+0\n")                             # the clock comes back
    returned = time.monotonic()
    wait_for(lambda: run.events("session_ended")[-1]["reason"] == "clock_moved_back", timeout=75,
             what="the session to follow the clock back")
    record_figure("seconds from the clock's return to the right session", round(time.monotonic() - returned, 1))
    assert time.monotonic() - returned < 45             # the loop wakes every 30 s; the file is read each second
    assert fake.wait_for_subscribers(1, timeout=15)
    late = run.heartbeat()["rejected_late"]
    bars = session_timeline(recent_start_ms(30), 20)
    fake.push(bars)
    wanted = {("SPY", bar["s"]) for bar in bars}
    wait_for(lambda: wanted <= set(stored_keys(run.data_dir)), timeout=15, what="today's bars stored again")
    assert run.heartbeat()["rejected_late"] == late
    assert run.daemon.stop()[0] == 0
