"""Noticing that the wall clock jumped: a manual change, a bad NTP step, a VM resumed after a suspend.

The monotonic clock only moves forward at its own pace; the wall clock should move with it. When one pass
of the supervisor's loop sees them disagree by more than JUMP_SECONDS, the wall clock jumped, and the
session (and every timer counted on the wall clock) has to be worked out again.
"""
from __future__ import annotations

import logging
from datetime import datetime

log = logging.getLogger(__name__)

JUMP_SECONDS = 5.0     # far above a loaded machine's scheduling delay, far below a session's length


class WallClockWatch:
    def __init__(self, clock, jump_seconds: float = JUMP_SECONDS):
        self.clock = clock
        self.jump_seconds = jump_seconds
        self._reading: tuple[datetime, float] | None = None   # (wall, monotonic) at the last look

    def jumped(self) -> float | None:
        """Seconds the wall clock jumped since the last call (logged once), or None when it did not."""
        wall, monotonic = self.clock.now(), self.clock.monotonic()
        previous, self._reading = self._reading, (wall, monotonic)
        if previous is None:
            return None
        jump = (wall - previous[0]).total_seconds() - (monotonic - previous[1])
        if abs(jump) <= self.jump_seconds:
            return None
        log.warning("the wall clock jumped by %+.0f s; the session follows it", jump,
                    extra={"event": "clock_jumped", "jump_seconds": round(jump, 1)})
        return jump
