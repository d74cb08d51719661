#!/usr/bin/env python3
"""Throughput and resource benchmark: the bare polygon-api-client against the whole daemon, side by side.

Against the loopback fake Polygon (tests/fake_polygon.py) sending frames of 200 "A" events as fast as it
can, in interleaved rounds (each round runs the three in a rotated order, so drift on a shared machine
falls on each alike):
  (a) the bare WebSocketClient with a no-op handler (parsed models, as a user gets by default, and raw),
  (b) the whole daemon (scripts/run_streamer.sh), from the first frame to the last row durable in Parquet.
Each is a separate process timed from the moment the fake starts sending; each peak RSS is that process's
own VmHWM. Reported: min/median/max over the rounds of each rate and each ratio, and the daemon's drops.
Then: CPU while the market is closed, and RSS across a replayed full session (23,400 bars) and ten times that.
`--compare-with DIR` adds a fourth measure to each round: the daemon of another checkout (e.g. a `git
worktree` of an older commit), so a change is judged against its predecessor in the same rounds.

    .venv/bin/python benchmarks/throughput.py [--events 300000] [--rounds 5] [--compare-with DIR] [--json out.json]
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
from spy_streamer.peak_memory import peak_rss_bytes  # noqa: E402
from fake_polygon import FakePolygon  # noqa: E402

FRAME_EVENTS = 200
BENCH_WRITE_INTERVAL = 0.25                         # so "durable" is not dominated by the 30 s timer
SESSION_BARS = 23_400
BARS_BEHIND_SECONDS = 6 * 3600  # the blast's bars cover the last six hours, inside the all-day session below
ALL_DAY = {"start_time": "00:01", "end_time": "23:59"}  # local to midday_zone: now is midday


def symbols_for(events: int) -> tuple[str, ...]:
    """Enough symbols that every bar (one per symbol per second, from six hours ago) lies in the past and
    in the session: --events 1000000 once sent 10,000 s per symbol, mostly outside the window."""
    count = max(100, -(-events // (BARS_BEHIND_SECONDS - 600)))
    return tuple(f"S{i:05d}" for i in range(count))


def blast_start_ms() -> int:
    return (int(time.time()) - BARS_BEHIND_SECONDS) * 1000


class RowCounter:
    """Counts rows in the daemon's Parquet files from their footers, each file once."""

    def __init__(self, data_dir: Path, channel: str = "A"):
        self.data_dir = data_dir
        self.channel = channel
        self.seen: set[Path] = set()
        self.rows = 0

    def poll(self) -> int:
        for path in self.data_dir.glob(f"{self.channel}/date=*/*.parquet"):
            if path not in self.seen:
                self.seen.add(path)
                self.rows += pq.read_metadata(path).num_rows
        return self.rows


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
    fake.blast(events, FRAME_EVENTS, blast_start_ms(), symbols_for(events))
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


def whole_daemon(fake: FakePolygon, events: int, workdir: Path, code: Path | None = None) -> dict:
    """`code`: a checkout whose spy_streamer the daemon runs (on PYTHONPATH) instead of this one."""
    saved = os.environ.get("PYTHONPATH")
    if code is not None:
        os.environ["PYTHONPATH"] = str(code)
    try:
        daemon, document = start_daemon(
            workdir, fake, polygon={"subscriptions": ["A.*"]},
            streaming={"market_hours": ALL_DAY, "batching": {"write_interval_seconds": BENCH_WRITE_INTERVAL},
                       "monitoring": {"heartbeat_interval_seconds": 300}})
    finally:
        if code is not None:
            os.environ.pop("PYTHONPATH") if saved is None else os.environ.update(PYTHONPATH=saved)
    try:
        assert fake.wait_for_subscribers(1, timeout=30), "daemon did not subscribe"
        process = psutil.Process(daemon.process.pid)
        counter = RowCounter(Path(document["paths"]["data_dir"]))
        cpu_before = cpu_seconds(process)
        fake.blast(events, FRAME_EVENTS, blast_start_ms(), symbols_for(events))
        deadline = time.monotonic() + 120 + events / 5_000
        while counter.poll() < events and time.monotonic() < deadline:
            time.sleep(0.002)
        seconds = time.monotonic() - fake.last_blast_started
        cpu = cpu_seconds(process) - cpu_before
        rss = peak_rss_bytes(process.pid)
        assert daemon.stop()[0] == 0
        log_bytes = Path(document["paths"]["log_file"]).stat().st_size
        beat = json.loads((Path(document["paths"]["heartbeat_dir"]) / "polygon.json").read_text())
    finally:
        daemon.kill()
    return {"seconds": seconds, "events_per_second": counter.rows / seconds, "rows": counter.rows,
            "missing_rows": events - counter.rows, "dropped_frames": beat.get("dropped_queue_full", 0),
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


MEASURES = ("bare_parsed", "bare_raw", "daemon")
COMPARED = "daemon_compared"   # --compare-with: the other checkout's daemon


def one_round(events: int, index: int, compare_with: Path | None = None) -> dict:
    """Each measure once, in an order rotated by round."""
    measures = MEASURES + ((COMPARED,) if compare_with else ())
    order = measures[index % len(measures):] + measures[:index % len(measures)]
    figures = {}
    with tempfile.TemporaryDirectory() as temp:
        for measure in order:
            with FakePolygon(api_key=TEST_API_KEY) as fake:
                if measure.startswith("daemon"):
                    workdir = Path(temp) / measure
                    workdir.mkdir()
                    figures[measure] = whole_daemon(fake, events, workdir, compare_with if measure == COMPARED else None)
                else:
                    figures[measure] = bare_client(fake, events, raw=measure == "bare_raw")
    ratios = {f"ratio_vs_{bare}": figures["daemon"]["events_per_second"] / figures[f"bare_{bare}"]["events_per_second"]
              for bare in ("parsed", "raw")}
    if compare_with:
        ratios["ratio_vs_compared"] = figures["daemon"]["events_per_second"] / figures[COMPARED]["events_per_second"]
    return {**figures, "order": list(order), **ratios}


def spread(runs: list[dict], *keys: str) -> dict:
    """min, median and max of one figure over the rounds."""
    values = []
    for run in runs:
        value = run
        for key in keys:
            value = value[key]
        values.append(value)
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def median_of(runs: list[dict], *keys: str) -> float:
    return spread(runs, *keys)["median"]


def mb(value: float) -> str:
    return f"{value / 1e6:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rounds", "--runs", type=int, default=5, help="interleaved rounds (at least 3)")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--skip-idle-and-day", action="store_true", help="only the interleaved rounds")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--compare-with", type=Path, metavar="DIR",
                        help="also run the daemon of this checkout (its spy_streamer on PYTHONPATH) in each round")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3: one round on a shared machine says little")
    os.environ.setdefault("PYTHONHASHSEED", "0")

    measures = MEASURES + ((COMPARED,) if args.compare_with else ())
    runs = []
    for index in range(args.rounds):
        run = one_round(args.events, index, args.compare_with)
        runs.append(run)
        compared = "" if not args.compare_with else (
            f", compared daemon {run[COMPARED]['events_per_second']:,.0f} ev/s (missing "
            f"{run[COMPARED]['missing_rows']:,}), ratio/compared {run['ratio_vs_compared']:.2f}")
        print(f"round {index + 1} ({', '.join(run['order'])}): bare(parsed) "
              f"{run['bare_parsed']['events_per_second']:,.0f} ev/s, bare(raw) {run['bare_raw']['events_per_second']:,.0f}"
              f" ev/s, daemon {run['daemon']['events_per_second']:,.0f} ev/s (missing {run['daemon']['missing_rows']:,},"
              f" dropped frames {run['daemon']['dropped_frames']}), ratio/parsed {run['ratio_vs_parsed']:.2f}, "
              f"ratio/raw {run['ratio_vs_raw']:.2f}{compared}", flush=True)
    summary = {
        "events": args.events, "rounds": args.rounds, "frame_events": FRAME_EVENTS,
        "symbols": len(symbols_for(args.events)), "bench_write_interval_seconds": BENCH_WRITE_INTERVAL,
        **{f"{measure}_{figure}": spread(runs, measure, figure) for measure in measures
           for figure in ("events_per_second", "cpu_seconds_per_100k", "peak_rss_bytes")},
        **{key: spread(runs, key) for key in ("ratio_vs_parsed", "ratio_vs_raw", "ratio_vs_compared") if key in runs[0]},
        "daemon_missing_rows": spread(runs, "daemon", "missing_rows"),
        "daemon_dropped_frames": spread(runs, "daemon", "dropped_frames"),
        "daemon_log_bytes": median_of(runs, "daemon", "log_bytes"),
        "compared_with": str(args.compare_with) if args.compare_with else None,
        "runs_detail": runs,
    }
    if not args.skip_idle_and_day:
        with tempfile.TemporaryDirectory() as temp, FakePolygon(api_key=TEST_API_KEY) as fake:
            idle = closed_market_cpu(fake, Path(temp), args.idle_seconds)
        with tempfile.TemporaryDirectory() as temp, FakePolygon(api_key=TEST_API_KEY) as fake:
            day = replayed_day_rss(fake, Path(temp))
        summary.update({"closed_cpu_seconds_per_minute": idle["cpu_seconds_per_minute"],
                        "closed_connections": idle["connections"], "closed_log_lines": idle["log_lines"],
                        "rss_after_each_session_bytes": day["rss_after_each_session_bytes"]})
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


def print_table(s: dict) -> None:
    print(f"\n{s['events']:,} events in frames of {s['frame_events']} over {s['symbols']:,} symbols, "
          f"{s['rounds']} interleaved rounds, min / median / max (daemon write interval "
          f"{s['bench_write_interval_seconds']} s; a shared machine: noisy)")
    print(f"{'':34}{'events/s':>30}{'CPU s/100k':>12}{'peak RSS':>11}")
    rows = [("bare client, no-op (parsed)", "bare_parsed"), ("bare client, no-op (raw)", "bare_raw"),
            ("whole daemon, to durable Parquet", "daemon")]
    if s.get("compared_with"):
        rows.append(("compared daemon (--compare-with)", COMPARED))
    for label, key in rows:
        rate = s[f"{key}_events_per_second"]
        print(f"{label:34}{rate['min']:>10,.0f}{rate['median']:>10,.0f}{rate['max']:>10,.0f}"
              f"{s[f'{key}_cpu_seconds_per_100k']['median']:>12.2f}{mb(s[f'{key}_peak_rss_bytes']['median']):>11}")
    for label, key in (("ratio daemon / bare (parsed)", "ratio_vs_parsed"), ("ratio daemon / bare (raw)", "ratio_vs_raw"),
                       ("ratio daemon / compared daemon", "ratio_vs_compared")):
        if key not in s:
            continue
        ratio = s[key]
        print(f"{label:34}{ratio['min']:>10.2f}{ratio['median']:>10.2f}{ratio['max']:>10.2f}")
    print(f"daemon rows missing (max over rounds): {s['daemon_missing_rows']['max']:,}; frames dropped: "
          f"{s['daemon_dropped_frames']['max']:,}; log bytes for a run: {s['daemon_log_bytes']:,.0f}")
    if s.get("compared_with"):
        print(f"compared daemon: the spy_streamer of {s['compared_with']}")
    if "closed_cpu_seconds_per_minute" in s:
        print(f"closed market: {s['closed_cpu_seconds_per_minute']:.4f} CPU s/min, "
              f"{s['closed_connections']} connections, {s['closed_log_lines']} log lines")
        rss = s["rss_after_each_session_bytes"]
        print(f"RSS after each replayed session of 23,400 bars: {', '.join(f'{v / 1e6:.0f}' for v in rss)} MB "
              f"(1x {mb(rss[0])}, 11x {mb(rss[-1])}, 2x..11x growth {mb(rss[-1] - rss[1])})")


if __name__ == "__main__":
    main()
