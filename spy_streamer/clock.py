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
