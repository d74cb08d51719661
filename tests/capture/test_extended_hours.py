"""`streaming.market_hours.extended_hours`: off by default (the regular session only); on, the session
runs 04:00-20:00 New York time (after-hours end 4 h after an early close) and rows carry `session`."""
from __future__ import annotations

import dataclasses
from datetime import date

import pyarrow.dataset as ds

from fake_polygon import agg_event, trade_event
from spy_streamer.market.market_hours import MarketCalendar
from test_batch_writer import HOURS, Rig, data_dir, ms, ny  # noqa: F401 (fixture data_dir)

EXTENDED = dataclasses.replace(HOURS, extended_hours=True)


def test_the_extended_session_runs_from_four_to_eight():
    session = MarketCalendar(EXTENDED).session_on(date(2025, 6, 10))
    assert (session.open, session.close) == (ny(2025, 6, 10, 4), ny(2025, 6, 10, 20))
    assert session.regular == (ny(2025, 6, 10, 9, 30), ny(2025, 6, 10, 16)) and session.extended
    regular = MarketCalendar(HOURS).session_on(date(2025, 6, 10))
    assert (regular.open, regular.close) == (ny(2025, 6, 10, 9, 30), ny(2025, 6, 10, 16)) and not regular.extended


def test_after_hours_end_four_hours_after_an_early_close():
    session = MarketCalendar(EXTENDED).session_on(date(2025, 11, 28))   # the day after Thanksgiving
    assert session.regular[1] == ny(2025, 11, 28, 13) and session.close == ny(2025, 11, 28, 17)


def rig_with(data_dir, hours) -> Rig:
    rig = Rig(data_dir, subscriptions=("A.SPY", "T.SPY"))
    rig.writer.calendar = MarketCalendar(hours)
    rig.writer._day = None
    rig.writer.start_day()
    return rig


def test_rows_say_which_part_of_the_day_they_belong_to(data_dir):
    rig = rig_with(data_dir, EXTENDED)
    times = [ny(2025, 6, 10, 4), ny(2025, 6, 10, 9, 29, 59), ny(2025, 6, 10, 9, 30), ny(2025, 6, 10, 16),
             ny(2025, 6, 10, 19, 59, 59)]
    rig.send([agg_event(ms(moment)) for moment in times] + [trade_event(ms(ny(2025, 6, 10, 17)))])
    rig.send([agg_event(ms(ny(2025, 6, 10, 3, 59, 59))), agg_event(ms(ny(2025, 6, 10, 20)))])
    assert rig.stats.outside_session == 2
    assert rig.writer.flush()
    bars = ds.dataset(data_dir / "A", format="parquet").to_table().sort_by("start")
    assert bars.column("session").to_pylist() == ["pre", "pre", "regular", "post", "post"]
    trades = ds.dataset(data_dir / "T", format="parquet").to_table()
    assert trades.column("session").to_pylist() == ["post"]


def test_without_extended_hours_nothing_outside_the_regular_session_is_stored(data_dir):
    rig = rig_with(data_dir, HOURS)
    rig.send([agg_event(ms(ny(2025, 6, 10, 8))), agg_event(ms(ny(2025, 6, 10, 10))), agg_event(ms(ny(2025, 6, 10, 17)))])
    assert rig.stats.outside_session == 2 and rig.writer.flush()
    assert "session" not in ds.dataset(data_dir / "A", format="parquet").schema.names
