"""The one shape of every thread the runner owns (huey's BaseProcess, in small).

A service's `run()` works until `stop()` is called; `stop()` returns at once, from any thread, and may be
called more than once. The runner starts each service on a named thread (`thread_name`), calls `stop()`
in shutdown order and joins the thread against one deadline. A service's loops wait on `stop_requested`
(`while not self.stop_requested.wait(timeout)`), so a stop ends any wait at once; a service that blocks
on something else (a queue, an event loop) also wakes that in `_wake()`.
"""
from __future__ import annotations

import threading


class Service:
    thread_name = "service"

    def __init__(self) -> None:
        self.stop_requested = threading.Event()

    def run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stop_requested.set()
        self._wake()

    def _wake(self) -> None:
        """Interrupt a blocking wait that is not on `stop_requested` (nothing to do by default)."""
