"""Shared test helpers: config files built around tmp_path, an injectable clock, New York instants."""
from __future__ import annotations

import copy
import json
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import HealthCheck, settings as hypothesis_settings

# Fixtures for tests that run the daemon against the fake Polygon (`fake`, `start`).
pytest_plugins = ["daemon_harness"]

# Fuzzing is deterministic and modest everywhere (CI runs at any hour on 2 cores): the same examples
# every run, no example database, no deadline flakiness on a loaded machine.
hypothesis_settings.register_profile(
    "spy-streamer", derandomize=True, database=None, deadline=None, max_examples=100,
    suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile("spy-streamer")

NY = ZoneInfo("America/New_York")
# Tests that start a real daemon, server or tool (integration): by the fixtures they use, or listed here.
INTEGRATION_FIXTURES = {"start", "fake", "s3"}
INTEGRATION_MODULES = {"test_daemon_scenarios", "test_faults", "test_lake_daemon", "test_deployment", "test_demo",
                       "test_operator_signals", "test_thread_failures", "test_status_command",
                       "test_calendar_commands", "test_packaging", "test_calendar_daemon", "test_clock_jump",
                       "test_idle", "test_systemd_notify", "test_setup", "test_readme_commands", "test_reader_matrix",
                       "test_oversize_frames", "test_check_plugin", "test_config_paths", "test_closed_pipe",
                       "test_lake_bounds", "test_compaction"}
REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_API_KEY = "test-key-0123456789abcdef"
ANY_TIME = (0, 2 ** 63 - 1)   # a REST page's requested range (ms) that no row's time leaves


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=NY)


class FakeClock:
    """Wall clock and monotonic clock that move only when a test says so."""

    def __init__(self, start: datetime):
        self._now = start.astimezone(timezone.utc)
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def time_ns(self) -> int:
        return int(self._now.timestamp() * 1_000_000_000)

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds

    def jump(self, seconds: float) -> None:
        """The wall clock alone moves (set by hand, an NTP step): the monotonic clock does not."""
        self._now += timedelta(seconds=seconds)


def settings(tmp_path: Path, **sections) -> dict:
    """The default settings with output under tmp_path, deep-merged with `sections`."""
    base = yaml.safe_load((REPO_ROOT / "config" / "settings.yaml").read_text())
    base["paths"] = {
        "data_dir": str(tmp_path / "data"),
        "heartbeat_dir": str(tmp_path / "heartbeat"),
        "log_file": str(tmp_path / "log" / "spy_streamer.log"),
    }
    return merge_settings(base, sections)


def merge_settings(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_settings(tmp_path: Path, document: dict, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
def config_file(tmp_path):
    """Factory: config_file(**sections) -> path of a settings file under tmp_path."""
    return lambda **sections: write_settings(tmp_path, settings(tmp_path, **sections))


@pytest.fixture
def record_figure(request):
    """record_figure(name, value): a figure a test measured, for scripts/completion_report.py.

    Written as a JSON line to $SPY_STREAMER_FIGURES when that is set; tests assert on the same values,
    so the report never quotes a figure the test did not check."""
    target = os.environ.get("SPY_STREAMER_FIGURES")

    def record(name: str, value) -> None:
        if target:
            with open(target, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"test": request.node.nodeid, "name": name, "value": value}) + "\n")

    return record


@pytest.fixture
def info_logs(caplog):
    """INFO records captured (other tests, the CLI's, may leave the root logger at WARNING)."""
    caplog.set_level(logging.INFO)
    return caplog


def logged_events(caplog, name: str) -> list[logging.LogRecord]:
    """The captured records whose `event` is `name`."""
    return [record for record in caplog.records if getattr(record, "event", None) == name]


def pytest_collection_modifyitems(items):
    """`-m "not integration"` is the fast unit loop: no real daemon, server or external tool. Tests marked
    `slow` (a minute or so of waiting) go first, so that pytest-xdist hands out their modules first and no
    worker is left running one alone at the end."""
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())) or item.module.__name__ in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _no_failure_streak_outlives_its_test():
    """Streaks are process-wide (the heartbeat lists every running one): a test that ends with one still
    failing must not make the next test's heartbeat or `check` WARNING."""
    yield
    from spy_streamer.monitoring import failure_streak
    with failure_streak._RUNNING_LOCK:
        failure_streak._RUNNING.clear()
