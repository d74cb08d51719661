"""The writer tells the truth about what it cannot do: a wall clock that disagrees with the bars, rows
waiting since when, an early close learned mid-session. (Rig and helpers from test_batch_writer.)"""
from __future__ import annotations

import pytest

from conftest import logged_events as events_named
from fake_polygon import session_timeline
from spy_streamer.market.special_days import SpecialDay
from test_batch_writer import Rig, data_dir, ms, ny, stored_keys  # noqa: F401 (fixture data_dir)

pytestmark = pytest.mark.usefixtures("info_logs")

DAY_NS = 86_400 * 10**9


def test_a_clock_a_day_off_rejects_bars_but_warns_once_and_says_so(data_dir, caplog):
    """Seen: every bar rejected as late or out of session, no warning, check OK."""
    rig = Rig(data_dir)
    bars = session_timeline(ms(ny(2025, 6, 10, 9, 59)), 200)
    for index, bar in enumerate(bars):
        rig.send([bar], received_ns=(bar["e"] + 2000) * 10**6 + DAY_NS)   # the machine thinks it is tomorrow
        rig.clock.advance(1)
    assert rig.stats.clock_skew_seconds == 86_402.0
    assert len(events_named(caplog, "clock_skew")) == 1


def test_normal_bars_raise_no_skew(data_dir, caplog):
    rig = Rig(data_dir)
    for bar in session_timeline(ms(ny(2025, 6, 10, 9, 59)), 200):
        rig.send([bar], received_ns=(bar["e"] + 2000) * 10**6)
        rig.clock.advance(1)
    assert rig.stats.clock_skew_seconds is None and not events_named(caplog, "clock_skew")


def test_pending_since_is_when_the_oldest_unwritten_row_came(data_dir):
    rig = Rig(data_dir)
    first = rig.clock.now()
    rig.send(session_timeline(ms(ny(2025, 6, 10, 9, 59)), 2))
    rig.clock.advance(10)
    rig.send(session_timeline(ms(ny(2025, 6, 10, 9, 59, 30)), 2))
    assert rig.stats.pending_since == first and rig.stats.rows_pending == 4
    assert rig.writer.flush() and rig.stats.pending_since is None


def test_an_early_close_learned_mid_session_ends_storing_at_that_close(data_dir):
    rig = Rig(data_dir)
    rig.calendar.use_polygon_days({rig.clock.now().date(): SpecialDay(
        rig.clock.now().date(), "Half Day", None, ny(2025, 6, 10, 13, 0))})
    rig.writer.flush()                                   # the writer re-reads the close at each flush
    before, after = session_timeline(ms(ny(2025, 6, 10, 12, 59, 58)), 4)[:2], \
        session_timeline(ms(ny(2025, 6, 10, 13, 0)), 2)
    rig.send(before + after)
    rig.writer.flush()
    assert [start for _, start in stored_keys(data_dir)] == [bar["s"] for bar in before]
    assert rig.stats.outside_session == 2


def test_rows_written_are_counted_per_channel(data_dir):
    rig = Rig(data_dir)
    rig.send(session_timeline(ms(ny(2025, 6, 10, 9, 59)), 3))
    assert rig.writer.flush()
    assert rig.stats.rows_written_by_channel == {"A": 3}
