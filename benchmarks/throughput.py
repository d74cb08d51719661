#!/usr/bin/env python3
"""Throughput and resource benchmark: the bare polygon-api-client against the whole daemon, side by side.

Against the loopback fake Polygon (tests/fake_polygon.py) sending frames of 200 "A" events as fast as it
can, in one run:
  (a) the bare WebSocketClient with a no-op handler (parsed models, as a user gets by default, and raw),
  (b) the whole daemon (scripts/run_streamer.sh), from the first frame to the last row durable in Parquet.
Both are separate processes timed from the moment the fake starts sending. Then: CPU while the market is
closed, and RSS across a replayed full session (23,400 bars) and ten times that.

    .venv/bin/python benchmarks/throughput.py [--events 300000] [--runs 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import TEST_API_KEY, write_settings  # noqa: E402
from daemon_harness import Daemon, events_named, midday_zone, wait_for, window_settings  # noqa: E402
from fake_polygon import FakePolygon  # noqa: E402

FRAME_EVENTS = 200
SYMBOLS = tuple(f"S{i:03d}" for i in range(100))   # many symbols, so 300k one-second bars fit in a session
BENCH_WRITE_INTERVAL = 0.25                         # so "durable" is not dominated by the 30 s timer
SESSION_BARS = 23_400


def blast_start_ms() -> int:
    return (int(time.time()) - 300) * 1000


class RowCounter:
    """Counts rows in the daemon's Parquet files from their footers, each file once."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.seen: set[Path] = set()
        self.rows = 0

    def poll(self) -> int:
        for path in self.data_dir.glob("A/date=*/*.parquet"):
            if path not in self.seen:
                self.seen.add(path)
                self.rows += pq.read_metadata(path).num_rows
        return self.rows


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def cpu_seconds_precise(pid: int) -> float:
    """CPU time of all threads in nanoseconds from the scheduler (psutil's ticks are 10 ms coarse)."""
    return sum(int((task / "schedstat").read_text().split()[0])
               for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9


def bare_client(fake: FakePolygon, events: int, raw: bool) -> dict:
    args = [sys.executable, str(ROOT / "benchmarks" / "bare_client.py"), "--feed", fake.ws_feed,
            "--key", TEST_API_KEY, "--events", str(events)] + (["--raw"] if raw else [])
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert fake.wait_for_subscribers(1, timeout=30), "bare client did not subscribe"
    fake.blast(events, FRAME_EVENTS, blast_start_ms(), SYMBOLS)
    result = json.loads(child.stdout.readline())
    child.wait(timeout=30)
    seconds = result["done_monotonic"] - fake.last_blast_started
    return {"seconds": seconds, "events_per_second": events / seconds,
            "cpu_seconds_per_100k": result["cpu_seconds"] / events * 100_000,
            "peak_rss_bytes": result["peak_rss_bytes"]}


def start_daemon(workdir: Path, fake: FakePolygon, **sections) -> tuple[Daemon, dict]:
    document = window_settings(workdir, fake, **sections)
    daemon = Daemon(write_settings(workdir, document))
    return daemon, document


def whole_daemon(fake: FakePolygon, events: int, workdir: Path) -> dict:
    daemon, document = start_daemon(
        workdir, fake, polygon={"subscriptions": ["A.*"]},
        streaming={"batching": {"write_interval_seconds": BENCH_WRITE_INTERVAL},
                   "monitoring": {"heartbeat_interval_seconds": 300}})
    try:
        assert fake.wait_for_subscribers(1, timeout=30), "daemon did not subscribe"
        process = psutil.Process(daemon.process.pid)
        counter = RowCounter(Path(document["paths"]["data_dir"]))
        cpu_before = cpu_seconds(process)
        fake.blast(events, FRAME_EVENTS, blast_start_ms(), SYMBOLS)
        while counter.poll() < events:
            time.sleep(0.002)
        seconds = time.monotonic() - fake.last_blast_started
        cpu = cpu_seconds(process) - cpu_before
        rss = peak_rss(process.pid)
        assert daemon.stop()[0] == 0
        log_bytes = Path(document["paths"]["log_file"]).stat().st_size
    finally:
        daemon.kill()
    return {"seconds": seconds, "events_per_second": events / seconds, "rows": counter.rows,
            "cpu_seconds_per_100k": cpu / events * 100_000, "peak_rss_bytes": rss, "log_bytes": log_bytes}


def closed_market_cpu(fake: FakePolygon, workdir: Path, seconds: float) -> dict:
    daemon, document = start_daemon(workdir, fake, open_now=False,   # the shipped heartbeat cadence
                                    streaming={"monitoring": {"heartbeat_interval_seconds": 300}})
    log_file = Path(document["paths"]["log_file"])
    try:
        wait_for(lambda: events_named(log_file, "market_closed"), timeout=30, what="market_closed")
        before = cpu_seconds_precise(daemon.process.pid)
        time.sleep(seconds)
        used = cpu_seconds_precise(daemon.process.pid) - before
        assert daemon.stop()[0] == 0
    finally:
        daemon.kill()
    return {"cpu_seconds_per_minute": used / seconds * 60, "measured_seconds": seconds,
            "connections": fake.connections_total, "log_lines": len(log_file.read_text().splitlines())}


def replayed_day_rss(fake: FakePolygon, workdir: Path, sessions: int = 11) -> dict:
    """RSS after each replayed full session (23,400 one-second bars, a bar a frame as Polygon sends
    A.SPY), one symbol after another: a leak shows as growth from session to session."""
    now = datetime.now(timezone.utc)
    morning = now.astimezone(midday_zone(now)).replace(hour=6, minute=0, second=0, microsecond=0)
    daemon, document = start_daemon(
        workdir, fake, polygon={"subscriptions": ["A.*"]},
        streaming={"market_hours": {"start_time": "00:01", "end_time": "23:59"},
                   "batching": {"write_interval_seconds": 1}, "monitoring": {"heartbeat_interval_seconds": 300}})
    rss_after = []
    try:
        assert fake.wait_for_subscribers(1, timeout=30)
        counter = RowCounter(Path(document["paths"]["data_dir"]))
        for session in range(sessions):
            fake.blast(SESSION_BARS, 1, int(morning.timestamp() * 1000), (f"SPY{session}",))
            wait_for(lambda: counter.poll() >= (session + 1) * SESSION_BARS, timeout=300, what="session on disk")
            rss_after.append(psutil.Process(daemon.process.pid).memory_info().rss)
        assert daemon.stop()[0] == 0
    finally:
        daemon.kill()
    return {"rss_after_each_session_bytes": rss_after, "rows": counter.rows}


def one_run(events: int) -> dict:
    with tempfile.TemporaryDirectory() as temp:
        with FakePolygon(api_key=TEST_API_KEY) as fake:
            parsed = bare_client(fake, events, raw=False)
        with FakePolygon(api_key=TEST_API_KEY) as fake:
            raw = bare_client(fake, events, raw=True)
        with FakePolygon(api_key=TEST_API_KEY) as fake:
            daemon = whole_daemon(fake, events, Path(temp))
    return {"bare_parsed": parsed, "bare_raw": raw, "daemon": daemon,
            "ratio_vs_parsed": daemon["events_per_second"] / parsed["events_per_second"],
            "ratio_vs_raw": daemon["events_per_second"] / raw["events_per_second"]}


def median_of(runs: list[dict], *keys: str) -> float:
    values = []
    for run in runs:
        value = run
        for key in keys:
            value = value[key]
        values.append(value)
    return statistics.median(values)


def mb(value: float) -> str:
    return f"{value / 1e6:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")

    runs = []
    for index in range(args.runs):
        run = one_run(args.events)
        runs.append(run)
        print(f"run {index + 1}: bare(parsed) {run['bare_parsed']['events_per_second']:,.0f} ev/s, "
              f"bare(raw) {run['bare_raw']['events_per_second']:,.0f} ev/s, "
              f"daemon {run['daemon']['events_per_second']:,.0f} ev/s, ratio {run['ratio_vs_parsed']:.2f}",
              flush=True)
    with tempfile.TemporaryDirectory() as temp, FakePolygon(api_key=TEST_API_KEY) as fake:
        idle = closed_market_cpu(fake, Path(temp), args.idle_seconds)
    with tempfile.TemporaryDirectory() as temp, FakePolygon(api_key=TEST_API_KEY) as fake:
        day = replayed_day_rss(fake, Path(temp))

    summary = {
        "events": args.events, "runs": args.runs, "frame_events": FRAME_EVENTS,
        "bench_write_interval_seconds": BENCH_WRITE_INTERVAL,
        "bare_parsed_events_per_second": median_of(runs, "bare_parsed", "events_per_second"),
        "bare_raw_events_per_second": median_of(runs, "bare_raw", "events_per_second"),
        "daemon_events_per_second": median_of(runs, "daemon", "events_per_second"),
        "ratio_vs_parsed": median_of(runs, "ratio_vs_parsed"),
        "ratio_vs_raw": median_of(runs, "ratio_vs_raw"),
        "bare_parsed_cpu_seconds_per_100k": median_of(runs, "bare_parsed", "cpu_seconds_per_100k"),
        "daemon_cpu_seconds_per_100k": median_of(runs, "daemon", "cpu_seconds_per_100k"),
        "bare_parsed_peak_rss_bytes": median_of(runs, "bare_parsed", "peak_rss_bytes"),
        "daemon_peak_rss_bytes": median_of(runs, "daemon", "peak_rss_bytes"),
        "daemon_log_bytes": median_of(runs, "daemon", "log_bytes"),
        "closed_cpu_seconds_per_minute": idle["cpu_seconds_per_minute"],
        "closed_connections": idle["connections"],
        "closed_log_lines": idle["log_lines"],
        "rss_after_each_session_bytes": day["rss_after_each_session_bytes"],
        "runs_detail": runs,
    }
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


def print_table(s: dict) -> None:
    print(f"\n{s['events']:,} events in frames of {s['frame_events']}, median of {s['runs']} runs "
          f"(daemon write interval {s['bench_write_interval_seconds']} s for the timing)")
    print(f"{'':34}{'events/s':>12}{'CPU s/100k':>12}{'peak RSS':>11}")
    print(f"{'bare client, no-op (parsed)':34}{s['bare_parsed_events_per_second']:>12,.0f}"
          f"{s['bare_parsed_cpu_seconds_per_100k']:>12.2f}{mb(s['bare_parsed_peak_rss_bytes']):>11}")
    print(f"{'bare client, no-op (raw)':34}{s['bare_raw_events_per_second']:>12,.0f}")
    print(f"{'whole daemon, to durable Parquet':34}{s['daemon_events_per_second']:>12,.0f}"
          f"{s['daemon_cpu_seconds_per_100k']:>12.2f}{mb(s['daemon_peak_rss_bytes']):>11}")
    print(f"ratio daemon / bare (parsed): {s['ratio_vs_parsed']:.2f}   daemon / bare (raw): {s['ratio_vs_raw']:.2f}")
    print(f"log bytes for the run: {s['daemon_log_bytes']:,.0f}")
    print(f"closed market: {s['closed_cpu_seconds_per_minute']:.4f} CPU s/min, "
          f"{s['closed_connections']} connections, {s['closed_log_lines']} log lines")
    rss = s["rss_after_each_session_bytes"]
    print(f"RSS after each replayed session of 23,400 bars: {', '.join(f'{v / 1e6:.0f}' for v in rss)} MB "
          f"(1x {mb(rss[0])}, 11x {mb(rss[-1])}, 2x..11x growth {mb(rss[-1] - rss[1])})")


if __name__ == "__main__":
    main()
