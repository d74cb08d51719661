"""A wall clock a day off used to reject every bar with no warning; now one WARNING once it lasts, whatever
the channel, whichever way the clock is off."""
from __future__ import annotations

import json
import queue

import pytest

from conftest import FakeClock, REPO_ROOT, ny
from fake_polygon import trade_event
from spy_streamer.capture.batch_writer import BatchWriter
from spy_streamer.capture.pipeline_stats import WriterStats
from spy_streamer.config import load_config
from spy_streamer.market.market_hours import MarketCalendar
from spy_streamer.monitoring.clock_skew import ClockSkewDetector
from spy_streamer.storage.parquet_sink import ParquetSink

HOURS = load_config(REPO_ROOT / "config" / "settings.yaml").market_hours

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


@pytest.mark.parametrize("offset_hours", [-1, 1])
def test_the_writer_measures_skew_on_trades_too_both_ways(tmp_path, offset_hours):
    """Skew is measured against every channel's exchange time (a trade's SIP time), ahead and behind."""
    clock = FakeClock(ny(2025, 6, 10, 10, 0))
    writer = BatchWriter(queue.Queue(), ParquetSink(tmp_path), MarketCalendar(HOURS), WriterStats(), 30.0, clock,
                         subscriptions=("T.SPY",))
    writer.start_day()
    for second in range(0, 121, 10):
        event_ms = int(clock.now().timestamp() * 1000) - offset_hours * 3_600_000
        writer.accept_frame(clock.time_ns(), json.dumps([trade_event(event_ms, trade_id=str(second))]))
        clock.advance(10)
    assert writer.stats.clock_skew_seconds == offset_hours * 3600.0
