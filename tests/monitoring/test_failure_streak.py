"""One failure streak: the first failure logged, the rest counted, the recovery logged, and while it runs
the heartbeat's `failing` object names it and `check` is WARNING."""
from __future__ import annotations

import errno
import logging
from datetime import datetime, timezone

from spy_streamer.monitoring.failure_streak import FailureStreak, active_streaks
from spy_streamer.monitoring.health_check import OK, WARNING, evaluate_health

log = logging.getLogger("spy_streamer.test_streak")
NOW = datetime(2026, 6, 9, 15, 0, tzinfo=timezone.utc)


def events(caplog, name):
    return [record for record in caplog.records if getattr(record, "event", None) == name]


def disk_full():
    return OSError(errno.ENOSPC, "No space left on device")


def test_a_streak_logs_its_first_failure_and_its_recovery_once(caplog):
    caplog.set_level(logging.INFO)
    streak = FailureStreak("disk_write", log, "disk_write_failed", "disk_write_recovered")
    streak.succeeded("works")  # nothing was failing: nothing to say
    for _ in range(4):
        streak.failed(disk_full(), "cannot write %s", "x.parquet", rows_pending=3)
    (first,) = events(caplog, "disk_write_failed")
    assert first.getMessage() == "cannot write x.parquet: OSError: No space left on device"
    assert first.rows_pending == 3 and streak.failures == 4
    streak.succeeded("writes work again")
    (recovered,) = events(caplog, "disk_write_recovered")
    assert recovered.failures == 4 and "after 4 failed attempt(s)" in recovered.getMessage()
    assert not streak.failing and streak.last_error is None


def test_only_running_streaks_are_active_and_each_names_its_error():
    healthy = FailureStreak("healthy_thing", log, "a_failed", "a_recovered")
    failing = FailureStreak("failing_thing", log, "b_failed", "b_recovered")
    healthy.failed("first", "x")
    healthy.succeeded("ok")
    failing.failed(disk_full(), "cannot")
    active = active_streaks()
    assert "healthy_thing" not in active
    assert active["failing_thing"]["failures"] == 1
    assert active["failing_thing"]["last_error"] == "OSError: No space left on device"
    failing.succeeded("ok")
    assert "failing_thing" not in active_streaks()


def heartbeat(**extra):
    return {"status": "streaming", "updated_at": NOW.isoformat(), "heartbeat_interval_seconds": 300,
            "market_open": True, "next_open": "2026-06-10T13:30:00+00:00", "next_close": "2026-06-09T20:00:00+00:00",
            **extra}


def test_check_is_warning_while_any_streak_runs_and_names_it():
    assert evaluate_health(heartbeat(failing={}), NOW).code == OK
    verdict = evaluate_health(heartbeat(failing={"gap_ledger_write": {
        "since": "2026-06-09T14:50:00+00:00", "failures": 7, "last_error": "OSError: Read-only file system"}}), NOW)
    assert verdict.code == WARNING
    assert "gap_ledger_write failing since 2026-06-09T14:50:00+00:00, 7 attempt(s)" in verdict.text
    assert "Read-only file system" in verdict.text
