"""Paths in the config file are relative to the config file's folder, so the daemon and every command
agree from any working directory (issue 18: run from `/`, as NRPE or cron do, `check` said UNKNOWN
"no heartbeat" while the daemon was healthy)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO_ROOT, TEST_API_KEY, settings
from daemon_harness import wait_for, window_settings
from spy_streamer.config import load_config

RELATIVE_PATHS = {"data_dir": "../out/data", "heartbeat_dir": "../out/heartbeat", "log_file": "../out/log/spy.log"}


def write_config(folder: Path, document: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "settings.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_relative_paths_start_from_the_config_files_folder(tmp_path, monkeypatch):
    path = write_config(tmp_path / "conf", settings(tmp_path) | {"paths": RELATIVE_PATHS})
    monkeypatch.chdir("/")
    paths = load_config(path).paths
    assert (paths.data_dir, paths.heartbeat_dir, paths.log_file) == \
        (tmp_path / "out" / "data", tmp_path / "out" / "heartbeat", tmp_path / "out" / "log" / "spy.log")


def test_the_same_file_gives_the_same_paths_from_any_working_directory(tmp_path, monkeypatch):
    path = write_config(tmp_path / "conf", settings(tmp_path) | {"paths": RELATIVE_PATHS})
    seen = set()
    for cwd in ("/", tmp_path, tmp_path / "conf"):
        monkeypatch.chdir(cwd)
        seen.add(load_config(Path(os.path.relpath(path))).paths)   # the config path itself as the user typed it
    assert len(seen) == 1


def test_defaults_and_the_warehouse_start_there_too_and_absolute_paths_stay(tmp_path, monkeypatch):
    document = settings(tmp_path) | {"paths": {"log_file": str(tmp_path / "abs.log")},
                                     "storage": {"kind": "iceberg", "warehouse": "lake"}}
    path = write_config(tmp_path / "conf", document)
    monkeypatch.chdir("/")
    config = load_config(path)
    assert config.paths.data_dir == tmp_path / "conf" / "var" / "data"
    assert config.paths.log_file == tmp_path / "abs.log"
    assert config.storage.warehouse == str(tmp_path / "conf" / "lake")


def test_the_shipped_config_writes_under_the_repos_var_from_anywhere(monkeypatch):
    monkeypatch.chdir("/")
    config = load_config(REPO_ROOT / "config" / "settings.yaml")
    var = REPO_ROOT.resolve() / "var"
    assert (config.paths.data_dir, config.paths.heartbeat_dir, config.paths.log_file) == \
        (var / "data", var / "heartbeat", var / "log" / "spy_streamer.log")
    assert config.storage.warehouse == str(var / "lake")


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spy_streamer", *args], capture_output=True, text=True,
                          env=env, cwd="/", timeout=60)


def test_daemon_and_commands_run_from_root_agree(tmp_path, fake):
    """The daemon started from one folder writes beside its config; check, status and report run from `/`
    (as NRPE and cron do) read it. (The daemon does not start from `/` itself: the old code would then
    have written to /out.)"""
    path = write_config(tmp_path / "conf", window_settings(tmp_path, fake) | {"paths": RELATIVE_PATHS})
    env = {key: value for key, value in os.environ.items() if key != "SPY_STREAMER_CONFIG"}
    env |= {"POLYGON_API_KEY": TEST_API_KEY, "PYTHONPATH": str(REPO_ROOT)}
    (tmp_path / "a" / "b").mkdir(parents=True)
    daemon = subprocess.Popen([sys.executable, "-m", "spy_streamer", "run", "--config", str(path)],
                              cwd=tmp_path / "a" / "b", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        heartbeat = tmp_path / "out" / "heartbeat" / "polygon.json"
        wait_for(lambda: heartbeat.exists() and json.loads(heartbeat.read_text())["status"] == "streaming",
                 timeout=30, what="a streaming heartbeat beside the config")
        check = cli("check", env=env | {"SPY_STREAMER_CONFIG": str(path)})
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.startswith("SPY-STREAMER OK - streaming")
        status = json.loads(cli("status", "--json", "--config", str(path), env=env).stdout)
        assert status["heartbeat"]["status"] == "streaming" and status["heartbeat_problem"] is None
        report = cli("report", "--config", str(path), env=env)
        assert report.returncode == 0, report.stderr
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=20) == 0, daemon.stderr.read()
    assert (tmp_path / "out" / "log" / "spy.log").exists() and not (tmp_path / "a" / "out").exists()
