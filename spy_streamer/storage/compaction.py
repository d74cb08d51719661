"""End-of-day compaction: a day's micro-batch files become one sorted, deduplicated, zstd Parquet file,
`<data_dir>/<channel>/date=YYYY-MM-DD/day-YYYY-MM-DD.parquet`, still one partition of the hive layout.

Bounded memory, whatever the day's size (docs/ARCHITECTURE.md, *Storage layout and guarantees*): the merge
runs in a child process (`python -m spy_streamer.storage.compaction`, niced) where DuckDB sorts the day with a
memory limit, spilling to a hidden folder beside the files, and streams the sorted rows back in batches;
the first received row of each key is kept batch by batch and written with pyarrow (the day file keeps
the micro-batches' Arrow schema). A day of more than BUCKET_ROWS rows is first copied, in one pass, into
one spill file per contiguous range of symbols, and each is sorted by itself: the child's memory does not
grow with the day, and neither does the work per row (sorting ranges of the inputs in place would read
the whole day again for each range: 10x the rows took 21x the time). benchmarks/compaction.py measures
it. The capture process only waits for the child.

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
"""
from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .durable_files import fsync_directory, open_temp, temp_beside
from ..market.market_hours import MarketCalendar
from ..peak_memory import peak_rss_bytes
from .layout import (COMPACTION_SPILL_FOLDER as SPILL_FOLDER, day_file_name, partition_dir, symlinked_parquet_files,
                     visible_parquet_files)

log = logging.getLogger(__name__)

# The daemon stops 5 s after the close (streaming_runner.CLOSE_GRACE_SECONDS) and flushes once more; a
# minute covers that. A file landing later still loses nothing: it waits beside the day file for the next run.
SETTLE_SECONDS = 60.0
_READ_ORDER = "__read_order"  # temporary column: ties of `received_at` go to the file read first
MEMORY_LIMIT = "256MB"    # DuckDB's buffers; the child's RSS is about twice that (libraries, batches)
THREADS = 2
BATCH_ROWS = 131_072      # rows streamed from DuckDB at a time
ROW_GROUP_ROWS = 262_144  # rows per row group of the day file (about 30 MB of `A` bars in memory)
WORKER_NICENESS = 10      # capture (the next session, another channel) wins the CPU
BUCKET_ROWS = 5_000_000   # rows sorted at a time (a range of symbols): a larger day is split into spill files first


class CompactionError(Exception):
    """The compaction stopped; the message says what state the day's files are in. Already logged."""


class Outcome(enum.StrEnum):
    COMPACTED = "compacted"
    ALREADY_COMPACTED = "already compacted"
    NO_DATA = "no data"


@dataclass(frozen=True)
class CompactionKeys:
    """What a channel's rows are deduplicated and sorted by: of rows sharing `dedup_key`, the first by
    `arrival` (then the first file by name, then the first row in it) stays; the day file is in `sort_key`
    order. Each channel's come from `spy_streamer.channels` (see `keys_for`)."""
    dedup_key: tuple[str, ...] = ("symbol", "start")
    sort_key: tuple[str, ...] = ("symbol", "start")
    arrival: str = "received_at"

    @property
    def sorted_by_key(self) -> bool:
        """Whether sorting puts the rows of a key next to each other (then one streaming pass dedups)."""
        return set(self.sort_key) <= set(self.dedup_key)

    @property
    def order(self) -> tuple[str, ...]:
        return self.sort_key + tuple(column for column in self.dedup_key if column not in self.sort_key)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.order + (self.arrival,)))


AGGREGATE_KEYS = CompactionKeys()


def keys_for(channel: str) -> CompactionKeys:
    """The channel's keys, from the channel registry."""
    from ..channels import channel_for  # (loads the channel's module)
    spec = channel_for(channel)
    return CompactionKeys(tuple(spec.dedup_key), tuple(spec.sort_key))


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
                verify: Callable[[Path, int], None] | None = None, keys: CompactionKeys | None = None,
                cancel: threading.Event | None = None, memory_limit: str = MEMORY_LIMIT,
                threads: int = THREADS, bucket_rows: int = BUCKET_ROWS) -> CompactionResult:
    """Merge the day's files of `channel` into its day file. CompactionError (logged) when it cannot.

    The merge runs in a child process (bounded memory); `cancel` set meanwhile kills it (nothing changed).
    `verify(temp_path, expected_rows)`, if given, checks the new file again in this process before it
    replaces anything; tests pass a stricter or sabotaging one.
    """
    folder = partition_dir(data_dir, channel, day)
    final = folder / day_file_name(day)
    job = _Job(keys or keys_for(channel), verify, cancel, memory_limit, threads, bucket_rows)
    try:
        result = _compact_folder(folder, final, day, job)
    except (CompactionError, OSError) as exc:  # OSError: the folder could not be opened, listed or stat'ed
        log.error("compaction of %s %s failed: %s", channel, day.isoformat(), exc,
                  extra={"event": "compaction_failed", "day": day.isoformat()})
        if isinstance(exc, OSError):
            raise CompactionError(str(exc)) from exc
        raise
    _log_result(result, channel)
    return result


@dataclass(frozen=True)
class _Job:
    keys: CompactionKeys
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
        _report_symlinks(folder)
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


def _report_symlinks(folder: Path) -> None:
    links = symlinked_parquet_files(folder)
    if links:
        log.warning("%d symlink(s) named like data in %s neither merged nor deleted (not written by "
                    "spy-streamer): %s", len(links), folder, ", ".join(path.name for path in links[:5]),
                    extra={"event": "compaction_symlinks_skipped", "count": len(links)})


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


# --- the child: DuckDB sorts with a memory limit, pyarrow keeps the first of each key and writes ---

def merge_files(inputs: list[Path], temp: Path, spill: Path, keys: CompactionKeys = AGGREGATE_KEYS,
                memory_limit: str = MEMORY_LIMIT, threads: int = THREADS, bucket_rows: int = BUCKET_ROWS) -> dict:
    """Write the first received row of each key of `inputs`, in key order, to `temp` (fsynced and read
    back); {"rows_read", "rows"}. Memory stays bounded by `memory_limit` (DuckDB spills to `spill`) plus
    a row group. CompactionError names the problem; `temp` may be left behind (the caller removes it)."""
    schema, rows_read = _input_schema(inputs, keys)
    plan = _bucket_plan(inputs, keys, rows_read, bucket_rows)
    with _sorted_rows(inputs, schema, keys, plan, spill, memory_limit, threads) as batches:
        rows = _write_sorted(_first_of_each_key(batches, keys), schema, temp)
    # Split into buckets, the day could lose a bucket unseen by the checks of order and count: every value
    # of the first sort column (every symbol) the inputs have must be in the day file, and no other.
    verify_compacted(temp, rows, keys, None if plan is None else {value for value in plan if value is not None})
    return {"rows_read": rows_read, "rows": rows}


def _input_schema(inputs: list[Path], keys: CompactionKeys) -> tuple[pa.Schema, int]:
    """The day file's schema (the inputs' schemas unified: older files may lack newer columns) and the
    inputs' row count, both from the footers."""
    schemas, rows = [], 0
    for path in inputs:
        try:
            metadata = pq.read_metadata(path)
        except (pa.ArrowException, OSError) as exc:
            # Dropping it would shrink the day silently: a person decides (e.g. rename it `.<name>.corrupt`).
            raise CompactionError(f"cannot read {path.name}: {exc}") from None
        schemas.append(metadata.schema.to_arrow_schema())
        rows += metadata.num_rows
    try:
        schema = pa.unify_schemas(schemas, promote_options="default").remove_metadata()
    except pa.ArrowException as exc:
        raise CompactionError(f"the day's files do not share one schema: {exc}") from None
    missing = [column for column in keys.columns if column not in schema.names]
    if missing:
        raise CompactionError(f"cannot merge the day's files: no column {', '.join(missing)}")
    return schema, rows


def _quoted(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


_INPUTS = "read_parquet($files, union_by_name = true, filename = true, file_row_number = true)"
_INPUTS_READ_ORDER = "filename, file_row_number"
_BUCKET = "spill_bucket"  # a bucket's spill file, registered as a view while it is sorted
_FIRST_ROWS = "spill_first_rows"  # the first row of each key, spilled between the two sorts of T and Q
_SPILL_OPTIONS = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", 1))


def _query(schema: pa.Schema, order: tuple[str, ...], source: str, then: str = "") -> str:
    columns = ", ".join(_quoted(name) for name in schema.names)
    return f"SELECT {columns} FROM {source} ORDER BY {', '.join(map(_quoted, order))}{', ' + then if then else ''}"


def _bucket_plan(inputs: list[Path], keys: CompactionKeys, rows: int, bucket_rows: int) -> dict | None:
    """Which bucket each value of the first sort column (the symbol) goes to: contiguous ranges of the
    sorted values of at most `bucket_rows` rows each (one value may exceed it), nulls in a last bucket of
    their own (they sort last). None when the day is one bucket: at most `bucket_rows` rows, or a first sort
    column outside the key (a key's rows would not share a range). Counted from that column alone, a
    row group at a time."""
    column = keys.sort_key[0]
    if rows <= bucket_rows or column not in keys.dedup_key:
        return None
    counts: dict = {}
    for path, parquet_file in _each_input(inputs):
        for group in range(parquet_file.num_row_groups):
            values = _read_or_raise(path, lambda: parquet_file.read_row_group(group, [column], use_threads=False))
            for item in pc.value_counts(values.column(column)).to_pylist():
                counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    nulls = counts.pop(None, 0)
    plan, bucket, in_bucket = {}, 0, 0
    for value in sorted(counts):  # (code point order: DuckDB's and the verification's order of strings)
        if in_bucket and in_bucket + counts[value] > bucket_rows:
            bucket, in_bucket = bucket + 1, 0
        plan[value] = bucket
        in_bucket += counts[value]
    plan[None] = bucket + 1 if nulls else bucket
    return plan


def _each_input(inputs: list[Path]) -> Iterator[tuple[Path, pq.ParquetFile]]:
    for path in inputs:
        parquet_file = _read_or_raise(path, lambda: pq.ParquetFile(path))
        with parquet_file:
            yield path, parquet_file


def _read_or_raise(path: Path, read: Callable):
    try:
        return read()
    except (pa.ArrowException, OSError) as exc:
        raise CompactionError(f"cannot read {path.name}: {exc}") from None


def _partition(inputs: list[Path], schema: pa.Schema, keys: CompactionKeys, plan: dict, spill: Path) -> list[Path]:
    """Copy the day's rows into one spill file per bucket of `plan` (an Arrow IPC stream, zstd), a row
    group of an input at a time, each row with its place in the reading order (inputs by name, rows in
    file order) in a column `_READ_ORDER`, which breaks ties of arrival as the file name and row number
    do. The bucket files, in bucket order. Memory: one input row group (a stream writer, unlike a Parquet
    writer, keeps nothing per batch written: 12 KB a row group, which grew with the day)."""
    column = keys.sort_key[0]
    buckets = max(plan.values()) + 1
    paths = [spill / f"bucket-{index:05d}.arrows" for index in range(buckets)]
    spilled = schema.append(pa.field(_READ_ORDER, pa.int64()))
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    read = 0
    try:
        for path, parquet_file in _each_input(inputs):
            for group in range(parquet_file.num_row_groups):
                table = _conformed(_read_or_raise(path, lambda: parquet_file.read_row_group(group, use_threads=False)),
                                   schema)
                table = table.append_column(_READ_ORDER, pa.array(np.arange(read, read + table.num_rows)))
                read += table.num_rows
                of_row = _bucket_of_each_row(table.column(column), plan)
                counts = np.bincount(of_row, minlength=buckets)
                table = table.take(np.argsort(of_row, kind="stable"))
                offset = 0
                for bucket in np.flatnonzero(counts).tolist():
                    if bucket not in writers:
                        writers[bucket] = pa.ipc.new_stream(paths[bucket], spilled, options=_SPILL_OPTIONS)
                    writers[bucket].write_table(table.slice(offset, int(counts[bucket])))
                    offset += int(counts[bucket])
    finally:
        for writer in writers.values():
            writer.close()
    return [paths[bucket] for bucket in sorted(writers)]


def _conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with the day's schema: an older file's missing columns as nulls, types as unified."""
    columns = [table.column(field.name).cast(field.type) if field.name in table.column_names
               else pa.nulls(table.num_rows, field.type) for field in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _bucket_of_each_row(values: pa.ChunkedArray, plan: dict) -> np.ndarray:
    parts = [np.empty(0, np.int64)]
    for chunk in values.chunks:
        encoded = pc.dictionary_encode(chunk)
        lookup = np.array([plan[value] for value in encoded.dictionary.to_pylist()] + [plan[None]], np.int64)
        parts.append(lookup[encoded.indices.fill_null(len(encoded.dictionary)).to_numpy(zero_copy_only=False)])
    return np.concatenate(parts)


@contextlib.contextmanager
def _sorted_rows(inputs: list[Path], schema: pa.Schema, keys: CompactionKeys, plan: dict | None, spill: Path,
                 memory_limit: str, threads: int) -> Iterator[Iterator[pa.RecordBatch]]:
    """The day's rows in key order (each key's rows in arrival order). With a `plan` (a day of more than
    `bucket_rows` rows) the day is first split by ranges of symbols into bucket files in `spill` (one pass
    over the inputs), then each bucket is sorted by itself: every row is read, copied and sorted once
    whatever the day's size (sorting ranges of the inputs themselves would read the whole day once a
    bucket), and each sort holds at most `memory_limit` (DuckDB spills the rest to `spill`)."""
    import duckdb  # only the child needs it

    shutil.rmtree(spill, ignore_errors=True)  # a killed run's
    spill.mkdir()
    connection = duckdb.connect()
    try:
        for setting in (f"SET memory_limit = '{memory_limit}'", f"SET threads = {int(threads)}",
                        f"SET temp_directory = '{spill / 'duckdb'}'", "SET enable_progress_bar = false",
                        "SET preserve_insertion_order = false"):
            connection.execute(setting)
        if plan is None:  # one piece: DuckDB reads the inputs themselves
            yield _sorted_piece(connection, schema, keys, _INPUTS, _INPUTS_READ_ORDER,
                                {"files": [str(path) for path in inputs]}, spill, duckdb.Error)
        else:
            yield _each_bucket(connection, _partition(inputs, schema, keys, plan, spill), schema, keys, spill,
                               duckdb.Error)
    finally:
        connection.close()
        shutil.rmtree(spill, ignore_errors=True)


def _each_bucket(connection, buckets: list[Path], schema: pa.Schema, keys: CompactionKeys, spill: Path,
                 engine_error: type[Exception]) -> Iterator[pa.RecordBatch]:
    """Each bucket's rows sorted, bucket after bucket; a bucket's file goes once sorted (less disk)."""
    for path in buckets:
        with _registered(connection, _BUCKET, path):
            yield from _sorted_piece(connection, schema, keys, _BUCKET, _quoted(_READ_ORDER), {}, spill, engine_error)
        path.unlink()


@contextlib.contextmanager
def _registered(connection, name: str, path: Path) -> Iterator[None]:
    """A spill file (an Arrow IPC stream) as DuckDB's view `name`, read once."""
    with pa.OSFile(str(path)) as handle:
        connection.register(name, pa.ipc.open_stream(handle))
        try:
            yield
        finally:
            connection.unregister(name)


def _sorted_piece(connection, schema: pa.Schema, keys: CompactionKeys, source: str, read_order: str, params: dict,
                  spill: Path, engine_error: type[Exception]) -> Iterator[pa.RecordBatch]:
    """The rows of `source` in `keys.order`, each key's rows in arrival order, then in the order they were
    read. When that order does not bring a key's rows together (T, Q: sorted by time, keyed by an id),
    already one row per key: sorted by key, the first of each kept and spilled, then sorted by `keys.order`.
    Two sorts, as DuckDB's sort spills to disk where a window (row_number() over the key) ran out of its
    memory on one symbol's 30M trades."""
    arrival = f"{_quoted(keys.arrival)} NULLS LAST, {read_order}"
    if keys.sorted_by_key:
        yield from _cast(_sorted(connection, _query(schema, keys.order, source, arrival), params, engine_error), schema)
        return
    by_key = CompactionKeys(keys.dedup_key, keys.dedup_key, keys.arrival)
    first_rows = spill / f"{_FIRST_ROWS}.arrows"
    with pa.ipc.new_stream(first_rows, schema, options=_SPILL_OPTIONS) as writer:
        for batch in _first_of_each_key(_cast(_sorted(connection, _query(schema, by_key.order, source, arrival), params,
                                                      engine_error), schema), by_key):
            writer.write_batch(batch)
    with _registered(connection, _FIRST_ROWS, first_rows):
        yield from _cast(_sorted(connection, _query(schema, keys.order, _FIRST_ROWS), {}, engine_error), schema)
    first_rows.unlink()


def _sorted(connection, query: str, params: dict, engine_error: type[Exception]) -> Iterator[pa.RecordBatch]:
    try:
        relation = connection.sql(query, params=params or None)
        # duckdb >= 1.4 names it to_arrow_reader (fetch_arrow_reader, deprecated there, before)
        reader = (getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader)(BATCH_ROWS)
    except engine_error as exc:
        raise CompactionError(f"cannot merge the day's files: {exc}") from None
    yield from _read_or_fail(reader, engine_error)


def _read_or_fail(reader: pa.RecordBatchReader, engine_error: type[Exception]) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    except (engine_error, pa.ArrowException, OSError) as exc:  # a page that does not decode, DuckDB out of memory
        raise CompactionError(f"cannot merge the day's files: {exc}") from None


def _cast(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """DuckDB's types back to the inputs' (its timestamps are microseconds, its UTC is `Etc/UTC`)."""
    for batch in batches:
        yield batch.cast(schema)


def _first_of_each_key(batches: Iterable[pa.RecordBatch], keys: CompactionKeys) -> Iterator[pa.RecordBatch]:
    """Batches sorted by key (each key's rows in arrival order) -> the first row of each key."""
    if not keys.sorted_by_key:
        yield from batches  # the query kept one row per key already
        return
    previous: pa.RecordBatch | None = None  # the last row of the batch before
    for batch in batches:
        if batch.num_rows == 0:
            continue
        yield batch.filter(pc.invert(_same_key_as_previous(batch, previous, keys.dedup_key)))
        previous = batch.slice(batch.num_rows - 1)


def _same_key_as_previous(batch: pa.RecordBatch, previous: pa.RecordBatch | None,
                          columns: tuple[str, ...]) -> pa.Array:
    """Per row: does the row before it (the previous batch's last for row 0) have the same key? A part
    missing in both (T's `trf_id` off a TRF) counts as equal."""
    same = None
    for column in columns:
        values = batch.column(column)
        both = values if previous is None else pa.concat_arrays([previous.column(column), values])
        current, before = both.slice(1), both.slice(0, len(both) - 1)
        equal = pc.fill_null(pc.equal(current, before), pc.and_(pc.is_null(current), pc.is_null(before)))
        same = equal if same is None else pc.and_(same, equal)
    if previous is None:  # the day's first row
        same = pa.concat_arrays([pa.array([False]), same])
    return same


def _write_sorted(batches: Iterable[pa.RecordBatch], schema: pa.Schema, temp: Path) -> int:
    """Write to `temp` in row groups of ROW_GROUP_ROWS, fsync; the number of rows written."""
    rows, pending, pending_rows = 0, [], 0
    with open_temp(temp) as handle:
        with pq.ParquetWriter(handle, schema, compression="zstd") as writer:
            for batch in batches:
                pending.append(batch)
                pending_rows += batch.num_rows
                if pending_rows >= ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=pending_rows)
                    rows, pending, pending_rows = rows + pending_rows, [], 0
            if pending_rows:
                writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=pending_rows)
                rows += pending_rows
        handle.flush()
        os.fsync(handle.fileno())
    return rows


def verify_compacted(path: Path, expected_rows: int, keys: CompactionKeys = AGGREGATE_KEYS,
                     first_values: set | None = None) -> None:
    """Read the whole file back a batch at a time (every page must decode), check its row count, that it
    is in key order with one row per key and, given `first_values`, that the non-null values of the first
    sort column (the symbols) are those; CompactionError if not."""
    rows, previous, seen = 0, None, set()
    try:
        with pq.ParquetFile(path) as parquet_file:
            for index in range(parquet_file.num_row_groups):  # (iter_batches holds on to far more memory)
                for batch in parquet_file.read_row_group(index, use_threads=False).to_batches():
                    if batch.num_rows == 0:
                        continue
                    _check_order(batch, previous, keys, rows)
                    if first_values is not None:
                        seen.update(pc.unique(batch.column(keys.sort_key[0])).to_pylist())
                    rows += batch.num_rows
                    previous = batch.slice(batch.num_rows - 1)
    except (pa.ArrowException, OSError) as exc:
        raise CompactionError(f"the new day file does not read back: {exc}") from None
    if rows != expected_rows:
        raise CompactionError(f"the new day file reads back {rows} rows, expected {expected_rows}")
    seen.discard(None)
    if first_values is not None and seen != first_values:
        missing, extra = sorted(first_values - seen), sorted(seen - first_values)
        raise CompactionError(f"the new day file has not the inputs' {keys.sort_key[0]} values: "
                              f"{len(missing)} missing {missing[:3]}, {len(extra)} not in the inputs {extra[:3]}")


def _check_order(batch: pa.RecordBatch, previous: pa.RecordBatch | None, keys: CompactionKeys, offset: int) -> None:
    """Each row after the one before it in `keys.order` (strictly when rows of a key sort together: one
    row per key). A null key value passes: nulls sort last and are not compared."""
    columns = keys.order if keys.sorted_by_key else keys.sort_key
    if previous is None and batch.num_rows == 1:
        return
    head = batch if previous is None else pa.concat_batches([previous.select(columns), batch.select(columns)])
    after = None  # rows i+1 vs i, compared from the last column to the first
    for column in reversed(columns):
        values = head.column(column)
        current, before = values.slice(1), values.slice(0, len(values) - 1)
        greater = pc.fill_null(pc.greater(current, before), True)
        if after is None:
            after = greater if keys.sorted_by_key else pc.or_(greater, pc.fill_null(pc.equal(current, before), True))
        else:
            after = pc.or_(greater, pc.and_(pc.fill_null(pc.equal(current, before), True), after))
    bad = pc.index(after, False).as_py()
    if bad >= 0:
        row = offset + bad + (0 if previous is not None else 1)
        unique = " with one row per key" if keys.sorted_by_key else ""
        raise CompactionError(f"the new day file is not in ({', '.join(columns)}) order{unique} at row {row:,}")


def _exit_with_parent(parent: int) -> None:
    """A child whose parent died (SIGKILL, a crash) stops at once: its temporary is hidden and replaced
    by the next run, and nobody would rename it. On Linux the kernel kills it (PR_SET_PDEATHSIG, even
    while a library holds the GIL); elsewhere a thread notices the new parent within half a second."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # died before that
        os._exit(3)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child_main() -> int:
    request = json.loads(sys.stdin.read())
    _exit_with_parent(request["parent"])
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    try:
        summary = merge_files([Path(path) for path in request["inputs"]], Path(request["temp"]),
                              Path(request["spill"]), CompactionKeys(**{k: tuple(v) if isinstance(v, list) else v
                                                                        for k, v in request["keys"].items()}),
                              request["memory_limit"], request["threads"], request["bucket_rows"])
    except CompactionError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    except Exception as exc:  # e.g. DuckDB out of memory or disk: one line for the log, not the traceback's last
        text = (str(exc).strip().splitlines() or [""])[0]
        print(json.dumps({"error": f"the merge failed: {type(exc).__name__}: {text}"}), flush=True)
        return 1
    print(json.dumps({**summary, "peak_rss_bytes": peak_rss_bytes()}), flush=True)
    return 0


# --- in memory, for small inputs (the lake's rewrite of a day's partition) ---

def first_received_per_key(table: pa.Table) -> pa.Table:
    """Sorted by (symbol, start); of rows sharing both, the first received (then the first read) stays."""
    table = table.append_column(_READ_ORDER, pa.array(range(table.num_rows), pa.int64()))
    table = table.sort_by([("symbol", "ascending"), ("start", "ascending"),
                           ("received_at", "ascending"), (_READ_ORDER, "ascending")])
    return table.filter(_first_rows(table)).drop_columns([_READ_ORDER])


def _first_rows(sorted_table: pa.Table) -> pa.Array:
    if sorted_table.num_rows == 0:
        return pa.array([], pa.bool_())
    symbol = sorted_table.column("symbol").combine_chunks()
    start = sorted_table.column("start").combine_chunks()
    repeat = pc.and_(pc.equal(symbol[1:], symbol[:-1]), pc.equal(start[1:], start[:-1]))
    return pa.concat_arrays([pa.array([True]), pc.invert(pc.fill_null(repeat, False))])


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
    sys.exit(_child_main())
