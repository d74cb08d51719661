"""Lake maintenance that can run on any machine that reaches the catalog and the warehouse.

- `compact_partition`: a day's partition (UTC day of `start`, or `sip_timestamp` for trades and quotes)
  rewritten as one snapshot: every data file of the day replaced by files of about the table's target
  size (one, for a day of SPY), in the channel's sort order, one row per the channel's dedup key, the
  first received kept (the local layout's rule: capture/keep_first.py). Concurrent appends (the daemon's late batches) make the catalog
  refuse the stale commit; pyiceberg checks the replaced files still exist and retries, and a conflict
  it cannot resolve starts the rewrite again from a fresh read.
- `expire_snapshots`: snapshots older than a retention are dropped from the table's history, then the
  files only they referenced (the micro-batches a compaction replaced, their manifests) are deleted.
  The retention is at least a day: the committer's ledger reads the batch ids of recent snapshots.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from ..capture.keep_first import KeepFirst, first_received_per_key
from .compaction import Outcome
from . import lake_tables

log = logging.getLogger(__name__)

COMPACTED_PROPERTY = "spy-streamer.compacted-day"
COMPACTION_ATTEMPTS = 5
MIN_RETENTION = timedelta(days=1)


class LakeMaintenanceError(Exception):
    """The maintenance step stopped; the table is as it was (Iceberg commits are all or nothing)."""


@dataclass(frozen=True)
class LakeCompaction:
    table: str
    day: date
    outcome: Outcome
    files_before: int = 0
    files_after: int = 0
    rows_read: int = 0
    rows: int = 0
    bytes: int = 0          # data bytes of the day after the rewrite
    seconds: float = 0.0

    def describe(self) -> str:
        if self.outcome is not Outcome.COMPACTED:
            return f"{self.table} {self.day}: {self.outcome} ({self.files_before} file(s), {self.rows:,} rows)"
        return (f"{self.table} {self.day}: compacted {self.files_before} files into {self.files_after} "
                f"({self.rows:,} rows, {self.rows_read - self.rows:,} repeats dropped, {self.bytes:,} bytes, "
                f"one snapshot, {self.seconds:.2f} s)")


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def utc_days(open_at: datetime, close_at: datetime) -> list[date]:
    """The UTC partitions a session touches (a winter evening session runs past midnight UTC)."""
    first, last = open_at.astimezone(timezone.utc).date(), close_at.astimezone(timezone.utc).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def compact_partition(table, day: date, channel: str) -> LakeCompaction:
    """Rewrite the table of `channel`'s partition of `day` (UTC) as one sorted, deduplicated snapshot."""
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    for attempt in range(1, COMPACTION_ATTEMPTS + 1):
        try:
            return _compact_once(table, day, KeepFirst.of(channel))
        except (CommitFailedException, ValidationException) as exc:
            if attempt == COMPACTION_ATTEMPTS:
                raise LakeMaintenanceError(f"{day}: still conflicting after {attempt} attempts: {exc}") from exc
            log.info("compaction of %s %s met a concurrent commit; starting again", table.name()[-1], day,
                     extra={"event": "lake_compaction_retry", "attempt": attempt})
            time.sleep(0.2 * 2 ** attempt)
            table.refresh()
    raise AssertionError("unreachable")


def _compact_once(table, day: date, keys: KeepFirst) -> LakeCompaction:
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    started = time.monotonic()
    name = ".".join(table.name())
    source = _partition_column(table)
    low, high = day_bounds(day)
    scan = table.scan(row_filter=And(GreaterThanOrEqual(source, low.isoformat()), LessThan(source, high.isoformat())))
    tasks = list(scan.plan_files())
    if not tasks:
        return LakeCompaction(name, day, Outcome.NO_DATA)
    _check_rewritable(table, tasks, day)
    if len(tasks) == 1 and _was_compacted(table, tasks[0].file.file_path):
        rows = tasks[0].file.record_count
        return LakeCompaction(name, day, Outcome.ALREADY_COMPACTED, 1, 1, rows, rows, tasks[0].file.file_size_in_bytes)
    merged = scan.to_arrow()
    if merged.num_rows != sum(task.file.record_count for task in tasks):
        raise LakeMaintenanceError(f"{name} {day}: the day's files hold rows of other days; nothing changed")
    rows = first_received_per_key(merged, keys)
    with table.transaction() as transaction:
        with transaction.update_snapshot(snapshot_properties={COMPACTED_PROPERTY: day.isoformat()}).overwrite() as rewrite:
            for task in tasks:
                rewrite.delete_data_file(task.file)
            new_files = list(_dataframe_to_data_files(table_metadata=transaction.table_metadata, df=rows,
                                                      io=table.io, write_uuid=rewrite.commit_uuid))
            for data_file in new_files:
                rewrite.append_data_file(data_file)
    lake_tables.write_version_hint(table)
    result = LakeCompaction(name, day, Outcome.COMPACTED, len(tasks), len(new_files), merged.num_rows,
                            rows.num_rows, sum(f.file_size_in_bytes for f in new_files),
                            round(time.monotonic() - started, 3))
    log.info("lake compaction: %s", result.describe(),
             extra={"event": "lake_day_compacted", "table": name, "day": day.isoformat(),
                    "files": result.files_before, "rows": result.rows, "bytes": result.bytes})
    return result


def _partition_column(table) -> str:
    from pyiceberg.transforms import DayTransform

    for field in table.spec().fields:
        if isinstance(field.transform, DayTransform):
            return table.schema().find_column_name(field.source_id)
    raise LakeMaintenanceError(f"{'.'.join(table.name())} is not partitioned by day; nothing changed")


def _check_rewritable(table, tasks, day: date) -> None:
    if any(task.delete_files for task in tasks):
        raise LakeMaintenanceError(f"{'.'.join(table.name())} {day}: the partition has row-level deletes "
                                   f"(from another engine); rewrite it with that engine; nothing changed")


def _was_compacted(table, file_path: str) -> bool:
    """Whether the one data file of a day was written by a compaction (a lone micro-batch is rewritten
    too: the rewrite is what sorts it and gives it the table's sort order)."""
    for snapshot in reversed(table.metadata.snapshots):
        if snapshot.summary is not None and snapshot.summary.get(COMPACTED_PROPERTY):
            for manifest in snapshot.manifests(table.io):
                if manifest.added_snapshot_id != snapshot.snapshot_id:
                    continue
                if any(entry.data_file.file_path == file_path for entry in manifest.fetch_manifest_entry(table.io)):
                    return True
    return False


# --- snapshot expiry ---

@dataclass(frozen=True)
class Expiry:
    table: str
    snapshots_expired: int
    snapshots_kept: int
    files_deleted: int

    def describe(self) -> str:
        return (f"{self.table}: expired {self.snapshots_expired} snapshot(s), kept {self.snapshots_kept}, "
                f"deleted {self.files_deleted} file(s) no kept snapshot uses")


def expire_snapshots(table, older_than: timedelta, now: datetime) -> Expiry:
    """Drop snapshots taken before `now - older_than` (never the current one), then delete the data
    files, manifests and manifest lists that only they referenced."""
    if older_than < MIN_RETENTION:
        raise LakeMaintenanceError(f"a retention under {MIN_RETENTION.days} day would blind the committer's "
                                   f"ledger of recent batches; nothing changed")
    name = ".".join(table.name())
    cutoff = now - older_than
    before = {snapshot.snapshot_id: snapshot for snapshot in table.metadata.snapshots}
    table.maintenance.expire_snapshots().older_than(cutoff).commit()
    table.refresh()
    lake_tables.write_version_hint(table)
    kept = {snapshot.snapshot_id for snapshot in table.metadata.snapshots}
    expired = [snapshot for snapshot_id, snapshot in before.items() if snapshot_id not in kept]
    if not expired:
        return Expiry(name, 0, len(kept), 0)
    in_use = _files_of(table, [table.metadata.snapshot_by_id(snapshot_id) for snapshot_id in kept], live_only=True)
    unused = _files_of(table, expired, live_only=False) - in_use
    for path in sorted(unused):
        try:
            table.io.delete(path)
        except FileNotFoundError:  # deleted by an earlier run stopped before it finished
            pass
    result = Expiry(name, len(expired), len(kept), len(unused))
    log.info("lake snapshots expired: %s", result.describe(),
             extra={"event": "lake_snapshots_expired", "table": name, "snapshots": len(expired),
                    "files_deleted": len(unused)})
    return result


def _files_of(table, snapshots, live_only: bool) -> set[str]:
    """Manifest lists, manifests and data/delete files the snapshots reference."""
    paths: set[str] = set()
    seen_manifests: set[str] = set()
    for snapshot in snapshots:
        paths.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            paths.add(manifest.manifest_path)
            if manifest.manifest_path in seen_manifests:
                continue
            seen_manifests.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=live_only):
                paths.add(entry.data_file.file_path)
    return paths


def open_table(catalog, namespace: str, channel: str):
    return catalog.load_table((namespace, lake_tables.table_name(channel)))
