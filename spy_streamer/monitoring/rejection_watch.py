"""Rows arrive but none is kept: the one guard against every cause of it, known or not.

A wrong session (the clock jumped and came back), a clock far off, a channel whose rules reject all its
rows: each shows the same way, as messages that arrive while (nearly) every row is turned away as late,
outside the session or invalid. The heartbeat thread looks once per write interval at what the writer
counted in it; a run of such intervals is a streak (FailureStreak `rows_rejected`, logged when it has
lasted STREAK_INTERVALS write intervals). The heartbeat carries how long it has lasted and what the
rejected rows were, and `check` is CRITICAL once it is longer than two write intervals.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from ..capture.pipeline_stats import WriterStats
from .failure_streak import FailureStreak

log = logging.getLogger(__name__)

NEARLY_ALL = 0.95          # of the rows that arrived in a write interval
STREAK_INTERVALS = 2       # the streak is logged (and `check` CRITICAL) when it lasts longer than this


def rejection_counts(stats: WriterStats) -> Counter:
    """Every row the writer was handed so far, by what became of it (invalid rows by their reason)."""
    counts = Counter({"arrived": stats.events_received + stats.rejected_invalid, "late": stats.rejected_late,
                      "outside_session": stats.outside_session})
    counts.update({f"invalid_{reason}": count for reason, count in stats.rejected_reasons.items()})
    counts["invalid"] = stats.rejected_invalid
    return counts


class RejectionWatch:
    def __init__(self, stats: WriterStats, interval_seconds: float, monotonic):
        self.stats = stats
        self.interval_seconds = interval_seconds
        self._monotonic = monotonic
        self._window_start = monotonic()
        self._at_window_start = rejection_counts(stats)
        self._since: float | None = None              # monotonic start of the first rejecting interval
        self._until: float | None = None              # ... and end of the last one (quiet ones prove nothing)
        self._at_streak_start: Counter | None = None
        self._streak = FailureStreak("rows_rejected", log, "rows_rejected", "rows_accepted_again", logging.ERROR)

    def tick(self) -> bool:
        """Close the write interval when it is over; True when the streak began, became long or ended
        (worth a heartbeat now rather than at the next beat)."""
        now = self._monotonic()
        if now - self._window_start < self.interval_seconds:
            return False
        counts = rejection_counts(self.stats)
        window = counts - self._at_window_start
        start = (self._window_start, self._at_window_start)
        self._window_start, self._at_window_start = now, counts
        if not window["arrived"]:
            return False      # nothing arrived: no evidence either way
        if window["late"] + window["outside_session"] + window["invalid"] >= NEARLY_ALL * window["arrived"]:
            return self._rejecting(*start, now)
        return self._accepting()

    def fields(self) -> dict[str, Any]:
        """For the heartbeat: how long (nearly) every row has been rejected, and the rejected rows by reason."""
        if self._since is None:
            return {"rejecting_seconds": None, "rejected_in_streak": None}
        since_start = rejection_counts(self.stats) - self._at_streak_start
        reasons = {key: count for key, count in sorted(since_start.items()) if key != "arrived" and count}
        return {"rejecting_seconds": round(self._until - self._since, 1), "rejected_in_streak": reasons}

    def _rejecting(self, window_start: float, counts_at_start: Counter, now: float) -> bool:
        self._until = now
        if self._since is None:
            self._since, self._at_streak_start = window_start, counts_at_start
            return True
        if now - self._since <= STREAK_INTERVALS * self.interval_seconds:
            return False
        first = not self._streak.failing
        self._streak.failed(describe_rejections(self.fields()["rejected_in_streak"]),
                            "rows arrive but (nearly) every one is rejected, for %.0f s", now - self._since)
        return first

    def _accepting(self) -> bool:
        if self._since is None:
            return False
        self._since = self._until = self._at_streak_start = None
        self._streak.succeeded("rows are kept again")
        return True


def describe_rejections(reasons: dict[str, int]) -> str:
    """"late 60, outside_session 3, invalid 2 (invalid_price 2)": the counts `check` and the log name."""
    main = [f"{key} {count}" for key, count in reasons.items() if not key.startswith("invalid_")]
    detail = [f"{key} {count}" for key, count in reasons.items() if key.startswith("invalid_")]
    return ", ".join(main) + (f" ({', '.join(detail)})" if detail else "")
