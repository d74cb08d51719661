"""A wall clock a day off used to reject every bar with no warning; now one WARNING once it lasts."""
from __future__ import annotations

from spy_streamer.monitoring.clock_skew import ClockSkewDetector

BAR_END_MS = 1_764_000_000_000
DAY_NS = 86_400 * 10**9


def records(caplog, name):
    return [record for record in caplog.records if getattr(record, "event", None) == name]


def test_normal_delivery_delay_is_not_skew(caplog):
    detector = ClockSkewDetector()
    for second in range(600):
        detector.observe((BAR_END_MS + 2_000 + second * 1000) * 10**6, BAR_END_MS + second * 1000, float(second))
    assert detector.skew_seconds is None and not records(caplog, "clock_skew")


def test_a_clock_a_day_ahead_warns_once_when_it_lasts(caplog):
    caplog.set_level("INFO")
    detector = ClockSkewDetector()
    for second in range(59):
        detector.observe((BAR_END_MS + second * 1000) * 10**6 + DAY_NS, BAR_END_MS + second * 1000, float(second))
    assert detector.skew_seconds is None                 # a minute of backlog is not yet a clock problem
    for second in range(59, 300):
        detector.observe((BAR_END_MS + second * 1000) * 10**6 + DAY_NS, BAR_END_MS + second * 1000, float(second))
    assert detector.skew_seconds == 86_400.0
    assert len(records(caplog, "clock_skew")) == 1
    detector.observe((BAR_END_MS + 2_000) * 10**6, BAR_END_MS, 301.0)          # NTP fixed it
    assert detector.skew_seconds is None and len(records(caplog, "clock_skew_recovered")) == 1


def test_a_clock_behind_is_negative_skew():
    detector = ClockSkewDetector(sustained_seconds=0)
    detector.observe(BAR_END_MS * 10**6 - DAY_NS, BAR_END_MS, 0.0)
    assert detector.skew_seconds == -86_400.0
