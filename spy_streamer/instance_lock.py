"""One daemon per data folder: an exclusive flock on `<data_dir>/.spy-streamer.lock`.

Two recorders on one folder would store every bar twice and fight over one heartbeat file. The kernel
drops a flock when its holder dies, so a SIGKILL never leaves a stale lock behind; the pid written into
the file is only there to name the holder in the second instance's message.

The daemon often runs as root, and whoever can write into the data folder could plant a symlink under the
lock's name: the file is opened without following one (O_NOFOLLOW), must be a regular file, and is only
truncated once the flock is held. A lock file that is not one is refused (UnsafeLockFile), untouched.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from .storage.layout import lock_path

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

class InstanceLocked(Exception):
    """Another process holds the lock."""

    def __init__(self, path: Path, holder_pid: int | None):
        self.holder_pid = holder_pid
        holder = f"pid {holder_pid}" if holder_pid else "another process"
        super().__init__(f"another spy-streamer ({holder}) is already recording into {path.parent}; "
                         f"only one instance may use a data_dir (lock file {path})")


class UnsafeLockFile(Exception):
    """The lock file is a symlink or not a regular file: someone else put it there; it is not touched."""

    def __init__(self, path: Path, what: str):
        super().__init__(f"the lock file {path} is {what}; refusing to use it (only spy-streamer makes it: "
                         f"remove it and look into who put it there)")


class InstanceLock:
    def __init__(self, data_dir: Path):
        self.path = lock_path(data_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        """InstanceLocked when another process holds it; UnsafeLockFile when the lock file is a symlink or
        not a regular file; OSError when the lock file cannot be made."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._open()
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

    def _open(self) -> int:
        try:
            fd = os.open(self.path, _OPEN_FLAGS, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeLockFile(self.path, "a symbolic link") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):   # a FIFO or device: O_NONBLOCK made the open return
            os.close(fd)
            raise UnsafeLockFile(self.path, "not a regular file")
        return fd

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
