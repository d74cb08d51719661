"""Our own files, written so that a crash or a reader never sees half of one, and read back without trusting
the folder they live in (the daemon often runs as root; whoever can write into its folders must not turn
a write into an overwrite of another file, or a read into a hang).

Writes: one routine, `write_atomically`. The content goes to a hidden temporary beside the file, under a
name nobody can guess, created exclusively (O_CREAT|O_EXCL|O_NOFOLLOW: whatever is planted there, a
symlink included, is never followed nor written), fsynced, renamed over the file (a rename replaces a
symlink there, never its target), and the folder fsynced. Any error removes the temporary. Compaction,
whose writer is a child process, uses the same two halves (`temp_beside` in the parent, `open_temp` in
the child).

Reads: `read_regular_file` opens with O_NOFOLLOW|O_NONBLOCK and refuses, with `RefusedFile`, a symlink,
anything that is not a regular file (a FIFO never blocks it) or a file over the caller's bound.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import secrets
from pathlib import Path
from typing import IO, Any, Callable

TEMP_SUFFIX = ".tmp"       # every temporary is `.<final name>.<random>.tmp`: hidden from pyarrow and DuckDB readers
FILE_MODE = 0o644          # what `open()` gives under the usual umask: node_exporter and `check` may run as others
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class RefusedFile(OSError):
    """A file of ours that is a symlink, not a regular file, or larger than it can be: not read.
    `strerror` says which, `filename` names it (callers that print `exc.strerror` beside the path fit)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(errno.EPERM, reason, str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(document, indent=1))


def write_text_atomically(path: Path, text: str) -> None:
    write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path: Path, data: bytes) -> None:
    write_atomically(path, lambda handle: handle.write(data))


def write_atomically(path: Path, fill: Callable[[IO[bytes]], object], *,
                     verify: Callable[[Path], None] | None = None, sync_folder: bool = True) -> None:
    """`fill(handle)` writes the content into a fresh temporary beside `path`; it is fsynced, `verify(temp)`
    (if given) may raise to refuse it, then it is renamed over `path` and, with `sync_folder`, the folder
    fsynced (a caller may want to treat a failure there apart: the file is in place). Readers see the old
    file or the new one, never half. Any error removes the temporary and leaves `path` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_beside(path)
    handle = open_temp(temp)   # raises before anything is ours to remove
    try:
        with handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if verify is not None:
            verify(temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()   # unlinks the entry itself, never a symlink's target
        raise
    if sync_folder:
        fsync_directory(path.parent)


def temp_beside(final: Path) -> Path:
    """A hidden name in `final`'s folder that nobody can guess (64 random bits); `open_temp` creates it."""
    return final.with_name(f".{final.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")


def open_temp(temp: Path) -> IO[bytes]:
    """`temp` created exclusively and opened for writing (O_CREAT|O_EXCL|O_NOFOLLOW): whatever is already
    there, a symlink included, makes it fail rather than write elsewhere. Compaction's child process
    writes its day file through it too."""
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_regular_file(path: Path, max_bytes: int, *, follow_symlinks: bool = False) -> bytes:
    """The content of `path`; FileNotFoundError when there is none; RefusedFile (an OSError) when it is a
    symlink, not a regular file (FIFO, device, folder) or over `max_bytes`. Never blocks on a FIFO.
    `follow_symlinks` is for files an operator points us at (a config that is a Kubernetes ConfigMap's
    link), never for the files in our own folders."""
    try:
        fd = os.open(path, _READ_FLAGS & ~os.O_NOFOLLOW if follow_symlinks else _READ_FLAGS)
    except OSError as exc:
        raise _refusal(path, exc) from None
    try:
        _check_regular(path, os.fstat(fd), max_bytes)
        data = _read_at_most(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:   # grew after the fstat
        raise RefusedFile(path, f"larger than {max_bytes:,} bytes, not read")
    return data


def _refusal(path: Path, exc: OSError) -> OSError:
    """ELOOP from O_NOFOLLOW means a symlink: say so. Other errors (ENOENT included) pass unchanged."""
    if exc.errno == errno.ELOOP:
        return RefusedFile(path, "a symbolic link, not followed")
    return exc


def _check_regular(path: Path, status: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(status.st_mode):
        raise RefusedFile(path, f"not a regular file but {_kind(status.st_mode)}, not read")
    if status.st_size > max_bytes:
        raise RefusedFile(path, f"larger than {max_bytes:,} bytes ({status.st_size:,}), not read")


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "something else")


def _read_at_most(fd: int, limit: int) -> bytes:
    parts, size = [], 0
    while size < limit:
        part = os.read(fd, limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)
