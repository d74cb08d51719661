"""The calendar with an injected `now`: weekdays, weekends, DST weeks, holidays and early closes."""
from datetime import date, datetime, timezone

import pytest

from conftest import REPO_ROOT, ny
from spy_streamer.config import load_config
from spy_streamer.market_hours import HolidaySource, MarketCalendar, SpecialDay, parse_special_days

HOURS = load_config(REPO_ROOT / "config" / "settings.yaml").market_hours

THANKSGIVING_ROWS = [
    {"date": "2026-11-26", "exchange": exchange, "name": "Thanksgiving", "status": "closed"}
    for exchange in ("NYSE", "NASDAQ", "OTC")
] + [
    {"date": "2026-11-27", "exchange": exchange, "name": "Thanksgiving", "status": "early-close",
     "open": "2026-11-27T14:30:00.000Z", "close": "2026-11-27T18:00:00.000Z"}
    for exchange in ("NYSE", "NASDAQ")
] + [
    {"date": "2026-12-25", "exchange": "NYSE", "name": "Christmas", "status": "closed"},
    # OTC rows do not decide the equity session.
    {"date": "2026-12-24", "exchange": "OTC", "name": "Christmas Eve", "status": "closed"},
]


@pytest.fixture
def calendar():
    special = parse_special_days(THANKSGIVING_ROWS)
    return MarketCalendar(HOURS, lambda year: {d: s for d, s in special.items() if d.year == year})


@pytest.mark.parametrize("instant, is_open", [
    (ny(2026, 11, 24, 9, 29, 59), False),
    (ny(2026, 11, 24, 9, 30), True),          # open is inclusive
    (ny(2026, 11, 24, 12, 0), True),
    (ny(2026, 11, 24, 15, 59, 59), True),
    (ny(2026, 11, 24, 16, 0), False),         # close is exclusive
    (ny(2026, 11, 24, 4, 0), False),          # pre-market is off
    (ny(2026, 11, 24, 17, 0), False),         # after-hours is off
    (ny(2026, 11, 28, 12, 0), False),         # Saturday
    (ny(2026, 11, 29, 12, 0), False),         # Sunday
    (ny(2026, 11, 26, 12, 0), False),         # Thanksgiving
    (ny(2026, 11, 27, 12, 59, 59), True),     # early close day, before 13:00
    (ny(2026, 11, 27, 13, 0), False),         # early close at 13:00
    (ny(2026, 12, 24, 12, 0), True),          # only OTC closed
    (ny(2026, 12, 25, 12, 0), False),
])
def test_is_market_open(calendar, instant, is_open):
    assert calendar.is_market_open(instant) is is_open


def test_dst_spring_forward_week():
    calendar = MarketCalendar(HOURS)
    # Friday 2026-03-06 is EST (UTC-5); Monday 2026-03-09 is EDT (UTC-4): 09:30 local moves in UTC.
    assert calendar.current_or_next_session(ny(2026, 3, 6, 10)).open.astimezone(timezone.utc) == \
        datetime(2026, 3, 6, 14, 30, tzinfo=timezone.utc)
    sunday_of_change = ny(2026, 3, 8, 12, 0)
    assert calendar.seconds_until_market_open(sunday_of_change) == (21 * 60 + 30) * 60
    monday_open = calendar.current_or_next_session(sunday_of_change).open
    assert monday_open.astimezone(timezone.utc) == datetime(2026, 3, 9, 13, 30, tzinfo=timezone.utc)
    # Friday 16:00 EST to Monday 09:30 EDT is one hour shorter than a normal weekend.
    assert calendar.seconds_until_market_open(ny(2026, 3, 6, 16)) == (65 * 3600 + 30 * 60) - 3600


def test_dst_fall_back_week():
    calendar = MarketCalendar(HOURS)
    sunday_of_change = ny(2026, 11, 1, 1, 30)  # before the repeated hour
    assert calendar.seconds_until_market_open(sunday_of_change) == (32 * 3600) + 3600
    monday = calendar.current_or_next_session(sunday_of_change)
    assert monday.open.astimezone(timezone.utc) == datetime(2026, 11, 2, 14, 30, tzinfo=timezone.utc)
    assert monday.close.astimezone(timezone.utc) == datetime(2026, 11, 2, 21, 0, tzinfo=timezone.utc)


def test_seconds_until_open_across_weekend(calendar):
    friday_evening = ny(2026, 11, 20, 18, 0)
    assert calendar.seconds_until_market_open(friday_evening) == (2 * 24 + 15) * 3600 + 30 * 60
    assert calendar.seconds_until_market_close(friday_evening) == (2 * 24 + 22) * 3600


def test_seconds_until_open_on_holiday_eve(calendar):
    wednesday_close = ny(2026, 11, 25, 16, 0)
    # Thanksgiving is skipped; Friday opens at 09:30 and closes early at 13:00.
    assert calendar.seconds_until_market_open(wednesday_close) == (24 + 17) * 3600 + 30 * 60
    assert calendar.seconds_until_market_close(wednesday_close) == (24 + 21) * 3600


def test_seconds_on_early_close_day(calendar):
    assert calendar.seconds_until_market_open(ny(2026, 11, 27, 10)) == 0
    assert calendar.seconds_until_market_close(ny(2026, 11, 27, 12, 30)) == 30 * 60
    # After the early close the next open is Monday.
    assert calendar.seconds_until_market_open(ny(2026, 11, 27, 13, 0)) == (2 * 24 + 20) * 3600 + 30 * 60


def test_seconds_while_open(calendar):
    assert calendar.seconds_until_market_open(ny(2026, 11, 24, 15)) == 0
    assert calendar.seconds_until_market_close(ny(2026, 11, 24, 15)) == 3600


@pytest.mark.parametrize("instant, reason", [
    (ny(2026, 11, 28, 12), "weekend"),
    (ny(2026, 11, 26, 12), "holiday: Thanksgiving"),
    (ny(2026, 11, 24, 8), "outside regular hours"),
    (ny(2026, 11, 27, 14), "early close (Thanksgiving) at 13:00 EST"),
    (ny(2026, 11, 24, 10), None),
])
def test_closed_reason(calendar, instant, reason):
    assert calendar.closed_reason(instant) == reason


def test_naive_now_is_refused(calendar):
    with pytest.raises(ValueError):
        calendar.is_market_open(datetime(2026, 11, 24, 12))


def test_parse_special_days_keeps_equity_rows_and_skips_bad_ones():
    rows = THANKSGIVING_ROWS + [
        {"date": "not a date", "exchange": "NYSE", "status": "closed"},
        {"date": "2026-07-03", "exchange": "NASDAQ", "status": "early-close", "open": "bad", "close": "bad"},
        {"exchange": "NYSE"},
    ]
    days = parse_special_days(rows)
    assert set(days) == {date(2026, 11, 26), date(2026, 11, 27), date(2026, 12, 25)}
    assert days[date(2026, 11, 26)] == SpecialDay(date(2026, 11, 26), "Thanksgiving")
    early = days[date(2026, 11, 27)]
    assert early.close == datetime(2026, 11, 27, 18, 0, tzinfo=timezone.utc)


def test_early_close_never_widens_the_session():
    rows = [{"date": "2026-07-02", "exchange": "NYSE", "name": "Odd", "status": "early-close",
             "open": "2026-07-02T08:00:00.000Z", "close": "2026-07-02T17:00:00.000Z"}]
    special = parse_special_days(rows)
    calendar = MarketCalendar(HOURS, lambda year: special)
    session = calendar.session_on(date(2026, 7, 2))
    assert session.open == ny(2026, 7, 2, 9, 30)   # not 04:00 pre-market
    assert session.close == ny(2026, 7, 2, 13, 0)


class CountingFetch:
    def __init__(self, rows=None, error=None):
        self.calls, self.rows, self.error = 0, rows or [], error

    def __call__(self):
        self.calls += 1
        if self.error:
            raise self.error
        return self.rows


def test_holiday_source_fetches_once_per_year():
    fetch = CountingFetch(THANKSGIVING_ROWS)
    source = HolidaySource(fetch)
    for _ in range(5):
        assert date(2026, 11, 26) in source.for_year(2026)
    assert fetch.calls == 1
    assert source.for_year(2027) == {}
    assert fetch.calls == 2


def test_holiday_source_failure_warns_once_and_retries_later(caplog):
    now = [0.0]
    fetch = CountingFetch(error=RuntimeError("boom"))
    source = HolidaySource(fetch, retry_seconds=60, monotonic=lambda: now[0])
    with caplog.at_level("WARNING"):
        assert source.for_year(2026) == {}
        assert source.for_year(2026) == {}
    assert fetch.calls == 1
    assert len([r for r in caplog.records if r.event == "holidays_unavailable"]) == 1
    fetch.error, fetch.rows = None, THANKSGIVING_ROWS
    now[0] = 61
    assert date(2026, 11, 26) in source.for_year(2026)
    assert fetch.calls == 2


def test_holiday_source_refreshes_daily_and_keeps_the_last_known_days_on_failure(caplog):
    now = [0.0]
    fetch = CountingFetch(THANKSGIVING_ROWS)
    source = HolidaySource(fetch, retry_seconds=60, monotonic=lambda: now[0])
    assert date(2026, 11, 26) in source.for_year(2026)
    now[0] = 86_399
    source.for_year(2026)
    assert fetch.calls == 1                      # the same day: cached
    now[0] = 86_400
    fetch.rows = THANKSGIVING_ROWS + [{"date": "2026-12-24", "exchange": "NYSE", "name": "Christmas Eve",
                                       "status": "early-close", "open": "2026-12-24T14:30:00.000Z",
                                       "close": "2026-12-24T18:00:00.000Z"}]
    assert date(2026, 12, 24) in source.for_year(2026)
    assert fetch.calls == 2                      # the next day: fetched again, the new early close seen
    now[0] = 2 * 86_400
    fetch.error = RuntimeError("down")
    with caplog.at_level("WARNING"):
        days = source.for_year(2026)
    assert date(2026, 12, 24) in days and date(2026, 11, 26) in days   # a failed refresh forgets nothing
