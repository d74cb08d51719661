"""The market calendar: when the regular session is open, from the configured hours and the exchange's
special days (holidays and early closes).

Where the special days come from, the first that knows a date wins:
  1. Polygon's `upcoming` list, as last learned (calendar_store keeps it on disk, calendar_refresh
     updates it): the authority for the days it lists, unscheduled closures and changed early closes
     included;
  2. the exchange's rules (exchange_rules), chosen by `streaming.market_hours.holiday_rules`:
     "XNYS" (the default) or "none" (only what Polygon lists applies).
How they meet the configured hours: a holiday closes the session of that local date; an early close
ends the session at the exchange's closing instant (13:00 New York, whatever the configured zone) when
that comes before the configured end. A special day never widens the session into pre-market or
after-hours, and an early close at or before the configured open leaves no session that day.

Every question takes an optional aware `now`, so callers (and tests) inject the clock. Queries do no I/O
and take no lock: a refresh publishes a whole new read-only mapping in one assignment
(`use_polygon_days`), so a query sees the old days or the new ones, and a running session can ask again
at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from types import MappingProxyType
from typing import Mapping

from ..config import MarketHoursConfig
from .exchange_rules import RULE_SETS
from .special_days import EXCHANGE_TZ, SpecialDay

__all__ = ["Disagreement", "MarketCalendar", "Session", "SpecialDay"]

LOOKAHEAD_DAYS = 30
NO_SESSION_IN_SIGHT = f"no session in the next {LOOKAHEAD_DAYS} days by the calendar"


# Extended hours (opt-in): pre-market from 04:00 New York, after-hours until 4 h after the regular close
# (20:00; 17:00 after a 13:00 early close), as Nasdaq and NYSE Arca run them.
PRE_MARKET_OPENS = time(4, 0)
AFTER_HOURS_SPAN = timedelta(hours=4)


@dataclass(frozen=True)
class Session:
    open: datetime
    close: datetime
    early_close: SpecialDay | None = None   # the special day that moved the close (or the open), if any
    regular_open: datetime | None = None    # with extended hours: the regular session inside [open, close)
    regular_close: datetime | None = None

    @property
    def extended(self) -> bool:
        return self.regular_open is not None

    @property
    def regular(self) -> tuple[datetime, datetime]:
        """(open, close) of the regular session (the whole session without extended hours)."""
        return (self.regular_open or self.open, self.regular_close or self.close)


@dataclass(frozen=True)
class Disagreement:
    """A day Polygon's list and the exchange rules describe differently (Polygon's is applied)."""
    day: date
    polygon: str      # "closed (National Day of Mourning)", "early close 09:30-12:31 (Half Day)"
    rules: str        # "regular session 09:30-16:00", "early close 09:30-13:00 (Christmas Eve)"

    def describe(self) -> str:
        return f"{self.day}: Polygon says {self.polygon}, the exchange rules say {self.rules}"

    def as_row(self) -> dict[str, str]:
        return {"date": self.day.isoformat(), "polygon": self.polygon, "rules": self.rules}


def _bounds(session: Session | None) -> tuple[datetime, datetime] | None:
    return None if session is None else (session.open, session.close)


class MarketCalendar:
    def __init__(self, hours: MarketHoursConfig, polygon_days: Mapping[date, SpecialDay] | None = None):
        self.hours = hours
        self.tz = hours.timezone
        self._rules = RULE_SETS[hours.holiday_rules]
        self._polygon_days: Mapping[date, SpecialDay] = MappingProxyType(dict(polygon_days or {}))

    @property
    def polygon_days(self) -> Mapping[date, SpecialDay]:
        """The special days learned from Polygon (read-only)."""
        return self._polygon_days

    def use_polygon_days(self, days: Mapping[date, SpecialDay]) -> None:
        """Replace what Polygon taught with `days` (the merged list): every later query sees them."""
        self._polygon_days = MappingProxyType(dict(days))

    def special_day(self, day: date) -> SpecialDay | None:
        learned = self._polygon_days.get(day)
        return learned if learned is not None else self._rules(day.year).get(day)

    def session_on(self, day: date) -> Session | None:
        """The session of a local date (with extended hours when configured), or None when the market
        does not open that day."""
        session = self.regular_session_on(day)
        if session is None or not self.hours.extended_hours:
            return session
        pre = datetime.combine(day, PRE_MARKET_OPENS, tzinfo=EXCHANGE_TZ).astimezone(timezone.utc)
        return Session(min(pre, session.open), session.close + AFTER_HOURS_SPAN, session.early_close,
                       regular_open=session.open, regular_close=session.close)

    def regular_session_on(self, day: date) -> Session | None:
        """The regular session of a local date, or None when the market does not open that day."""
        return self._regular_session(day, self.special_day(day))

    def polygon_only_days(self, since: date) -> list[Disagreement]:
        """From `since` on, the days whose session Polygon's list changes against the exchange rules (a
        closure or early close only Polygon states, or another closing time): applied, and worth showing.
        None with `holiday_rules: none` (there are no rules to disagree with)."""
        if self.hours.holiday_rules == "none":
            return []
        found = []
        for day in sorted(day for day in self._polygon_days if day >= since):
            by_rules = self._rules(day.year).get(day)
            polygon, rules = self.regular_session_on(day), self._regular_session(day, by_rules)
            if _bounds(polygon) != _bounds(rules):
                found.append(Disagreement(day, self._describe(polygon, self._polygon_days[day]),
                                          self._describe(rules, by_rules)))
        return found

    def _describe(self, session: Session | None, special: SpecialDay | None) -> str:
        name = f" ({special.name})" if special is not None else ""
        if session is None:
            return f"closed{name}"
        opens, closes = (instant.astimezone(self.tz) for instant in (session.open, session.close))
        return f"{'early close' if special is not None else 'regular session'} {opens:%H:%M}-{closes:%H:%M}{name}"

    def _regular_session(self, day: date, special: SpecialDay | None) -> Session | None:
        if day.weekday() not in self.hours.active_days:
            return None
        if special is not None and special.closed:
            return None
        # Instants are kept in UTC: arithmetic between two datetimes sharing one ZoneInfo is wall-clock
        # arithmetic in Python and would be an hour off across a DST change.
        opens = datetime.combine(day, self.hours.start_time, tzinfo=self.tz).astimezone(timezone.utc)
        closes = datetime.combine(day, self.hours.end_time, tzinfo=self.tz).astimezone(timezone.utc)
        if special is None:
            return Session(opens, closes)
        opens = max(opens, special.open or opens)
        closes = min(closes, special.close)
        return Session(opens, closes, special) if opens < closes else None

    def current_or_next_session(self, now: datetime | None = None) -> Session | None:
        """The session in progress at `now`, else the next one to open; None when none opens within
        LOOKAHEAD_DAYS (a calendar that closes a whole month: every caller names that state, none fails)."""
        now = self._now(now)
        first_day = now.astimezone(self.tz).date()
        for offset in range(LOOKAHEAD_DAYS):
            session = self.session_on(first_day + timedelta(days=offset))
            if session is not None and session.close > now:
                return session
        return None

    def is_market_open(self, now: datetime | None = None) -> bool:
        now = self._now(now)
        session = self.current_or_next_session(now)
        return session is not None and session.open <= now

    def seconds_until_market_open(self, now: datetime | None = None) -> float:
        """0 while open; otherwise the time to the next open (infinite with no session in sight)."""
        now = self._now(now)
        session = self.current_or_next_session(now)
        return math.inf if session is None else max(0.0, (session.open - now).total_seconds())

    def seconds_until_market_close(self, now: datetime | None = None) -> float:
        """Time to the close of the current session, or of the next one while closed (or infinite)."""
        now = self._now(now)
        session = self.current_or_next_session(now)
        return math.inf if session is None else (session.close - now).total_seconds()

    def trading_day(self, now: datetime | None = None) -> date:
        """The local (exchange time zone) calendar date of `now`."""
        return self._now(now).astimezone(self.tz).date()

    def closed_reason(self, now: datetime | None = None) -> str | None:
        """Why the market is closed at `now`, for a person; None while it is open."""
        now = self._now(now)
        if self.is_market_open(now):
            return None
        if self.current_or_next_session(now) is None:
            return NO_SESSION_IN_SIGHT
        today = self.trading_day(now)
        if today.weekday() not in self.hours.active_days:
            return "weekend"
        special = self.special_day(today)
        if special is not None and special.closed:
            return f"holiday: {special.name}"
        session = self.session_on(today)
        if special is not None and (session is None or now >= session.close):
            closes = special.close if session is None else session.close
            return f"early close ({special.name}) at {closes.astimezone(self.tz):%H:%M %Z}"
        return "outside regular hours"

    @staticmethod
    def _now(now: datetime | None) -> datetime:
        if now is None:
            return datetime.now(timezone.utc)
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return now.astimezone(timezone.utc)
