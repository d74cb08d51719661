"""End-of-day compaction: a day's micro-batch files become one sorted, deduplicated, zstd Parquet file,
`<data_dir>/<channel>/date=YYYY-MM-DD/day-YYYY-MM-DD.parquet`, still one partition of the hive layout.

Bounded memory, whatever the day's size (docs/ARCHITECTURE.md, *Storage layout and guarantees*): the merge
runs in a child process (`python -m spy_streamer.storage.compaction`, niced: compaction_merge.py, with
compaction_spill.py for large days and compaction_check.py for the checks), which keeps the first received
row of each of the channel's keys (capture/keep_first.py). benchmarks/compaction.py measures it. This
module is the capture process's side: it only starts the child, waits for it and puts its file in place.

Order of work, chosen so that no crash can lose a row:
  1. (child) read every visible file of the partition (an earlier day file included), keep the first
     received row per key, sorted; write a hidden temporary, fsync it, read every page back and check the
     row count, the order and one row per key;
  2. (this process) rename it over the day file, fsync the folder;
  3. only then delete the files read in 1 and fsync the folder again.
A crash (of either process) before 2 ends leaves the day's files as they were, plus a hidden temporary
and spill folder the next run replaces (a child whose parent dies exits within a second). A crash between
2 and 3 leaves the day file beside micro-batches holding the same rows: nothing is lost, but until the
next compaction a reader sees those rows twice (the next run reads both and drops the repeats). Step 3
follows step 2 at once to keep that window to a few milliseconds.
Only the files read in 1 are deleted: a micro-batch that lands meanwhile (a late flush) stays beside the
day file, holding rows the day file lacks, until the next run merges it.

`compact_day` holds no state and locks the partition folder, so it may run on any thread (or process)
once the day's writer has finished; a second compaction of the same day meanwhile fails at once.
`compact_after_close` is the daemon's: every channel's day, a failure kept for the heartbeat and `check`.
"""
from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow.parquet as pq

from ..capture.keep_first import KeepFirst
from ..market.market_hours import MarketCalendar
from .compaction_check import CompactionError, read_or_raise, verify_compacted
from .compaction_merge import MEMORY_LIMIT, THREADS, child_main, merge_files
from .compaction_spill import BUCKET_ROWS
from .durable_files import fsync_directory, temp_beside
from .layout import (COMPACTION_SPILL_FOLDER as SPILL_FOLDER, day_file_name, partition_dir, refused_parquet_entries,
                     visible_parquet_files)

__all__ = ["BUCKET_ROWS", "MEMORY_LIMIT", "SPILL_FOLDER", "THREADS", "CompactionError", "CompactionResult",
           "CompactionStats", "Outcome", "compact_after_close", "compact_day", "compaction_refusal", "day_file_name",
           "describe", "merge_files", "verify_compacted"]

log = logging.getLogger(__name__)

# The daemon stops 5 s after the close (streaming_runner.CLOSE_GRACE_SECONDS) and flushes once more; a
# minute covers that. A file landing later still loses nothing: it waits beside the day file for the next run.
SETTLE_SECONDS = 60.0


class Outcome(enum.StrEnum):
    COMPACTED = "compacted"
    ALREADY_COMPACTED = "already compacted"
    NO_DATA = "no data"


@dataclass(frozen=True)
class CompactionResult:
    day: date
    outcome: Outcome
    path: Path          # the day file (absent when outcome is NO_DATA)
    files: int = 0      # files merged, an earlier day file included
    rows_read: int = 0
    rows: int = 0       # rows in the day file
    bytes: int = 0      # size of the day file
    worker_peak_rss_bytes: int = 0  # the merging child's VmHWM
    seconds: float = 0.0

    @property
    def repeats_dropped(self) -> int:
        return self.rows_read - self.rows


def compact_day(data_dir: Path, day: date, channel: str = "A",
                verify: Callable[[Path, int], None] | None = None, keys: KeepFirst | None = None,
                cancel: threading.Event | None = None, memory_limit: str = MEMORY_LIMIT,
                threads: int = THREADS, bucket_rows: int = BUCKET_ROWS) -> CompactionResult:
    """Merge the day's files of `channel` into its day file. CompactionError (logged) when it cannot.

    The merge runs in a child process (bounded memory); `cancel` set meanwhile kills it (nothing changed).
    `verify(temp_path, expected_rows)`, if given, checks the new file again in this process before it
    replaces anything; tests pass a stricter or sabotaging one.
    """
    folder = partition_dir(data_dir, channel, day)
    final = folder / day_file_name(day)
    job = _Job(keys or KeepFirst.of(channel), verify, cancel, memory_limit, threads, bucket_rows)
    try:
        _upgrade_old_layout(folder, channel)
        result = _compact_folder(folder, final, day, job)
    except (CompactionError, OSError) as exc:  # OSError: the folder could not be opened, listed or stat'ed
        log.error("compaction of %s %s failed: %s", channel, day.isoformat(), exc,
                  extra={"event": "compaction_failed", "day": day.isoformat(), "channel": channel})
        if isinstance(exc, OSError):
            raise CompactionError(str(exc)) from exc
        raise
    _log_result(result, channel)
    return result


@dataclass
class CompactionStats:
    """The daemon's after-close compactions, for the heartbeat and `check` (read from another thread: the
    dict is replaced, never changed in place). A channel's failure stays until a later compaction of that
    channel succeeds."""
    compaction_failed: dict[str, str] = field(default_factory=dict)   # channel -> "YYYY-MM-DD: what failed"
    compactions: int = 0


def compact_after_close(data_dir: Path, day: date, channels: Iterable[str], stats: CompactionStats,
                        cancel: threading.Event | None = None) -> None:
    """The day's compaction of each channel; one that fails (logged by compact_day, the file named) does
    not stop the others, and is kept in `stats` for the heartbeat and `check`."""
    for channel in channels:
        failed = dict(stats.compaction_failed)
        try:
            compact_day(data_dir, day, channel, cancel=cancel)
        except CompactionError as exc:
            failed[channel] = f"{day.isoformat()}: {exc}"
        else:
            failed.pop(channel, None)
            stats.compactions += 1
        stats.compaction_failed = failed


def _upgrade_old_layout(folder: Path, channel: str) -> None:
    """A day recorded across the upgrade to one schema holds files of both layouts: old ones first."""
    if folder.is_dir():
        from ..channels import channel_for
        from .legacy_files import upgrade_day_files
        upgrade_day_files(folder, channel_for(channel))


@dataclass(frozen=True)
class _Job:
    keys: KeepFirst
    verify: Callable[[Path, int], None] | None
    cancel: threading.Event | None
    memory_limit: str
    threads: int
    bucket_rows: int


def _compact_folder(folder: Path, final: Path, day: date, job: _Job) -> CompactionResult:
    if not folder.is_dir():
        return CompactionResult(day, Outcome.NO_DATA, final)
    with _exclusive(folder):
        inputs = visible_parquet_files(folder)
        _report_refused(folder)
        if not inputs:
            return CompactionResult(day, Outcome.NO_DATA, final)
        if inputs == [final]:
            rows = _row_count(final)
            return CompactionResult(day, Outcome.ALREADY_COMPACTED, final, 1, rows, rows, final.stat().st_size)
        started = time.monotonic()
        temp = temp_beside(final)   # the child creates it, exclusively
        try:
            merged = _merge_in_child(inputs, temp, folder / SPILL_FOLDER, job)
            _replace_day_file(temp, final, merged["rows"], job.verify)
        finally:
            temp.unlink(missing_ok=True)
            shutil.rmtree(folder / SPILL_FOLDER, ignore_errors=True)
        _remove_merged(folder, [path for path in inputs if path != final])
        return CompactionResult(day, Outcome.COMPACTED, final, len(inputs), merged["rows_read"], merged["rows"],
                                final.stat().st_size, merged["peak_rss_bytes"], time.monotonic() - started)


def _report_refused(folder: Path) -> None:
    refused = refused_parquet_entries(folder)
    if refused:
        log.warning("%d entr(ies) named like data in %s are not regular files (symlinks, FIFOs: not written by "
                    "spy-streamer); neither merged nor deleted: %s", len(refused), folder,
                    ", ".join(path.name for path in refused[:5]),
                    extra={"event": "compaction_entries_refused", "count": len(refused)})


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """One compaction of a folder at a time (a manual run beside the daemon's): an flock on the folder."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompactionError(f"another compaction of {folder} is running; nothing changed") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _row_count(path: Path) -> int:
    return read_or_raise(path, lambda: pq.read_metadata(path).num_rows)


# --- this process: start the child, wait for it, put its file in place ---

def _merge_in_child(inputs: list[Path], temp: Path, spill: Path, job: _Job) -> dict:
    """Run `merge_files` in `python -m spy_streamer.storage.compaction`; its summary, or CompactionError."""
    request = {"parent": os.getpid(), "inputs": [str(path) for path in inputs], "temp": str(temp), "spill": str(spill),
               "keys": asdict(job.keys), "memory_limit": job.memory_limit, "threads": job.threads,
               "bucket_rows": job.bucket_rows}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                    os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    out, err = _wait(child, json.dumps(request), job.cancel)
    try:
        answer = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise CompactionError(f"the compaction process failed (exit {child.returncode}): {last}; "
                              f"nothing changed") from None
    if "error" in answer:
        raise CompactionError(f"{answer['error']}; nothing changed")
    return answer


def _wait(child: subprocess.Popen, request: str, cancel: threading.Event | None) -> tuple[str, str]:
    pending: str | None = request
    while True:
        try:
            return child.communicate(pending, timeout=0.5)
        except subprocess.TimeoutExpired:
            pending = None  # written already; communicate() goes on reading
            if cancel is not None and cancel.is_set():
                child.kill()
                child.communicate()
                raise CompactionError("stopped before the end; nothing changed") from None
        except BaseException:
            child.kill()  # e.g. KeyboardInterrupt in `spy-streamer compact`: no orphan keeps writing
            child.wait()
            raise


def _replace_day_file(temp: Path, final: Path, rows: int, verify: Callable[[Path, int], None] | None) -> None:
    try:
        if verify is not None:
            verify(temp, rows)
        os.replace(temp, final)
    except OSError as exc:
        raise CompactionError(f"cannot write {final.name}: {exc.strerror or exc}; nothing changed") from None
    except CompactionError as exc:  # from `verify`: the old files are untouched
        raise CompactionError(f"{exc}; nothing changed") from None
    try:
        fsync_directory(final.parent)
    except OSError as exc:
        # The rename may not survive a power cut: deleting the micro-batches now could lose their rows.
        raise CompactionError(f"{final.name} is in place but its folder could not be synced "
                              f"({exc.strerror or exc}); the micro-batches are kept and readers see their "
                              f"rows twice until the next compaction") from None


def _remove_merged(folder: Path, merged: list[Path]) -> None:
    try:
        for path in merged:
            path.unlink(missing_ok=True)
        fsync_directory(folder)
    except OSError as exc:
        raise CompactionError(f"the day file is complete but merged micro-batches could not be removed "
                              f"({exc.strerror or exc}); readers see their rows twice until the next "
                              f"compaction") from None


# --- for people ---

def _log_result(result: CompactionResult, channel: str) -> None:
    fields = {"day": result.day.isoformat(), "files": result.files, "rows": result.rows, "bytes": result.bytes}
    if result.outcome is Outcome.COMPACTED:
        log.info("compacted %s %s: %d files into %s, %d rows (%d repeats dropped), %d bytes in %.1f s "
                 "(merge process peak RSS %d MB)", channel, fields["day"], result.files, result.path.name,
                 result.rows, result.repeats_dropped, result.bytes, result.seconds,
                 result.worker_peak_rss_bytes // 1_000_000,
                 extra={"event": "day_compacted", **fields, "seconds": round(result.seconds, 3),
                        "worker_peak_rss_bytes": result.worker_peak_rss_bytes})
    else:
        log.info("nothing to compact for %s %s: %s", channel, fields["day"], result.outcome,
                 extra={"event": "compaction_skipped", **fields})
def describe(result: CompactionResult) -> str:
    """One line for a person."""
    day = result.day.isoformat()
    if result.outcome is Outcome.NO_DATA:
        return f"{day}: no data to compact in {result.path.parent}"
    if result.outcome is Outcome.ALREADY_COMPACTED:
        return f"{day}: already compacted: {result.path} ({result.rows:,} rows, {result.bytes:,} bytes)"
    return (f"{day}: compacted {result.files} files into {result.path} ({result.rows:,} rows, "
            f"{result.repeats_dropped:,} repeats dropped, {result.bytes:,} bytes)")


def compaction_refusal(calendar: MarketCalendar, day: date, now: datetime,
                       settle_seconds: float = SETTLE_SECONDS) -> str | None:
    """Why `day` must not be compacted at `now`, or None: any earlier day is fine, today only once its
    session (if any) has closed and the writer has had `settle_seconds` to finish."""
    today = calendar.trading_day(now)
    if day < today:
        return None
    if day > today:
        return f"{day.isoformat()} is in the future"
    session = calendar.session_on(day)
    if session is None or now >= session.close + timedelta(seconds=settle_seconds):
        return None
    ready = (session.close + timedelta(seconds=settle_seconds)).astimezone(calendar.tz)
    return f"today's session may still be writing; compact {day.isoformat()} after {ready:%H:%M:%S %Z}"


if __name__ == "__main__":
    sys.exit(child_main())
