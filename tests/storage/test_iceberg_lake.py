"""The lake: staged micro-batches -> Iceberg tables in a real S3 API (moto's server on loopback).

One moto server per module; each test has its own bucket, catalog and staging area. An outage is a TCP
proxy in front of moto that stops answering; a SIGKILL is sent to a real committer process at a chosen
point of its commit.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

pytest.importorskip("pyiceberg")
moto_server = pytest.importorskip("moto.server")

from channel_parsing import events_one_by_one, rest_table  # noqa: E402
from spy_streamer.storage.compaction import compact_day  # noqa: E402
from spy_streamer.storage.parquet_sink import ParquetSink  # noqa: E402
from spy_streamer.storage import iceberg_committer  # noqa: E402
from spy_streamer.storage.iceberg_committer import BATCHES_PROPERTY, IcebergCommitter, import_local  # noqa: E402
from spy_streamer.storage.iceberg_maintenance import (  # noqa: E402
    LakeMaintenanceError, Outcome, compact_partition, expire_snapshots, open_table)
from spy_streamer.storage.lake_catalog import CATALOG_NAME, LakeLocation, catalog_properties, open_catalog  # noqa: E402

DAY = date(2026, 11, 30)
DAY_START_MS = int(datetime(2026, 11, 30, 14, 30, tzinfo=timezone.utc).timestamp() * 1000)  # 09:30 New York
NAMESPACE = "spy_streamer"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Outage:
    """A TCP proxy to the store that can stop answering (connections refused, open ones cut) and come back."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = _free_port()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        listener.close()
        for sock in self._open:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._open += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            a.close()
            b.close()


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on loopback (a free port), with the standard AWS variables pointing at it."""
    saved = {name: os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _bucket(endpoint: str) -> str:
    import boto3

    name = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def lake(tmp_path, s3):
    """(data_dir, LakeLocation, catalog) with the warehouse in a new bucket."""
    location = LakeLocation("sql", f"s3://{_bucket(s3)}/warehouse", s3)
    data_dir = tmp_path / "data"
    return data_dir, location, open_catalog(location, data_dir)


def bars(first: int, count: int, received_ns: int | None = None, close: float = 1.5) -> pa.Table:
    events = [{"ev": "A", "sym": "SPY", "s": DAY_START_MS + n * 1000, "e": DAY_START_MS + n * 1000 + 1000,
               "o": 1.0, "h": 2.0, "l": 1.0, "c": close, "v": 10 + n} for n in range(first, first + count)]
    table, bad = events_one_by_one(events, "A", received_ns or time.time_ns())
    assert not bad
    return table


def stage(data_dir: Path, *tables: pa.Table) -> list[Path]:
    sink = ParquetSink(data_dir)
    return [sink.write("A", DAY, table, time.time_ns()) for table in tables]


def rows_of(catalog) -> pa.Table:
    return open_table(catalog, NAMESPACE, "A").scan().to_arrow()


def assert_each_once(table: pa.Table, expected: int) -> None:
    keys = pc.unique(pc.binary_join_element_wise(pc.cast(table["symbol"], pa.string()), pc.cast(table["start"], pa.string()), "|"))
    assert table.num_rows == expected == len(keys)


# --- writes, reads back, layout ---

def test_staged_batches_are_committed_in_order_then_removed(lake):
    data_dir, _, catalog = lake
    staged = stage(data_dir, bars(0, 10), bars(10, 10), bars(20, 5))
    committer = IcebergCommitter(catalog, data_dir, NAMESPACE)

    assert committer.commit_pending() == 3

    assert not any(path.exists() for path in staged)
    table = open_table(catalog, NAMESPACE, "A")
    assert_each_once(table.scan().to_arrow(), 25)
    ids = table.current_snapshot().summary.get(BATCHES_PROPERTY).split(",")
    assert [batch_id.split("#")[0] for batch_id in ids] == [path.name for path in staged]  # oldest first
    stats = committer.stats
    assert (stats.batches_committed, stats.rows_committed, stats.upload_backlog) == (3, 25, 0)
    assert stats.bytes_committed > 0 and stats.last_commit_seconds > 0
    assert committer.commit_pending() == 0  # nothing left, nothing added


def test_the_table_is_partitioned_by_day_with_microsecond_utc_timestamps(lake):
    data_dir, _, catalog = lake
    rest, _ = rest_table("SPY", [{"t": DAY_START_MS + 60_000, "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 5}],
                         "A", time.time_ns())
    stage(data_dir, bars(0, 3), rest)
    IcebergCommitter(catalog, data_dir, NAMESPACE).commit_pending()

    table = open_table(catalog, NAMESPACE, "A")
    assert table.name() == (NAMESPACE, "second_aggregates")
    assert [(f.name, str(f.transform)) for f in table.spec().fields] == [("start_day", "day")]
    assert table.schema().find_field("start").field_type.__class__.__name__ == "TimestamptzType"
    rows = table.scan().to_arrow()
    assert rows.schema.field("start").type == pa.timestamp("us", tz="UTC")
    assert sorted(pc.cast(rows["start"], pa.int64()).to_pylist()) == [
        (DAY_START_MS + n) * 1000 for n in (0, 1000, 2000, 60_000)]
    assert sorted(rows["source"].to_pylist()) == ["rest", "ws", "ws", "ws"]  # the backfill lands in the same table
    files = table.inspect.files()
    assert all(f"start_day={DAY.isoformat()}" in path for path in files["file_path"].to_pylist())


def test_readers_duckdb_polars_and_pyarrow_see_the_same_rows(lake):
    data_dir, location, catalog = lake
    stage(data_dir, bars(0, 30), bars(30, 30))
    IcebergCommitter(catalog, data_dir, NAMESPACE).commit_pending()
    # A reader elsewhere: its own catalog object, from the same properties (what the README shows).
    from pyiceberg.catalog import load_catalog

    reader = load_catalog(CATALOG_NAME, **catalog_properties(location, data_dir))
    table = reader.load_table((NAMESPACE, "second_aggregates"))

    duck = table.scan().to_duckdb(table_name="bars")
    assert duck.sql("select count(*), count(distinct start), sum(volume) from bars").fetchall() == [(
        60, 60, sum(10 + n for n in range(60)))]

    import polars as pl

    os.environ.setdefault("POLARS_ICEBERG_PLANNER", "pyiceberg")
    frame = pl.scan_iceberg(table, storage_options={"aws_endpoint_url": location.s3_endpoint,
                                                    "aws_allow_http": "true", "aws_region": "us-east-1"}).collect()
    assert frame.height == 60 and frame["start"].dtype == pl.Datetime("us", "UTC")

    # pyarrow straight from the warehouse: the current snapshot's data files, through pyarrow's S3.
    s3fs = pafs.S3FileSystem(endpoint_override=location.s3_endpoint, scheme="http", region="us-east-1")
    paths = [path.removeprefix("s3://") for path in table.inspect.files()["file_path"].to_pylist()]
    assert ds.dataset(paths, filesystem=s3fs, format="parquet").count_rows() == 60


def test_a_local_warehouse_needs_no_set_up_and_duckdb_reads_its_files(tmp_path):
    import duckdb

    data_dir = tmp_path / "data"
    location = LakeLocation(warehouse=str(tmp_path / "lake"))
    catalog = open_catalog(location, data_dir)
    stage(data_dir, bars(0, 20))
    IcebergCommitter(catalog, data_dir).commit_pending()

    assert (data_dir / "lake-catalog.db").is_file()
    files = [path.removeprefix("file://") for path in
             open_table(catalog, NAMESPACE, "A").inspect.files()["file_path"].to_pylist()]
    assert duckdb.sql(f"select count(*) from read_parquet({files!r})").fetchall() == [(20,)]


def test_the_table_folder_names_its_current_metadata_for_duckdb(tmp_path):
    """Regression: the SQL catalog wrote no version hint, so DuckDB's iceberg_scan('<table folder>') failed
    ("no version-hint could be found"). Each commit now writes metadata/version-hint.text, naming the file
    DuckDB then opens (`<hint>.metadata.json`)."""
    for first in (0, 20):
        table = _committed_local_table(tmp_path, first)
        folder = Path(table.location().removeprefix("file://")) / "metadata"
        hint = (folder / "version-hint.text").read_text()
        assert f"{folder}/{hint}.metadata.json" == table.metadata_location.removeprefix("file://")


def test_duckdb_iceberg_scan_reads_the_table_folder(tmp_path):
    """Run where DuckDB's iceberg extension is installed (it comes from DuckDB's own server, INSTALL iceberg,
    or PyPI packages that stop at DuckDB 1.5.5 while this project's is 2.x); checked by hand with DuckDB
    1.5.5 and duckdb-extension-iceberg/-avro 1.5.5: 40 rows with the hint, "no version-hint" without."""
    import duckdb

    connection = duckdb.connect(config={"autoinstall_known_extensions": False})
    try:
        connection.execute("LOAD iceberg")
    except duckdb.Error as exc:
        pytest.skip(f"DuckDB's iceberg extension is not installed here ({str(exc).splitlines()[0][:120]})")
    _committed_local_table(tmp_path, 0)
    table = _committed_local_table(tmp_path, 20)
    folder = table.location().removeprefix("file://")
    assert connection.sql(f"SELECT count(*) FROM iceberg_scan('{folder}')").fetchall() == [(40,)]


def _committed_local_table(tmp_path: Path, first: int):
    """20 bars from `first` committed to a local warehouse under tmp_path; the table, as committed."""
    data_dir = tmp_path / "data"
    catalog = open_catalog(LakeLocation(warehouse=str(tmp_path / "lake")), data_dir)
    stage(data_dir, bars(first, 20))
    IcebergCommitter(catalog, data_dir).commit_pending()
    return open_table(catalog, NAMESPACE, "A")


# --- compaction and snapshot expiry ---

def test_compaction_rewrites_the_day_as_one_snapshot_one_row_per_key(lake, s3):
    data_dir, location, catalog = lake
    early = time.time_ns()
    stage(data_dir, bars(0, 10, received_ns=early, close=1.5))
    committer = IcebergCommitter(catalog, data_dir, NAMESPACE)
    iceberg_committer.MAX_FILES_PER_COMMIT, saved = 1, iceberg_committer.MAX_FILES_PER_COMMIT
    try:
        stage(data_dir, bars(5, 10, received_ns=early + 10**9, close=1.7), bars(15, 5))  # 5 repeats, received later
        committer.commit_pending()
    finally:
        iceberg_committer.MAX_FILES_PER_COMMIT = saved
    table = open_table(catalog, NAMESPACE, "A")
    snapshots_before = len(table.metadata.snapshots)
    assert len(table.inspect.files()) == 3

    result = compact_partition(table, DAY, "A")

    assert (result.outcome, result.files_before, result.files_after, result.rows_read, result.rows) == (
        Outcome.COMPACTED, 3, 1, 25, 20)
    assert len(table.metadata.snapshots) == snapshots_before + 1  # one snapshot
    rows = table.scan().to_arrow()
    assert_each_once(rows, 20)
    first = rows.filter(pc.equal(pc.cast(rows["start"], pa.int64()), (DAY_START_MS + 5000) * 1000))
    assert first["close"].to_pylist() == [1.5]  # the first received stays
    only_file = table.inspect.files()["file_path"].to_pylist()
    assert len(only_file) == 1
    starts = pc.cast(rows["start"], pa.int64()).to_pylist()
    assert compact_partition(table, DAY, "A").outcome is Outcome.ALREADY_COMPACTED
    assert compact_partition(table, date(2026, 12, 1), "A").outcome is Outcome.NO_DATA

    # Expiry: the micro-batch files only old snapshots used are deleted; the table reads the same.
    import boto3

    bucket = location.warehouse.removeprefix("s3://").split("/")[0]
    client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1")
    data_keys = lambda: [obj["Key"] for obj in client.list_objects_v2(Bucket=bucket).get("Contents", [])  # noqa: E731
                         if "/data/" in obj["Key"] and not obj["Key"].endswith("/")]
    assert len(data_keys()) == 4
    with pytest.raises(LakeMaintenanceError):
        expire_snapshots(table, timedelta(hours=1), datetime.now(timezone.utc))
    expiry = expire_snapshots(table, timedelta(days=1), datetime.now(timezone.utc) + timedelta(days=2))
    assert (expiry.snapshots_expired, expiry.snapshots_kept) == (snapshots_before, 1)
    assert [f"s3://{bucket}/{key}" for key in data_keys()] == only_file
    assert sorted(pc.cast(table.scan().to_arrow()["start"], pa.int64()).to_pylist()) == sorted(starts)


def test_compaction_racing_appends_loses_nothing(lake):
    data_dir, location, catalog = lake
    stage(data_dir, *[bars(n * 10, 10) for n in range(4)])
    IcebergCommitter(catalog, data_dir, NAMESPACE).commit_pending()
    appender = IcebergCommitter(open_catalog(location, data_dir), data_dir, NAMESPACE)
    stop = threading.Event()

    def keep_appending():
        n = 4
        while not stop.is_set() and n < 12:
            stage(data_dir, bars(n * 10, 10))
            appender.commit_pending()
            n += 1

    thread = threading.Thread(target=keep_appending)
    thread.start()
    table = open_table(catalog, NAMESPACE, "A")
    for _ in range(3):
        compact_partition(table, DAY, "A")
        table.refresh()
    thread.join()
    stop.set()
    appender.commit_pending()
    assert_each_once(rows_of(catalog), 120)


# --- exactly once: failures, kills, races ---

def test_an_outage_keeps_batches_staged_then_commits_them_in_order(lake, caplog):
    data_dir, location, _ = lake
    outage = Outage(int(location.s3_endpoint.rsplit(":", 1)[1]))
    through_proxy = LakeLocation(location.catalog, location.warehouse, f"http://127.0.0.1:{outage.port}")
    catalog = open_catalog(through_proxy, data_dir)
    committer = IcebergCommitter(catalog, data_dir, NAMESPACE, max_backlog_bytes=10_000)
    stage(data_dir, bars(0, 10))
    assert committer.tick(0.5) == 0.5

    outage.down()
    staged = stage(data_dir, bars(10, 10), bars(20, 10), bars(30, 10))
    caplog.set_level(logging.INFO, logger="spy_streamer")
    waits = [committer.tick(0.5) for _ in range(3)]

    assert all(path.exists() for path in staged)
    assert committer.upload_backlog == 3 and committer.stats.commit_failures == 3
    assert waits[0] < waits[1] < waits[2]  # exponential backoff
    events = [record.event for record in caplog.records if hasattr(record, "event")]
    assert events.count("lake_commit_failed") == 1  # one WARNING per failure streak
    assert events.count("lake_backlog_high") == 1

    outage.up()
    assert committer.tick(0.5) == 0.5
    assert committer.upload_backlog == 0 and not any(path.exists() for path in staged)
    assert "lake_commit_recovered" in [getattr(record, "event", None) for record in caplog.records]
    assert_each_once(rows_of(catalog), 40)
    outage.down()


CHILD = r"""
import os, sys, time
from pathlib import Path
from pyiceberg.catalog.sql import SqlCatalog
from spy_streamer.storage.lake_catalog import LakeLocation, open_catalog
from spy_streamer.storage.iceberg_committer import IcebergCommitter
from spy_streamer.storage import iceberg_committer

point = sys.argv[1]
original = SqlCatalog.commit_table
def commit_table(self, *args, **kwargs):
    if point == "before_commit":   # the data files are uploaded, the catalog not yet told
        print("PAUSED", flush=True); time.sleep(60)
    response = original(self, *args, **kwargs)
    if point == "after_commit":    # committed, the staged files not yet deleted
        print("PAUSED", flush=True); time.sleep(60)
    return response
SqlCatalog.commit_table = commit_table
location = LakeLocation("sql", sys.argv[2], sys.argv[3])
data_dir = Path(sys.argv[4])
IcebergCommitter(open_catalog(location, data_dir), data_dir).commit_pending()
print("DONE", flush=True)
"""


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_sigkill_during_a_commit_then_restart_commits_each_batch_once(lake, point):
    data_dir, location, catalog = lake
    stage(data_dir, bars(0, 10))
    IcebergCommitter(catalog, data_dir, NAMESPACE).commit_pending()
    staged = stage(data_dir, bars(10, 10), bars(20, 10))
    child = subprocess.Popen([sys.executable, "-c", CHILD, point, location.warehouse, location.s3_endpoint,
                              str(data_dir)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert child.stdout.readline().strip() == "PAUSED"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
    assert all(path.exists() for path in staged)  # nothing deleted before its commit
    table = open_table(catalog, NAMESPACE, "A")
    visible = table.scan().to_arrow().num_rows
    assert visible == (10 if point == "before_commit" else 30)  # all of the commit or none of it

    restarted = IcebergCommitter(open_catalog(location, data_dir), data_dir, NAMESPACE)
    restarted.commit_pending()

    assert_each_once(rows_of(catalog), 30)
    assert restarted.stats.batches_recovered == (0 if point == "before_commit" else 2)
    assert not any(path.exists() for path in staged)


def test_two_capture_processes_racing_commit_each_batch_once(lake, tmp_path, monkeypatch):
    _, location, _ = lake
    monkeypatch.setattr(iceberg_committer, "MAX_FILES_PER_COMMIT", 1)  # one commit per batch: many races
    areas = [tmp_path / "capture-1", tmp_path / "capture-2"]
    for offset, area in enumerate(areas):
        stage(area, *[bars(offset * 1000 + n * 10, 10) for n in range(6)])
    committers = [IcebergCommitter(open_catalog(location, areas[0]), area, NAMESPACE) for area in areas]
    errors = []

    def commit(committer):
        try:
            committer.commit_pending()
        except Exception as exc:  # a conflict beyond pyiceberg's retries: the next pass finishes it
            errors.append(exc)
            committer.commit_pending()

    threads = [threading.Thread(target=commit, args=(committer,)) for committer in committers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert_each_once(rows_of(open_catalog(location, areas[0])), 120)
    assert all(committer.upload_backlog == 0 for committer in committers)


def test_the_thread_body_commits_on_its_own_and_stops_promptly(lake):
    data_dir, _, catalog = lake
    committer = IcebergCommitter(lambda: catalog, data_dir, NAMESPACE)  # built on the first pass with work
    committer.interval_seconds = 0.05
    thread = threading.Thread(target=committer.run, name="iceberg-commit")
    thread.start()
    try:
        stage(data_dir, bars(0, 10))
        deadline = time.monotonic() + 10
        while committer.stats.batches_committed < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        committer.stop()
        thread.join(5)
    assert not thread.is_alive()
    assert committer.stats.batches_committed == 1


# --- moving the local layout into the lake ---

def test_import_local_moves_the_local_layout_once(lake):
    data_dir, _, catalog = lake
    stage(data_dir, bars(0, 10), bars(10, 10))
    compact_day(data_dir, DAY)  # a compacted day file
    stage(data_dir, bars(20, 10))  # plus a late micro-batch beside it
    kept = import_local(catalog, data_dir, NAMESPACE, keep_local=True)
    assert (kept.batches_committed, kept.rows_committed) == (2, 30)

    again = import_local(catalog, data_dir, NAMESPACE)  # the same files: recognised, now moved

    assert (again.batches_committed, again.batches_recovered) == (0, 2)
    assert not list(data_dir.glob("A/date=*/*.parquet"))
    assert_each_once(rows_of(catalog), 30)


def test_the_lake_commands_import_compact_and_expire(lake, tmp_path, capsys):
    import yaml

    from conftest import settings
    from spy_streamer.cli import main

    data_dir, location, catalog = lake
    config = tmp_path / "settings.yaml"
    values = settings(tmp_path, storage={"kind": "iceberg", "warehouse": location.warehouse,
                                         "s3_endpoint": location.s3_endpoint})
    values["paths"]["data_dir"] = str(data_dir)
    config.write_text(yaml.safe_dump(values))
    stage(data_dir, bars(0, 10), bars(5, 10))

    assert main(["import-local", "--config", str(config)]) == 0
    assert main(["lake-compact", "--config", str(config), "--date", DAY.isoformat()]) == 0
    assert main(["expire-snapshots", "--config", str(config), "--older-than", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()

    assert lines[0].startswith("moved 2 file(s), 20 rows")
    assert "compacted 1 files into 1 (15 rows, 5 repeats dropped" in lines[1]
    assert "expired 0 snapshot(s), kept 2" in lines[2]
    assert_each_once(rows_of(catalog), 15)
    with pytest.raises((SystemExit, Exception)):  # argparse refuses a retention under a day
        main(["expire-snapshots", "--config", str(config), "--older-than", "0.5"])
