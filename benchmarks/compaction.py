#!/usr/bin/env python3
"""Compaction benchmark: peak RSS and time to compact a synthetic multi-million-row day.

Writes a day of `A` (or `T`) micro-batches with the real ParquetSink into a temporary folder (every tenth file
repeats the rows of the one before, received later, so the merge drops repeats), then runs
`compaction.compact_day` (its child process sorts with DuckDB under a memory limit) and, for comparison,
the old in-memory merge (read every file, sort, keep the first of each key: what `compact_day` did
before, which took 608 MB for 990k rows) in a child process of its own. Each figure is that process's
own VmHWM. Also the child's CPU seconds and the peak disk the compaction used beside the day's files
(its spill folder and the hidden day file being written), sampled every half second.
Figures on a shared machine are noisy; the RSS figures much less than the times.

    nice -n 19 .venv/bin/python benchmarks/compaction.py [--channel A|T] [--rows 5000000] [--symbols 11000] [--files 600]
        [--in-memory-rows 1000000] [--memory-limit 256MB] [--threads 2] [--bucket-rows 5000000]
        [--dir DIR] [--json out.json]

A whole-market day (100-250M rows) needs about 92 bytes a row on disk for the micro-batches, as much
again for the spill and about 65 for the day file: write it under a folder with room (`--dir`).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spy_streamer.channels import channel_for  # noqa: E402
from spy_streamer.channels.parsing import to_schema  # noqa: E402
from spy_streamer.storage.compaction import BUCKET_ROWS, MEMORY_LIMIT, SPILL_FOLDER, THREADS, compact_day  # noqa: E402
from spy_streamer.storage.parquet_sink import ParquetSink  # noqa: E402
from spy_streamer.peak_memory import peak_rss_bytes  # noqa: E402

DAY = date(2025, 6, 10)
OPEN_MS = 1_749_562_200_000  # 09:30 New York that day
PRICE_COLUMNS = ("open", "high", "low", "close", "vwap", "day_vwap", "average_size", "official_open")


def generate_day(data_dir: Path, rows: int, symbols: int, files: int, channel: str = "A") -> None:
    """`files` micro-batches of rows // files rows in time order: `A` one bar per symbol per second, `T`
    one trade per symbol per millisecond (its own key and sort, compacted through a window)."""
    sink, rng, per_file = ParquetSink(data_dir), np.random.default_rng(0), rows // files
    names = np.array([f"S{i:05d}" for i in range(symbols)], dtype=object)
    for index in range(files):
        first = (index - 1 if index % 10 == 9 else index) * per_file  # every tenth: the file before again,
        positions = np.arange(first, first + per_file)                 # received later (repeats to drop)
        if channel == "T":
            table = _trades(names[positions % symbols], positions, OPEN_MS + positions // symbols, rng, index)
        else:
            table = _bars(names[positions % symbols], OPEN_MS + (positions // symbols) * 1000, rng, index)
        sink.write(channel, DAY, table, 10**18 + index)


def _bars(symbol: np.ndarray, start: np.ndarray, rng: np.random.Generator, index: int) -> pa.Table:
    price = 100 + rng.random(len(start))
    columns = {"symbol": pa.array(symbol, pa.string()), "start": pa.array(start * 1000),   # us, as stored
               "end": pa.array((start + 1000) * 1000), **{name: pa.array(price) for name in PRICE_COLUMNS},
               "volume": pa.array(rng.integers(0, 1000, len(start))),
               "accumulated_volume": pa.array(rng.integers(0, 10**6, len(start))),
               "received_at": pa.array((start + 2000) * 1000 + index).cast(pa.timestamp("us", "UTC"))}
    return to_schema(channel_for("A"), pa.table(columns), "ws", {})


def _trades(symbol: np.ndarray, positions: np.ndarray, ms: np.ndarray, rng: np.random.Generator,
            index: int) -> pa.Table:
    rows = len(positions)
    off_exchange = positions % 3 == 0  # a third reported through a TRF
    conditions = pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * rows + 1, 2, dtype=np.int32)),
                                          pa.array(np.tile([12, 37], rows)))
    columns = {"symbol": pa.array(symbol, pa.string()), "sip_timestamp_ns": pa.array(ms * 10**6),
               "trf_timestamp_ns": pa.array(ms * 10**6, mask=~off_exchange),
               "exchange": pa.array(np.where(off_exchange, 4, 1 + positions % 16)),
               "trade_id": pa.array(positions).cast(pa.string()),
               "trf_id": pa.array(np.full(rows, 201), mask=~off_exchange), "tape": pa.array(1 + positions % 3),
               "price": pa.array(100 + rng.random(rows)), "size": pa.array(rng.integers(1, 500, rows).astype(float)),
               "conditions": conditions, "sequence_number": pa.array(positions),
               "received_at": pa.array((ms + 2000) * 1000 + index).cast(pa.timestamp("us", "UTC"))}
    return to_schema(channel_for("T"), pa.table(columns), "ws", {})


IN_MEMORY = """
import sys, time, pyarrow as pa, pyarrow.parquet as pq
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from spy_streamer.capture.keep_first import first_received_per_key
from spy_streamer.peak_memory import peak_rss_bytes
started = time.monotonic()
files = sorted(Path(sys.argv[1]).glob("*.parquet"))
table = first_received_per_key(pa.concat_tables([pq.read_table(path) for path in files]))
pq.write_table(table, Path(sys.argv[1]) / ".in-memory.parquet.tmp", compression="zstd")
print(table.num_rows, peak_rss_bytes(), time.monotonic() - started)
"""


def in_memory_merge(folder: Path) -> dict:
    """The old algorithm in a fresh process (its own VmHWM); its output is a hidden file, removed."""
    out = subprocess.run([sys.executable, "-c", IN_MEMORY, str(folder), str(ROOT)], capture_output=True,
                         text=True, check=True).stdout.split()
    (folder / ".in-memory.parquet.tmp").unlink()
    return {"rows": int(out[0]), "peak_rss_bytes": int(out[1]), "seconds": float(out[2])}


class DiskSampler(threading.Thread):
    """The peak bytes (allocated blocks) of the compaction's own files in `folder`: the spill folder and
    hidden temporaries, sampled every half second."""

    def __init__(self, folder: Path):
        super().__init__(name="disk-sampler", daemon=True)
        self.folder, self.peak_spill, self.peak_total, self._done = folder, 0, 0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.5):
            spill = sum(_allocated(Path(root) / name) for root, _, names in os.walk(self.folder / SPILL_FOLDER)
                        for name in names)
            temporaries = sum(_allocated(path) for path in self.folder.glob(".*") if path.is_file())
            self.peak_spill, self.peak_total = max(self.peak_spill, spill), max(self.peak_total, spill + temporaries)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except OSError:  # removed meanwhile
        return 0


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(rows: int, symbols: int, files: int, in_memory_rows: int, memory_limit: str, threads: int,
        bucket_rows: int, workdir: Path, channel: str = "A") -> dict:
    figures: dict = {"channel": channel, "rows_generated": rows, "symbols": symbols, "files": files,
                     "memory_limit": memory_limit, "threads": threads, "bucket_rows": bucket_rows}
    if in_memory_rows and channel == "A":  # (the old merge knew bars only)
        small = workdir / "in-memory"
        generate_day(small, in_memory_rows, symbols, files)
        figures["in_memory"] = {"rows_generated": in_memory_rows,
                                **in_memory_merge(ParquetSink(small).partition_dir("A", DAY))}
    data_dir = workdir / "day"
    started = time.monotonic()
    generate_day(data_dir, rows, symbols, files, channel)
    figures["generate_seconds"] = time.monotonic() - started
    folder = ParquetSink(data_dir).partition_dir(channel, DAY)
    figures["input_bytes"] = sum(path.stat().st_size for path in folder.glob("*.parquet"))
    before, cpu_before, disk = peak_rss_bytes(), _children_cpu_seconds(), DiskSampler(folder)
    disk.start()
    try:
        result = compact_day(data_dir, DAY, channel, memory_limit=memory_limit, threads=threads,
                             bucket_rows=bucket_rows)
    finally:
        disk.stop()
    figures["bounded"] = {"rows_read": result.rows_read, "rows": result.rows, "bytes": result.bytes,
                          "seconds": result.seconds, "peak_rss_bytes": result.worker_peak_rss_bytes,
                          "cpu_seconds": _children_cpu_seconds() - cpu_before,
                          "spill_peak_bytes": disk.peak_spill, "extra_disk_peak_bytes": disk.peak_total,
                          "caller_peak_rss_growth_bytes": peak_rss_bytes() - before}
    return figures


def mb(value: float) -> str:
    return f"{value / 1e6:,.0f} MB"


def print_figures(f: dict) -> None:
    b = f["bounded"]
    print(f"synthetic `{f['channel']}` day: {f['rows_generated']:,} rows, {f['symbols']:,} symbols, {f['files']} micro-batches "
          f"({mb(f['input_bytes'])} on disk, generated in {f['generate_seconds']:.0f} s)")
    print(f"{'':44}{'rows out':>12}{'seconds':>9}{'CPU s':>8}{'peak RSS':>10}{'RSS/M rows':>12}")
    if "in_memory" in f:
        m = f["in_memory"]
        print(f"{'old in-memory merge (' + format(m['rows_generated'], ',') + ' rows)':44}{m['rows']:>12,}"
              f"{m['seconds']:>9.1f}{'':>8}{mb(m['peak_rss_bytes']):>10}"
              f"{mb(m['peak_rss_bytes'] / m['rows_generated'] * 1e6):>12}")
    label = f"compact_day (DuckDB {f['memory_limit']}, {f['threads']} threads, child)"
    print(f"{label:44}{b['rows']:>12,}{b['seconds']:>9.1f}{b['cpu_seconds']:>8.0f}"
          f"{mb(b['peak_rss_bytes']):>10}{mb(b['peak_rss_bytes'] / f['rows_generated'] * 1e6):>12}")
    print(f"repeats dropped {b['rows_read'] - b['rows']:,}; day file {mb(b['bytes'])}; spill peak "
          f"{mb(b['spill_peak_bytes'])} (with the hidden day file {mb(b['extra_disk_peak_bytes'])}); "
          f"buckets of {f['bucket_rows']:,} rows; the calling process's peak RSS grew "
          f"{mb(b['caller_peak_rss_growth_bytes'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channel", choices=("A", "T"), default="A",
                        help="A: second bars; T: trades (deduplicated through a window: Q's path too)")
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--symbols", type=int, default=11_000)
    parser.add_argument("--files", type=int, default=600)
    parser.add_argument("--in-memory-rows", type=int, default=1_000_000,
                        help="rows for the old in-memory merge (0: skip it)")
    parser.add_argument("--memory-limit", default=MEMORY_LIMIT)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--bucket-rows", type=int, default=BUCKET_ROWS)
    parser.add_argument("--dir", type=Path, help="where to write the day (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as temp:
        figures = run(args.rows, args.symbols, args.files, args.in_memory_rows, args.memory_limit, args.threads,
                      args.bucket_rows, Path(temp), args.channel)
    print_figures(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
