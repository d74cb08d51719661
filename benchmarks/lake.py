"""Lake figures against moto's S3 server on loopback: commit latency, bytes per batch and per day, and the
time from a bar to its visibility in the Iceberg table.

    .venv/bin/python benchmarks/lake.py [--batches 40] [--probes 10]

Loopback S3 has no network latency: against a real store add its round trips (a commit makes about six:
the data file, a manifest, a manifest list and the metadata file written, the metadata read back).
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402

from spy_streamer.channels import SECOND_AGGREGATES  # noqa: E402
from spy_streamer.channels.parsing import rows_with_reasons, ws_row  # noqa: E402
from spy_streamer.storage.parquet_sink import ParquetSink  # noqa: E402
from spy_streamer.storage.iceberg_committer import IcebergCommitter  # noqa: E402
from spy_streamer.storage.iceberg_maintenance import compact_partition, open_table  # noqa: E402
from spy_streamer.storage.lake_catalog import LakeLocation, open_catalog  # noqa: E402

DAY = date(2026, 11, 30)
OPEN_MS = int(datetime(2026, 11, 30, 14, 30, tzinfo=timezone.utc).timestamp() * 1000)
BARS_PER_DAY = 23_400          # one A.SPY bar a second, 09:30-16:00
BARS_PER_BATCH = 30            # write_interval_seconds 30
WRITE_INTERVAL_SECONDS = 30.0


def bars(first: int, count: int) -> pa.Table:
    price = lambda n: 600 + (n % 97) * 0.01  # noqa: E731
    events = [{"ev": "A", "sym": "SPY", "s": OPEN_MS + n * 1000, "e": OPEN_MS + n * 1000 + 1000,
               "o": price(n), "h": price(n) + 0.05, "l": price(n) - 0.05, "c": price(n + 1), "v": 1000 + n % 500,
               "vw": price(n), "a": 601.0, "z": 40.0, "op": 600.0, "av": 10_000 + n} for n in range(first, first + count)]
    to_row = lambda event: ws_row(SECOND_AGGREGATES, event)  # noqa: E731
    return rows_with_reasons(SECOND_AGGREGATES, events, to_row, time.time_ns(), "ws")[0]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def start_s3() -> str:
    from moto.server import ThreadedMotoServer
    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="lake")
    return endpoint


def commit_latency(catalog, data_dir: Path, batches: int) -> dict:
    """One 30-second batch per commit, as in a session."""
    seconds, uploaded = [], []
    sink = ParquetSink(data_dir)
    committer = IcebergCommitter(catalog, data_dir)
    for n in range(batches):
        sink.write("A", DAY, bars(n * BARS_PER_BATCH, BARS_PER_BATCH), time.time_ns())
        started = time.perf_counter()
        committer.commit_pending()
        seconds.append(time.perf_counter() - started)
        table = open_table(catalog, "spy_streamer", "A")
        uploaded.append(int(table.current_snapshot().summary.get("added-files-size")))
    staged = committer.stats.bytes_committed / batches
    return {"seconds": seconds, "uploaded": uploaded, "staged": staged}


def catch_up(catalog, data_dir: Path, files: int) -> tuple[float, int]:
    """A backlog after an outage: `files` staged batches committed (64 a commit)."""
    sink = ParquetSink(data_dir)
    for n in range(files):
        sink.write("A", DAY, bars(100_000 + n * BARS_PER_BATCH, BARS_PER_BATCH), time.time_ns())
    committer = IcebergCommitter(catalog, data_dir)
    started = time.perf_counter()
    committer.commit_pending()
    return time.perf_counter() - started, committer.stats.commits


def visibility(location: LakeLocation, data_dir: Path, probes: int, interval: float) -> list[float]:
    """Flush -> visible to a reader (its own catalog object), with the committer thread polling every `interval`."""
    committer = IcebergCommitter(open_catalog(location, data_dir), data_dir)
    committer.interval_seconds = interval
    thread = threading.Thread(target=committer.run, name="iceberg-commit", daemon=True)
    thread.start()
    reader = open_table(open_catalog(location, data_dir), "spy_streamer", "A")
    sink, delays = ParquetSink(data_dir), []
    for n in range(probes):
        first = 200_000 + n * BARS_PER_BATCH
        wanted = _records(reader) + BARS_PER_BATCH
        flushed = time.perf_counter()
        sink.write("A", DAY, bars(first, BARS_PER_BATCH), time.time_ns())
        while _records(reader) < wanted:  # what a reader's next query plans from
            time.sleep(0.02)
        delays.append(time.perf_counter() - flushed)
        time.sleep(interval * (n % 3) / 3)  # flushes land at different points of the poll cycle
    committer.stop()
    thread.join()
    return delays


def _records(table) -> int:
    table.refresh()
    snapshot = table.current_snapshot()
    return int(snapshot.summary.get("total-records", 0)) if snapshot else 0


def day_bytes(catalog, data_dir: Path) -> tuple[int, float]:
    """A full day of A.SPY (staged in 10 files, one commit), compacted: the day's bytes in the table."""
    sink = ParquetSink(data_dir)
    step = BARS_PER_DAY // 10
    for n in range(10):
        sink.write("A", date(2026, 12, 1), bars(n * step, step), time.time_ns())
    IcebergCommitter(catalog, data_dir).commit_pending()
    result = compact_partition(open_table(catalog, "spy_streamer", "A"), date(2026, 12, 1), "A")
    return result.bytes, result.seconds


def bucket_bytes(endpoint: str) -> int:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    return sum(obj["Size"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="lake")
               for obj in page.get("Contents", []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--poll", type=float, default=1.0, help="the committer's interval (seconds)")
    args = parser.parse_args()
    endpoint = start_s3()
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(scratch) / "data"
        location = LakeLocation("sql", "s3://lake/warehouse", endpoint)
        catalog = open_catalog(location, data_dir)
        before = bucket_bytes(endpoint)
        latency = commit_latency(catalog, data_dir, args.batches)
        stored_per_commit = (bucket_bytes(endpoint) - before) / args.batches
        catch_seconds, catch_commits = catch_up(catalog, data_dir, 256)
        delays = visibility(location, data_dir, args.probes, args.poll)
        compacted, compact_seconds = day_bytes(catalog, data_dir)
    seconds = latency["seconds"]
    print(f"lake benchmark: moto S3 on loopback, SQLite catalog, A.SPY, {BARS_PER_BATCH}-bar batches")
    print(f"  commit latency (read + upload + catalog), {len(seconds)} commits: p50 {statistics.median(seconds) * 1000:.0f} ms, "
          f"p95 {percentile(seconds, 0.95) * 1000:.0f} ms, max {max(seconds) * 1000:.0f} ms")
    print(f"  upload per 30 s batch: {statistics.mean(latency['uploaded']):,.0f} bytes of data file "
          f"(staged Parquet {latency['staged']:,.0f} bytes); the store grows {stored_per_commit:,.0f} bytes a "
          f"commit with its manifest, manifest list and metadata")
    print(f"  backlog catch-up: 256 staged batches in {catch_commits} commits, {catch_seconds:.2f} s "
          f"({catch_seconds / 256 * 1000:.1f} ms a batch)")
    print(f"  flush -> visible to a reader (poll {args.poll:g} s), {len(delays)} probes: "
          f"p50 {statistics.median(delays):.2f} s, max {max(delays):.2f} s")
    print(f"  bar -> visible: + up to write_interval_seconds ({WRITE_INTERVAL_SECONDS:g} s) waiting for the flush: "
          f"mean about {WRITE_INTERVAL_SECONDS / 2 + statistics.median(delays):.1f} s, "
          f"max about {WRITE_INTERVAL_SECONDS + max(delays):.1f} s")
    batches = BARS_PER_DAY // BARS_PER_BATCH
    print(f"  bytes per day, channel A (SPY, {BARS_PER_DAY:,} bars): about "
          f"{batches * statistics.mean(latency['uploaded']):,.0f} in {batches} micro-batch data files during the "
          f"session; {compacted:,} after compaction (one file, rewritten in {compact_seconds:.2f} s)")


if __name__ == "__main__":
    main()
