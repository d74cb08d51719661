"""The calendar changing under a running session (a refresh learned that today is closed, or closes
early) takes effect at once: within one reconcile, logged once, no backfill for a day that is closed."""
from __future__ import annotations

from datetime import timedelta

from conftest import logged_events
from spy_streamer.market.special_days import SpecialDay
from test_streaming_runner import TUESDAY, heartbeat, make_runner, ny, transition_in_seconds  # noqa: F401 (fixture)


def events_named(caplog, name):
    return [record for record in caplog.records if getattr(record, "event", None) == name]


def test_learning_that_today_is_closed_ends_the_running_session(make_runner, fake, caplog):
    """Seen: a refresh at 09:43 learned about a closure; the session ran on to 16:00."""
    runner = make_runner(ny(2026, 11, 24, 9, 43))
    runner.reconcile()
    assert runner._session is not None and fake.wait_for_subscribers(1, timeout=10)
    runner.calendar.use_polygon_days({TUESDAY: SpecialDay(TUESDAY, "National Day of Mourning")})
    runner._events.put(("calendar", True))              # what the refresh thread sends
    runner._wait_for_event(timeout=1)
    assert runner._session is None
    (cancelled,) = events_named(caplog, "session_cancelled")
    assert "National Day of Mourning" in cancelled.getMessage()
    assert runner._after_close is None                  # no gap fill, no backfill for a closed day
    assert runner.backfill_stats.backfill_requests == 0
    assert transition_in_seconds(runner) == (23 * 60 + 47) * 60          # asleep until Wednesday 09:30


def test_learning_of_an_earlier_close_moves_the_end_of_the_session(make_runner, fake, caplog):
    runner = make_runner(ny(2026, 11, 24, 11, 0))
    runner.reconcile()
    assert transition_in_seconds(runner) == 5 * 3600 + 5          # 16:00 plus the grace
    early = SpecialDay(TUESDAY, "Half Day", None, ny(2026, 11, 24, 13, 0))
    runner.calendar.use_polygon_days({TUESDAY: early})
    runner._events.put(("calendar", True))
    runner._wait_for_event(timeout=1)
    assert runner._session is not None and transition_in_seconds(runner) == 2 * 3600 + 5
    assert len(events_named(caplog, "close_moved")) == 1
    runner.reconcile()                                              # logged once, not at every pass
    assert len(events_named(caplog, "close_moved")) == 1


def test_learning_the_close_has_passed_ends_the_session_at_once(make_runner, fake):
    runner = make_runner(ny(2026, 11, 24, 13, 30))
    runner.reconcile()
    assert runner._session is not None
    runner.calendar.use_polygon_days({TUESDAY: SpecialDay(TUESDAY, "Half Day", None, ny(2026, 11, 24, 13, 0))})
    runner.reconcile()
    assert runner._session is None


def test_the_list_is_refreshed_every_half_hour_during_a_session(make_runner, fake):
    """Seen: a running daemon did not learn an early close listed after its start (refresh only daily) and
    kept storing after it."""
    runner = make_runner(ny(2026, 11, 24, 11, 0))
    runner.refresh_calendar = lambda: True
    runner.reconcile()
    runner._schedule_calendar_refresh(succeeded=True)
    (job,) = runner.scheduler.get_jobs("calendar")
    assert job.interval <= 3600
    runner.clock.advance(100 * 60)                   # 12:40: that refresh learns of a 12:31 close
    runner.calendar.use_polygon_days({TUESDAY: SpecialDay(TUESDAY, "Half Day", None, ny(2026, 11, 24, 12, 31))})
    runner._events.put(("calendar", True))
    runner._wait_for_event(timeout=1)
    assert runner._session is None                   # nothing more is stored
    (job,) = runner.scheduler.get_jobs("calendar")
    assert job.interval == (20 * 60 + 50) * 60       # closed for today: next at Wednesday's open


def test_no_session_in_sight_is_waited_out_and_the_truth_opens_the_session(make_runner, fake, info_logs):
    """Seen: `RuntimeError: no market session in the next 30 days` on every start, even after the truth."""
    poison = {TUESDAY + timedelta(days=n): SpecialDay(TUESDAY + timedelta(days=n), "Poison") for n in range(40)}
    runner = make_runner(ny(2026, 11, 24, 11, 0), special_days=poison)
    runner.reconcile()
    runner.reconcile()
    assert runner._session is None and runner.scheduler.get_jobs("transition") == []
    assert len(logged_events(info_logs, "no_session_in_sight")) == 1           # said once
    assert heartbeat(runner)["session_in_sight"] is False
    runner.calendar.use_polygon_days({})                                          # a refresh learns the truth
    runner._events.put(("calendar", True))
    runner._wait_for_event(timeout=1)
    assert runner._session is not None and fake.wait_for_subscribers(1, timeout=10)
