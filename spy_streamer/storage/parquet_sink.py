"""Durable Parquet files under `<data_dir>/<channel>/date=YYYY-MM-DD/`.

One complete file per flush, written to a hidden temporary name (pyarrow's dataset reader skips names
starting with "."; durable_files makes it, exclusively and under an unpredictable name), fsynced, renamed into place and the folder fsynced: a reader or a crash never sees
half a file under a `.parquet` name.
"""
from __future__ import annotations

import logging
import os
from datetime import date
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .durable_files import TEMP_SUFFIX, fsync_directory, write_atomically
from .layout import micro_batch_name, partition_dir, set_aside_name, visible_parquet_files

log = logging.getLogger(__name__)

# Columns of few distinct values, dictionary-encoded in a flush's file. Encoding every column (pyarrow's
# default) hashes each price and id: a flush cost 0.21 us a row of `A` and 0.33 of `T` that way, 0.18 and
# 0.21 like this (statistics skipped for floats too). The price: an `A` file holds about 30 bytes a row
# rather than 18 (a trade, 32 either way), until the day's compaction rewrites it with zstd.
DICTIONARY_COLUMNS = ("symbol", "source", "session")


def flush_write_options(schema: pa.Schema) -> dict:
    """pq.write_table options for a flush: dictionaries for DICTIONARY_COLUMNS only, statistics (min/max
    for a reader's row-group pruning) for every column but floating-point ones."""
    return {"use_dictionary": [name for name in schema.names if name in DICTIONARY_COLUMNS],
            "write_statistics": [field.name for field in schema if not pa.types.is_floating(field.type)]}


def write_table_atomically(table: pa.Table, final: Path, verify: Callable[[Path], None] | None = None,
                           **write_options) -> None:
    """`table` written to `final` by durable_files' one routine; `verify(temp)`, if given, may refuse it.

    Any error (`verify` raising included) removes the temporary and leaves `final` as it was. The caller
    fsyncs the folder afterwards: what a failure there means differs between a flush and a compaction.
    """
    write_atomically(final, lambda handle: pq.write_table(table, handle, **write_options), verify=verify,
                     sync_folder=False)


READ_WHOLE_ROWS = 1_000_000   # a file up to this size is read at once; a larger one (a compacted day) in batches


def _readable_parts(path: Path, columns: pa.Schema):
    """`columns` of the file, once all of it has been read without error: a micro-batch at once, a
    larger file in batches after a first pass that reads it all (memory bounded by a batch)."""
    file = pq.ParquetFile(path)
    if file.metadata.num_rows <= READ_WHOLE_ROWS:
        return [file.read(columns=columns.names).cast(columns)]
    for _ in file.iter_batches(READ_WHOLE_ROWS, columns=columns.names):
        pass
    return (pa.Table.from_batches([batch]).cast(columns)
            for batch in pq.ParquetFile(path).iter_batches(READ_WHOLE_ROWS, columns=columns.names))


class ParquetSink:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self._sequence = 0

    def partition_dir(self, channel: str, day: date) -> Path:
        return partition_dir(self.data_dir, channel, day)

    def write(self, channel: str, day: date, table: pa.Table, stamp_ns: int) -> Path:
        """Write `table` as one new file of the day's partition; OSError when the disk refuses."""
        folder = self.partition_dir(channel, day)
        folder.mkdir(parents=True, exist_ok=True)
        self._sequence += 1
        name = micro_batch_name(stamp_ns, os.getpid(), self._sequence)
        final = folder / name
        write_table_atomically(table, final, **flush_write_options(table.schema))
        try:
            fsync_directory(folder)
        except OSError as exc:
            # The file is in place and complete; failing the flush now would write its rows twice.
            log.warning("could not fsync %s after writing %s: %s", folder, name, exc.strerror or exc,
                        extra={"event": "fsync_failed"})
        return final

    def stored_rows(self, channel: str, day: date, columns: pa.Schema) -> Iterator[pa.Table]:
        """The `columns` of every row already stored for the channel's day, a file at a time (a day of
        `T.*` does not fit in memory at once), so a restart adds no duplicate. An unreadable file is set
        aside and yields nothing: its rows must not count as stored. The caller names the columns: the
        sink knows no channel."""
        for path in visible_parquet_files(self.partition_dir(channel, day)):
            try:
                parts = _readable_parts(path, columns)
            except (pa.ArrowException, OSError) as exc:
                self.set_aside(path, exc)
                continue
            yield from parts

    @staticmethod
    def set_aside(path: Path, exc: Exception) -> None:
        """A file no reader can open would break every whole-folder read; hide it (kept for a person)."""
        hidden = set_aside_name(path)
        hidden.parent.mkdir(parents=True, exist_ok=True)
        path.rename(hidden)
        log.error("unreadable Parquet file %s moved aside to %s: %s", path.name, hidden.name, exc,
                  extra={"event": "corrupt_file_set_aside"})

    def remove_temp_files(self) -> int:
        """Delete temporaries left by a process killed mid-write; returns how many."""
        removed = 0
        for path in self.data_dir.glob(f"*/date=*/.*{TEMP_SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.warning("removed %d partial file(s) left by an earlier crash", removed,
                        extra={"event": "partial_files_removed", "count": removed})
        return removed
