"""Learning Polygon's `upcoming` list: one fetch, applied to the known days, kept on disk, published.

The latest answer is the authority for the dates it covers (calendar_store.apply_answer): a day an earlier
answer listed and this one leaves out is no longer special; what was learned past its window is kept.

The refresher creates no thread and schedules nothing: the supervisor calls `refresh()` on a named one-shot
thread from its timer (`seconds_to_next_refresh`: every half hour on a session day, else daily and at the
next open); `status` calls it inline with a short timeout. Calendar queries never wait for it: the fetch
holds no lock, and the new days reach the calendar in one assignment.

A failure costs nothing but freshness: the calendar keeps the exchange rules and every day learned
before. It logs one WARNING per failure streak (`holidays_unavailable`) and one INFO when a fetch works
again (`holidays_available`).
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from .calendar_store import KnownDays, apply_answer, calendar_path, save_known_days
from ..clock import SystemClock
from ..config import Config
from .market_hours import MarketCalendar
from ..data_sources.polygon_rest import fetch_upcoming_holidays, make_rest_client
from .special_days import parse_polygon_rows
from ..monitoring.failure_streak import FailureStreak

log = logging.getLogger(__name__)

REFRESH_INTERVAL_SECONDS = 86400.0   # Polygon adds early closes and closures during the year
RETRY_INTERVAL_SECONDS = 3600.0      # after a failure: soon, but without hammering a dead endpoint
# While a session is open or due today (or none is in sight): an early close or a closure announced
# during the day takes effect within the hour.
SESSION_DAY_INTERVAL_SECONDS = 1800.0
MIN_INTERVAL_SECONDS = 1.0
REFRESH_TIMEOUT_SECONDS = 6.0        # one bounded request (the daemon's background refresh)
STATUS_TIMEOUT_SECONDS = 3.0         # `status` waits at most this long for it

FetchRows = Callable[[], list[dict[str, Any]]]


class PolygonCalendarRefresher:
    """`fetch_rows()` returns Polygon's rows or raises; `store_path` is the calendar cache."""

    def __init__(self, calendar: MarketCalendar, fetch_rows: FetchRows, store_path: Path, clock=None):
        self.calendar = calendar
        self._fetch_rows = fetch_rows
        self._store_path = store_path
        self._clock = clock or SystemClock()
        self._merge_lock = threading.Lock()   # two refreshes apply their answers one after the other
        self._streak = FailureStreak("calendar_refresh", log, "holidays_unavailable", "holidays_available")

    def refresh(self) -> bool:
        """One fetch; True when Polygon answered (the calendar then knows the new days at once)."""
        try:
            learned = parse_polygon_rows(self._fetch_rows())
        except Exception as exc:  # RestAnswerError, or whatever an injected fetch raises
            self._report_failure(exc)
            return False
        now = self._clock.now()
        with self._merge_lock:
            known = apply_answer(self.calendar.polygon_days, learned, self.calendar.trading_day(now))
            self.calendar.use_polygon_days(known)
            self._persist(KnownDays(known, now))
        self._report_success(len(learned))
        return True

    def _persist(self, known: KnownDays) -> None:
        try:
            save_known_days(self._store_path, known)
        except OSError as exc:
            log.warning("cannot write the calendar cache %s (%s); the days learned are kept in memory only",
                        self._store_path, exc, extra={"event": "calendar_cache_unwritable"})

    def _report_failure(self, exc: Exception) -> None:
        self._streak.failed(exc, "Polygon's holiday calendar is unavailable; using the exchange rules and %d "
                                 "days learned before", len(self.calendar.polygon_days))

    def _report_success(self, learned: int) -> None:
        self._streak.succeeded("Polygon's holiday calendar is available again (%d special days listed)", learned)


def seconds_to_next_refresh(calendar: MarketCalendar, now: datetime, succeeded: bool) -> float:
    """Every SESSION_DAY_INTERVAL_SECONDS while today's session is open or still to come (or no session is
    in sight: a poisoned list is replaced as soon as Polygon answers the truth); otherwise daily (hourly
    after a failure), but never later than the next open, so the session day starts with a fresh list."""
    upcoming = calendar.current_or_next_session(now)
    if upcoming is None or calendar.trading_day(upcoming.open) <= calendar.trading_day(now):
        return SESSION_DAY_INTERVAL_SECONDS
    quiet = REFRESH_INTERVAL_SECONDS if succeeded else RETRY_INTERVAL_SECONDS
    return max(min(quiet, (upcoming.open - now).total_seconds()), MIN_INTERVAL_SECONDS)


def polygon_refresher(config: Config, calendar: MarketCalendar, api_key: str,
                      timeout_seconds: float = REFRESH_TIMEOUT_SECONDS, clock=None) -> PolygonCalendarRefresher:
    """The refresher over the real REST client; one request takes at most `timeout_seconds`."""
    client = make_rest_client(api_key, config.polygon.rest_base_url, timeout_seconds=timeout_seconds)
    return PolygonCalendarRefresher(calendar, lambda: fetch_upcoming_holidays(client), calendar_path(config), clock)
