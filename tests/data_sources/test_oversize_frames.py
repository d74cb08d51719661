"""Large frames (issue 16, section 8), through the real client against the fake Polygon and the real daemon.

Measured: one frame over 1 MiB (9,000 trades) made the client drop the connection; nothing was counted,
`check` stayed OK and nothing was backfilled.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq

from conftest import REPO_ROOT
from daemon_harness import recent_start_ms, wait_for
from fake_polygon import trade_event, trade_result
from spy_streamer.data_sources.polygon_client import MAX_FRAME_BYTES
from spy_streamer.storage.layout import visible_parquet_files
from test_heartbeat_monitor import config  # noqa: F401 (fixture)

TRADES = {"polygon": {"subscriptions": ["T.SPY"]}}


def stored_trade_ids(data_dir) -> list[str]:
    """The trade ids in the visible files (a folder without a file yet holds none)."""
    files = [path for folder in sorted((data_dir / "T").glob("date=*")) for path in visible_parquet_files(folder)]
    return [trade for path in files for trade in pq.read_table(path, columns=["trade_id"]).column("trade_id").to_pylist()]


def test_frames_up_to_16_mib_are_read():
    assert MAX_FRAME_BYTES >= 16 * 2**20


def test_a_2_mib_frame_is_read_and_stored_in_full(start, fake):
    run = start(**TRADES)
    assert fake.wait_for_subscribers(1, timeout=15)
    t0 = recent_start_ms(300)
    trades = [trade_event(t0 + i // 10, trade_id=str(i)) for i in range(20_000)]
    assert len(json.dumps(trades)) > 2 * 2**20
    assert fake.push(trades, frame_size=len(trades)) == len(trades)
    wait_for(lambda: len(stored_trade_ids(run.data_dir)) == len(trades), timeout=60, what="every trade of the frame")
    heartbeat = run.heartbeat()
    assert heartbeat["reconnects"] == 0 and heartbeat["frames_too_large"] == 0
    assert run.daemon.stop()[0] == 0


def run_check(config_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spy_streamer", "check", "--config", str(config_path)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)


def test_a_frame_over_the_limit_is_counted_warned_and_its_window_backfilled(start, fake):
    run = start(**TRADES)
    assert fake.wait_for_subscribers(1, timeout=15)
    t0 = recent_start_ms(300)
    before = [trade_event(t0 + i, trade_id=f"b{i}") for i in range(10)]
    lost = [trade_event(t0 + 100 + i, trade_id=f"l{i}") for i in range(100)]
    after = [trade_event(t0 + 1000 + i, trade_id=f"a{i}") for i in range(10)]
    fake.add_ticks("trades", "SPY", [trade_result(event) for event in before + lost + after])
    fake.push(before, frame_size=10)
    wait_for(lambda: len(stored_trade_ids(run.data_dir)) == 10, what="the first trades")

    # Valid JSON, over the limit by its padding: the 100 trades in it never arrive live.
    fake.push_raw("[" + ",".join(json.dumps(event) for event in lost) + " " * MAX_FRAME_BYTES + "]")
    wait_for(lambda: (run.heartbeat() or {}).get("frames_too_large") == 1, timeout=20, what="the refused frame counted")
    wait_for(lambda: fake.connections_total >= 2, timeout=30, what="a reconnect")
    assert fake.wait_for_subscribers(1, timeout=30)
    fake.push(after, frame_size=10)

    wait_for(lambda: len(stored_trade_ids(run.data_dir)) == 120, timeout=60, what="the lost window backfilled")
    assert sorted(stored_trade_ids(run.data_dir)) == sorted(event["i"] for event in before + lost + after)
    assert run.events("frame_too_large")
    wait_for(lambda: (run.heartbeat() or {}).get("rows_backfilled", 0) >= 100, what="the backfill counted")
    check = run_check(run.config_path)
    assert check.returncode == 1 and "over the size limit" in check.stdout, check.stdout
    assert run.daemon.stop()[0] == 0


def test_check_warns_for_an_hour_after_a_refused_frame(config):
    """The heartbeat's own clock (FakeClock) decides: WARNING within the hour, OK after it."""
    from test_health_check import streaming, verdict_after
    from test_heartbeat_monitor import TUESDAY_11, Rig
    from spy_streamer.monitoring.health_check import OK, WARNING
    rig = streaming(Rig(config, TUESDAY_11))
    rig.reader.frames_too_large, rig.reader.last_frame_too_large_at = 1, rig.clock.now()
    rig.clock.advance(3599)
    rig.monitor.send_heartbeat()
    assert verdict_after(rig, 1).code == WARNING and "over the size limit" in verdict_after(rig, 1).line()
    rig.clock.advance(2)
    rig.monitor.send_heartbeat()
    assert verdict_after(rig, 1).code == OK
