"""`spy-streamer demo` / `scripts/run_streamer.sh --demo`: the real daemon against the bundled replay, no key,
nothing of the user's touched; the replay's live bars; the missing-key error that points to the demo."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from websockets.sync.client import connect

from conftest import REPO_ROOT
from daemon_harness import wait_for
from spy_streamer import cli
from spy_streamer.demo.launch import market_hours, midday_zone, new_demo_folder, upcoming_rows
from spy_streamer.demo.replay_server import FakePolygon

PATH_LINE = re.compile(r"^  (config|parquet|heartbeat|log):\s+(\S+)", re.MULTILINE)


def demo_env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env.pop("POLYGON_API_KEY", None)
    return env


def snapshot(*roots: Path) -> dict:
    """Every file under `roots` with its size and mtime: what the user owns, to prove the demo left it alone."""
    files = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*")) if root.exists() else []:
            if path.is_file():
                stat = path.stat()
                files[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return files


def test_demo_script_records_end_to_end_and_prints_report_and_status(tmp_path):
    users = (REPO_ROOT / "config" / "settings.yaml", REPO_ROOT / "var" / "data", REPO_ROOT / "var" / "heartbeat",
             REPO_ROOT / "var" / "log")
    before = snapshot(*users)
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "run_streamer.sh"), "--demo", "--seconds", "4",
         "--output", str(tmp_path / "demo")],
        env=demo_env(SPY_STREAMER_CONFIG=str(tmp_path / "no-such-config.yaml")),
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    paths = {name: Path(value) for name, value in PATH_LINE.findall(out)}
    assert set(paths) == {"config", "parquet", "heartbeat", "log"}, out
    folder = (tmp_path / "demo" / "latest").resolve()
    for path in paths.values():
        assert path.exists() and path.is_relative_to(folder), path

    rows = ds.dataset(paths["parquet"], format="parquet", partitioning="hive").to_table().to_pylist()
    assert {row["symbol"] for row in rows} == {"SPY", "QQQ", "IWM"}
    assert "rest" in {row["source"] for row in rows}  # the minutes before the daemon started, backfilled
    spy = [row for row in rows if row["symbol"] == "SPY"]
    assert len(spy) >= 60 and all(400 < row["close"] < 800 and row["low"] <= row["high"] for row in spy)
    assert json.loads(paths["heartbeat"].read_text())["status"] == "stopped"
    assert "coverage of" in out and "rows:" in out          # report
    assert "market: OPEN" in out and "heartbeat: pid" in out  # status
    assert "exit code 0" in out
    assert snapshot(*users) == before


def test_ctrl_c_stops_the_demo_gracefully_and_still_reports(tmp_path, capsys):
    demo = subprocess.Popen([sys.executable, "-m", "spy_streamer", "demo", "--seconds", "120",
                             "--output", str(tmp_path)], env=demo_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        heartbeat = tmp_path / "latest" / "heartbeat" / "polygon.json"
        wait_for(lambda: streaming(heartbeat), timeout=20, what="live bars and rows written")
        # compose.yaml's healthcheck, on the running demo
        assert cli.main(["check", "--probe", "--config", str(tmp_path / "latest" / "settings.yaml")]) == 0
        assert capsys.readouterr().out.startswith("SPY-STREAMER OK")
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=20)
    finally:
        demo.kill()
    assert demo.returncode == 0, out + err
    assert "stopping early" in out and "exit code 0" in out and "coverage of" in out
    assert json.loads(heartbeat.read_text())["status"] == "stopped"
    rows = ds.dataset(tmp_path / "latest" / "data" / "A", format="parquet", partitioning="hive").to_table()
    assert set(rows.column("source").to_pylist()) == {"ws", "rest"}  # live bars, and the minutes before backfilled


def streaming(heartbeat: Path) -> bool:
    try:
        beat = json.loads(heartbeat.read_text())
    except (OSError, ValueError):
        return False
    return beat["status"] == "streaming" and beat["messages_total"] >= 2 and beat["rows_written"] > 0


def test_run_without_a_key_points_to_the_demo(config_file, monkeypatch, capsys):
    monkeypatch.delenv("POLYGON_API_KEY", raising=False)
    assert cli.main(["run", "--config", str(config_file())]) == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "POLYGON_API_KEY is not set" in err
    assert "scripts/run_streamer.sh --demo" in err


def test_replay_streams_live_random_walk_bars_and_serves_their_history():
    with FakePolygon(api_key="k") as replay:
        since_ms = (int(time.time()) - 10) * 1000
        replay.replay_live(("SPY", "QQQ"), since_ms=since_ms, delay_seconds=0.0, seed=1)
        with connect(f"ws://{replay.ws_feed}/stocks") as ws:
            assert json.loads(ws.recv())[0]["status"] == "connected"
            ws.send(json.dumps({"action": "auth", "params": "k"}))
            assert json.loads(ws.recv())[0]["status"] == "auth_success"
            ws.send(json.dumps({"action": "subscribe", "params": "A.SPY"}))
            assert json.loads(ws.recv())[0]["message"] == "subscribed to: A.SPY"
            bars = json.loads(ws.recv(timeout=3)) + json.loads(ws.recv(timeout=3))
        url = f"{replay.rest_base_url}/v2/aggs/ticker/SPY/range/1/second/{since_ms}/{bars[-1]['s']}?apiKey=k"
        history = json.load(urllib.request.urlopen(url, timeout=5))["results"]
    assert [bar["sym"] for bar in bars] == ["SPY", "SPY"] and bars[1]["s"] - bars[0]["s"] == 1000
    assert abs(bars[0]["s"] / 1000 - time.time()) < 5
    for bar in bars:
        assert bar["l"] <= min(bar["o"], bar["c"]) <= max(bar["o"], bar["c"]) <= bar["h"]
        assert 500 < bar["c"] < 700 and bar["l"] <= bar["vw"] <= bar["h"] and bar["av"] >= bar["v"] > 0
    assert [bar["t"] for bar in history] == list(range(since_ms, bars[-1]["s"] + 1, 1000))
    assert history[-1]["c"] == bars[-1]["c"]


@pytest.mark.parametrize("utc_hour", range(24))
def test_demo_session_is_open_now_at_any_hour(utc_hour):
    now = datetime(2026, 7, 4, utc_hour, 59, 30, tzinfo=timezone.utc)  # a holiday, and near a midnight somewhere
    hours = market_hours(now, seconds=3600)
    local = now.astimezone(midday_zone(now))
    assert local.hour == 12 and hours["holiday_rules"] == "none" and hours["active_days"] == list(range(7))
    assert hours["start_time"] <= f"{local:%H:%M}" < hours["end_time"] == "14:09"


def test_upcoming_rows_are_polygon_shaped_and_leave_the_demo_day_open():
    rows = upcoming_rows(date(2026, 11, 25))
    days = sorted({row["date"] for row in rows})
    assert days[0] == "2026-11-27" and "2026-11-26" not in days  # Thanksgiving is tomorrow: left out
    assert {"date": "2026-12-25", "exchange": "NYSE", "name": "Christmas Day", "status": "closed"} in rows
    early = next(row for row in rows if row["date"] == "2026-11-27" and row["exchange"] == "NASDAQ")
    assert early["status"] == "early-close" and early["close"] == "2026-11-27T18:00:00.000Z"


def test_each_demo_gets_a_fresh_folder_and_latest_points_at_it(tmp_path):
    first, second = new_demo_folder(tmp_path), new_demo_folder(tmp_path)
    assert first != second and first.parent == second.parent == tmp_path
    assert (tmp_path / "latest").resolve() == second and os.readlink(tmp_path / "latest") == second.name
