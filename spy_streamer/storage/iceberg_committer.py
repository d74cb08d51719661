"""The lake committer: staged micro-batches -> the channel's Iceberg table, each exactly once, in order.

With `storage.kind: iceberg` the writer keeps writing durable micro-batch files under `data_dir` exactly
as in the local layout (the staging area). This committer, on its own thread, takes them oldest first
(by the nanosecond stamp in `part-<ns>-<pid>-<seq>.parquet`), appends them to the channel's table, and
only after the catalog accepted the commit deletes them (and fsyncs their folder).

Exactly once, whatever is killed when:
- every commit carries its batches' ids in the snapshot summary (`spy-streamer.batches`: file name and a
  digest of its bytes). Before appending, the committer reads the ids of the table's recent snapshots:
  a batch found there was committed by a run killed before it deleted the file, and is only deleted now.
  The ledger is the table itself, so it is as durable and as atomic as the commit.
- a commit is one Iceberg snapshot: readers see all of its rows or none. A data file uploaded by a run
  killed before its commit is referenced by no snapshot, so no reader sees it (an orphan for the
  maintenance jobs).
- concurrent writers (another capture process, a compaction) make the catalog refuse a stale commit;
  pyiceberg refreshes and retries it (commit.retry.*), and a commit that still fails is retried here
  with exponential backoff. Only one committer works on one staging area (the daemon's instance lock).

If the store or the catalog is down, batches pile up on local disk (never deleted uncommitted): one
WARNING per failure streak, one more when the backlog passes `max_backlog_bytes`, and `upload_backlog`
(files waiting) for the heartbeat. They are committed in order when it recovers.
"""
from __future__ import annotations

import hashlib
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from ..clock import SystemClock
from ..monitoring.failure_streak import FailureStreak
from .durable_files import fsync_directory
from .layout import micro_batch_stamp, partition_day_text, partition_dirs, visible_parquet_files
from .parquet_sink import ParquetSink
from . import lake_tables
from .lake_catalog import NAMESPACE
from ..orchestrator.service import Service

log = logging.getLogger(__name__)

BATCHES_PROPERTY = "spy-streamer.batches"
HOST_PROPERTY = "spy-streamer.host"
COMMIT_INTERVAL_SECONDS = 2.0           # between passes while healthy
MAX_FILES_PER_COMMIT = 64               # a backlog catches up in few snapshots...
MAX_BYTES_PER_COMMIT = 64 * 1024 * 1024  # ...without holding much of it in memory
MAX_BACKLOG_BYTES = 1024 ** 3            # past this: a WARNING (never a deletion)
BACKOFF_SECONDS = (1.0, 60.0)            # first and longest wait after a failed pass
LEDGER_MARGIN_MS = 3_600_000             # snapshots older than the oldest staged file, minus this, are not read


@dataclass
class LakeStats:
    """What the heartbeat shows of the lake (read from another thread: plain values only)."""
    upload_backlog: int = 0             # staged files waiting for their commit
    upload_backlog_bytes: int = 0
    batches_committed: int = 0
    rows_committed: int = 0
    bytes_committed: int = 0            # staged Parquet bytes moved into the table
    commits: int = 0
    commit_failures: int = 0            # failed passes (each retried with backoff)
    batches_recovered: int = 0          # found already committed (a run killed before deleting them)
    last_commit_at: str | None = None   # ISO 8601 UTC
    last_commit_seconds: float | None = None  # read + upload + catalog commit of the last commit
    last_error: str | None = None
    failing_since: str | None = None    # the first failure of the current streak
    commit_started_at: str | None = None  # while a commit is in flight (check: WARNING past 30 s)
    oldest_staged_at: str | None = None   # when the oldest staged file was written (check: CRITICAL past 30 min)
    upload_backlog_rows: int = 0          # rows in the staged files (their footers)
    rewrite_failed: dict[str, str] = field(default_factory=dict)  # channel -> why its last close-time rewrite failed


@dataclass(frozen=True)
class StagedBatch:
    path: Path
    channel: str
    stamp_ns: int       # the writer's stamp in the name (else the file's mtime): the commit order
    size: int
    mtime_ns: int

    @property
    def batch_id(self) -> str:
        """The file name and a digest of its bytes: unique, stable across restarts, and a day file rewritten
        under the same name by a local compaction gets a new one."""
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        return f"{self.path.name.replace(',', '_')}#{digest}"


def staged_batches(data_dir: Path) -> list[StagedBatch]:
    """Every visible Parquet file of the hive layout under `data_dir`, oldest first."""
    batches = []
    for folder in partition_dirs(data_dir):
        for path in visible_parquet_files(folder):
            try:
                info = path.stat()
            except FileNotFoundError:  # committed and deleted meanwhile
                continue
            stamp = micro_batch_stamp(path.name)
            stamp = info.st_mtime_ns if stamp is None else stamp
            batches.append(StagedBatch(path, folder.parent.name, stamp, info.st_size, info.st_mtime_ns))
    return sorted(batches, key=lambda batch: (batch.stamp_ns, batch.path.name))


def committed_batch_ids(table, since_ms: int) -> set[str]:
    """Batch ids recorded by snapshots taken at or after `since_ms` (the table's own commit ledger)."""
    ids: set[str] = set()
    for snapshot in table.metadata.snapshots:
        if snapshot.timestamp_ms >= since_ms and snapshot.summary is not None:
            recorded = snapshot.summary.get(BATCHES_PROPERTY)
            if recorded:
                ids.update(recorded.split(","))
    return ids


class IcebergCommitter(Service):
    thread_name = "iceberg-commit"

    def __init__(self, catalog, data_dir: Path, namespace: str = NAMESPACE,
                 clock=None, *, keep_local: bool = False, max_backlog_bytes: int = MAX_BACKLOG_BYTES,
                 whole_ledger: bool = False, on_commit: Callable[[str, list[StagedBatch]], None] | None = None):
        """`catalog` may be a function that builds it (a REST catalog is asked for its config when built:
        built on the first pass, and again after a failure, so a catalog down at start is one more outage).
        `keep_local` leaves committed files in place and `whole_ledger` reads every snapshot's batch ids
        (`import-local`: old files, maybe copied); `on_commit(channel, batches)` is called after each
        commit (tests and the benchmark time it)."""
        super().__init__()
        self._catalog_factory = catalog if callable(catalog) else None
        self.catalog = None if callable(catalog) else catalog
        self.data_dir = data_dir
        self.namespace = namespace
        self.clock = clock or SystemClock()
        self.interval_seconds = COMMIT_INTERVAL_SECONDS
        self.keep_local = keep_local
        self.max_backlog_bytes = max_backlog_bytes
        self.whole_ledger = whole_ledger
        self.on_commit = on_commit
        self.stats = LakeStats()
        self._streak = FailureStreak("lake_commit", log, "lake_commit_failed", "lake_commit_recovered")
        self._rewrite_streaks: dict[str, FailureStreak] = {}
        self._staged_rows: dict[tuple, int] = {}
        self._backlog_warned = False
        self._host = socket.gethostname()

    @property
    def upload_backlog(self) -> int:
        return self.stats.upload_backlog

    def compact_session(self, opens, closes) -> None:
        """After the close: rewrite each UTC day the session touched, per table (one snapshot each, one row
        per the channel's key). The commit thread keeps appending meanwhile; the rewrite is safe against
        that. A table whose rewrite fails keeps every row (in the files its commits appended: more files
        for queries to read, repeats not yet dropped); its failure streak (`lake_rewrite_<channel>`: the
        heartbeat's `failing`, `check` WARNING) runs until a later rewrite of that table succeeds, and the
        other tables are still rewritten."""
        from .iceberg_maintenance import utc_days
        days = utc_days(opens, closes)
        try:
            catalog = self._catalog_factory() if self._catalog_factory is not None else self.catalog
        except Exception as exc:  # the catalog is down: no table can be rewritten today
            for channel in lake_tables.TABLE_NAMES:
                self._rewrite_failed(channel, days[0], exc)
            return
        for channel in lake_tables.TABLE_NAMES:
            if self._rewrite(catalog, channel, days):
                self._rewrite_streak(channel).succeeded("the close-time rewrite of the %s table works again",
                                                        lake_tables.table_name(channel), channel=channel)
                self.stats.rewrite_failed = {name: why for name, why in self.stats.rewrite_failed.items()
                                             if name != channel}

    def _rewrite(self, catalog, channel: str, days) -> bool:
        """Rewrite `channel`'s table for each of `days`; False when one failed (logged, shown)."""
        from pyiceberg.exceptions import NoSuchTableError
        from .iceberg_maintenance import compact_partition, open_table
        try:
            table = open_table(catalog, self.namespace, channel)
        except NoSuchTableError:
            return True   # nothing of this channel was ever committed
        except Exception as exc:
            self._rewrite_failed(channel, days[0], exc)
            return False
        for day in days:
            try:
                compact_partition(table, day, channel)
            except Exception as exc:
                self._rewrite_failed(channel, day, exc)
                return False
        return True

    def _rewrite_failed(self, channel: str, day, exc: Exception) -> None:
        self.stats.rewrite_failed = {**self.stats.rewrite_failed, channel: f"{day}: {type(exc).__name__}: {exc}"[:300]}
        self._rewrite_streak(channel).failed(
            exc, "the close-time rewrite of the %s table for %s failed; every row is in the table, in the files "
                 "its commits appended, repeats not yet dropped; `spy-streamer lake-compact --date %s --channel %s` "
                 "retries it", lake_tables.table_name(channel), day, day, channel, channel=channel)

    def _rewrite_streak(self, channel: str) -> FailureStreak:
        if channel not in self._rewrite_streaks:
            self._rewrite_streaks[channel] = FailureStreak(f"lake_rewrite_{channel}", log, "lake_rewrite_failed",
                                                           "lake_rewrite_recovered")
        return self._rewrite_streaks[channel]

    # --- thread body ---

    def run(self) -> None:
        """Until stop(): a pass every `interval_seconds`, backing off after failures; then one last pass,
        for what the writer's final flush staged (the runner stops this service after the writer). Staged
        files it cannot commit are durable, counted in the stats, and committed by the next run."""
        wait = 0.0
        while not self.stop_requested.wait(wait):
            wait = self.tick(self.interval_seconds)
        self.tick(self.interval_seconds)

    def count_staged(self) -> None:
        """The staged files as they are on disk now, into the stats (the final heartbeat's truth, whatever
        the commit thread managed before the deadline)."""
        self._scan()

    def tick(self, interval_seconds: float) -> float:
        """One pass; the seconds to wait before the next (longer after each failure in a row)."""
        try:
            self.commit_pending()
        except Exception as exc:  # store or catalog down, a conflict that outlived pyiceberg's retries...
            if self._catalog_factory is not None:
                self.catalog = None
            self._on_failure(exc)
            low, high = BACKOFF_SECONDS
            return min(high, low * 2 ** (self._streak.failures - 1)) * random.uniform(0.9, 1.1)
        self._on_success()
        return interval_seconds

    # --- one pass ---

    def commit_pending(self) -> int:
        """Commit every staged batch, oldest first; how many were committed. Raises on the first failure,
        leaving that batch and all later ones staged (so the table receives them in order)."""
        done = 0
        pending = self._scan()
        if not pending:
            return 0
        self.stats.commit_started_at = self._now_iso()
        try:
            if self.catalog is None:
                self.catalog = self._catalog_factory()
            for channel, group in _commit_groups(pending):
                done += self._commit_group(channel, group)
                committed = set(group)
                pending = [batch for batch in pending if batch not in committed]
                self._count(pending)
        finally:
            self.stats.commit_started_at = None
        return done

    def _now_iso(self) -> str:
        return self.clock.now().astimezone(timezone.utc).isoformat()

    def _scan(self) -> list[StagedBatch]:
        pending = staged_batches(self.data_dir)
        self._count(pending)
        self._check_backlog_bound()
        return pending

    def _count(self, pending: list[StagedBatch]) -> None:
        stats = self.stats
        stats.upload_backlog = len(pending)
        stats.upload_backlog_bytes = sum(batch.size for batch in pending)
        stats.upload_backlog_rows = self._rows_staged(pending)
        oldest = min((batch.stamp_ns for batch in pending), default=None)   # the writer's clock, as the heartbeat's
        stats.oldest_staged_at = None if oldest is None else \
            datetime.fromtimestamp(oldest / 1e9, timezone.utc).isoformat()

    def _rows_staged(self, pending: list[StagedBatch]) -> int:
        """Rows in the staged files, from their footers (each read once: a file's rows never change)."""
        known, self._staged_rows = self._staged_rows, {}
        for batch in pending:
            key = (str(batch.path), batch.size, batch.mtime_ns)
            if key not in known:
                try:
                    known[key] = pq.read_metadata(batch.path).num_rows
                except (pa.ArrowException, OSError):   # vanished, or unreadable: set aside by the next commit
                    continue
            self._staged_rows[key] = known[key]
        return sum(self._staged_rows.values())

    def _commit_group(self, channel: str, group: list[StagedBatch]) -> int:
        started = time.monotonic()
        readable = [(batch, rows) for batch, rows in ((batch, _read(batch)) for batch in group) if rows is not None]
        if not readable:
            return 0
        identifier = (self.namespace, lake_tables.table_name(channel))
        rows = [lake_tables.to_lake_types(table) for _, table in readable]
        table = lake_tables.load_or_create_table(self.catalog, identifier, rows[0].schema)
        # A commit comes after its file was written (mtime: the real clock, whatever clock named the file).
        since = 0 if self.whole_ledger else (
            min(min(batch.stamp_ns, batch.mtime_ns) // 1_000_000 for batch, _ in readable) - LEDGER_MARGIN_MS)
        ids = [batch.batch_id for batch, _ in readable]
        already = committed_batch_ids(table, since)
        fresh = [(batch, batch_id, part) for (batch, _), batch_id, part in zip(readable, ids, rows)
                 if batch_id not in already]
        if len(fresh) < len(readable):
            self.stats.batches_recovered += len(readable) - len(fresh)
            log.info("%d staged batch(es) of %s were already committed (a run stopped before removing them)",
                     len(readable) - len(fresh), channel, extra={"event": "lake_batches_recovered"})
        if fresh:
            data = pa.concat_tables([lake_tables.aligned(table, part) for _, _, part in fresh])
            table.append(data, snapshot_properties={BATCHES_PROPERTY: ",".join(batch_id for _, batch_id, _ in fresh),
                                                    HOST_PROPERTY: self._host})
            lake_tables.write_version_hint(table)
            self._count_commit([batch for batch, _, _ in fresh], data.num_rows, time.monotonic() - started)
            if self.on_commit is not None:
                self.on_commit(channel, [batch for batch, _, _ in fresh])
        self._remove([batch for batch, _ in readable])
        return len(fresh)

    def _count_commit(self, batches: list[StagedBatch], rows: int, seconds: float) -> None:
        stats = self.stats
        stats.commits += 1
        stats.batches_committed += len(batches)
        stats.rows_committed += rows
        stats.bytes_committed += sum(batch.size for batch in batches)
        stats.last_commit_seconds = round(seconds, 4)
        stats.last_commit_at = self._now_iso()

    def _remove(self, batches: list[StagedBatch]) -> None:
        """Committed: the staged copies go (each folder fsynced once). A failure here loses nothing: the
        next pass finds the batches in the ledger and only deletes them."""
        if self.keep_local:
            return
        folders = set()
        for batch in batches:
            batch.path.unlink(missing_ok=True)
            folders.add(batch.path.parent)
        for folder in folders:
            fsync_directory(folder)
        self._remove_old_empty_folders(folders)

    def _remove_old_empty_folders(self, folders: set[Path]) -> None:
        """A day folder emptied two days after its date will not be written again; today's stays (the
        writer may be about to write into it)."""
        cutoff = (self.clock.now() - timedelta(days=2)).date().isoformat()
        for folder in folders:
            day = partition_day_text(folder)
            if day is not None and day < cutoff:
                try:
                    folder.rmdir()
                except OSError:  # not empty: a late batch landed
                    pass

    # --- failures and the backlog bound: few log lines ---

    def _on_failure(self, exc: Exception) -> None:
        """One failed pass: counted, the streak's first logged (a traceback only for what may be a bug)."""
        self.stats.commit_failures += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
        first = not self._streak.failing
        self._streak.failed(exc, "lake commit failed; %d staged batch(es) (%d rows) wait on local disk and are "
                            "retried with backoff", self.stats.upload_backlog, self.stats.upload_backlog_rows,
                            upload_backlog=self.stats.upload_backlog)
        self.stats.failing_since = self._streak.since.isoformat() if self._streak.since else None
        if first and not _expected(exc):
            log.error("the lake commit's failure may be a bug", exc_info=exc, extra={"event": "lake_commit_error"})

    def _on_success(self) -> None:
        self._streak.succeeded("lake commits resumed", upload_backlog=self.stats.upload_backlog)
        self.stats.last_error = self.stats.failing_since = None

    def _check_backlog_bound(self) -> None:
        over = self.stats.upload_backlog_bytes > self.max_backlog_bytes
        if over and not self._backlog_warned:
            log.warning("lake upload backlog is %d bytes in %d file(s), over the %d-byte bound; nothing is "
                        "deleted, check the object store and the catalog", self.stats.upload_backlog_bytes,
                        self.stats.upload_backlog, self.max_backlog_bytes,
                        extra={"event": "lake_backlog_high", "upload_backlog": self.stats.upload_backlog,
                               "upload_backlog_bytes": self.stats.upload_backlog_bytes})
        self._backlog_warned = over


def _commit_groups(pending: list[StagedBatch]):
    """Consecutive runs of one channel's batches, at most MAX_FILES_PER_COMMIT / MAX_BYTES_PER_COMMIT each.
    Channels are separate tables, so a channel's group never waits on another channel's later batch."""
    by_channel: dict[str, list[StagedBatch]] = {}
    for batch in pending:
        by_channel.setdefault(batch.channel, []).append(batch)
    for channel, batches in by_channel.items():
        group, size = [], 0
        for batch in batches:
            if group and (len(group) >= MAX_FILES_PER_COMMIT or size + batch.size > MAX_BYTES_PER_COMMIT):
                yield channel, group
                group, size = [], 0
            group.append(batch)
            size += batch.size
        if group:
            yield channel, group


def _read(batch: StagedBatch) -> pa.Table | None:
    """The batch's rows; None when it vanished or cannot be read (then set aside for a person, as the
    local layout does: hidden, kept)."""
    try:
        return pq.read_table(batch.path)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as exc:
        ParquetSink.set_aside(batch.path, exc)
        return None


def _expected(exc: Exception) -> bool:
    """Failures of the store, the network or the catalog (no traceback in the log); anything else may be a bug."""
    from pyiceberg.exceptions import CommitFailedException, RESTError, ValidationException

    return isinstance(exc, (OSError, CommitFailedException, RESTError, ValidationException, ConnectionError,
                            TimeoutError)) or type(exc).__module__.startswith(("sqlalchemy", "requests", "urllib3"))


def import_local(catalog, data_dir: Path, namespace: str = NAMESPACE, keep_local: bool = False) -> LakeStats:
    """`spy-streamer import-local`: every Parquet file of the local layout under `data_dir` into the tables,
    oldest first, each once (a second run, or a file already committed by the daemon, adds nothing);
    moved (deleted locally after its commit) unless `keep_local`. Raises on the first failure; run again."""
    committer = IcebergCommitter(catalog, data_dir, namespace, keep_local=keep_local, whole_ledger=True)
    committer.commit_pending()
    return committer.stats
