"""The lake's operator commands (`import-local`, `lake-compact`, `expire-snapshots`): each builds the
catalog from the config, does one thing, prints one line per table and returns the exit code.

They run on any machine that reaches the catalog and the warehouse; `import-local` also needs the
`data_dir` it moves, and takes its instance lock (the daemon's committer owns a staging area it runs on).
"""
from __future__ import annotations

import sys
from datetime import date, datetime, timedelta, timezone

from ..exit_codes import EX_CONFIG, EX_LOCKED
from ..instance_lock import InstanceLock, InstanceLocked, UnsafeLockFile
from .lake_catalog import location_of, open_catalog
from .lake_tables import TABLE_NAMES


def _fail(message: str) -> int:
    print(f"spy-streamer: {message}", file=sys.stderr)
    return 1


def _tables(catalog, namespace: str, channel: str | None):
    """(channel, table) for `channel`, else for every channel table that exists."""
    from pyiceberg.exceptions import NoSuchTableError

    names = {channel: TABLE_NAMES.get(channel, channel.lower())} if channel else TABLE_NAMES
    for name, table_name in names.items():
        try:
            yield name, catalog.load_table((namespace, table_name))
        except NoSuchTableError:
            if channel:
                raise


def import_local_command(config, keep_local: bool) -> int:
    from .iceberg_committer import import_local

    location = location_of(config)
    try:
        with InstanceLock(config.paths.data_dir):
            stats = import_local(open_catalog(location, config.paths.data_dir), config.paths.data_dir,
                                 location.namespace, keep_local=keep_local)
    except InstanceLocked as exc:
        print(f"spy-streamer: {exc}; stop it first (with storage.kind iceberg its committer moves these files "
              f"itself)", file=sys.stderr)
        return EX_LOCKED
    except UnsafeLockFile as exc:
        print(f"spy-streamer: {exc}", file=sys.stderr)
        return EX_CONFIG
    except Exception as exc:  # the store or the catalog: nothing moved is lost, run it again
        return _fail(f"import stopped ({type(exc).__name__}: {exc}); what was committed stays, run it again")
    verb = "copied" if keep_local else "moved"
    print(f"{verb} {stats.batches_committed} file(s), {stats.rows_committed:,} rows, into the lake in "
          f"{stats.commits} commit(s); {stats.batches_recovered} already there")
    return 0


def lake_compact_command(config, day: date, channel: str | None) -> int:
    from .iceberg_maintenance import LakeMaintenanceError, compact_partition

    location = location_of(config)
    found = False
    try:
        for name, table in _tables(open_catalog(location, config.paths.data_dir), location.namespace, channel):
            found = True
            print(compact_partition(table, day, name).describe())
    except LakeMaintenanceError as exc:
        return _fail(f"lake compaction of {day} failed: {exc}")
    except Exception as exc:
        return _fail(f"lake compaction of {day} failed ({type(exc).__name__}: {exc}); the table is as it was")
    return 0 if found else _fail("no lake table yet")


def expire_snapshots_command(config, older_than_days: float, channel: str | None) -> int:
    from .iceberg_maintenance import LakeMaintenanceError, expire_snapshots

    location = location_of(config)
    now = datetime.now(timezone.utc)
    found = False
    try:
        for _, table in _tables(open_catalog(location, config.paths.data_dir), location.namespace, channel):
            found = True
            print(expire_snapshots(table, timedelta(days=older_than_days), now).describe())
    except LakeMaintenanceError as exc:
        return _fail(str(exc))
    except Exception as exc:
        return _fail(f"snapshot expiry failed ({type(exc).__name__}: {exc}); run it again")
    return 0 if found else _fail("no lake table yet")
