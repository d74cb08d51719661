"""Running the real daemon as a user would: a config window around now, `python -m spy_streamer run` (the
running interpreter) as a subprocess against the fake Polygon, then the Parquet, heartbeat and log read
back. scripts/run_streamer.sh itself is tested where it is the subject (tests/deployment/test_deployment.py, the demo)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from conftest import REPO_ROOT, TEST_API_KEY, merge_settings, settings, write_settings
from fake_polygon import FakePolygon
from spy_streamer.demo.launch import midday_zone  # noqa: F401 (tests import it from here too)

ALL_DAYS = [0, 1, 2, 3, 4, 5, 6]


def window_settings(tmp_path: Path, fake, *, open_now: bool = True, **sections) -> dict:
    """Settings pointing at the fake, with a session open now (or opening in two hours), every day.

    The exchange rules are off (`holiday_rules: none`) so the window opens on any date, an NYSE holiday
    included; the fake's `upcoming` list (and the calendar cache) still apply."""
    now = datetime.now(timezone.utc)
    zone = midday_zone(now)
    local = now.astimezone(zone)
    start, end = (local - timedelta(minutes=10), local + timedelta(hours=1)) if open_now else \
        (local + timedelta(hours=2), local + timedelta(hours=3))
    base = settings(
        tmp_path,
        polygon={"ws_feed": fake.ws_feed, "ws_secure": False, "rest_base_url": fake.rest_base_url},
        streaming={
            "market_hours": {"timezone": zone.key, "active_days": ALL_DAYS,
                             "start_time": f"{start:%H:%M}", "end_time": f"{end:%H:%M}", "holiday_rules": "none"},
            "monitoring": {"heartbeat_interval_seconds": 0.5, "alert_threshold_seconds": 30},
            "batching": {"write_interval_seconds": 0.3},
        },
    )
    return merge_settings(base, sections)


class Daemon:
    """`spy-streamer run` as a subprocess of this interpreter, with the test key in its environment."""

    def __init__(self, config_path: Path, api_key: str = TEST_API_KEY, code: Path = REPO_ROOT):
        """`code`: the checkout whose spy_streamer runs (the benchmarks compare another commit's)."""
        env = dict(os.environ, POLYGON_API_KEY=api_key, PYTHONUNBUFFERED="1", PYTHONPATH=str(code))
        env.pop("SPY_STREAMER_CONFIG", None)
        self.config_path = config_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "spy_streamer", "run", "--config", str(config_path)], cwd=code,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def wait_exit(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> tuple[int, float]:
        """Send `sig`; (exit code, seconds it took to exit)."""
        started = time.monotonic()
        self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started

    def output(self) -> tuple[str, str]:
        return self.process.communicate(timeout=5)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)


def wait_for(predicate, timeout: float = 10, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def log_events(log_file: Path) -> list[dict]:
    """The log's complete lines (the daemon may be half-way through writing the last one)."""
    if not log_file.exists():
        return []
    return [json.loads(line) for line in log_file.read_text().splitlines(keepends=True)
            if line.endswith("\n") and line.strip()]


def events_named(log_file: Path, name: str) -> list[dict]:
    return [entry for entry in log_events(log_file) if entry.get("event") == name]


def read_heartbeat(heartbeat_dir: Path) -> dict | None:
    try:
        return json.loads((heartbeat_dir / "polygon.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def stored_rows(data_dir: Path) -> list[dict]:
    if not (data_dir / "A").exists():
        return []
    return ds.dataset(data_dir / "A", format="parquet", partitioning="hive").to_table().to_pylist()


def stored_keys(data_dir: Path) -> list[tuple[str, int]]:
    return [(row["symbol"], int(row["start"].timestamp() * 1000)) for row in stored_rows(data_dir)]


@pytest.fixture
def fake():
    """A fresh fake Polygon on 127.0.0.1 per test."""
    with FakePolygon(api_key=TEST_API_KEY) as server:
        yield server


class Run:
    """One daemon run in tmp_path: its config, its output folders, the process."""

    def __init__(self, tmp_path, fake, **settings_kwargs):
        document = window_settings(tmp_path, fake, **settings_kwargs)
        self.config_path = write_settings(tmp_path, document)
        self.log_file = Path(document["paths"]["log_file"])
        self.data_dir = Path(document["paths"]["data_dir"])
        self.heartbeat_dir = Path(document["paths"]["heartbeat_dir"])
        self.daemon = Daemon(self.config_path)

    def restart(self) -> None:
        """A new process on the same config and files, as supervisord would start after a crash."""
        self.daemon.kill()
        self.daemon = Daemon(self.config_path)

    def heartbeat(self) -> dict | None:
        return read_heartbeat(self.heartbeat_dir)

    def events(self, name: str) -> list[dict]:
        return events_named(self.log_file, name)


@pytest.fixture
def start(tmp_path, fake):
    runs = []

    def starter(**settings_kwargs) -> Run:
        run = Run(tmp_path, fake, **settings_kwargs)
        runs.append(run)
        return run

    yield starter
    for run in runs:
        run.daemon.kill()


def recent_start_ms(seconds_ago: int = 120) -> int:
    """Bars that started within today's open window (which began ten minutes ago)."""
    return (int(time.time()) - seconds_ago) * 1000


