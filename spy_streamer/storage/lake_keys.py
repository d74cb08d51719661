"""With the lake, a day's rows live in two places: micro-batches still staged in `data_dir` and rows the
committer has already moved into the table (and deleted locally). A writer started in mid-session must
know both, or a bar it sees again (a REST backfill overlapping what was stored before a restart) would be
stored twice. `LakeBackedSink` is the Parquet sink whose `stored_rows` reads the table's rows of that day
too, batch by batch (a day of `T.*` is too big to hold); everything else is the local sink's.
"""
from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta
from typing import Callable, Iterator

import pyarrow as pa

from .parquet_sink import ParquetSink
from .lake_tables import table_name

log = logging.getLogger(__name__)


class LakeBackedSink(ParquetSink):
    def __init__(self, data_dir, open_catalog: Callable[[], object], namespace: str, tz, time_columns: dict[str, str]):
        """`time_columns[channel]` names the column whose instant puts a row in its day (`start`, ...)."""
        super().__init__(data_dir)
        self._open_catalog = open_catalog
        self._namespace = namespace
        self._tz = tz
        self._time_columns = time_columns

    def stored_rows(self, channel: str, day: date, columns: pa.Schema) -> Iterator[pa.Table]:
        yield from super().stored_rows(channel, day, columns)
        try:
            # Committed rows are in the table for good: a read that fails half-way has told no lie.
            yield from self._committed_rows(channel, day, columns)
        except Exception as exc:  # the store or catalog down: capture goes on; compaction drops repeats
            log.warning("cannot read %s's rows of %s from the lake (%s); a repeat of a bar committed before "
                        "this start may be stored twice until the day's compaction", channel, day,
                        str(exc)[:200], extra={"event": "lake_keys_unavailable"})

    def _committed_rows(self, channel: str, day: date, columns: pa.Schema) -> Iterator[pa.Table]:
        from pyiceberg.exceptions import NoSuchTableError
        from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

        time_column = self._time_columns[channel]
        start = datetime.combine(day, time(), tzinfo=self._tz)
        end = datetime.combine(day + timedelta(days=1), time(), tzinfo=self._tz)
        try:
            table = self._open_catalog().load_table((self._namespace, table_name(channel)))
        except NoSuchTableError:
            return
        scan = table.scan(row_filter=And(GreaterThanOrEqual(time_column, start.isoformat()),
                                         LessThan(time_column, end.isoformat())),
                          selected_fields=tuple(columns.names))
        for batch in scan.to_arrow_batch_reader():
            # The lake's columns are the channel's own (one schema for both): the cast only drops field ids.
            yield pa.Table.from_arrays([batch.column(field.name).cast(field.type) for field in columns], schema=columns)
