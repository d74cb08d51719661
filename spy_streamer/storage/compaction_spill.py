"""A day too large to sort at once (more than BUCKET_ROWS rows) is first copied, in one pass, into one
spill file per contiguous range of symbols (an Arrow IPC stream each), and each is then sorted by itself:
the merging child's memory does not grow with the day, and neither does the work per row (sorting ranges
of the inputs in place would read the whole day again for each range: 10x the rows took 21x the time)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..capture.keep_first import READ_ORDER, KeepFirst
from .compaction_check import read_or_raise

BUCKET_ROWS = 5_000_000   # rows sorted at a time (a range of symbols): a larger day is split into spill files first
SPILL_OPTIONS = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", 1))


def bucket_plan(inputs: list[Path], keys: KeepFirst, rows: int, bucket_rows: int) -> dict | None:
    """Which bucket each value of the first sort column (the symbol) goes to: contiguous ranges of the
    sorted values of at most `bucket_rows` rows each (one value may exceed it), nulls in a last bucket of
    their own (they sort last). None when the day is one bucket: at most `bucket_rows` rows, or a first sort
    column outside the key (a key's rows would not share a range). Counted from that column alone, a
    row group at a time."""
    column = keys.sort_key[0]
    if rows <= bucket_rows or column not in keys.dedup_key:
        return None
    counts: dict = {}
    for path, parquet_file in each_input(inputs):
        for group in range(parquet_file.num_row_groups):
            values = read_or_raise(path, lambda: parquet_file.read_row_group(group, [column], use_threads=False))
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


def each_input(inputs: list[Path]) -> Iterator[tuple[Path, pq.ParquetFile]]:
    for path in inputs:
        parquet_file = read_or_raise(path, lambda: pq.ParquetFile(path))
        with parquet_file:
            yield path, parquet_file


def partition(inputs: list[Path], schema: pa.Schema, keys: KeepFirst, plan: dict, spill: Path) -> list[Path]:
    """Copy the day's rows into one spill file per bucket of `plan` (an Arrow IPC stream, zstd), a row
    group of an input at a time, each row with its place in the reading order (inputs by name, rows in
    file order) in a column `READ_ORDER`, which breaks ties of arrival as the file name and row number
    do. The bucket files, in bucket order. Memory: one input row group (a stream writer, unlike a Parquet
    writer, keeps nothing per batch written: 12 KB a row group, which grew with the day)."""
    column = keys.sort_key[0]
    buckets = max(plan.values()) + 1
    paths = [spill / f"bucket-{index:05d}.arrows" for index in range(buckets)]
    spilled = schema.append(pa.field(READ_ORDER, pa.int64()))
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    read = 0
    try:
        for path, parquet_file in each_input(inputs):
            for group in range(parquet_file.num_row_groups):
                table = _conformed(read_or_raise(path, lambda: parquet_file.read_row_group(group, use_threads=False)),
                                   schema)
                table = table.append_column(READ_ORDER, pa.array(np.arange(read, read + table.num_rows)))
                read += table.num_rows
                of_row = _bucket_of_each_row(table.column(column), plan)
                counts = np.bincount(of_row, minlength=buckets)
                table = table.take(np.argsort(of_row, kind="stable"))
                offset = 0
                for bucket in np.flatnonzero(counts).tolist():
                    if bucket not in writers:
                        writers[bucket] = pa.ipc.new_stream(paths[bucket], spilled, options=SPILL_OPTIONS)
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
def registered(connection, name: str, path: Path) -> Iterator[None]:
    """A spill file (an Arrow IPC stream) as DuckDB's view `name`, read once."""
    with pa.OSFile(str(path)) as handle:
        connection.register(name, pa.ipc.open_stream(handle))
        try:
            yield
        finally:
            connection.unregister(name)

