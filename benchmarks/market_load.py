#!/usr/bin/env python3
"""Paced market loads against the bare polygon-api-client and the whole daemon, side by side.

Scenarios, each in interleaved rounds (each round runs the three clients in a rotated order) against
the loopback fake Polygon, which sends frames at a steady pace rather than as fast as it can:
  whole-market  `A.*`: one second bar for each of 11,000 symbols every second, in frames of 20 events
                (550 frames/s), bars of the current second, at real-time pace;
  trades        `T.*`: 20,000 trades a second over 5,000 symbols in frames of 100;
  burst         `A.*`: 250,000 events a second in frames of 200 (bars of the last six hours, distinct keys);
  trades-peak   `T.*` at 120,000 trades a second (a busy market's peak) over 6,000 symbols in frames of 200;
  quotes-peak   `Q.*` at 400,000 quotes a second (NBBO at the open) over 8,000 symbols in frames of 200;
  day           `A.*`: a whole-market day replayed, a bar for each of 11,000 symbols for every second of a
                6.5-hour session (257M bars), 9 seconds of the day every second (99,000 events a second,
                frames of 200): `--seconds 2600 --daemon-only` follows the daemon's RSS over the whole day.
For each client: the events/s it took in (the daemon's: rows durable in Parquet from the first frame on),
CPU seconds per 100k events, its own peak RSS (VmHWM), and for the daemon the frames dropped and the rows
missing; then the daemon's ratios to both bare clients (rate and CPU).

    .venv/bin/python benchmarks/market_load.py whole-market [--minutes 0.5] [--rounds 3]
    .venv/bin/python benchmarks/market_load.py trades --minutes 10 --rounds 1
    .venv/bin/python benchmarks/market_load.py burst --seconds 60 --rounds 1
    .venv/bin/python benchmarks/market_load.py trades-peak --seconds 60 --daemon-only
    .venv/bin/python benchmarks/market_load.py quotes-peak --seconds 60 --daemon-only
    .venv/bin/python benchmarks/market_load.py day --seconds 2600 --daemon-only
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from conftest import TEST_API_KEY  # noqa: E402
from spy_streamer.peak_memory import peak_rss_bytes  # noqa: E402
from fake_polygon import FakePolygon  # noqa: E402
from throughput import (ALL_DAY, BARS_BEHIND_SECONDS, MEASURES, RowCounter, cpu_seconds,  # noqa: E402
                        start_daemon)

TICK_SECONDS = 0.01   # the sender spreads each second's frames over 100 ticks


@dataclass(frozen=True)
class Load:
    """`rate` events a second of one channel, `symbols` of them per frame template, `frame_events` a frame."""
    channel: str
    rate: int
    symbols: int
    frame_events: int
    real_time: bool            # bars of the current second (else of the last six hours, as fast as paced)

    def templates(self) -> list[str]:
        """One frame per block of symbols, its time (and trade id) left as placeholders."""
        blocks = [range(start, min(start + self.frame_events, self.symbols))
                  for start in range(0, self.symbols, self.frame_events)]
        return [json.dumps([self.event(f"S{i:05d}") for i in block], separators=(",", ":"))
                .replace('"@T@"', "@T@").replace('"@E@"', "@E@").replace('"@Q@"', "@Q@") for block in blocks]

    def event(self, symbol: str) -> dict:
        if self.channel == "T":
            return {"ev": "T", "sym": symbol, "x": 4, "i": "@I@", "z": 2, "p": 101.25, "s": 100,
                    "c": [12, 37], "t": "@T@", "q": 1}
        if self.channel == "Q":   # the sequence number is the quote's key: one per (second, repeat)
            return {"ev": "Q", "sym": symbol, "bx": 11, "bp": 101.24, "bs": 2, "ax": 12, "ap": 101.26, "as": 3,
                    "c": 1, "i": [604], "t": "@T@", "q": "@Q@", "z": 2}
        return {"ev": "A", "sym": symbol, "v": 200, "av": 10_000, "op": 100.0, "vw": 100.02, "o": 100.0,
                "c": 100.05, "h": 100.1, "l": 99.95, "a": 100.01, "z": 50, "s": "@T@", "e": "@E@"}


SCENARIOS = {
    "whole-market": Load("A", 11_000, 11_000, 20, real_time=True),
    "trades": Load("T", 20_000, 5_000, 100, real_time=True),
    "burst": Load("A", 250_000, 11_000, 200, real_time=False),
    "day": Load("A", 99_000, 11_000, 200, real_time=False),
    "trades-peak": Load("T", 120_000, 6_000, 200, real_time=True),
    "quotes-peak": Load("Q", 400_000, 8_000, 200, real_time=True),
}


class PacedSender:
    """Sends `load` for `seconds` to every subscribed client of `fake`, at a steady pace; counts events."""

    def __init__(self, fake: FakePolygon, load: Load, seconds: float):
        self.fake, self.load, self.seconds = fake, load, seconds
        self.templates = [(template, template.count('"ev":')) for template in load.templates()]
        self.sent_events = 0
        self.started = 0.0          # time.monotonic() of the first frame
        self.late_seconds = 0.0     # how far the sender itself fell behind its schedule (its own CPU)

    def run(self) -> None:
        self.fake._call(self._send(), timeout=None)

    async def _send(self) -> None:
        clients = list(self.fake._subscribed())
        repeats = max(1, round(self.load.rate / self.load.symbols))      # a block's frames per second
        per_second = [(repeat, template) for repeat in range(repeats) for template in self.templates]
        # Polygon sends a second's bars about 2 s after it ends; the burst's bars lie in the last six hours.
        first_ms = (int(time.time()) - (2 if self.load.real_time else BARS_BEHIND_SECONDS)) * 1000
        ticks = round(1 / TICK_SECONDS)
        self.started = time.monotonic()
        for second in range(int(self.seconds)):
            due = self.started + second
            for tick in range(ticks):
                await asyncio.sleep(max(0.0, due + tick * TICK_SECONDS - time.monotonic()))
                share = per_second[tick * len(per_second) // ticks:(tick + 1) * len(per_second) // ticks]
                for repeat, (template, events) in share:
                    start_ms = first_ms + (second if self.load.real_time else second * repeats + repeat) * 1000
                    frame = template.replace("@T@", str(start_ms)).replace("@E@", str(start_ms + 1000)) \
                        .replace("@I@", f"{second}-{repeat}").replace("@Q@", str(second * repeats + repeat))
                    for client in clients:
                        await client.ws.send(frame)
                    self.sent_events += events
            self.late_seconds = max(self.late_seconds, time.monotonic() - due - 1)


def bare_client(fake: FakePolygon, load: Load, seconds: float, raw: bool) -> dict:
    sender = PacedSender(fake, load, seconds)
    expected = _expected_events(load, seconds)
    args = [sys.executable, str(ROOT / "benchmarks" / "bare_client.py"), "--feed", fake.ws_feed, "--key", TEST_API_KEY,
            "--events", str(expected), "--channel", load.channel] + (["--raw"] if raw else [])
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert fake.wait_for_subscribers(1, timeout=30), "bare client did not subscribe"
    sender.run()
    result = json.loads(child.stdout.readline())
    child.wait(timeout=30)
    taken = result["done_monotonic"] - sender.started
    return {"events": sender.sent_events, "seconds": taken, "events_per_second": sender.sent_events / taken,
            "cpu_seconds_per_100k": result["cpu_seconds"] / sender.sent_events * 100_000,
            "peak_rss_bytes": result["peak_rss_bytes"], "sender_late_seconds": sender.late_seconds}


def whole_daemon(fake: FakePolygon, load: Load, seconds: float, workdir: Path, write_interval: float) -> dict:
    daemon, document = start_daemon(
        workdir, fake, polygon={"subscriptions": [f"{load.channel}.*"]},
        streaming={"market_hours": ALL_DAY, "batching": {"write_interval_seconds": write_interval},
                   "monitoring": {"heartbeat_interval_seconds": 300}})
    try:
        assert fake.wait_for_subscribers(1, timeout=30), "daemon did not subscribe"
        process = psutil.Process(daemon.process.pid)
        counter = RowCounter(Path(document["paths"]["data_dir"]), load.channel)
        cpu_before = cpu_seconds(process)
        sender = PacedSender(fake, load, seconds)
        sampler = RssSampler(process)
        sender.run()
        deadline = time.monotonic() + 60 + write_interval
        while counter.poll() < sender.sent_events and time.monotonic() < deadline:
            time.sleep(0.01)
        taken = time.monotonic() - sender.started
        cpu = cpu_seconds(process) - cpu_before
        rss = peak_rss_bytes(process.pid)
        sampler.stop()
        assert daemon.stop()[0] == 0
        beat = json.loads((Path(document["paths"]["heartbeat_dir"]) / "polygon.json").read_text())
    finally:
        daemon.kill()
    return {"events": sender.sent_events, "seconds": taken, "events_per_second": counter.rows / taken,
            "rows": counter.rows, "missing_rows": sender.sent_events - counter.rows,
            "dropped_frames": beat.get("dropped_queue_full", 0), "cpu_seconds_per_100k": cpu / sender.sent_events * 100_000,
            "peak_rss_bytes": rss, "sender_late_seconds": sender.late_seconds, "rss_samples": sampler.samples}


class RssSampler(threading.Thread):
    """The daemon's RSS every `every` seconds while the load runs: flat, or growing with the rows?"""

    def __init__(self, process: psutil.Process, every: float = 10.0):
        super().__init__(daemon=True)
        self.process, self.every, self.samples = process, every, []
        self._done = threading.Event()
        self.start()

    def run(self) -> None:
        started = time.monotonic()
        while not self._done.wait(self.every):
            self.samples.append((round(time.monotonic() - started), self.process.memory_info().rss))

    def stop(self) -> None:
        self._done.set()
        self.join()


def _expected_events(load: Load, seconds: float) -> int:
    repeats = max(1, round(load.rate / load.symbols))
    return repeats * load.symbols * int(seconds)


def one_round(load: Load, seconds: float, index: int, write_interval: float) -> dict:
    order = MEASURES[index % 3:] + MEASURES[:index % 3]
    figures = {}
    with tempfile.TemporaryDirectory() as temp:
        for measure in order:
            with FakePolygon(api_key=TEST_API_KEY) as fake:
                figures[measure] = whole_daemon(fake, load, seconds, Path(temp), write_interval) \
                    if measure == "daemon" else bare_client(fake, load, seconds, raw=measure == "bare_raw")
    daemon = figures["daemon"]
    return {**figures, "order": list(order),
            **{f"ratio_vs_{kind}": daemon["events_per_second"] / figures[f"bare_{kind}"]["events_per_second"]
               for kind in ("parsed", "raw")},
            **{f"cpu_ratio_vs_{kind}": daemon["cpu_seconds_per_100k"] / figures[f"bare_{kind}"]["cpu_seconds_per_100k"]
               for kind in ("parsed", "raw")}}


def median(runs: list[dict], *keys: str) -> float:
    values = []
    for run in runs:
        for key in keys:
            run = run[key]
        values.append(run)
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--minutes", type=float, help="how long the load lasts (default: 20 s, burst 10 s)")
    parser.add_argument("--seconds", type=float, help="the same in seconds")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--write-interval", type=float, default=1.0, help="the daemon's write_interval_seconds")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--daemon-only", action="store_true", help="one daemon run, its RSS every 10 s (long runs)")
    args = parser.parse_args()
    load = SCENARIOS[args.scenario]
    seconds = args.minutes * 60 if args.minutes else args.seconds or (10 if args.scenario == "burst" else 20)
    if args.daemon_only:
        daemon_only(load, seconds, args.write_interval)
        return

    runs = []
    for index in range(args.rounds):
        run = one_round(load, seconds, index, args.write_interval)
        runs.append(run)
        print(f"round {index + 1} ({', '.join(run['order'])}): " + ", ".join(
            f"{m} {run[m]['events_per_second']:,.0f} ev/s" for m in MEASURES)
            + f"; daemon missing {run['daemon']['missing_rows']:,}, dropped frames {run['daemon']['dropped_frames']}",
            flush=True)
    print(f"\n{args.scenario}: {load.channel}.* at {load.rate:,} events/s over {load.symbols:,} symbols in frames of "
          f"{load.frame_events}, {seconds:.0f} s, {args.rounds} interleaved rounds, medians (daemon write interval "
          f"{args.write_interval} s)")
    print(f"{'':34}{'events/s':>12}{'CPU s/100k':>12}{'peak RSS':>11}{'sender late':>13}")
    for label, key in (("bare client, no-op (parsed)", "bare_parsed"), ("bare client, no-op (raw)", "bare_raw"),
                       ("whole daemon, to durable Parquet", "daemon")):
        print(f"{label:34}{median(runs, key, 'events_per_second'):>12,.0f}{median(runs, key, 'cpu_seconds_per_100k'):>12.3f}"
              f"{median(runs, key, 'peak_rss_bytes') / 1e6:>8.1f} MB{median(runs, key, 'sender_late_seconds'):>11.2f} s")
    for kind in ("parsed", "raw"):
        print(f"daemon / bare ({kind}): events/s {median(runs, f'ratio_vs_{kind}'):.2f}, "
              f"CPU per event {median(runs, f'cpu_ratio_vs_{kind}'):.2f}")
    print(f"daemon rows missing (max over rounds): {max(run['daemon']['missing_rows'] for run in runs):,}; "
          f"frames dropped (max): {max(run['daemon']['dropped_frames'] for run in runs):,}; peak RSS (max): "
          f"{max(run['daemon']['peak_rss_bytes'] for run in runs) / 1e6:.1f} MB")
    if args.json:
        args.json.write_text(json.dumps({"scenario": args.scenario, "seconds": seconds, "runs": runs}, indent=1))


def daemon_only(load: Load, seconds: float, write_interval: float) -> None:
    with tempfile.TemporaryDirectory() as temp, FakePolygon(api_key=TEST_API_KEY) as fake:
        run = whole_daemon(fake, load, seconds, Path(temp), write_interval)
    print(f"{load.channel}.* at {load.rate:,} events/s for {seconds:.0f} s, daemon only: {run['events_per_second']:,.0f}"
          f" ev/s, {run['cpu_seconds_per_100k']:.3f} CPU s/100k, peak RSS {run['peak_rss_bytes'] / 1e6:.1f} MB, "
          f"missing {run['missing_rows']:,}, dropped frames {run['dropped_frames']}, sender late {run['sender_late_seconds']:.2f} s")
    print("RSS (s: MB): " + ", ".join(f"{at}: {rss / 1e6:.0f}" for at, rss in run["rss_samples"]))


if __name__ == "__main__":
    main()
