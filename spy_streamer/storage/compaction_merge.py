"""The merging child of a compaction (`python -m spy_streamer.storage.compaction`, niced): DuckDB sorts the
day's rows with a memory limit, spilling to a hidden folder beside the files, and streams them back in
batches; the first received row of each key is kept batch by batch (capture/keep_first.py) and written
with pyarrow (the day file keeps the micro-batches' Arrow schema), then read back and checked
(compaction_check.py). A day of more than BUCKET_ROWS rows is first split by ranges of symbols
(compaction_spill.py). It prints one JSON line: its summary, or the error."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..capture.keep_first import BAR_KEYS, READ_ORDER, KeepFirst, first_of_each_key
from ..peak_memory import peak_rss_bytes
from .compaction_check import CompactionError, read_or_raise, verify_compacted
from .durable_files import open_temp
from .compaction_spill import BUCKET_ROWS, SPILL_OPTIONS, bucket_plan, partition, registered

MEMORY_LIMIT = "256MB"    # DuckDB's buffers; the child's RSS is about twice that (libraries, batches)
THREADS = 2
BATCH_ROWS = 131_072      # rows streamed from DuckDB at a time
ROW_GROUP_ROWS = 262_144  # rows per row group of the day file (about 30 MB of `A` bars in memory)
WORKER_NICENESS = 10      # capture (the next session, another channel) wins the CPU


def merge_files(inputs: list[Path], temp: Path, spill: Path, keys: KeepFirst = BAR_KEYS,
                memory_limit: str = MEMORY_LIMIT, threads: int = THREADS, bucket_rows: int = BUCKET_ROWS) -> dict:
    """Write the first received row of each key of `inputs`, in key order, to `temp` (fsynced and read
    back); {"rows_read", "rows"}. Memory stays bounded by `memory_limit` (DuckDB spills to `spill`) plus
    a row group. CompactionError names the problem; `temp` may be left behind (the caller removes it)."""
    schema, rows_read = _input_schema(inputs, keys)
    plan = bucket_plan(inputs, keys, rows_read, bucket_rows)
    try:
        with _sorted_rows(inputs, schema, keys, plan, spill, memory_limit, threads) as batches:
            rows = _write_sorted(batches, schema, temp)
    except CompactionError as exc:
        raise _naming_the_file(exc, inputs) from None
    # Split into buckets, the day could lose a bucket unseen by the checks of order and count: every value
    # of the first sort column (every symbol) the inputs have must be in the day file, and no other.
    verify_compacted(temp, rows, keys, None if plan is None else {value for value in plan if value is not None})
    return {"rows_read": rows_read, "rows": rows}


def _naming_the_file(error: CompactionError, inputs: list[Path]) -> CompactionError:
    """DuckDB's errors do not say which file a bad page is in (`TProtocolException: Invalid data`): read
    each input through once (a row group at a time) and name the first that does not decode."""
    for path in inputs:
        try:
            with pq.ParquetFile(path) as parquet_file:
                for group in range(parquet_file.num_row_groups):
                    parquet_file.read_row_group(group, use_threads=False)
        except (pa.ArrowException, OSError) as exc:
            return CompactionError(f"cannot read {path}: {str(exc)[:200]}")
    return error


def _input_schema(inputs: list[Path], keys: KeepFirst) -> tuple[pa.Schema, int]:
    """The day file's schema (the inputs' schemas unified: older files may lack newer columns) and the
    inputs' row count, both from the footers."""
    schemas, rows = [], 0
    for path in inputs:
        # Dropping it would shrink the day silently: a person decides (e.g. rename it `.<name>.corrupt`).
        metadata = read_or_raise(path, lambda: pq.read_metadata(path))
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


def _query(schema: pa.Schema, order: tuple[str, ...], source: str, then: str = "") -> str:
    columns = ", ".join(_quoted(name) for name in schema.names)
    return f"SELECT {columns} FROM {source} ORDER BY {', '.join(map(_quoted, order))}{', ' + then if then else ''}"


@contextlib.contextmanager
def _sorted_rows(inputs: list[Path], schema: pa.Schema, keys: KeepFirst, plan: dict | None, spill: Path,
                 memory_limit: str, threads: int) -> Iterator[Iterator[pa.RecordBatch]]:
    """The first received row of each key of the day, in key order. With a `plan` (a day of more than
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
            yield _each_bucket(connection, partition(inputs, schema, keys, plan, spill), schema, keys, spill,
                               duckdb.Error)
    finally:
        connection.close()
        shutil.rmtree(spill, ignore_errors=True)


def _each_bucket(connection, buckets: list[Path], schema: pa.Schema, keys: KeepFirst, spill: Path,
                 engine_error: type[Exception]) -> Iterator[pa.RecordBatch]:
    """Each bucket's rows sorted, bucket after bucket; a bucket's file goes once sorted (less disk)."""
    for path in buckets:
        with registered(connection, _BUCKET, path):
            yield from _sorted_piece(connection, schema, keys, _BUCKET, _quoted(READ_ORDER), {}, spill, engine_error)
        path.unlink()


def _sorted_piece(connection, schema: pa.Schema, keys: KeepFirst, source: str, read_order: str, params: dict,
                  spill: Path, engine_error: type[Exception]) -> Iterator[pa.RecordBatch]:
    """The first received row of each key of `source` (then the first read), in `keys.order`. When that
    order brings a key's rows together, one sort and a streaming pass; else (T, Q: sorted by time, keyed
    by an id) sorted by key, the first of each kept and spilled, then sorted by `keys.order`.
    Two sorts, as DuckDB's sort spills to disk where a window (row_number() over the key) ran out of its
    memory on one symbol's 30M trades."""
    arrival = f"{_quoted(keys.arrival)} NULLS LAST, {read_order}"
    if keys.sorted_by_key:
        yield from first_of_each_key(_cast(_sorted(connection, _query(schema, keys.order, source, arrival), params,
                                                   engine_error), schema), keys)
        return
    by_key = keys.by_key()
    first_rows = spill / f"{_FIRST_ROWS}.arrows"
    with pa.ipc.new_stream(first_rows, schema, options=SPILL_OPTIONS) as writer:
        for batch in first_of_each_key(_cast(_sorted(connection, _query(schema, by_key.order, source, arrival), params,
                                                      engine_error), schema), by_key):
            writer.write_batch(batch)
    with registered(connection, _FIRST_ROWS, first_rows):
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


def child_main() -> int:
    request = json.loads(sys.stdin.read())
    _exit_with_parent(request["parent"])
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    try:
        summary = merge_files([Path(path) for path in request["inputs"]], Path(request["temp"]),
                              Path(request["spill"]), KeepFirst(**{k: tuple(v) if isinstance(v, list) else v
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

