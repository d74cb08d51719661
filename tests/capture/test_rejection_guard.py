"""The one guard whatever the cause: while the market is open and rows arrive, (nearly) every row rejected
(late, outside the session, invalid) for more than two write intervals makes `check` CRITICAL, naming the
reasons with their counts. A real HeartbeatMonitor on a FakeClock; the writer's counters moved by hand."""
from __future__ import annotations

import gc
import json

import pytest

from conftest import logged_events
from spy_streamer.monitoring.health_check import CRITICAL, OK, evaluate_health
from test_heartbeat_monitor import TUESDAY_11, Rig, config  # noqa: F401 (fixture)

WRITE_INTERVAL = 30   # the default settings'


@pytest.fixture(autouse=True)
def _no_streak_left_behind():
    """A monitor (and its running streak) lives in a reference cycle with its Rig: collect it, so the next
    test's heartbeat does not list this test's streak."""
    yield
    gc.collect()


def one_interval(rig: Rig, received: int = 0, late: int = 0, outside: int = 0, invalid: dict | None = None) -> None:
    """What the writer counts in one write interval, then the monitor's look at it."""
    invalid = invalid or {}
    rig.writer.events_received += received
    rig.writer.rejected_late += late
    rig.writer.outside_session += outside
    rig.writer.rejected_invalid += sum(invalid.values())
    rig.writer.rejected_reasons = {**rig.writer.rejected_reasons, **invalid}
    rig.clock.advance(WRITE_INTERVAL)
    rig.monitor.check_rejections()


def verdict(rig: Rig):
    return evaluate_health(json.loads(rig.path.read_text()), rig.clock.now())


def streaming(rig: Rig) -> Rig:
    rig.monitor.session_started()
    rig.reader.state, rig.reader.connected = "streaming", True
    rig.monitor.send_heartbeat()
    return rig


def test_every_row_late_for_more_than_two_intervals_is_critical_and_named(config, info_logs):
    """Seen: after a clock jump every bar was rejected as late (rejected_late 96 -> 156, rows_written frozen)
    and `check` said `OK - streaming, heartbeat 1 s old`."""
    rig = streaming(Rig(config, TUESDAY_11))
    one_interval(rig, received=60, late=60)
    one_interval(rig, received=60, late=60)
    assert verdict(rig).code == OK                        # two intervals: not yet
    one_interval(rig, received=60, late=59, invalid={"bad_price": 1})
    result = verdict(rig)
    assert result.code == CRITICAL
    assert "every row is rejected, for 90 s: invalid 1, late 179 (invalid_bad_price 1)" in result.text
    assert len(logged_events(info_logs, "rows_rejected")) == 1
    one_interval(rig, received=60, late=1)                # rows are kept again
    assert verdict(rig).code == OK
    assert len(logged_events(info_logs, "rows_accepted_again")) == 1


def test_quiet_intervals_neither_end_nor_prove_a_streak(config):
    rig = streaming(Rig(config, TUESDAY_11))
    one_interval(rig, received=3, outside=3)
    for _ in range(5):
        one_interval(rig)                                 # nothing arrives: no evidence either way
    assert verdict(rig).code == OK and rig.read()["rejecting_seconds"] == WRITE_INTERVAL
    one_interval(rig, received=2, outside=2)              # every row since the first one rejected
    result = verdict(rig)
    assert result.code == CRITICAL and "for 210 s: outside_session 5" in result.text


def test_most_rows_kept_is_no_streak(config):
    rig = streaming(Rig(config, TUESDAY_11))
    for _ in range(5):
        one_interval(rig, received=100, late=90)          # 10 % kept
    assert rig.read()["rejecting_seconds"] is None and verdict(rig).code == OK
