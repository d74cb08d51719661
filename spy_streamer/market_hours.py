"""The market calendar: when the regular US session is open, from the config and Polygon's holidays.

Every question takes an optional aware `now`, so callers (and tests) inject the clock. Pre-market and
after-hours are deliberately not sessions: outside the regular session the market is closed.
"""
from __future__ import annotations

import functools
import logging
import threading
import time as monotonic_time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

from .config import MarketHoursConfig

log = logging.getLogger(__name__)

# Polygon answers one row per exchange; the equity session follows NYSE and NASDAQ (not OTC).
EQUITY_EXCHANGES = ("NYSE", "NASDAQ")
LOOKAHEAD_DAYS = 30
HOLIDAY_RETRY_SECONDS = 3600.0
HOLIDAY_REFRESH_SECONDS = 86400.0


@dataclass(frozen=True)
class SpecialDay:
    """A holiday (`close is None`: closed all day) or an early close, from Polygon."""
    day: date
    name: str
    open: datetime | None = None
    close: datetime | None = None

    @property
    def closed(self) -> bool:
        return self.close is None


@dataclass(frozen=True)
class Session:
    open: datetime
    close: datetime
    early_close: SpecialDay | None = None


def parse_special_days(rows: list[dict[str, Any]]) -> dict[date, SpecialDay]:
    """Polygon's upcoming-status rows to one SpecialDay per date; rows of other exchanges or bad rows skipped."""
    days: dict[date, SpecialDay] = {}
    for row in rows:
        if row.get("exchange") not in EQUITY_EXCHANGES:
            continue
        special = _parse_row(row)
        # If one exchange closes all day and another only early, the stricter answer wins.
        if special is not None and (special.day not in days or special.closed):
            days[special.day] = special
    return days


def _parse_row(row: dict[str, Any]) -> SpecialDay | None:
    try:
        day = date.fromisoformat(row["date"])
        name = str(row.get("name") or "holiday")
        if row["status"] == "closed":
            return SpecialDay(day, name)
        if row["status"] == "early-close":
            return SpecialDay(day, name, _utc_instant(row["open"]), _utc_instant(row["close"]))
    except (KeyError, TypeError, ValueError):
        pass
    return None


def _utc_instant(text: str) -> datetime:
    # Polygon writes "2026-11-27T18:00:00.000Z"; fromisoformat accepts "Z" only from Python 3.11 on.
    instant = datetime.fromisoformat(text)
    if instant.tzinfo is None:
        raise ValueError(f"timestamp without a zone: {text!r}")
    return instant.astimezone(timezone.utc)


class HolidaySource:
    """Special days per year, fetched once per year (and refreshed daily, as Polygon adds early closes
    during the year) and cached with functools.lru_cache.

    `fetch_rows()` returns Polygon's rows or raises. A failure logs one warning and keeps the last
    known special days of that year (none at first: the regular weekly calendar still applies); it is
    retried after `retry_seconds`, not on every question, so a dead endpoint is not hammered.
    """

    def __init__(self, fetch_rows: Callable[[], list[dict[str, Any]]],
                 retry_seconds: float = HOLIDAY_RETRY_SECONDS,
                 refresh_seconds: float = HOLIDAY_REFRESH_SECONDS,
                 monotonic: Callable[[], float] = monotonic_time.monotonic):
        self._fetch_rows = fetch_rows
        self._retry_seconds = retry_seconds
        self._refresh_seconds = refresh_seconds
        self._monotonic = monotonic
        self._failed_at: dict[int, float] = {}
        self._last_known: dict[int, dict[date, SpecialDay]] = {}
        self._cached_year = functools.lru_cache(maxsize=4)(self._load_year)
        # Several threads ask the calendar; lru_cache alone would let them fetch the same year at once.
        self._lock = threading.Lock()

    def for_year(self, year: int) -> dict[date, SpecialDay]:
        with self._lock:
            return self._for_year_locked(year)

    def _for_year_locked(self, year: int) -> dict[date, SpecialDay]:
        failed_at = self._failed_at.get(year)
        if failed_at is not None and self._monotonic() - failed_at < self._retry_seconds:
            return self._last_known.get(year, {})
        try:
            # The refresh period is part of the key: a new day is a cache miss. lru_cache does not cache
            # exceptions, so a failure is retried (after retry_seconds).
            days = self._cached_year(year, int(self._monotonic() // self._refresh_seconds))
        except Exception as exc:
            self._failed_at[year] = self._monotonic()
            known = self._last_known.get(year, {})
            log.warning("holiday calendar unavailable for %d (%s); using %d known special days", year, exc,
                        len(known), extra={"event": "holidays_unavailable"})
            return known
        self._failed_at.pop(year, None)
        self._last_known[year] = days
        return days

    def _load_year(self, year: int, refresh_period: int) -> dict[date, SpecialDay]:
        days = parse_special_days(self._fetch_rows())
        return {day: special for day, special in days.items() if day.year == year}


def no_special_days(year: int) -> dict[date, SpecialDay]:
    return {}


class MarketCalendar:
    def __init__(self, hours: MarketHoursConfig,
                 special_days: Callable[[int], dict[date, SpecialDay]] = no_special_days):
        self.hours = hours
        self.tz = hours.timezone
        self._special_days = special_days

    def special_day(self, day: date) -> SpecialDay | None:
        return self._special_days(day.year).get(day)

    def session_on(self, day: date) -> Session | None:
        """The regular session of a local date, or None when the market does not open that day."""
        if day.weekday() not in self.hours.active_days:
            return None
        special = self.special_day(day)
        if special is not None and special.closed:
            return None
        # Instants are kept in UTC: arithmetic between two datetimes sharing one ZoneInfo is wall-clock
        # arithmetic in Python and would be an hour off across a DST change.
        opens = datetime.combine(day, self.hours.start_time, tzinfo=self.tz).astimezone(timezone.utc)
        closes = datetime.combine(day, self.hours.end_time, tzinfo=self.tz).astimezone(timezone.utc)
        if special is None:
            return Session(opens, closes)
        # Polygon's early-close times replace the regular ones, but never widen the session
        # into pre-market or after-hours.
        return Session(max(opens, special.open), min(closes, special.close), special)

    def current_or_next_session(self, now: datetime | None = None) -> Session:
        """The session in progress at `now`, else the next one to open."""
        now = self._now(now)
        first_day = now.astimezone(self.tz).date()
        for offset in range(LOOKAHEAD_DAYS):
            session = self.session_on(first_day + timedelta(days=offset))
            if session is not None and session.close > now:
                return session
        raise RuntimeError(f"no market session in the next {LOOKAHEAD_DAYS} days; check active_days")

    def is_market_open(self, now: datetime | None = None) -> bool:
        now = self._now(now)
        return self.current_or_next_session(now).open <= now

    def seconds_until_market_open(self, now: datetime | None = None) -> float:
        """0 while open; otherwise the time to the next open."""
        now = self._now(now)
        return max(0.0, (self.current_or_next_session(now).open - now).total_seconds())

    def seconds_until_market_close(self, now: datetime | None = None) -> float:
        """Time to the close of the current session, or of the next one while closed."""
        now = self._now(now)
        return (self.current_or_next_session(now).close - now).total_seconds()

    def trading_day(self, now: datetime | None = None) -> date:
        """The local (exchange time zone) calendar date of `now`."""
        return self._now(now).astimezone(self.tz).date()

    def closed_reason(self, now: datetime | None = None) -> str | None:
        """Why the market is closed at `now`, for a person; None while it is open."""
        now = self._now(now)
        if self.is_market_open(now):
            return None
        today = self.trading_day(now)
        special = self.special_day(today)
        if today.weekday() not in self.hours.active_days:
            return "weekend"
        if special is not None and special.closed:
            return f"holiday: {special.name}"
        session = self.session_on(today)
        if special is not None and now >= session.close:
            return f"early close ({special.name}) at {session.close.astimezone(self.tz):%H:%M %Z}"
        return "outside regular hours"

    @staticmethod
    def _now(now: datetime | None) -> datetime:
        if now is None:
            return datetime.now(timezone.utc)
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        return now.astimezone(timezone.utc)
