"""The supervisor's inbox: what signal handlers and other threads tell the main loop, and a wait that ends
the moment something arrives or when the next job is due. No polling: a closed market costs nothing.

Why not a SimpleQueue with a timeout: a Python signal handler runs on the main thread, and only once that
thread is back in the interpreter. The kernel may deliver the signal to any thread; a main thread blocked
on a lock would sleep through it until its timeout, so the loop used to wake every second just in case.
Here the main thread waits in select() on a pipe, which `signal.set_wakeup_fd` writes a byte to from
whichever thread received the signal (and `put` writes one too): the wait ends at once, the handler runs,
and what it recorded is read.
"""
from __future__ import annotations

import os
import queue
import select
import signal
import time
from collections import deque


class Inbox:
    def __init__(self):
        self._items: deque = deque()   # append and popleft are atomic: no lock (a handler may put)
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous_wakeup_fd: int | None = None

    def wake_on_signals(self) -> None:
        """From the main thread: a signal's arrival, on any thread, ends a wait in get()."""
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def put(self, item) -> None:
        """Safe from any thread and from a signal handler (no lock: an append and a byte to the pipe)."""
        self._items.append(item)
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:   # the pipe is full of wake-ups already: one is enough
            pass

    put_nowait = put

    def get(self, timeout: float):
        """The oldest item, waiting at most `timeout` seconds for one; queue.Empty if none came."""
        deadline = time.monotonic() + timeout
        while not self._items:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise queue.Empty
            select.select([self._read], [], [], remaining)
            self._drain()   # before looking again: a put after this leaves a byte for the next select
        return self._items.popleft()

    def get_nowait(self):
        return self.get(0.0)

    def _drain(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def stop_waking_on_signals(self) -> None:
        """From the main thread, at the end: the signal wake-up goes back to what it was. The pipe stays
        open: a thread abandoned at the deadline may still put (the process is about to exit)."""
        if self._previous_wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self._previous_wakeup_fd = None
