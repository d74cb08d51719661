#!/usr/bin/env python3
"""Throughput and resource benchmark: the daemon against a named older commit's, side by side.

Against the loopback fake Polygon (tests/fake_polygon.py) sending pre-serialised frames of 200 "A" events
as fast as it can (1,000,000 events over 500 symbols, a bar per symbol a second: the whole market's
shape), in interleaved rounds (each round runs every measure once, in an order rotated by round, so
drift on a shared machine falls on each alike):
  daemon            this checkout's daemon, from the first frame to the last row durable in Parquet;
  daemon_spaced     the same with the same events spelt `"ev": "A"` (json.dumps's spacing): any valid
                    JSON must parse at least 0.8x as fast as Polygon's compact form;
  baseline          the daemon of the baseline commit (default 53b8413, extracted with `git archive`;
                    `--compare-with DIR` names a checkout instead), run on the same settings;
  bare_parsed/raw   the bare polygon-api-client with a no-op handler (parsed models, and raw).
Each is a separate process; each peak RSS is its own VmHWM. The sender's own ceiling (events / the CPU
seconds its loop spent sending) is reported beside the rates: it shows the sender is not the bottleneck.
Reported: min/median/max over the rounds of each rate and ratio, drops and missing rows. Then CPU while
the market is closed (production cadences, after a 15 s warm-up) and RSS across replayed sessions.

    .venv/bin/python benchmarks/throughput.py [--events 1000000] [--rounds 3] [--baseline 53b8413 |
        --compare-with DIR | --no-baseline] [--skip-idle-and-day] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import TEST_API_KEY, write_settings  # noqa: E402
from daemon_harness import Daemon, events_named, midday_zone, wait_for, window_settings  # noqa: E402
from spy_streamer.peak_memory import peak_rss_bytes  # noqa: E402
from fake_polygon import FakePolygon  # noqa: E402

FRAME_EVENTS = 200
SYMBOLS = 500                                       # the whole-market shape: 500 symbols a second
BENCH_WRITE_INTERVAL = 0.25                         # so "durable" is not dominated by the 30 s timer
SESSION_BARS = 23_400
BARS_BEHIND_SECONDS = 6 * 3600  # the blast's bars cover the last six hours, inside the all-day session below
ALL_DAY = {"start_time": "00:01", "end_time": "23:59"}  # local to midday_zone: now is midday
BASELINE = "53b8413"            # the start of the round that issue 20 measured against
SPACED = (", ", ": ")           # json.dumps's default separators
IDLE_WARM_UP_SECONDS = 15


def symbols_for(events: int, at_least: int = SYMBOLS) -> tuple[str, ...]:
    """`at_least` symbols, more if need be so that every bar (one per symbol per second, from six hours
    ago) lies in the past and in the session: --events 1000000 once sent 10,000 s per symbol."""
    count = max(at_least, -(-events // (BARS_BEHIND_SECONDS - 600)))
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


def start_daemon(workdir: Path, fake: FakePolygon, code: Path = ROOT, **sections) -> tuple[Daemon, dict]:
    """The daemon of checkout `code` on settings for the fake (only the keys that checkout knows)."""
    document = window_settings(workdir, fake, **sections)
    if code != ROOT:
        document = known_settings(document, yaml.safe_load((code / "config" / "settings.yaml").read_text()))
    daemon = Daemon(write_settings(workdir, document), code=code)
    return daemon, document


def known_settings(document: dict, defaults: dict) -> dict:
    """`document` without the keys an older checkout's settings do not have (it refuses unknown keys)."""
    return {key: known_settings(value, defaults[key]) if isinstance(value, dict) and isinstance(defaults[key], dict)
            else value for key, value in document.items() if key in defaults}


def baseline_checkout(commit: str, into: Path) -> Path:
    """The files of `commit` (this repository's history) under `into`, as `git archive` gives them."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def whole_daemon(fake: FakePolygon, events: int, workdir: Path, code: Path = ROOT,
                 separators: tuple[str, str] = (",", ":")) -> dict:
    """`code`: the checkout whose daemon runs; `separators`: the frames' JSON spelling."""
    daemon, document = start_daemon(
        workdir, fake, code, polygon={"subscriptions": ["A.*"]},
        streaming={"market_hours": ALL_DAY, "batching": {"write_interval_seconds": BENCH_WRITE_INTERVAL},
                   "monitoring": {"heartbeat_interval_seconds": 300}})
    try:
        assert fake.wait_for_subscribers(1, timeout=30), "daemon did not subscribe"
        process = psutil.Process(daemon.process.pid)
        counter = RowCounter(Path(document["paths"]["data_dir"]))
        cpu_before = cpu_seconds(process)
        fake.blast(events, FRAME_EVENTS, blast_start_ms(), symbols_for(events), separators=separators)
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
            "cpu_seconds_per_100k": cpu / events * 100_000, "peak_rss_bytes": rss, "log_bytes": log_bytes,
            "sender_ceiling_events_per_second": events / max(fake.last_blast_cpu_seconds, 1e-9)}


def closed_market_cpu(fake: FakePolygon, workdir: Path, seconds: float) -> dict:
    """CPU seconds a minute of a daemon with the market closed, at production cadences (heartbeat 300 s,
    write 30 s), measured for `seconds` after a warm-up of IDLE_WARM_UP_SECONDS from its start."""
    daemon, document = start_daemon(workdir, fake, open_now=False,
                                    streaming={"monitoring": {"heartbeat_interval_seconds": 300},
                                               "batching": {"write_interval_seconds": 30}})
    started = time.monotonic()
    log_file = Path(document["paths"]["log_file"])
    try:
        wait_for(lambda: events_named(log_file, "market_closed"), timeout=30, what="market_closed")
        time.sleep(max(0.0, started + IDLE_WARM_UP_SECONDS - time.monotonic()))
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


MEASURES = ("bare_parsed", "bare_raw", "daemon")   # market_load.py's clients
SPACED_MEASURE = "daemon_spaced"
COMPARED = "baseline"          # the baseline commit's (or --compare-with's) daemon


def one_round(events: int, index: int, compare_with: Path | None = None) -> dict:
    """Each measure once, in an order rotated by round."""
    measures = MEASURES + (SPACED_MEASURE,) + ((COMPARED,) if compare_with else ())
    order = measures[index % len(measures):] + measures[:index % len(measures)]
    figures = {}
    with tempfile.TemporaryDirectory() as temp:
        for measure in order:
            with FakePolygon(api_key=TEST_API_KEY) as fake:
                figures[measure] = one_measure(fake, measure, events, Path(temp) / measure, compare_with)
    ratios = {f"ratio_vs_{bare}": figures["daemon"]["events_per_second"] / figures[f"bare_{bare}"]["events_per_second"]
              for bare in ("parsed", "raw")}
    ratios["ratio_spaced_vs_compact"] = figures[SPACED_MEASURE]["events_per_second"] / figures["daemon"]["events_per_second"]
    if compare_with:
        ratios["ratio_vs_compared"] = figures["daemon"]["events_per_second"] / figures[COMPARED]["events_per_second"]
    return {**figures, "order": list(order), **ratios}


def one_measure(fake: FakePolygon, measure: str, events: int, workdir: Path, compare_with: Path | None) -> dict:
    if not measure.startswith("bare"):
        workdir.mkdir()
        return whole_daemon(fake, events, workdir, compare_with if measure == COMPARED else ROOT,
                            SPACED if measure == SPACED_MEASURE else (",", ":"))
    return bare_client(fake, events, raw=measure == "bare_raw")


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
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", "--runs", type=int, default=3, help="interleaved rounds (at least 3)")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--skip-idle-and-day", action="store_true", help="only the interleaved rounds")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument("--baseline", default=BASELINE, metavar="COMMIT",
                          help=f"the commit whose daemon runs in each round (default {BASELINE})")
    baseline.add_argument("--compare-with", type=Path, metavar="DIR", help="a checkout to compare with instead")
    baseline.add_argument("--no-baseline", action="store_true", help="no compared daemon")
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3: one round on a shared machine says little")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    extracted = Path(tempfile.mkdtemp(prefix="spy-streamer-baseline-"))
    try:
        compare_with, compared_name = compared_checkout(args, extracted)
        summary = run_rounds(args, compare_with, compared_name)
    finally:
        shutil.rmtree(extracted, ignore_errors=True)
    if not args.skip_idle_and_day:
        summary.update(idle_and_day(args.idle_seconds))
    print_table(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


def compared_checkout(args, extracted: Path) -> tuple[Path | None, str | None]:
    if args.no_baseline:
        return None, None
    if args.compare_with:
        return args.compare_with.resolve(), str(args.compare_with)
    return baseline_checkout(args.baseline, extracted), f"commit {args.baseline}"


def run_rounds(args, compare_with: Path | None, compared_name: str | None) -> dict:
    runs = []
    for index in range(args.rounds):
        run = one_round(args.events, index, compare_with)
        runs.append(run)
        print(f"round {index + 1}: " + ", ".join(f"{measure} {run[measure]['events_per_second']:,.0f} ev/s"
                                                  for measure in run["order"])
              + f"; ratios: spaced/compact {run['ratio_spaced_vs_compact']:.2f}"
              + (f", daemon/{COMPARED} {run['ratio_vs_compared']:.2f}" if compare_with else "")
              + f"; daemon missing {run['daemon']['missing_rows']:,}, dropped {run['daemon']['dropped_frames']}",
              flush=True)
    measures = [measure for measure in runs[0]["order"]]
    daemons = [measure for measure in measures if not measure.startswith("bare")]
    return {
        "events": args.events, "rounds": args.rounds, "frame_events": FRAME_EVENTS,
        "symbols": len(symbols_for(args.events)), "bench_write_interval_seconds": BENCH_WRITE_INTERVAL,
        **{f"{measure}_{figure}": spread(runs, measure, figure) for measure in measures
           for figure in ("events_per_second", "cpu_seconds_per_100k", "peak_rss_bytes")},
        **{f"{measure}_{figure}": spread(runs, measure, figure) for measure in daemons
           for figure in ("missing_rows", "dropped_frames", "sender_ceiling_events_per_second")},
        **{key: spread(runs, key) for key in ("ratio_vs_parsed", "ratio_vs_raw", "ratio_spaced_vs_compact",
                                              "ratio_vs_compared") if key in runs[0]},
        "daemon_log_bytes": median_of(runs, "daemon", "log_bytes"),
        "compared_with": compared_name, "measures": measures,
        "runs_detail": runs,
    }


def idle_and_day(idle_seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as temp, FakePolygon(api_key=TEST_API_KEY) as fake:
        idle = closed_market_cpu(fake, Path(temp), idle_seconds)
    with tempfile.TemporaryDirectory() as temp, FakePolygon(api_key=TEST_API_KEY) as fake:
        day = replayed_day_rss(fake, Path(temp))
    return {"closed_cpu_seconds_per_minute": idle["cpu_seconds_per_minute"], "closed_measured_seconds": idle_seconds,
            "closed_connections": idle["connections"], "closed_log_lines": idle["log_lines"],
            "rss_after_each_session_bytes": day["rss_after_each_session_bytes"]}


LABELS = {"bare_parsed": "bare client, no-op (parsed)", "bare_raw": "bare client, no-op (raw)",
          "daemon": "daemon, to durable Parquet", SPACED_MEASURE: "daemon, spaced JSON frames",
          COMPARED: "baseline daemon"}


def print_table(s: dict) -> None:
    print(f"\n{s['events']:,} events in frames of {s['frame_events']} over {s['symbols']:,} symbols (pre-serialised), "
          f"{s['rounds']} interleaved rounds, min / median / max (daemon write interval "
          f"{s['bench_write_interval_seconds']} s; a shared machine: noisy)")
    print(f"{'':30}{'events/s (min/median/max)':>30}{'CPU s/100k':>12}{'peak RSS':>11}{'missing':>9}{'dropped':>9}"
          f"{'sender ceiling':>16}")
    for key in s["measures"]:
        rate, extra = s[f"{key}_events_per_second"], ""
        if f"{key}_missing_rows" in s:
            extra = (f"{s[f'{key}_missing_rows']['max']:>9,}{s[f'{key}_dropped_frames']['max']:>9,}"
                     f"{s[f'{key}_sender_ceiling_events_per_second']['min']:>16,.0f}")
        print(f"{LABELS[key]:30}{rate['min']:>10,.0f}{rate['median']:>10,.0f}{rate['max']:>10,.0f}"
              f"{s[f'{key}_cpu_seconds_per_100k']['median']:>12.2f}{mb(s[f'{key}_peak_rss_bytes']['max']):>11}{extra}")
    for label, key in (("daemon / baseline daemon", "ratio_vs_compared"),
                       ("spaced / compact frames", "ratio_spaced_vs_compact"),
                       ("daemon / bare client (parsed)", "ratio_vs_parsed"), ("daemon / bare client (raw)", "ratio_vs_raw")):
        if key in s:
            ratio = s[key]
            print(f"{label:30}{ratio['min']:>10.2f}{ratio['median']:>10.2f}{ratio['max']:>10.2f}")
    print("missing, dropped: max over the rounds; peak RSS: max; sender ceiling: events / CPU s of the fake's sending "
          f"loop (min); log bytes for a daemon run: {s['daemon_log_bytes']:,.0f}")
    if s.get("compared_with"):
        print(f"baseline daemon: the spy_streamer of {s['compared_with']}")
    if "closed_cpu_seconds_per_minute" in s:
        print(f"closed market (heartbeat 300 s, write 30 s, after {IDLE_WARM_UP_SECONDS} s, over "
              f"{s['closed_measured_seconds']:.0f} s): {s['closed_cpu_seconds_per_minute']:.4f} CPU s/min, "
              f"{s['closed_connections']} connections, {s['closed_log_lines']} log lines")
        rss = s["rss_after_each_session_bytes"]
        print(f"RSS after each replayed session of 23,400 bars: {', '.join(f'{v / 1e6:.0f}' for v in rss)} MB "
              f"(1x {mb(rss[0])}, 11x {mb(rss[-1])}, 2x..11x growth {mb(rss[-1] - rss[1])})")


if __name__ == "__main__":
    main()
