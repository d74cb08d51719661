"""`spy-streamer check` is a monitoring plugin on every path (issue 18): each failure of its own is exit 3
with one `SPY-STREAMER UNKNOWN - ...` line; `-t`, `-V`; perfdata with its fixed limits; `--probe` 0 or 1.
Every case runs the real command as Nagios or NRPE would: a fresh process, stdout parsed by the
monitoring-plugins output format."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import REPO_ROOT, settings, write_settings
from spy_streamer import __version__

STATUS_LINE = re.compile(r"SPY-STREAMER (OK|WARNING|CRITICAL|UNKNOWN) - ([^|]+?)(?: \| (.+))?")
# 'label'=value[UOM];[warn];[crit];[min];[max], trailing empty fields may be left out
PERFDATA_ITEM = re.compile(r"('[^'=]+'|[^' =]+)=(-?[0-9.]+)([a-zA-Z%]*)((?:;[^; ]*){0,4})")
CODES = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}


def parse(stdout: str) -> tuple[str, str, dict[str, dict]]:
    """(state, text, perfdata by label) from a plugin's output, which must be exactly one line."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    match = STATUS_LINE.fullmatch(lines[0])
    assert match, lines[0]
    state, text, perfdata = match.groups()
    return state, text, _perfdata(perfdata or "")


def _perfdata(text: str) -> dict[str, dict]:
    items = {}
    for item in text.split():
        match = PERFDATA_ITEM.fullmatch(item)
        assert match, f"not perfdata: {item!r}"
        label, value, unit, limits = match.groups()
        fields = (limits[1:].split(";") if limits else []) + [""] * 4
        items[label.strip("'")] = {"value": float(value), "unit": unit,
                                   **dict(zip(("warn", "crit", "min", "max"), fields[:4]))}
    return items


def check(*args: str, env: dict | None = None, cwd: Path | str = REPO_ROOT, timeout: float = 30):
    """The plugin as a fresh process: (exit code, state, text, perfdata), the stdout line checked."""
    environment = {"PATH": "/usr/bin:/bin", **(env or {})}
    result = subprocess.run([sys.executable, "-m", "spy_streamer", "check", *args], capture_output=True,
                            text=True, env=environment, cwd=cwd, timeout=timeout)
    state, text, perfdata = parse(result.stdout)
    return result.returncode, state, text, perfdata


def healthy_config(tmp_path: Path, **heartbeat) -> Path:
    """A config whose heartbeat says: idle while closed, written just now (OK), with `heartbeat` over it."""
    path = write_settings(tmp_path, settings(tmp_path))
    now = datetime.now(timezone.utc)
    document = {"status": "market_closed", "updated_at": now.isoformat(), "started_at": now.isoformat(),
                "heartbeat_interval_seconds": 300, "market_open": False,
                "next_open": (now + timedelta(days=1)).isoformat(),
                "next_close": (now + timedelta(days=1, hours=6)).isoformat(), "messages_total": 12,
                "rows_written": 10, "rows_pending": 0, "reconnects": 1, "queue_fill_ratio": 0.25,
                "memory_rss_bytes": 80_000_000, **heartbeat}
    (tmp_path / "heartbeat").mkdir(exist_ok=True)
    beat = tmp_path / "heartbeat" / "polygon.json"
    beat.write_text(json.dumps(document))
    written = datetime.fromisoformat(document["updated_at"]).timestamp()   # a file is written when it says
    os.utime(beat, (written, written))
    return path


@pytest.mark.parametrize("args", [["--bogus"], ["-t", "abc"], ["-t", "0"], ["--timeout"], ["stray"],
                                  ["--probe", "--bogus"]])
def test_a_usage_error_is_unknown_not_argparses_2(tmp_path, args):
    """Measured: exit 2 (CRITICAL to Nagios) and nothing on stdout."""
    code, state, text, _ = check(*args, "--config", str(healthy_config(tmp_path)))
    assert state == "UNKNOWN" and text.startswith("usage: ") and "--help" in text
    assert code == (1 if "--probe" in args else 3)


def test_minus_t_and_version(tmp_path):
    """Measured: `-t 5` was rejected; -V did not exist."""
    code, state, text, _ = check("-t", "5", "--config", str(healthy_config(tmp_path)))
    assert (code, state) == (0, "OK") and text.startswith("market_closed")
    for flag in ("-V", "--version"):
        result = subprocess.run([sys.executable, "-m", "spy_streamer", "check", flag], capture_output=True,
                                text=True, cwd=REPO_ROOT, timeout=30)
        assert (result.returncode, result.stdout) == (0, f"spy-streamer check {__version__}\n")


@pytest.mark.parametrize("how", ["option", "environment", "default"])
def test_a_missing_config_is_unknown_with_its_path(tmp_path, how):
    """Measured: exit 78 and nothing on stdout, however the config was named."""
    missing = tmp_path / "nowhere" / "settings.yaml"
    args, env, cwd = {"option": (["--config", str(missing)], {}, REPO_ROOT),
                      "environment": ([], {"SPY_STREAMER_CONFIG": str(missing)}, REPO_ROOT),
                      "default": ([], {}, tmp_path)}[how]
    code, state, text, perfdata = check(*args, env=env, cwd=cwd)
    assert (code, state, perfdata) == (3, "UNKNOWN", {})
    assert text.startswith("configuration error: ") and "settings.yaml" in text and "cannot read" in text


@pytest.mark.parametrize("content, words", [
    ("paths: [data\n  - x: :", "not valid YAML"),
    ("paths:\n  data_dirr: x\n", "paths.data_dirr: unknown key"),
    ("streaming:\n  monitoring:\n    heartbeat_interval_seconds: .inf\n", "heartbeat_interval_seconds"),
])
def test_a_bad_config_is_unknown_naming_the_problem(tmp_path, content, words):
    path = tmp_path / "settings.yaml"
    path.write_text(content)
    code, state, text, _ = check("--config", str(path))
    assert (code, state) == (3, "UNKNOWN") and words in text


def test_a_config_path_with_a_pipe_stays_one_line_without_perfdata(tmp_path):
    """`|` starts perfdata: a file name quoted in the text must not split the line."""
    code, state, text, perfdata = check("--config", str(tmp_path / "a|b" / "settings.yaml"))
    assert (code, state, perfdata) == (3, "UNKNOWN", {}) and "a/b" in text


@pytest.mark.parametrize("make", [
    lambda heartbeat: heartbeat.mkdir(),
    lambda heartbeat: heartbeat.write_bytes(b"\x00\xff not json"),
    lambda heartbeat: heartbeat.write_text("[1, 2]"),
])
def test_an_unreadable_heartbeat_is_unknown(tmp_path, make):
    path = write_settings(tmp_path, settings(tmp_path))
    (tmp_path / "heartbeat").mkdir()
    make(tmp_path / "heartbeat" / "polygon.json")
    code, state, text, _ = check("--config", str(path))
    assert (code, state) == (3, "UNKNOWN") and "heartbeat" in text


HANG = """
import time
import spy_streamer.monitoring.health_check as health_check
def load_heartbeat(path):  # a heartbeat on a disk that never answers
    time.sleep(60)
health_check.load_heartbeat = load_heartbeat
"""


@pytest.mark.parametrize("flag", ["-t", "--timeout"])
def test_its_own_timeout_is_unknown(tmp_path, flag):
    """A hung read (injected through sitecustomize: a disk that never answers) ends at the timeout."""
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(HANG)
    started = time.monotonic()
    code, state, text, _ = check(flag, "1", "--config", str(healthy_config(tmp_path)),
                                 env={"PYTHONPATH": f"{tmp_path / 'inject'}{os.pathsep}{REPO_ROOT}"})
    assert (code, state) == (3, "UNKNOWN") and text == "no answer within 1 s (--timeout)"
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("setup, expected", [
    (lambda tmp_path: ["--config", str(healthy_config(tmp_path))], 0),
    (lambda tmp_path: ["--config", str(healthy_config(tmp_path, status="reconnecting"))], 0),
    (lambda tmp_path: ["--config", str(healthy_config(tmp_path, status="failed"))], 1),
    (lambda tmp_path: ["--config", str(tmp_path / "missing.yaml")], 1),
    (lambda tmp_path: ["--config", str(write_settings(tmp_path, {"paths": {"bogus": 1}}))], 1),
    (lambda tmp_path: ["--config", str(write_settings(tmp_path, settings(tmp_path)))], 1),   # no heartbeat
])
@pytest.mark.parametrize("flag", ["--probe", "--docker"])
def test_probe_is_zero_or_one_and_nothing_else(tmp_path, setup, expected, flag):
    """Measured: 78 on a config error."""
    code, _, _, _ = check(flag, *setup(tmp_path))
    assert code == expected


def test_perfdata_carries_the_fixed_limits(tmp_path):
    """Measured: perfdata had no thresholds although `age` has a fixed critical limit (twice the interval
    plus a second; more than a minute in the future is CRITICAL too)."""
    code, state, _, perfdata = check("--config", str(healthy_config(tmp_path)))
    assert (code, state) == (0, "OK")
    age = perfdata["age"]
    assert age["unit"] == "s" and (age["warn"], age["crit"]) == ("", "-60:601") and -60 <= age["value"] < 601
    assert perfdata["queue_fill"] == {"value": 0.25, "unit": "", "warn": "0.5", "crit": "", "min": "0", "max": "1"}
    for label in ("messages", "rows", "reconnects"):
        assert (perfdata[label]["unit"], perfdata[label]["min"]) == ("c", "0")
    assert perfdata["rss"] == {"value": 80_000_000, "unit": "B", "warn": "", "crit": "", "min": "0", "max": ""}


@pytest.mark.parametrize("age, state", [(-61, "CRITICAL"), (-59, "OK"), (600, "OK"), (602, "CRITICAL")])
def test_the_age_limit_in_perfdata_is_the_one_check_applies(tmp_path, age, state):
    updated_at = (datetime.now(timezone.utc) - timedelta(seconds=age)).isoformat()
    _, seen, _, perfdata = check("--config", str(healthy_config(tmp_path, status="streaming", updated_at=updated_at)))
    low, high = (float(bound) for bound in perfdata["age"]["crit"].split(":"))
    assert seen == state == ("OK" if low <= perfdata["age"]["value"] <= high else "CRITICAL")
