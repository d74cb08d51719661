"""Polygon's list is an outside input: what only it states is applied and shown, a later answer retracts
an earlier one, the refresh keeps up during a session day, and no content (however absurd) makes a query,
the heartbeat, `check` or `status` fail. FakeClock and fixed dates: nothing depends on when the suite runs."""
from __future__ import annotations

import dataclasses
import json
from datetime import date, timedelta

import pytest

from conftest import REPO_ROOT, ny
from spy_streamer.config import load_config
from spy_streamer.market.calendar_refresh import (REFRESH_INTERVAL_SECONDS, RETRY_INTERVAL_SECONDS,
                                                  SESSION_DAY_INTERVAL_SECONDS, seconds_to_next_refresh)
from spy_streamer.market.calendar_store import load_known_days
from spy_streamer.market.market_hours import NO_SESSION_IN_SIGHT, MarketCalendar
from spy_streamer.market.special_days import SpecialDay, special_day_from_row
from spy_streamer.monitoring.health_check import CRITICAL, WARNING, evaluate_health
from spy_streamer.reports.status_report import calendar_lines, market_lines, status_document
from test_heartbeat_monitor import Rig, config  # noqa: F401 (fixture)

HOURS = load_config(REPO_ROOT / "config" / "settings.yaml").market_hours
TUESDAY = date(2026, 11, 24)                   # a regular session by the NYSE rules
BLACK_FRIDAY = date(2026, 11, 27)              # the rules: early close at 13:00


def closed(day: date, name: str = "Polygon only") -> dict[date, SpecialDay]:
    return {day: SpecialDay(day, name)}


def early(day: date, hour: int, minute: int, name: str = "Half Day") -> dict[date, SpecialDay]:
    return {day: SpecialDay(day, name, None, ny(day.year, day.month, day.day, hour, minute))}


def closed_for(first: date, days: int) -> dict[date, SpecialDay]:
    return {first + timedelta(n): SpecialDay(first + timedelta(n), "Poison") for n in range(days)}


# --- what only Polygon states: applied, and shown ---

def test_a_closure_only_polygon_states_is_applied_and_named_with_both_sources():
    calendar = MarketCalendar(HOURS, closed(TUESDAY, "National Day of Mourning"))
    assert calendar.session_on(TUESDAY) is None
    (item,) = calendar.polygon_only_days(date(2026, 11, 23))
    assert item.describe() == ("2026-11-24: Polygon says closed (National Day of Mourning), the exchange rules "
                               "say regular session 09:30-16:00")


def test_an_early_close_at_another_time_is_applied_and_named():
    """Seen: an early close at 12:31 was taken silently."""
    calendar = MarketCalendar(HOURS, {**early(TUESDAY, 12, 31), **early(BLACK_FRIDAY, 12, 0, "Shorter")})
    assert calendar.session_on(TUESDAY).close == ny(2026, 11, 24, 12, 31)
    assert [item.describe() for item in calendar.polygon_only_days(TUESDAY)] == [
        "2026-11-24: Polygon says early close 09:30-12:31 (Half Day), the exchange rules say regular session 09:30-16:00",
        "2026-11-27: Polygon says early close 09:30-12:00 (Shorter), the exchange rules say early close 09:30-13:00 "
        "(Day after Thanksgiving Day)"]


def test_what_polygon_and_the_rules_agree_on_is_not_a_disagreement():
    agreeing = {**early(BLACK_FRIDAY, 13, 0, "Day after Thanksgiving"), **closed(date(2026, 11, 26), "Thanksgiving"),
                **closed(date(2026, 11, 28), "A Saturday")}
    assert MarketCalendar(HOURS, agreeing).polygon_only_days(TUESDAY) == []


def test_past_days_and_rule_free_calendars_have_nothing_to_show():
    calendar = MarketCalendar(HOURS, closed(TUESDAY))
    assert calendar.polygon_only_days(TUESDAY + timedelta(1)) == []
    no_rules = MarketCalendar(dataclasses.replace(HOURS, holiday_rules="none"), closed(TUESDAY))
    assert no_rules.polygon_only_days(TUESDAY) == []


def test_the_heartbeat_check_and_status_say_so(config):
    rig = Rig(config, ny(2026, 11, 23, 20, 0))
    rig.calendar.use_polygon_days(early(TUESDAY, 12, 31))
    beat = rig.monitor.send_heartbeat()
    assert beat["calendar_disagreements"] == [{"date": "2026-11-24", "polygon": "early close 09:30-12:31 (Half Day)",
                                               "rules": "regular session 09:30-16:00"}]
    verdict = evaluate_health(beat, rig.clock.now())
    assert verdict.code == WARNING
    assert "2026-11-24" in verdict.text and "Polygon says early close 09:30-12:31" in verdict.text
    assert "the rules say regular session 09:30-16:00" in verdict.text
    (line,) = calendar_lines(rig.calendar, rig.clock.now())
    assert "2026-11-24: Polygon says early close 09:30-12:31 (Half Day)" in line
    assert status_document(rig.calendar, rig.clock.now(), "calendar: x", beat)["calendar_disagreements"] == \
        beat["calendar_disagreements"]


# --- no session in sight: a state, never a crash ---

@pytest.mark.parametrize("first_offset, days", [(0, 40), (0, 70), (-3, 35)])
def test_a_month_of_closures_is_a_state_every_query_answers(first_offset, days):
    """Seen: `RuntimeError: no market session in the next 30 days` on every start of run and status."""
    now = ny(2026, 11, 24, 11, 0)
    calendar = MarketCalendar(HOURS, closed_for(TUESDAY + timedelta(first_offset), days))
    assert calendar.current_or_next_session(now) is None
    assert calendar.is_market_open(now) is False
    assert calendar.closed_reason(now) == NO_SESSION_IN_SIGHT
    assert calendar.seconds_until_market_open(now) == float("inf")
    assert market_lines(calendar, now)[0].startswith(f"market: CLOSED ({NO_SESSION_IN_SIGHT})")
    document = status_document(calendar, now, "calendar: x", None)
    assert document["market"]["session_in_sight"] is False and document["market"]["next_open"] is None
    assert seconds_to_next_refresh(calendar, now, succeeded=True) == SESSION_DAY_INTERVAL_SECONDS


def test_no_session_in_sight_is_critical_and_named_in_the_heartbeat(config):
    rig = Rig(config, ny(2026, 11, 24, 11, 0))
    rig.calendar.use_polygon_days(closed_for(TUESDAY, 40))
    beat = rig.monitor.send_heartbeat()
    assert beat["session_in_sight"] is False and beat["next_open"] is None and beat["next_close"] is None
    verdict = evaluate_health(json.loads(rig.path.read_text()), rig.clock.now())
    assert verdict.code == CRITICAL and NO_SESSION_IN_SIGHT in verdict.text
    assert "2026-11-24: Polygon says closed (Poison)" in calendar_lines(rig.calendar, rig.clock.now())[0]


@pytest.mark.parametrize("row", [
    {"date": "2026-11-24", "status": "early-close", "close": "2099-01-01T18:00:00Z"},        # not on its date
    {"date": "2026-11-24", "status": "early-close", "close": "2026-11-24T12:00:00Z",
     "open": "2026-11-24T17:00:00Z"},                                                       # opens after it closes
    {"date": "0001-01-01", "status": "early-close", "close": "0001-01-01T00:00:00+05:00"},  # OverflowError
    {"date": "2026-11-24", "status": "early-close", "close": "9999-12-31T23:59:59-05:00"},
    {"date": "2026-11-24", "status": "early-close", "close": 5},
])
def test_an_absurd_row_is_no_special_day(row):
    assert special_day_from_row(row) is None


def test_a_name_stays_one_short_line():
    special = special_day_from_row({"date": "2026-11-24", "status": "closed", "name": "a\nb|" + "x" * 500})
    assert special.name.startswith("a b|") and len(special.name) == 100


@pytest.mark.parametrize("document", ["[" * 100_000, '{"days": [{"date": "0001-01-01", "status": "early-close", '
                                      '"close": "0001-01-01T00:00:00+05:00"}], "fetched_at": "2026-11-23"}',
                                      '{"days": 5}', '{"days": [], "fetched_at": 7}'])
def test_an_absurd_calendar_file_is_ignored_with_a_warning(tmp_path, document):
    path = tmp_path / "calendar.json"
    path.write_text(document)
    assert load_known_days(path).days == {}


# --- the refresh keeps up on a session day ---

@pytest.mark.parametrize("now, succeeded, seconds", [
    (ny(2026, 11, 24, 11, 0), True, SESSION_DAY_INTERVAL_SECONDS),    # open
    (ny(2026, 11, 24, 6, 0), True, SESSION_DAY_INTERVAL_SECONDS),     # due today
    (ny(2026, 11, 24, 17, 0), True, 16.5 * 3600),                     # closed: at the latest at the next open
    (ny(2026, 11, 20, 17, 0), True, REFRESH_INTERVAL_SECONDS),        # Friday evening: daily
    (ny(2026, 11, 20, 17, 0), False, RETRY_INTERVAL_SECONDS),
    (ny(2026, 11, 24, 9, 29, 59), True, SESSION_DAY_INTERVAL_SECONDS),
])
def test_refreshed_at_least_hourly_while_a_session_is_open_or_due(now, succeeded, seconds):
    """Seen: a running daemon did not learn an early close listed after its start (refresh only daily)."""
    calendar = MarketCalendar(HOURS)
    assert seconds_to_next_refresh(calendar, now, succeeded) == seconds
    assert SESSION_DAY_INTERVAL_SECONDS <= 3600

