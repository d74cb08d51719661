"""What a compacted day file must pass before it replaces anything, and the error every step of the
compaction raises: each page decodes, the row count is the merge's, rows are in the channel's order with
one row per key, and (a day split into buckets) every symbol of the inputs is there and no other."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..capture.keep_first import BAR_KEYS, KeepFirst


class CompactionError(Exception):
    """The compaction stopped; the message says what state the day's files are in. Already logged."""


def read_or_raise(path: Path, read: Callable):
    """`read()` of `path`; CompactionError naming the file when it does not decode."""
    try:
        return read()
    except (pa.ArrowException, OSError) as exc:
        raise CompactionError(f"cannot read {path}: {str(exc)[:200]}") from None


def verify_compacted(path: Path, expected_rows: int, keys: KeepFirst = BAR_KEYS,
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


def _check_order(batch: pa.RecordBatch, previous: pa.RecordBatch | None, keys: KeepFirst, offset: int) -> None:
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
