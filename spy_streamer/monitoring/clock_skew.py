"""Clock sanity: events carry the exchange's own times, so a wall clock that is wrong shows as a steady gap
between when an event arrives and its time (a bar's end, a trade's or quote's SIP time), either way. A
second bar arrives about two seconds after its end, a trade within milliseconds; a clock a day off would
reject every row as late or out of session, silently. One WARNING `clock_skew` when the disagreement
lasts, and `clock_skew_seconds` in the heartbeat (which makes `check` WARN).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

MAX_SKEW_SECONDS = 60.0        # more than Polygon's delivery delay can ever explain
SUSTAINED_SECONDS = 60.0       # a burst of delayed bars (a backlog after a stall) is not a clock problem


class ClockSkewDetector:
    """`observe()` from the writer for each batch of live events; `skew_seconds` is None while the clock
    agrees with the feed, else the arrival time minus the newest event's time (negative: clock behind)."""

    def __init__(self, max_skew_seconds: float = MAX_SKEW_SECONDS, sustained_seconds: float = SUSTAINED_SECONDS):
        self.max_skew_seconds = max_skew_seconds
        self.sustained_seconds = sustained_seconds
        self.skew_seconds: float | None = None
        self._disagreeing_since: float | None = None

    def observe(self, received_ns: int, newest_bar_end_ms: int, monotonic_now: float) -> None:
        skew = received_ns / 1e9 - newest_bar_end_ms / 1e3
        if abs(skew) <= self.max_skew_seconds:
            self._agree()
            return
        if self._disagreeing_since is None:
            self._disagreeing_since = monotonic_now
        if self.skew_seconds is None and monotonic_now - self._disagreeing_since >= self.sustained_seconds:
            self.skew_seconds = round(skew, 1)
            log.warning("the wall clock and the bars disagree by %.0f s: bars are judged late or out of "
                        "session by this clock; check NTP", skew,
                        extra={"event": "clock_skew", "skew_seconds": round(skew, 1)})

    def _agree(self) -> None:
        if self.skew_seconds is not None:
            log.info("the wall clock agrees with the bars again", extra={"event": "clock_skew_recovered"})
        self.skew_seconds = None
        self._disagreeing_since = None
