"""A failure streak: log the first failure, count the rest, log the recovery, show it in the heartbeat.

Something that is retried (a heartbeat write, a Parquet flush, a lake commit, a calendar refresh) must
neither log a line per attempt nor fail in silence. Each such activity owns one `FailureStreak`:

    streak = FailureStreak("heartbeat_write", log, "heartbeat_write_failed", "heartbeat_write_recovered")
    streak.failed(exc, "cannot write heartbeat %s", path)     # logged once per streak, counted always
    streak.succeeded("heartbeat writes work again")             # logged only if a streak was running

Every streak running in the process appears in the heartbeat's `failing` object (`active_streaks()`),
and `check` is WARNING while one runs: one rule, whatever failed.
"""
from __future__ import annotations

import logging
import threading
import weakref
from datetime import datetime, timezone
from typing import Any

_RUNNING: "weakref.WeakSet[FailureStreak]" = weakref.WeakSet()
_RUNNING_LOCK = threading.Lock()   # streaks fail on several threads; the heartbeat reads them on its own
MAX_ERROR_CHARS = 200


def describe_error(exc: BaseException) -> str:
    """`OSError: No space left on device`: the class and the short reason, never a whole traceback."""
    reason = getattr(exc, "strerror", None) or str(exc) or "no detail"
    return f"{type(exc).__name__}: {reason}"[:MAX_ERROR_CHARS]


class FailureStreak:
    def __init__(self, name: str, logger: logging.Logger, failed_event: str, recovered_event: str,
                 level: int = logging.WARNING):
        self.name = name
        self._log, self._level = logger, level
        self._failed_event, self._recovered_event = failed_event, recovered_event
        self.failures = 0                  # in the running streak; 0 when healthy
        self.since: datetime | None = None
        self.last_error: str | None = None

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self, exc: BaseException | str, message: str, *args: Any, **extra: Any) -> None:
        """Count a failure; the first of a streak is logged (`message % args`, then the error)."""
        self.last_error = exc if isinstance(exc, str) else describe_error(exc)
        self.failures += 1
        if self.failures > 1:
            return
        self.since = datetime.now(timezone.utc)
        with _RUNNING_LOCK:
            _RUNNING.add(self)
        self._log.log(self._level, f"{message}: %s", *args, self.last_error,
                      extra={"event": self._failed_event, **extra})

    def succeeded(self, message: str, *args: Any, **extra: Any) -> None:
        """End a running streak with one INFO line saying how many attempts failed; nothing otherwise."""
        if not self.failing:
            return
        failures, self.failures, self.since, self.last_error = self.failures, 0, None, None
        with _RUNNING_LOCK:
            _RUNNING.discard(self)
        self._log.info(f"{message} (after %d failed attempt(s))", *args, failures,
                       extra={"event": self._recovered_event, "failures": failures, **extra})

    def state(self) -> dict[str, Any]:
        return {"since": self.since.isoformat() if self.since else None, "failures": self.failures,
                "last_error": self.last_error}


def active_streaks() -> dict[str, dict[str, Any]]:
    """Every running streak by name (for the heartbeat's `failing` object)."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    return {streak.name: streak.state() for streak in sorted(running, key=lambda s: s.name)}
