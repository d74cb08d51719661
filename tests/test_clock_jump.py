"""A wall clock that jumps and comes back: the session follows it back. The runner runs in-process on a
FakeClock whose wall time can move alone (`jump`), with the real reader and writer against the fake."""
from __future__ import annotations

import logging

from conftest import FakeClock, ny
from daemon_harness import wait_for
from fake_polygon import session_timeline
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
