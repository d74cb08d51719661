"""The calendar against an independent NYSE calendar (exchange_calendars' XNYS, a test-only dependency):
every day of 2000-2030 with Polygon's endpoint down (the rules alone), and with Polygon lists that are
short or leave a day out. Expected answers for instants come from XNYS's session table, never from ours.

Closures the rules library cannot know are listed in ONLY_POLYGON_KNOWS: the list must teach them. The
`holidays` package knows every one-off closure of 2000-2030 up to 2025-01-09 (Carter's national day of
mourning), so those are in the comparison with the endpoint down; what is left for Polygon are closures
declared after the library was released, such as the (invented) days below.
"""
from __future__ import annotations

import bisect
from datetime import date, datetime, time, timedelta, timezone

import exchange_calendars
import pytest

from conftest import NY, REPO_ROOT
from spy_streamer.config import load_config
from spy_streamer.market.market_hours import MarketCalendar
from spy_streamer.market.special_days import SpecialDay, parse_polygon_rows

pytestmark = pytest.mark.filterwarnings("ignore:Series.values returning an ndarray")  # inside exchange_calendars

HOURS = load_config(REPO_ROOT / "config" / "settings.yaml").market_hours
FIRST, LAST = date(2000, 1, 1), date(2030, 12, 31)
SAMPLED_TIMES = (time(9, 29, 59), time(9, 30), time(12, 59, 59), time(13), time(15, 59, 59), time(16), time(20))

ONLY_POLYGON_KNOWS = [
    {"date": "2027-02-11", "exchange": "NYSE", "name": "National Day of Mourning", "status": "closed"},
    {"date": "2028-06-14", "exchange": "NYSE", "name": "Closed for weather", "status": "closed"},
]


class Reference:
    """XNYS's sessions as sorted UTC opens and closes, and the answers they give for an instant."""

    def __init__(self):
        xnys = exchange_calendars.get_calendar("XNYS", start=FIRST.isoformat(), end="2031-01-31")
        self.by_day = {label.date(): (opens.to_pydatetime(), closes.to_pydatetime())
                       for label, opens, closes in zip(xnys.sessions, xnys.opens, xnys.closes)}
        self.opens = [opens for opens, _ in self.by_day.values()]
        self.closes = [closes for _, closes in self.by_day.values()]

    def answers(self, now: datetime) -> tuple[bool, float, float]:
        """(open, seconds to the next open or 0, seconds to the close of the current or next session)."""
        index = bisect.bisect_right(self.closes, now)
        opens, closes = self.opens[index], self.closes[index]
        return opens <= now, max(0.0, (opens - now).total_seconds()), (closes - now).total_seconds()


@pytest.fixture(scope="module")
def reference():
    return Reference()


def every_day(first: date = FIRST, last: date = LAST):
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def sampled_instants(day: date) -> list[datetime]:
    instants = [datetime.combine(day, clock, tzinfo=NY) for clock in SAMPLED_TIMES]
    if _is_dst_change(day):
        instants += [datetime(day.year, day.month, day.day, 1, 30, tzinfo=NY, fold=fold) for fold in (0, 1)]
        instants.append(datetime(day.year, day.month, day.day, 3, tzinfo=NY))
    return instants


def _is_dst_change(day: date) -> bool:
    return datetime.combine(day, time(0), tzinfo=NY).utcoffset() != datetime.combine(day, time(23), tzinfo=NY).utcoffset()


def session_mismatches(calendar: MarketCalendar, reference: Reference, first=FIRST, last=LAST) -> list:
    mismatches = []
    for day in every_day(first, last):
        session = calendar.session_on(day)
        ours = None if session is None else (session.open, session.close)
        if ours != reference.by_day.get(day):
            mismatches.append((day, ours, reference.by_day.get(day)))
    return mismatches


def instant_mismatches(calendar: MarketCalendar, reference: Reference, first=FIRST, last=LAST) -> list:
    mismatches = []
    for day in every_day(first, last):
        for instant in sampled_instants(day):
            now = instant.astimezone(timezone.utc)
            ours = (calendar.is_market_open(now), calendar.seconds_until_market_open(now),
                    calendar.seconds_until_market_close(now))
            if ours != reference.answers(now):
                mismatches.append((instant.isoformat(), ours, reference.answers(now)))
    return mismatches


def polygon_rows_from(reference: Reference, year: int, leave_out: set[date] = frozenset()) -> list[dict]:
    """What Polygon's list would say for `year`, built from XNYS (weekdays without a session are closed)."""
    rows = []
    for day in every_day(date(year, 1, 1), date(year, 12, 31)):
        if day.weekday() >= 5 or day in leave_out:
            continue
        session = reference.by_day.get(day)
        if session is None:
            rows.append({"date": day.isoformat(), "exchange": "NYSE", "name": "closed", "status": "closed"})
        elif session[1].astimezone(NY).time() != time(16):
            rows.append({"date": day.isoformat(), "exchange": "NYSE", "name": "early", "status": "early-close",
                         "open": session[0].isoformat(), "close": session[1].isoformat()})
    return rows


def test_the_sampled_instants_cover_both_dst_changes_every_year():
    changes = [day for day in every_day() if _is_dst_change(day)]
    assert len(changes) == 2 * 31
    assert len(sampled_instants(date(2026, 11, 1))) == len(SAMPLED_TIMES) + 3


def test_endpoint_down_sessions_match_xnys_every_day(reference):
    assert session_mismatches(MarketCalendar(HOURS), reference) == []


def test_endpoint_down_instants_match_xnys(reference, record_figure):
    calendar = MarketCalendar(HOURS)
    assert instant_mismatches(calendar, reference) == []
    record_figure("xnys_days_compared", (LAST - FIRST).days + 1)


@pytest.mark.parametrize("leave_out", [set(), {date(2026, 11, 27)}, {date(2026, 12, 24), date(2026, 12, 25)}],
                         ids=["this year's list", "list without today (early close)", "list without two days"])
def test_a_list_of_one_year_or_with_days_left_out_still_matches(reference, leave_out):
    calendar = MarketCalendar(HOURS, parse_polygon_rows(polygon_rows_from(reference, 2026, leave_out)))
    assert session_mismatches(calendar, reference, date(2025, 1, 1), date(2028, 1, 31)) == []
    assert instant_mismatches(calendar, reference, date(2025, 12, 1), date(2027, 1, 31)) == []


@pytest.mark.parametrize("row", ONLY_POLYGON_KNOWS, ids=lambda row: row["date"])
def test_closures_only_polygon_can_teach(reference, row):
    day = date.fromisoformat(row["date"])
    rules_only = MarketCalendar(HOURS)
    assert day in reference.by_day and rules_only.session_on(day) is not None   # nobody else knows
    rules_only.use_polygon_days(parse_polygon_rows([row]))
    assert rules_only.session_on(day) is None
    assert rules_only.closed_reason(datetime.combine(day, time(12), tzinfo=NY)) == f"holiday: {row['name']}"


def test_the_one_off_closures_of_the_past_are_in_the_rules():
    rules_only = MarketCalendar(HOURS)
    for day in (date(2001, 9, 11), date(2004, 6, 11), date(2007, 1, 2), date(2012, 10, 29), date(2018, 12, 5),
                date(2025, 1, 9)):
        special = rules_only.special_day(day)
        assert isinstance(special, SpecialDay) and special.closed, day
