"""The calendar with an injected `now`: weekdays, weekends, DST weeks, holidays and early closes, from the
exchange rules alone and with Polygon's list on top."""
from dataclasses import replace
from datetime import date, datetime, time, timezone
from zoneinfo import ZoneInfo

import pytest

from conftest import REPO_ROOT, ny, settings, write_settings
from spy_streamer.config import ConfigError, load_config
from spy_streamer.market.exchange_rules import nyse_special_days
from spy_streamer.market.market_hours import MarketCalendar, SpecialDay
from spy_streamer.market.special_days import parse_polygon_rows, special_day_from_row, special_day_to_row

HOURS = load_config(REPO_ROOT / "config" / "settings.yaml").market_hours
NO_RULES = replace(HOURS, holiday_rules="none")

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
    return MarketCalendar(HOURS, parse_polygon_rows(THANKSGIVING_ROWS))


@pytest.fixture
def rules_only():
    """Polygon never answered: the exchange rules alone."""
    return MarketCalendar(HOURS)


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
    (ny(2026, 12, 24, 12, 0), True),          # OTC's row does not close it (the rules' 13:00 close does later)
    (ny(2026, 12, 24, 13, 0), False),
    (ny(2026, 12, 25, 12, 0), False),
])
def test_is_market_open(calendar, instant, is_open):
    assert calendar.is_market_open(instant) is is_open


# --- defect 1: the endpoint down at start: the rules alone ---

@pytest.mark.parametrize("instant, is_open", [
    (ny(2025, 12, 25, 10, 0), False),          # Christmas 2025 is not a trading day
    (ny(2025, 11, 27, 10, 0), False),          # Thanksgiving
    (ny(2025, 11, 28, 12, 59, 59), True),
    (ny(2025, 11, 28, 13, 0, 0), False),       # the after-hours bars 13:00:00-13:00:09 are outside the session
    (ny(2025, 11, 28, 13, 0, 9), False),
    (ny(2025, 1, 9, 12, 0), False),            # Carter's national day of mourning (the rules library knows it)
    (ny(2026, 7, 3, 12, 0), False),            # Independence Day observed on Friday
    (ny(2026, 11, 24, 12, 0), True),
])
def test_rules_alone_know_holidays_and_early_closes(rules_only, instant, is_open):
    assert rules_only.is_market_open(instant) is is_open


def test_rules_alone_name_the_day(rules_only):
    assert rules_only.closed_reason(ny(2025, 12, 25, 10)) == "holiday: Christmas Day"
    assert rules_only.closed_reason(ny(2025, 11, 28, 14)) == "early close (Day after Thanksgiving Day) at 13:00 EST"
    session = rules_only.session_on(date(2025, 11, 28))
    assert (session.open, session.close) == (ny(2025, 11, 28, 9, 30), ny(2025, 11, 28, 13))
    assert session.early_close.name == "Day after Thanksgiving Day"
    # Christmas Eve: the stall alert must not fire on a closed afternoon, and the next open skips the 25th.
    assert rules_only.seconds_until_market_open(ny(2025, 12, 24, 13)) == 44 * 3600 + 30 * 60


# --- defect 3: year ends ---

@pytest.mark.parametrize("polygon_days", [{}, {date(2026, 11, 26): SpecialDay(date(2026, 11, 26), "Thanksgiving")}],
                         ids=["no list", "a list of this year only"])
@pytest.mark.parametrize("close, next_open", [
    (ny(2025, 12, 31, 16), ny(2026, 1, 2, 9, 30)),     # Thursday Jan 1 is closed: Friday Jan 2
    (ny(2026, 12, 31, 16), ny(2027, 1, 4, 9, 30)),     # Friday Jan 1: Monday Jan 4
    (ny(2027, 12, 31, 16), ny(2028, 1, 3, 9, 30)),     # Saturday Jan 1 (not moved to Friday Dec 31)
])
def test_next_open_across_the_year_end(polygon_days, close, next_open):
    calendar = MarketCalendar(HOURS, polygon_days)
    assert calendar.current_or_next_session(close).open == next_open
    assert calendar.seconds_until_market_open(close) == (next_open - close).total_seconds()
    assert not calendar.is_market_open(next_open.replace(year=next_open.year, month=1, day=1, hour=10))


def test_new_years_eve_saturday_holiday_is_not_moved_to_friday(rules_only):
    assert rules_only.is_market_open(ny(2021, 12, 31, 12))   # Jan 1 2022 is a Saturday


# --- Polygon's list above the rules ---

def test_polygon_names_and_times_win_over_the_rules(calendar):
    assert calendar.closed_reason(ny(2026, 11, 26, 12)) == "holiday: Thanksgiving"
    assert calendar.session_on(date(2026, 11, 27)).early_close.name == "Thanksgiving"


def test_polygon_teaches_an_unscheduled_closure_and_a_changed_early_close(rules_only):
    rows = [{"date": "2029-03-14", "exchange": "NYSE", "name": "National Day of Mourning", "status": "closed"},
            {"date": "2026-11-27", "exchange": "NYSE", "name": "Half Day", "status": "early-close",
             "open": "2026-11-27T14:30:00.000Z", "close": "2026-11-27T17:00:00.000Z"}]
    assert rules_only.is_market_open(ny(2029, 3, 14, 12))
    rules_only.use_polygon_days(parse_polygon_rows(rows))
    assert not rules_only.is_market_open(ny(2029, 3, 14, 12))
    assert rules_only.session_on(date(2026, 11, 27)).close == ny(2026, 11, 27, 12)


def test_holiday_rules_is_checked_at_load(tmp_path):
    def config(value):
        return write_settings(tmp_path, settings(tmp_path, streaming={"market_hours": {"holiday_rules": value}}))

    assert load_config(config("none")).market_hours.holiday_rules == "none"
    with pytest.raises(ConfigError, match=r"streaming\.market_hours\.holiday_rules: expected one of XNYS, none"):
        load_config(config("NYSE"))


def test_no_rules_applies_only_polygons_list():
    calendar = MarketCalendar(NO_RULES, parse_polygon_rows(THANKSGIVING_ROWS))
    assert calendar.is_market_open(ny(2025, 12, 25, 12))          # Christmas 2025 is not in the list
    assert not calendar.is_market_open(ny(2026, 11, 26, 12))
    assert calendar.session_on(date(2026, 12, 24)).close == ny(2026, 12, 24, 16)


# --- defect 2: new knowledge applies at once ---

def test_a_refresh_changes_the_session_under_way(rules_only):
    during = ny(2026, 11, 24, 11)
    assert rules_only.current_or_next_session(during).close == ny(2026, 11, 24, 16)
    rules_only.use_polygon_days(parse_polygon_rows([
        {"date": "2026-11-24", "exchange": "NYSE", "name": "Half Day", "status": "early-close",
         "open": "2026-11-24T14:30:00.000Z", "close": "2026-11-24T17:00:00.000Z"}]))
    assert rules_only.current_or_next_session(during).close == ny(2026, 11, 24, 12)
    rules_only.use_polygon_days(parse_polygon_rows([
        {"date": "2026-11-24", "exchange": "NYSE", "name": "Mourning", "status": "closed"}]))
    assert rules_only.session_on(date(2026, 11, 24)) is None
    assert rules_only.closed_reason(during) == "holiday: Mourning"


# --- configured hours other than New York's ---

def test_early_close_is_1300_new_york_in_any_configured_zone():
    london = replace(HOURS, timezone=ZoneInfo("Europe/London"), start_time=time(14, 30), end_time=time(21))
    session = MarketCalendar(london).session_on(date(2025, 11, 28))
    assert (session.open, session.close) == (ny(2025, 11, 28, 9, 30), ny(2025, 11, 28, 13))
    assert MarketCalendar(london).session_on(date(2025, 12, 25)) is None


def test_an_early_close_before_the_configured_open_leaves_no_session():
    afternoon = replace(HOURS, start_time=time(14), end_time=time(16))
    calendar = MarketCalendar(afternoon)
    assert calendar.session_on(date(2025, 11, 28)) is None
    assert calendar.closed_reason(ny(2025, 11, 28, 15)) == "early close (Day after Thanksgiving Day) at 13:00 EST"
    assert calendar.current_or_next_session(ny(2025, 11, 28, 15)).open == ny(2025, 12, 1, 14)


def test_early_close_never_widens_the_session():
    rows = [{"date": "2026-07-02", "exchange": "NYSE", "name": "Odd", "status": "early-close",
             "open": "2026-07-02T08:00:00.000Z", "close": "2026-07-02T17:00:00.000Z"}]
    session = MarketCalendar(HOURS, parse_polygon_rows(rows)).session_on(date(2026, 7, 2))
    assert session.open == ny(2026, 7, 2, 9, 30)   # not 04:00 pre-market
    assert session.close == ny(2026, 7, 2, 13, 0)


# --- DST weeks, weekends ---

def test_dst_spring_forward_week(rules_only):
    # Friday 2026-03-06 is EST (UTC-5); Monday 2026-03-09 is EDT (UTC-4): 09:30 local moves in UTC.
    assert rules_only.current_or_next_session(ny(2026, 3, 6, 10)).open == datetime(2026, 3, 6, 14, 30, tzinfo=timezone.utc)
    sunday_of_change = ny(2026, 3, 8, 12, 0)
    assert rules_only.seconds_until_market_open(sunday_of_change) == (21 * 60 + 30) * 60
    monday_open = rules_only.current_or_next_session(sunday_of_change).open
    assert monday_open == datetime(2026, 3, 9, 13, 30, tzinfo=timezone.utc)
    # Friday 16:00 EST to Monday 09:30 EDT is one hour shorter than a normal weekend.
    assert rules_only.seconds_until_market_open(ny(2026, 3, 6, 16)) == (65 * 3600 + 30 * 60) - 3600


def test_dst_fall_back_week(rules_only):
    sunday_of_change = ny(2026, 11, 1, 1, 30)  # before the repeated hour
    assert rules_only.seconds_until_market_open(sunday_of_change) == (32 * 3600) + 3600
    second_fold = sunday_of_change.replace(fold=1)
    assert rules_only.seconds_until_market_open(second_fold) == 32 * 3600
    monday = rules_only.current_or_next_session(sunday_of_change)
    assert monday.open == datetime(2026, 11, 2, 14, 30, tzinfo=timezone.utc)
    assert monday.close == datetime(2026, 11, 2, 21, 0, tzinfo=timezone.utc)


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


# --- the rows ---

def test_parse_polygon_rows_keeps_equity_rows_and_skips_bad_ones():
    rows = THANKSGIVING_ROWS + [
        {"date": "not a date", "exchange": "NYSE", "status": "closed"},
        {"date": "2026-07-03", "exchange": "NASDAQ", "status": "early-close", "open": "bad", "close": "bad"},
        {"exchange": "NYSE"},
        "not a row",
    ]
    days = parse_polygon_rows(rows)
    assert set(days) == {date(2026, 11, 26), date(2026, 11, 27), date(2026, 12, 25)}
    assert days[date(2026, 11, 26)] == SpecialDay(date(2026, 11, 26), "Thanksgiving")
    assert days[date(2026, 11, 27)].close == datetime(2026, 11, 27, 18, 0, tzinfo=timezone.utc)


def test_a_closed_exchange_beats_an_early_close_of_the_other():
    rows = [{"date": "2026-11-27", "exchange": "NASDAQ", "name": "Half", "status": "early-close",
             "open": "2026-11-27T14:30:00.000Z", "close": "2026-11-27T18:00:00.000Z"},
            {"date": "2026-11-27", "exchange": "NYSE", "name": "Closed", "status": "closed"}]
    assert parse_polygon_rows(rows)[date(2026, 11, 27)].closed


@pytest.mark.parametrize("special", [
    SpecialDay(date(2026, 11, 26), "Thanksgiving"),
    SpecialDay(date(2026, 11, 27), "Half", ny(2026, 11, 27, 9, 30), ny(2026, 11, 27, 13)),
    SpecialDay(date(2026, 11, 27), "Half", None, ny(2026, 11, 27, 13)),
])
def test_rows_round_trip(special):
    assert special_day_from_row(special_day_to_row(special)) == special


def test_rules_are_computed_once_per_year_and_read_only():
    assert nyse_special_days(2026) is nyse_special_days(2026)
    with pytest.raises(TypeError):
        nyse_special_days(2026)[date(2026, 11, 24)] = SpecialDay(date(2026, 11, 24), "x")
