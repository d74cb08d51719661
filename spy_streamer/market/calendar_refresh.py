"""Learning Polygon's `upcoming` list: one fetch, merged into the known days, kept on disk, published.

The refresher creates no thread and schedules nothing: the supervisor calls `refresh()` on a named one-shot
thread from its timer (at start, then every REFRESH_INTERVAL_SECONDS, or RETRY_INTERVAL_SECONDS after a
failure); `status` calls it inline with a short timeout. Calendar queries never wait for it: the fetch
holds no lock, and the merged days reach the calendar in one assignment.

A failure costs nothing but freshness: the calendar keeps the exchange rules and every day learned
before. It logs one WARNING per failure streak (`holidays_unavailable`) and one INFO when a fetch works
again (`holidays_available`).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

from .calendar_store import KnownDays, calendar_path, load_known_days, merge_days, save_known_days
from ..clock import SystemClock
from ..config import Config
from .market_hours import MarketCalendar
from ..data_sources.polygon_rest import fetch_upcoming_holidays, make_rest_client
from .special_days import parse_polygon_rows
from ..monitoring.failure_streak import FailureStreak

log = logging.getLogger(__name__)

REFRESH_INTERVAL_SECONDS = 86400.0   # Polygon adds early closes and closures during the year
RETRY_INTERVAL_SECONDS = 3600.0      # after a failure: soon, but without hammering a dead endpoint
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
        self._merge_lock = threading.Lock()   # two refreshes must not lose each other's days
        self._streak = FailureStreak("calendar_refresh", log, "holidays_unavailable", "holidays_available")

    def refresh(self) -> bool:
        """One fetch; True when Polygon answered (the calendar then knows the new days at once)."""
        try:
            learned = parse_polygon_rows(self._fetch_rows())
        except Exception as exc:  # RestAnswerError, or whatever an injected fetch raises
            self._report_failure(exc)
            return False
        with self._merge_lock:
            known = merge_days(load_known_days(self._store_path).days, self.calendar.polygon_days, learned)
            self.calendar.use_polygon_days(known)
            self._persist(KnownDays(known, self._clock.now()))
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


def polygon_refresher(config: Config, calendar: MarketCalendar, api_key: str,
                      timeout_seconds: float = REFRESH_TIMEOUT_SECONDS, clock=None) -> PolygonCalendarRefresher:
    """The refresher over the real REST client; one request takes at most `timeout_seconds`."""
    client = make_rest_client(api_key, config.polygon.rest_base_url, timeout_seconds=timeout_seconds)
    return PolygonCalendarRefresher(calendar, lambda: fetch_upcoming_holidays(client), calendar_path(config), clock)
