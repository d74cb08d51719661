"""At most one log line per kind and interval: a flood of signals (3,000 SIGHUP/SIGUSR1/SIGUSR2 in 20 s
once added 3,037 lines) must not fill the disk or drown the lines that matter.

The first line of a kind is written; those that follow within the interval are counted, not written; the
next line written after it says how many were held back. The action itself (a log reopen) still happens.
"""
from __future__ import annotations

import time
from typing import Callable

SIGNAL_LINE_INTERVAL_SECONDS = 60.0


class RepeatLimiter:
    def __init__(self, interval_seconds: float = SIGNAL_LINE_INTERVAL_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic):
        self.interval_seconds, self._monotonic = interval_seconds, monotonic
        self._last_line: dict[str, float] = {}
        self._held_back: dict[str, int] = {}

    def admit(self, kind: str) -> int | None:
        """None: hold this line back (it is counted). Otherwise write it, saying the returned number of
        lines of this kind held back since the last one written."""
        now = self._monotonic()
        last = self._last_line.get(kind)
        if last is not None and now - last < self.interval_seconds:
            self._held_back[kind] = self._held_back.get(kind, 0) + 1
            return None
        self._last_line[kind] = now
        return self._held_back.pop(kind, 0)
