"""One daemon per data folder: an exclusive flock on `<data_dir>/.spy-streamer.lock`.

Two recorders on one folder would store every bar twice and fight over one heartbeat file. The kernel
drops a flock when its holder dies, so a SIGKILL never leaves a stale lock behind; the pid written into
the file is only there to name the holder in the second instance's message.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .storage.layout import lock_path



class InstanceLocked(Exception):
    """Another process holds the lock."""

    def __init__(self, path: Path, holder_pid: int | None):
        self.holder_pid = holder_pid
        holder = f"pid {holder_pid}" if holder_pid else "another process"
        super().__init__(f"another spy-streamer ({holder}) is already recording into {path.parent}; "
                         f"only one instance may use a data_dir (lock file {path})")


class InstanceLock:
    def __init__(self, data_dir: Path):
        self.path = lock_path(data_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        """InstanceLocked when another process holds it; OSError when the lock file cannot be made."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise InstanceLocked(self.path, holder) from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only the holder's pid goes unnamed

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock; the file stays (unlinking it would race a new holder)
            self._fd = None

    def __enter__(self) -> "InstanceLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None
