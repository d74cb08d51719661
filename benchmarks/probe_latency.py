#!/usr/bin/env python3
"""How fast `check` and `status` answer, as a container probe or a Nagios run sees it: a fresh process
each time, wall clock from spawn to exit, against a config with a heartbeat in place.

Target (issue 12): `check` at most 0.3 s (a Kubernetes exec probe times out after 1 s by default; before
the lazy imports it took 0.8-1.4 s). `status` refreshes nothing here (no key in the environment).

    .venv/bin/python benchmarks/probe_latency.py [--runs 15]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = {"check": 0.3, "status": 1.0}


def write_fixture(folder: Path) -> Path:
    heartbeat_dir = folder / "heartbeat"
    heartbeat_dir.mkdir()
    now = datetime.now(timezone.utc).isoformat()
    (heartbeat_dir / "polygon.json").write_text(json.dumps({
        "status": "market_closed", "updated_at": now, "started_at": now, "heartbeat_interval_seconds": 300,
        "market_open": False, "next_open": now, "next_close": now, "messages_total": 0, "rows_written": 0}))
    config = folder / "settings.yaml"
    config.write_text(yaml.safe_dump({"paths": {"data_dir": str(folder / "data"),
                                                "heartbeat_dir": str(heartbeat_dir), "log_file": None}}))
    return config


def time_command(command: str, config: Path, runs: int) -> list[float]:
    env = {"PATH": "/usr/bin:/bin"}
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "spy_streamer", command, "--config", str(config)],
                       capture_output=True, env=env, cwd=ROOT, check=False)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = write_fixture(Path(folder))
        print(f"{'command':<8} {'min':>7} {'median':>7} {'max':>7}  target")
        for command, target in TARGET_SECONDS.items():
            seconds = time_command(command, config, args.runs)
            median = statistics.median(seconds)
            verdict = "ok" if median <= target else "OVER"
            print(f"{command:<8} {min(seconds):7.3f} {median:7.3f} {max(seconds):7.3f}  <= {target:.1f} s {verdict}")


if __name__ == "__main__":
    main()
