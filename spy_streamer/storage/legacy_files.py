"""Files of the layout before one schema served the local files and the lake (issue 19): bar times in
milliseconds, tick times in nanoseconds with no `<name>_ns` columns, fields added since missing. A day
recorded across an upgrade holds both kinds, which no merge unifies; `upgrade_day_files` rewrites the old
ones in the channel's schema (each atomically, same name: the read order stays) before `compact` merges."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..channels.base import US_UTC, Channel
from .compaction_check import CompactionError
from .durable_files import fsync_directory, write_atomically
from .lake_tables import to_lake_types
from .layout import visible_parquet_files
from .parquet_sink import flush_write_options

log = logging.getLogger(__name__)
BATCH_ROWS = 1_000_000   # a compacted day of the old layout is rewritten a batch at a time


def upgrade_day_files(folder: Path, channel: Channel) -> int:
    """Rewrite each file of `folder` in the old layout in `channel`'s schema (a batch at a time); how many
    were rewritten. A file that cannot be opened is left for the merge to name; one that fails half-way
    stays as it was (CompactionError)."""
    upgraded = 0
    for path in visible_parquet_files(folder):
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue   # a FIFO would block the open: the merge names what is not a regular file
            source = pq.ParquetFile(path)
        except (pa.ArrowException, OSError):
            continue
        if is_old_layout(source.schema_arrow):
            try:
                _rewrite(path, source, channel)
            except pa.ArrowException as exc:
                raise CompactionError(f"cannot rewrite {path.name} of the earlier layout: {exc}; nothing merged") from None
            upgraded += 1
    if upgraded:
        fsync_directory(folder)
        log.info("%d file(s) of %s in the earlier layout rewritten in the channel's schema", upgraded, folder,
                 extra={"event": "old_layout_upgraded", "count": upgraded})
    return upgraded


def _rewrite(path: Path, source: pq.ParquetFile, channel: Channel) -> None:
    schema = in_channel_schema(source.schema_arrow.empty_table(), channel).schema

    def fill(handle) -> None:
        with pq.ParquetWriter(handle, schema, **flush_write_options(schema)) as writer:
            for batch in source.iter_batches(BATCH_ROWS):
                writer.write_table(in_channel_schema(pa.Table.from_batches([batch]), channel))
    write_atomically(path, fill, sync_folder=False)


def is_old_layout(schema: pa.Schema) -> bool:
    return any(pa.types.is_timestamp(field.type) and field.type != US_UTC for field in schema)


def in_channel_schema(table: pa.Table, channel: Channel) -> pa.Table:
    """`table` (any earlier layout) with `channel`'s columns, in its order and types: times in us with
    their exact `_ns`, columns added since as nulls (or what their absence means), other columns kept."""
    table = to_lake_types(table)
    columns = {}
    for field in channel.schema:
        column = (table.column(field.name).cast(field.type) if field.name in table.column_names
                  else pa.nulls(table.num_rows, field.type))
        if field.name in channel.absent_as and column.null_count:
            column = pc.fill_null(column, pa.scalar(channel.absent_as[field.name], field.type))
        columns[field.name] = column
    for name in table.column_names:   # e.g. `session` (extended hours)
        columns.setdefault(name, table.column(name))
    return pa.table(columns)
