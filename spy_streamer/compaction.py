"""End-of-day compaction: a day's micro-batch files become one sorted, deduplicated, zstd Parquet file,
`<data_dir>/<channel>/date=YYYY-MM-DD/day-YYYY-MM-DD.parquet`, still one partition of the hive layout.

Order of work, chosen so that no crash can lose a row:
  1. read every visible file of the partition (an earlier day file included), keep the first received row
     per (symbol, start), sort by (symbol, start);
  2. write a hidden temporary, fsync it, read it back and check its row count, rename it over the day file,
     fsync the folder;
  3. only then delete the files read in 1 and fsync the folder again.
A crash before 2 ends leaves the day's files as they were (plus a hidden temporary the next run overwrites).
A crash between 2 and 3 leaves the day file beside micro-batches holding the same rows: nothing is lost,
but until the next compaction a reader sees those rows twice (the next run reads both and drops the
repeats). Step 3 follows step 2 at once to keep that window to a few milliseconds.
Only the files read in 1 are deleted: a micro-batch that lands meanwhile (a late flush) stays beside the
day file, holding rows the day file lacks, until the next run merges it.

`compact_day` holds no state and locks the partition folder, so it may run on any thread (or process)
once the day's writer has finished; a second compaction of the same day meanwhile fails at once.
"""
from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .aggregate_bars import CHANNEL
from .durable_files import fsync_directory
from .market_hours import MarketCalendar
from .parquet_sink import ParquetSink, visible_parquet_files, write_table_atomically

log = logging.getLogger(__name__)

# The daemon stops 5 s after the close (streaming_runner.CLOSE_GRACE_SECONDS) and flushes once more; a
# minute covers that. A file landing later still loses nothing: it waits beside the day file for the next run.
SETTLE_SECONDS = 60.0
_READ_ORDER = "__read_order"  # temporary column: ties of `received_at` go to the file read first


class CompactionError(Exception):
    """The compaction stopped; the message says what state the day's files are in. Already logged."""


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

    @property
    def repeats_dropped(self) -> int:
        return self.rows_read - self.rows


def day_file_name(day: date) -> str:
    return f"day-{day.isoformat()}.parquet"


def verify_compacted(path: Path, expected_rows: int) -> None:
    """Read the whole file back (every page must decode) and check its row count; CompactionError if not."""
    try:
        with pq.ParquetFile(path) as parquet_file:
            rows = parquet_file.read().num_rows
    except (pa.ArrowException, OSError) as exc:
        raise CompactionError(f"the new day file does not read back: {exc}") from None
    if rows != expected_rows:
        raise CompactionError(f"the new day file reads back {rows} rows, expected {expected_rows}")


def compact_day(data_dir: Path, day: date, channel: str = CHANNEL,
                verify: Callable[[Path, int], None] = verify_compacted) -> CompactionResult:
    """Merge the day's files of `channel` into its day file. CompactionError (logged) when it cannot.

    `verify(temp_path, expected_rows)` checks the new file before it replaces anything; tests pass a
    stricter or sabotaging one.
    """
    folder = ParquetSink(data_dir).partition_dir(channel, day)
    final = folder / day_file_name(day)
    try:
        result = _compact_folder(folder, final, day, verify)
    except (CompactionError, OSError) as exc:  # OSError: the folder could not be opened, listed or stat'ed
        log.error("compaction of %s %s failed: %s", channel, day.isoformat(), exc,
                  extra={"event": "compaction_failed", "day": day.isoformat()})
        if isinstance(exc, OSError):
            raise CompactionError(str(exc)) from exc
        raise
    _log_result(result, channel)
    return result


def _compact_folder(folder: Path, final: Path, day: date, verify: Callable[[Path, int], None]) -> CompactionResult:
    if not folder.is_dir():
        return CompactionResult(day, Outcome.NO_DATA, final)
    with _exclusive(folder):
        inputs = visible_parquet_files(folder)
        if not inputs:
            return CompactionResult(day, Outcome.NO_DATA, final)
        if inputs == [final]:
            rows = _row_count(final)
            return CompactionResult(day, Outcome.ALREADY_COMPACTED, final, 1, rows, rows, final.stat().st_size)
        merged = read_files(inputs)
        table = _deduplicated(merged)
        _replace_day_file(table, final, verify)
        _remove_merged(folder, [path for path in inputs if path != final])
        return CompactionResult(day, Outcome.COMPACTED, final, len(inputs), merged.num_rows, table.num_rows,
                                final.stat().st_size)


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
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise CompactionError(f"cannot read {path.name}: {exc}") from None


def read_files(paths: list[Path]) -> pa.Table:
    """All rows of `paths` in reading order; columns missing from older files come back as nulls."""
    tables = []
    for path in paths:
        try:
            with pq.ParquetFile(path) as parquet_file:
                tables.append(parquet_file.read())
        except (pa.ArrowException, OSError) as exc:
            # Dropping it would shrink the day silently: a person decides (e.g. rename it `.<name>.corrupt`).
            raise CompactionError(f"cannot read {path.name}: {exc}; nothing changed") from None
    try:
        return pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as exc:
        raise CompactionError(f"the day's files do not share one schema: {exc}; nothing changed") from None


def _deduplicated(merged: pa.Table) -> pa.Table:
    try:
        return first_received_per_key(merged)
    except (pa.ArrowException, KeyError) as exc:  # e.g. a foreign file without `symbol` or `start`
        raise CompactionError(f"cannot merge the day's files: {exc}; nothing changed") from None


def first_received_per_key(table: pa.Table) -> pa.Table:
    """Sorted by (symbol, start); of rows sharing both, the first received (then the first read) stays."""
    table = table.append_column(_READ_ORDER, pa.array(range(table.num_rows), pa.int64()))
    table = table.sort_by([("symbol", "ascending"), ("start", "ascending"),
                           ("received_at", "ascending"), (_READ_ORDER, "ascending")])
    return table.filter(_first_of_each_key(table)).drop_columns([_READ_ORDER])


def _first_of_each_key(sorted_table: pa.Table) -> pa.Array:
    if sorted_table.num_rows == 0:
        return pa.array([], pa.bool_())
    symbol = sorted_table.column("symbol").combine_chunks()
    start = sorted_table.column("start").combine_chunks()
    repeat = pc.and_(pc.equal(symbol[1:], symbol[:-1]), pc.equal(start[1:], start[:-1]))
    return pa.concat_arrays([pa.array([True]), pc.invert(pc.fill_null(repeat, False))])


def _replace_day_file(table: pa.Table, final: Path, verify: Callable[[Path, int], None]) -> None:
    try:
        write_table_atomically(table, final, lambda temp: verify(temp, table.num_rows), compression="zstd")
    except OSError as exc:
        raise CompactionError(f"cannot write {final.name}: {exc.strerror or exc}; nothing changed") from None
    except CompactionError as exc:  # from `verify`: the temporary is gone, the old files untouched
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


def _log_result(result: CompactionResult, channel: str) -> None:
    fields = {"day": result.day.isoformat(), "files": result.files, "rows": result.rows, "bytes": result.bytes}
    if result.outcome is Outcome.COMPACTED:
        log.info("compacted %s %s: %d files into %s, %d rows (%d repeats dropped), %d bytes", channel,
                 fields["day"], result.files, result.path.name, result.rows, result.repeats_dropped,
                 result.bytes, extra={"event": "day_compacted", **fields})
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
