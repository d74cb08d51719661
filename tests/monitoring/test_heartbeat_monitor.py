"""HeartbeatMonitor: the heartbeat file, its cadence and the stall alert (what `check` makes of it: test_health_check.py).

Everything runs on a FakeClock (wall and monotonic time move only when the test says so) and a calendar
built from the default settings, so nothing depends on when the suite runs.
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta, timezone

import pytest

from conftest import FakeClock, ny
from conftest import logged_events as events
from spy_streamer.config import load_config
from spy_streamer.monitoring.health_check import heartbeat_path
from spy_streamer.monitoring.heartbeat_monitor import HeartbeatMonitor
from spy_streamer.market.market_hours import MarketCalendar
from spy_streamer.capture.pipeline_stats import ReaderStats, WriterStats

pytestmark = pytest.mark.usefixtures("info_logs")  # the INFO records matter here

# 2025-06-10 is a Tuesday, 2025-06-13 a Friday, 2025-06-16 a Monday; no US market holiday near them.
TUESDAY_11 = ny(2025, 6, 10, 11, 0)
TUESDAY_10 = ny(2025, 6, 10, 10, 0)
FRIDAY_EVENING = ny(2025, 6, 13, 18, 0)

REQUIRED_FIELDS = (
    "source", "pid", "status", "connected", "subscriptions", "started_at", "updated_at", "last_message_at",
    "messages_total", "messages_since_last_heartbeat", "rows_written", "batches_written", "rejected_late",
    "reconnects", "queue_depth", "memory_rss_bytes", "market_open", "next_open", "next_close",
)
STATUSES = {"streaming", "connecting", "reconnecting", "stalled", "market_closed", "stopped", "failed"}


@pytest.fixture
def config(config_file):
    """The default settings (09:30-16:00 New York, Mon-Fri, 300 s / 900 s), output under tmp_path."""
    return load_config(config_file())


class Rig:
    """A monitor wired to fake stats and a FakeClock, plus helpers to read what it wrote."""

    def __init__(self, config, start: datetime, **overrides):
        self.clock = FakeClock(start)
        self.calendar = MarketCalendar(config.market_hours)
        self.reader = ReaderStats()
        self.writer = WriterStats()
        self.stalls = 0
        self.path = heartbeat_path(config)
        options = dict(
            interval_seconds=config.monitoring.heartbeat_interval_seconds,
            alert_threshold_seconds=config.monitoring.alert_threshold_seconds,
            write_interval_seconds=config.batching.write_interval_seconds,
            subscriptions=config.polygon.subscriptions, reader=self.reader, writer=self.writer,
            queue_fill=lambda: (7, 0.25), on_stall=self._on_stall, clock=self.clock,
        )
        options.update(overrides)
        self.monitor = HeartbeatMonitor(self.path, self.calendar, **options)

    def _on_stall(self) -> None:
        self.stalls += 1

    def read(self) -> dict:
        return json.loads(self.path.read_text(encoding="utf-8"))


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text)





# --------------------------------------------------------------------------------------------------
# The heartbeat file
# --------------------------------------------------------------------------------------------------

def test_heartbeat_has_every_design_field_with_the_right_values(config):
    rig = Rig(config, TUESDAY_10)
    rig.reader.state, rig.reader.connected, rig.reader.reconnects = "streaming", True, 2
    rig.writer.rows_written, rig.writer.batches_written, rig.writer.rejected_late = 120, 4, 3
    rig.monitor.session_started()
    rig.clock.advance(3600)  # 11:00 New York
    for _ in range(5):
        rig.monitor.record_message()
    rig.clock.advance(2)

    returned = rig.monitor.send_heartbeat()
    beat = rig.read()

    assert beat == json.loads(json.dumps(returned))
    missing = [field for field in REQUIRED_FIELDS if field not in beat]
    assert not missing, f"heartbeat lacks {missing}"
    assert beat["source"] == "polygon"
    assert beat["pid"] == os.getpid()
    assert beat["status"] == "streaming"
    assert beat["connected"] is True
    assert beat["subscriptions"] == ["A.SPY"]
    assert instant(beat["started_at"]) == TUESDAY_10
    assert instant(beat["updated_at"]) == TUESDAY_11 + timedelta(seconds=2)
    assert instant(beat["last_message_at"]) == TUESDAY_11
    for field in ("started_at", "updated_at", "last_message_at", "next_open", "next_close"):
        assert instant(beat[field]).utcoffset() == timedelta(0), f"{field} is not UTC: {beat[field]}"
    assert beat["messages_total"] == 5
    assert beat["messages_since_last_heartbeat"] == 5
    assert (beat["rows_written"], beat["batches_written"], beat["rejected_late"]) == (120, 4, 3)
    assert beat["reconnects"] == 2
    assert beat["queue_depth"] == 7
    assert isinstance(beat["memory_rss_bytes"], int) and beat["memory_rss_bytes"] > 1_000_000
    assert beat["market_open"] is True
    # While open: next_open is tomorrow's open, next_close is today's close.
    assert instant(beat["next_open"]) == ny(2025, 6, 11, 9, 30)
    assert instant(beat["next_close"]) == ny(2025, 6, 10, 16, 0)


def test_heartbeat_on_friday_evening_points_to_monday(config):
    rig = Rig(config, FRIDAY_EVENING)
    beat = rig.monitor.send_heartbeat()
    assert beat["market_open"] is False
    assert beat["status"] == "market_closed"
    assert beat["connected"] is False
    assert beat["last_message_at"] is None
    assert instant(beat["next_open"]) == ny(2025, 6, 16, 9, 30)
    assert instant(beat["next_close"]) == ny(2025, 6, 16, 16, 0)
    assert rig.read()["next_open"] == beat["next_open"]


def test_heartbeat_before_the_open_points_to_today(config):
    rig = Rig(config, ny(2025, 6, 10, 8, 0))
    beat = rig.monitor.send_heartbeat()
    assert beat["market_open"] is False
    assert instant(beat["next_open"]) == ny(2025, 6, 10, 9, 30)
    assert instant(beat["next_close"]) == ny(2025, 6, 10, 16, 0)


def test_heartbeat_is_replaced_atomically_and_leaves_no_temp_file(config):
    rig = Rig(config, TUESDAY_11)
    rig.monitor.send_heartbeat()
    first_inode = rig.path.stat().st_ino
    rig.clock.advance(300)
    rig.monitor.send_heartbeat()

    assert sorted(p.name for p in rig.path.parent.iterdir()) == ["polygon.json"]
    # A new inode: the file was renamed into place, not rewritten where a reader could see half of it.
    assert rig.path.stat().st_ino != first_inode
    assert instant(rig.read()["updated_at"]) == TUESDAY_11 + timedelta(seconds=300)


def test_heartbeat_write_failure_is_logged_once_per_streak_and_never_raised(tmp_path, config, caplog):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the heartbeat folder should be")
    rig = Rig(config, TUESDAY_11)
    rig.monitor.path = blocker / "polygon.json"

    for _ in range(3):
        rig.monitor.send_heartbeat()
    assert len(events(caplog, "heartbeat_write_failed")) == 1

    blocker.unlink()  # the disk is fixed: the next beat lands
    rig.monitor.send_heartbeat()
    assert json.loads((blocker / "polygon.json").read_text())["source"] == "polygon"
    assert len(events(caplog, "heartbeat_write_failed")) == 1
    (recovered,) = events(caplog, "heartbeat_write_recovered")  # the recovery is logged too, once
    assert recovered.failures == 3

    rig.monitor.path = tmp_path / "polygon.json" / "nested" / "polygon.json"
    (tmp_path / "polygon.json").write_text("blocks again")
    rig.monitor.send_heartbeat()
    rig.monitor.send_heartbeat()
    assert len(events(caplog, "heartbeat_write_failed")) == 2  # a new streak, one new line


def test_each_beat_logs_one_summary_line(config, caplog):
    rig = Rig(config, TUESDAY_11)
    rig.monitor.send_heartbeat()
    rig.monitor.send_heartbeat()
    summaries = events(caplog, "heartbeat")
    assert len(summaries) == 2
    assert all(record.levelno == logging.INFO for record in summaries)
    assert summaries[0].status == "market_closed" and summaries[0].queue_depth == 7


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------

def test_record_message_counts_and_stamps_last_message(config):
    rig = Rig(config, TUESDAY_11)
    assert rig.monitor.send_heartbeat()["last_message_at"] is None

    rig.clock.advance(10)
    rig.monitor.record_message()
    rig.monitor.record_message()
    rig.clock.advance(5)
    rig.monitor.record_message()
    rig.clock.advance(20)

    beat = rig.monitor.send_heartbeat()
    assert beat["messages_total"] == 3
    assert beat["messages_since_last_heartbeat"] == 3
    assert instant(beat["last_message_at"]) == TUESDAY_11 + timedelta(seconds=15)


def test_messages_since_last_heartbeat_resets_after_each_beat(config):
    rig = Rig(config, TUESDAY_11)
    for _ in range(4):
        rig.monitor.record_message()
    assert rig.monitor.send_heartbeat()["messages_since_last_heartbeat"] == 4
    assert rig.monitor.send_heartbeat()["messages_since_last_heartbeat"] == 0
    rig.monitor.record_message()
    beat = rig.monitor.send_heartbeat()
    assert (beat["messages_total"], beat["messages_since_last_heartbeat"]) == (5, 1)
    assert rig.read()["messages_since_last_heartbeat"] == 1


# --------------------------------------------------------------------------------------------------
# The cadence: run() driven by a scripted stop event that moves the FakeClock instead of sleeping
# --------------------------------------------------------------------------------------------------

class SimulatedStop:
    """Stands in for the monitor's stop_requested Event: wait(t) advances the fake clock by t, no real sleep."""

    def __init__(self, clock: FakeClock, run_for_seconds: float, on_tick=None):
        self.clock = clock
        self.remaining = run_for_seconds
        self.ticks: list[float] = []
        self.on_tick = on_tick

    def wait(self, timeout: float) -> bool:
        if self.remaining <= 0:
            return True
        self.ticks.append(timeout)
        self.clock.advance(timeout)
        self.remaining -= timeout
        if self.on_tick is not None:
            self.on_tick(self.clock)
        return False


def record_beats(rig: Rig) -> list[tuple[float, str]]:
    """Wrap send_heartbeat so each beat is recorded as (seconds since start, status)."""
    beats: list[tuple[float, str]] = []
    start = rig.clock.monotonic()
    original = rig.monitor.send_heartbeat

    def wrapped(status=None):
        heartbeat = original(status)
        beats.append((round(rig.clock.monotonic() - start, 6), heartbeat["status"]))
        return heartbeat

    rig.monitor.send_heartbeat = wrapped
    return beats


def test_run_beats_at_start_and_every_300_seconds(config):
    rig = Rig(config, FRIDAY_EVENING)
    beats = record_beats(rig)
    stop = SimulatedStop(rig.clock, run_for_seconds=900)

    rig.monitor.stop_requested = stop
    rig.monitor.run()

    assert [at for at, _ in beats] == [0, 300, 600, 900]
    assert instant(rig.read()["updated_at"]) == FRIDAY_EVENING + timedelta(seconds=900)


def test_run_sleeps_from_beat_to_beat_while_the_market_is_closed(config):
    """No compute at night: the thread once woke every second to look for a stall, open or closed."""
    rig = Rig(config, FRIDAY_EVENING)
    stop = SimulatedStop(rig.clock, run_for_seconds=1000)
    rig.monitor.stop_requested = stop
    rig.monitor.run()
    assert stop.ticks == [300, 300, 300, 300]


def test_run_checks_every_second_from_the_open_on(config):
    """Closed until 9:30: asleep until then, then a stall check at least once a second."""
    rig = Rig(config, ny(2025, 6, 10, 9, 28))   # a Tuesday, two minutes before the open
    stop = SimulatedStop(rig.clock, run_for_seconds=130)
    rig.monitor.stop_requested = stop
    rig.monitor.run()
    assert stop.ticks[0] == 120 and stop.ticks[1:] and max(stop.ticks[1:]) <= 1.0


def test_run_with_a_short_interval_ticks_at_that_interval(config):
    rig = Rig(config, FRIDAY_EVENING, interval_seconds=0.25)
    beats = record_beats(rig)
    stop = SimulatedStop(rig.clock, run_for_seconds=1.0)
    rig.monitor.stop_requested = stop
    rig.monitor.run()
    assert max(stop.ticks) <= 0.25
    assert [at for at, _ in beats] == [0, 0.25, 0.5, 0.75, 1.0]


def test_run_raises_the_stall_alert_within_a_second_of_the_threshold(config, caplog):
    rig = Rig(config, TUESDAY_10)
    rig.monitor.session_started()
    beats = record_beats(rig)
    stop = SimulatedStop(rig.clock, run_for_seconds=905)

    rig.monitor.stop_requested = stop
    rig.monitor.run()

    stalls = events(caplog, "stream_stalled")
    assert len(stalls) == 1
    assert 900 < stalls[0].silence_seconds <= 901
    assert rig.stalls == 1
    # The regular beats plus one written at the moment of the alert, which already says "stalled".
    assert [status for at, status in beats if 900 < at <= 901] == ["stalled"]
    assert rig.read()["status"] == "stalled"


def test_run_returns_promptly_when_stop_is_already_set(config):
    rig = Rig(config, FRIDAY_EVENING)
    rig.monitor.stop()
    rig.monitor.run()  # one beat at start, then returns without waiting a tick
    assert rig.read()["status"] == "market_closed"


# --------------------------------------------------------------------------------------------------
# The stall alert
# --------------------------------------------------------------------------------------------------

def silent_for_twenty_minutes(config) -> Rig:
    """A streaming session on Tuesday 10:00 with no message since: the monitor has not checked yet."""
    rig = Rig(config, TUESDAY_10)
    rig.reader.state, rig.reader.connected = "streaming", True
    rig.monitor.session_started()
    rig.clock.advance(20 * 60)
    return rig


def test_stall_after_twenty_silent_minutes_alerts_exactly_once(config, caplog):
    rig = silent_for_twenty_minutes(config)

    assert rig.monitor.check_stalled_stream() is True

    stalls = events(caplog, "stream_stalled")
    assert len(stalls) == 1
    assert stalls[0].levelno == logging.ERROR
    assert rig.stalls == 1
    assert rig.read()["status"] == "stalled"
    assert rig.monitor.status() == "stalled"

    for _ in range(5):
        rig.clock.advance(60)
        assert rig.monitor.check_stalled_stream() is True
    assert len(events(caplog, "stream_stalled")) == 1
    assert rig.stalls == 1


def test_recovery_logs_once_and_restores_the_reader_state(config, caplog):
    rig = silent_for_twenty_minutes(config)
    assert rig.monitor.check_stalled_stream() is True

    rig.clock.advance(1)
    rig.monitor.record_message()
    assert rig.monitor.check_stalled_stream() is False
    assert rig.monitor.check_stalled_stream() is False

    recovered = events(caplog, "stream_recovered")
    assert len(recovered) == 1
    assert recovered[0].levelno == logging.INFO
    assert rig.read()["status"] == "streaming"
    assert rig.monitor.status() == "streaming"

    # The reader state shows through; "idle" inside a session reads as "connecting".
    rig.reader.state = "reconnecting"
    assert rig.monitor.send_heartbeat()["status"] == "reconnecting"
    rig.reader.state = "idle"
    assert rig.monitor.send_heartbeat()["status"] == "connecting"


def test_a_second_silence_after_recovery_alerts_again(config, caplog):
    rig = Rig(config, TUESDAY_10)
    rig.monitor.session_started()
    rig.clock.advance(901)
    assert rig.monitor.check_stalled_stream() is True
    rig.clock.advance(1)
    rig.monitor.record_message()
    assert rig.monitor.check_stalled_stream() is False
    rig.clock.advance(901)
    assert rig.monitor.check_stalled_stream() is True
    assert len(events(caplog, "stream_stalled")) == 2
    assert len(events(caplog, "stream_recovered")) == 1
    assert rig.stalls == 2


def test_no_alert_before_the_threshold(config, caplog):
    rig = Rig(config, TUESDAY_10)
    rig.monitor.session_started()
    rig.clock.advance(899)
    assert rig.monitor.check_stalled_stream() is False
    rig.clock.advance(1)  # exactly 900 s: not yet "more than" the threshold
    assert rig.monitor.check_stalled_stream() is False
    assert events(caplog, "stream_stalled") == [] and rig.stalls == 0


def test_silence_counts_from_the_last_message_not_the_session_start(config, caplog):
    rig = Rig(config, TUESDAY_10)
    rig.monitor.session_started()
    rig.clock.advance(800)
    rig.monitor.record_message()
    rig.clock.advance(800)  # 1600 s since the start, 800 s since the last message
    assert rig.monitor.check_stalled_stream() is False
    rig.clock.advance(101)
    assert rig.monitor.check_stalled_stream() is True


def test_messages_before_the_session_do_not_hide_a_silent_session(config, caplog):
    rig = Rig(config, ny(2025, 6, 10, 9, 0))
    rig.monitor.record_message()       # e.g. yesterday's last message
    rig.clock.advance(30 * 60)         # 09:30
    rig.monitor.session_started()
    rig.clock.advance(901)
    assert rig.monitor.check_stalled_stream() is True


def test_no_alert_while_the_market_is_closed(config, caplog):
    rig = Rig(config, ny(2025, 6, 10, 15, 50))
    rig.monitor.session_started()
    rig.clock.advance(20 * 60)  # 16:10: silent for 20 minutes, but the market closed at 16:00
    assert rig.monitor.check_stalled_stream() is False
    assert events(caplog, "stream_stalled") == [] and rig.stalls == 0


def test_no_alert_outside_a_session(config, caplog):
    rig = Rig(config, TUESDAY_10)  # market open, but the runner never started a session
    rig.clock.advance(3600)
    assert rig.monitor.check_stalled_stream() is False
    assert rig.monitor.silence_seconds() is None

    rig.monitor.session_started()
    rig.clock.advance(100)
    rig.monitor.session_ended()
    rig.clock.advance(3600)
    assert rig.monitor.check_stalled_stream() is False
    assert events(caplog, "stream_stalled") == [] and rig.stalls == 0


def test_a_stall_is_cleared_by_the_close(config, caplog):
    rig = Rig(config, ny(2025, 6, 10, 15, 30))
    rig.reader.state = "streaming"
    rig.monitor.session_started()
    rig.clock.advance(901)
    assert rig.monitor.check_stalled_stream() is True
    rig.clock.advance(20 * 60)  # past 16:00
    assert rig.monitor.check_stalled_stream() is False
    assert rig.monitor.status() != "stalled"
    rig.monitor.session_ended()
    assert rig.monitor.send_heartbeat()["status"] == "market_closed"


# --------------------------------------------------------------------------------------------------
# Status values
# --------------------------------------------------------------------------------------------------

def test_status_values(config):
    rig = Rig(config, TUESDAY_10)
    assert rig.monitor.send_heartbeat()["status"] == "market_closed"  # no session running
    rig.monitor.session_started()
    assert rig.monitor.send_heartbeat()["status"] == "connecting"     # reader still idle
    rig.reader.state = "connecting"
    assert rig.monitor.send_heartbeat()["status"] == "connecting"
    rig.reader.state = "streaming"
    assert rig.monitor.send_heartbeat()["status"] == "streaming"
    rig.monitor.session_ended()
    assert rig.monitor.send_heartbeat()["status"] == "market_closed"
    beat = rig.monitor.send_heartbeat(status="stopped")
    assert beat["status"] == "stopped" and rig.read()["status"] == "stopped"
    assert {beat["status"]} <= STATUSES


def test_started_at_is_the_monitor_creation_time(config):
    rig = Rig(config, TUESDAY_10)
    rig.clock.advance(7200)
    beat = rig.monitor.send_heartbeat()
    assert instant(beat["started_at"]) == TUESDAY_10.astimezone(timezone.utc)
    assert instant(beat["updated_at"]) == TUESDAY_10 + timedelta(hours=2)
