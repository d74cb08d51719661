"""One Iceberg table per channel: its name, its layout, and staged rows in its column types.

The rows are the channel's own schema (channels/*.py), the same as the local files: timestamps in
microseconds UTC (`timestamptz`, what Spark, Trino, Flink and Iceberg v2 readers accept), exact
nanoseconds in `<name>_ns` int64 columns. `to_lake_types` brings files staged by an older version (ms
or ns timestamps) to those types: milliseconds widen without loss; nanoseconds are truncated to
microseconds and keep their exact integer in `<name>_ns`.

Layout: partitioned by `day(start)` (`day(sip_timestamp)` for trades and quotes: the first of
PARTITION_SOURCES a table has), sorted by (symbol, that column), zstd Parquet, merged manifests, and
old metadata files pruned, so a table written every 30 s stays cheap to plan.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..channels.base import NS_SUFFIX, US_UTC
from .durable_files import write_text_atomically

log = logging.getLogger(__name__)

PARTITION_SOURCES = ("start", "sip_timestamp", "participant_timestamp")
VERSION_HINT = "version-hint.text"   # in the table's metadata/ folder (the Hadoop-catalog convention)
# Table names engines can spell: Trino lower-cases identifiers, and "a" says little.
TABLE_NAMES = {"A": "second_aggregates", "AM": "minute_aggregates", "T": "trades", "Q": "quotes"}
TABLE_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    # Iceberg's default target. pyiceberg weighs it in Arrow bytes, so its files come out 3-10 times
    # smaller; Spark's rewrite_data_files writes it as is. Either way inside 128-512 MB for a big day.
    "write.target-file-size-bytes": str(512 * 1024 * 1024),
    "commit.manifest-merge.enabled": "true",          # ~800 appends a day would otherwise mean 800 manifests
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "100",
    "commit.retry.num-retries": "8",                  # concurrent writers: pyiceberg refreshes and retries
}


def table_name(channel: str) -> str:
    return TABLE_NAMES.get(channel, channel.lower())


def to_lake_types(table: pa.Table) -> pa.Table:
    """`table` with every timestamp as microseconds in UTC (nanoseconds also kept exactly in `<name>_ns`)."""
    columns, fields = [], []
    for field, column in zip(table.schema, table.columns):
        if pa.types.is_timestamp(field.type):
            if field.type.unit == "ns":
                fields.append(pa.field(field.name + NS_SUFFIX, pa.int64()))
                columns.append(pc.cast(column, pa.int64()))
            column = pc.cast(column.cast(pa.timestamp(field.type.unit, tz="UTC")) if field.type.tz is None
                             else column, US_UTC, safe=field.type.unit != "ns")
            field = pa.field(field.name, US_UTC)
        fields.append(field)
        columns.append(column)
    order = sorted(range(len(fields)), key=lambda index: _column_order(fields, index))
    return pa.Table.from_arrays([columns[i] for i in order], schema=pa.schema([fields[i] for i in order]))


def _column_order(fields: list[pa.Field], index: int) -> tuple[int, int]:
    """Keep the staged order, with each `<name>_ns` right after its timestamp."""
    name = fields[index].name
    if name.endswith(NS_SUFFIX):
        base = [i for i, field in enumerate(fields) if field.name == name[:-len(NS_SUFFIX)]]
        if base:
            return base[0], 1
    return index, 0


def write_version_hint(table) -> None:
    """`metadata/version-hint.text` naming the table's current metadata file, so that a reader given only
    the table's folder finds it: DuckDB's `iceberg_scan('<warehouse>/spy_streamer.db/trades')` reads the
    hint and opens `<hint>.metadata.json`. The SQL catalog keeps that pointer in its database and writes
    no hint; a missing or old hint changes nothing for catalog readers (pyiceberg, Spark, Trino)."""
    folder, _, name = table.metadata_location.rpartition("/")
    hint, path = name.removesuffix(".metadata.json"), f"{folder}/{VERSION_HINT}"
    try:
        if path.startswith(("file:", "/")):
            write_text_atomically(Path(path.removeprefix("file://").removeprefix("file:")), hint)
        else:  # an object store's PUT replaces the object whole
            with table.io.new_output(path).create(overwrite=True) as stream:
                stream.write(hint.encode())
    except OSError as exc:  # the commit stands: only a folder-only reader sees the previous version
        log.warning("could not write %s: %s", path, exc, extra={"event": "version_hint_failed"})


def partition_source(schema: pa.Schema) -> str | None:
    names = set(schema.names)
    return next((name for name in PARTITION_SOURCES if name in names), None)


def create_table(catalog, identifier: tuple[str, str], schema: pa.Schema):
    """Create the channel's table (partition spec and sort order in the same commit); if another process
    created it meanwhile, load that one."""
    from pyiceberg.exceptions import TableAlreadyExistsError
    from pyiceberg.transforms import DayTransform, IdentityTransform

    _create_namespace(catalog, identifier[0])
    try:
        transaction = catalog.create_table_transaction(identifier, schema=schema, properties=TABLE_PROPERTIES)
        source = partition_source(schema)
        if source is not None:
            with transaction.update_spec() as spec:
                spec.add_field(source, DayTransform(), f"{source}_day")
            with transaction.update_sort_order() as order:
                if "symbol" in schema.names:
                    order.asc("symbol", IdentityTransform())
                order.asc(source, IdentityTransform())
        return transaction.commit_transaction()
    except TableAlreadyExistsError:
        return catalog.load_table(identifier)


def _create_namespace(catalog, namespace: str) -> None:
    try:
        catalog.create_namespace_if_not_exists(namespace)
    except Exception:  # another process created it between the check and the insert (SQL catalogs)
        if not catalog.namespace_exists(namespace):
            raise


def load_or_create_table(catalog, identifier: tuple[str, str], schema: pa.Schema):
    from pyiceberg.exceptions import NoSuchTableError

    try:
        return catalog.load_table(identifier)
    except NoSuchTableError:
        return create_table(catalog, identifier, schema)


def aligned(table, rows: pa.Table) -> pa.Table:
    """`rows` (lake types) in the Iceberg table's schema: columns the table lacks are added to it first
    (an older table meets a newer column, e.g. `session`), columns `rows` lacks come as nulls."""
    known = set(table.schema().column_names)
    if any(name not in known for name in rows.column_names):
        with table.update_schema() as update:
            update.union_by_name(rows.schema)
    target = table.schema().as_arrow()
    arrays = [rows.column(field.name).cast(field.type) if field.name in rows.column_names
              else pa.nulls(rows.num_rows, field.type) for field in target]
    return pa.Table.from_arrays(arrays, schema=target)
