"""The clock, passed in: wall-clock instants as aware UTC datetimes, intervals from a monotonic source.

Tests hand a fake clock to the calendar, the monitor and the writer instead of sleeping or patching.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()

    def time_ns(self) -> int:
        return time.time_ns()


class FrozenClock(SystemClock):
    """The wall clock held at `now` (a past day's session, for `verify --repair`); timers run for real."""

    def __init__(self, now: datetime):
        self._now = now.astimezone(timezone.utc)

    def now(self) -> datetime:
        return self._now
