"""systemd's notify protocol (sd_notify(3)) and its watchdog, without a dependency.

A notification is one datagram of `KEY=value` lines on the AF_UNIX socket named by $NOTIFY_SOCKET (a path,
or an abstract name written with a leading `@`). systemd sets it for `Type=notify` units; anywhere else
it is unset and every call here does nothing. With `WatchdogSec=` systemd also sets $WATCHDOG_USEC (and
$WATCHDOG_PID, the process meant): a service that sends no `WATCHDOG=1` for that long is killed and, with
`Restart=on-failure`, started again. The pets come from the supervisor's loop, and only while each capture
thread's loop keeps turning, so a hung writer (a disk that blocks, a deadlock) stops them.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, Mapping

from .failure_streak import FailureStreak

log = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 1.0   # a full receive queue must not hold up the supervisor thread for long
_SENDING = FailureStreak("systemd_notify", log, "systemd_notify_failed", "systemd_notify_recovered")


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `state` (e.g. "READY=1") to systemd; False when not run by it or the datagram was refused."""
    address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_SECONDS)
            sock.sendto(state.encode(), address)
    except OSError as exc:
        _SENDING.failed(exc, "cannot notify systemd (%s)", state.split("=")[0])
        return False
    _SENDING.succeeded("systemd notifications work again")
    return True


def _socket_address(name: str) -> str | None:
    """The socket address in $NOTIFY_SOCKET's spelling: `/path`, or `@name` for the abstract namespace."""
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None   # unset, or a kind we do not speak (vsock:)


def watchdog_seconds(environ: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """systemd's WatchdogSec for this process (from $WATCHDOG_USEC), or None when no watchdog is asked for
    (or it is meant for another process: $WATCHDOG_PID, e.g. a wrapper that did not `exec`)."""
    meant_for = environ.get("WATCHDOG_PID")
    if meant_for and meant_for != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


class Watchdog:
    """WATCHDOG=1 at each pet() while every loop reported by `progress()` has turned within `stall_seconds`.

    `progress()` maps a thread's name to a counter its loop increments (empty while no session runs: then
    every pet goes out). A counter that stands still longer than `stall_seconds` withholds the pets (one
    ERROR, the heartbeat's `failing`, a STATUS= line for `systemctl status`) until it moves again."""

    def __init__(self, stall_seconds: float, progress: Callable[[], Mapping[str, int]],
                 monotonic: Callable[[], float] = time.monotonic, send: Callable[[str], bool] = notify):
        self.stall_seconds = stall_seconds
        self.progress = progress
        self.monotonic = monotonic
        self.send = send
        self._seen: dict[str, tuple[int, float]] = {}   # name -> (counter, when it last moved)
        self._withheld = FailureStreak("systemd_watchdog", log, "watchdog_withheld", "watchdog_resumed",
                                       level=logging.ERROR)

    def pet(self) -> None:
        stalled = self.stalled_threads()
        if stalled:
            self._withhold(stalled)
            return
        if self._withheld.failing:
            self.send("STATUS=capturing")
            self._withheld.succeeded("capture threads move again; systemd watchdog pets resumed")
        self.send("WATCHDOG=1")

    def stalled_threads(self) -> list[str]:
        """The loops whose counter has not moved for longer than `stall_seconds` (a loop seen for the first
        time has just moved; one no longer reported is forgotten)."""
        now, seen = self.monotonic(), {}
        for name, count in self.progress().items():
            last = self._seen.get(name)
            seen[name] = last if last is not None and last[0] == count else (count, now)
        self._seen = seen
        return sorted(name for name, (_, moved) in seen.items() if now - moved > self.stall_seconds)

    def _withhold(self, stalled: list[str]) -> None:
        why = f"{', '.join(stalled)} made no progress for over {self.stall_seconds:.0f} s"
        if not self._withheld.failing:
            self.send(f"STATUS=stalled: {why}")
        self._withheld.failed(why, "no more systemd watchdog pets, so systemd restarts the daemon",
                              thread_names=stalled)


def start_watchdog(scheduler, progress: Callable[[], Mapping[str, int]], min_stall_seconds: float,
                   environ: Mapping[str, str] = os.environ) -> Watchdog | None:
    """When systemd asks for a watchdog, pet it now and then every half of WatchdogSec as a job of
    `scheduler` (a `schedule.Scheduler`: its next run is one more due time of the supervisor's loop, so
    a closed market's loop wakes for nothing else). A loop stalls after WatchdogSec, or `min_stall_seconds`
    when that is longer (the writer turns at least once a write interval)."""
    seconds = watchdog_seconds(environ)
    if seconds is None:
        return None
    watchdog = Watchdog(max(seconds, min_stall_seconds), progress)
    watchdog.pet()
    scheduler.every(seconds / 2).seconds.do(watchdog.pet).tag("systemd-watchdog")
    return watchdog
