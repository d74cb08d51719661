"""The task's six scenarios, run as a user would: scripts/run_streamer.sh as a subprocess against the fake
Polygon on 127.0.0.1, then SIGTERM, and the Parquet, the heartbeat and the log read back."""
from __future__ import annotations

import signal
import statistics
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import TEST_API_KEY, write_settings
from daemon_harness import (Daemon, events_named, log_events, midday_zone, recent_start_ms, stored_keys,
                            stored_rows, wait_for, window_settings)
from fake_polygon import holiday_rows, session_timeline
from spy_streamer.data_sources.client_library import CHOICE_ENV, DISTRIBUTIONS
from test_status_command import iso_z, run_command


# 1. Started outside market hours: refuses, no connection; SIGTERM -> exit 0.
def test_outside_market_hours_opens_no_connection(start, fake, record_figure):
    run = start(open_now=False)
    wait_for(lambda: run.events("market_closed"), timeout=15, what="market_closed log line")
    time.sleep(1.0)
    assert fake.connections_total == 0
    (closed,) = run.events("market_closed")
    assert "next_open" in closed
    assert run.heartbeat()["status"] == "market_closed"
    code, seconds = run.daemon.stop()
    assert code == 0 and seconds < 3
    assert run.heartbeat()["status"] == "stopped"
    assert fake.connections_total == 0
    record_figure("connections while closed", fake.connections_total)
    record_figure("shutdown seconds", round(seconds, 2))


# 2. Started in market hours: connects, subscribes A.SPY, every row sent is stored once. On either client
# library: polygon-api-client (the default) and its successor massive, both installed with the test extras.
@pytest.mark.parametrize("client", ["polygon", "massive"])
def test_in_market_hours_stores_every_row_once(start, fake, record_figure, monkeypatch, client):
    monkeypatch.setenv(CHOICE_ENV, client)   # the daemon subprocess inherits it
    run = start()
    assert fake.wait_for_subscribers(1, timeout=15)
    assert run.events("started")[0]["client"].startswith(DISTRIBUTIONS[client] + " ")
    # Arrow's allocations, the Parquet writer's too, come from malloc: mimalloc's per-thread pages had taken
    # the peak RSS of a 1M-event burst past 200 MB (cli._arrow_memory_from_malloc).
    assert run.events("started")[0]["arrow_memory_pool"] == "system"
    assert fake.subscriptions == ["A.SPY"]
    timeline = session_timeline(recent_start_ms(300), 3000)
    fake.push(timeline[:1000], frame_size=1)        # Polygon's usual one bar per frame
    fake.push(timeline[1000:], frame_size=200)
    fake.push(timeline[:50], frame_size=10)         # Polygon sometimes repeats bars
    wait_for(lambda: (run.heartbeat() or {}).get("rows_written") == 3000, timeout=10, what="3000 rows")
    # Regression: pyarrow loaded pandas (installed here) at its first conversion: +59 MB resident.
    assert "/pandas/" not in Path(f"/proc/{run.daemon.process.pid}/maps").read_text()
    code, seconds = run.daemon.stop()
    assert code == 0 and seconds < 3
    rows = stored_rows(run.data_dir)
    assert len(rows) == 3000
    assert sorted(stored_keys(run.data_dir)) == [("SPY", event["s"]) for event in timeline]
    first = min(rows, key=lambda row: row["start"])
    assert (first["open"], first["close"], first["volume"], first["source"]) == \
        (timeline[0]["o"], timeline[0]["c"], timeline[0]["v"], "ws")
    final = run.heartbeat()
    assert final["status"] == "stopped" and final["duplicates"] == 50 and final["rows_written"] == 3000
    record_figure("bars sent (distinct)", len(timeline))
    record_figure("rows stored", len(rows))
    record_figure("repeats dropped", final["duplicates"])
    record_figure("shutdown seconds", round(seconds, 2))


# 3. The heartbeat file is rewritten every interval.
def test_heartbeat_updates_every_interval(start, fake, record_figure):
    run = start(streaming={"monitoring": {"heartbeat_interval_seconds": 0.4}})
    assert fake.wait_for_subscribers(1, timeout=15)
    time.sleep(0.5)  # past the beats written at start and at the open
    stamps = set()
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        heartbeat = run.heartbeat()
        if heartbeat:
            stamps.add(heartbeat["updated_at"])
        time.sleep(0.02)
    instants = sorted(datetime.fromisoformat(stamp) for stamp in stamps)
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(instants, instants[1:])]
    assert len(stamps) >= 5          # ~6 expected in 2.5 s at 0.4 s
    assert 0.3 <= statistics.median(gaps) <= 0.6
    record_figure("heartbeat interval configured (s)", 0.4)
    record_figure("heartbeat interval seen, median (s)", round(statistics.median(gaps), 3))
    heartbeat = run.heartbeat()
    assert heartbeat["status"] == "streaming" and heartbeat["connected"] is True
    assert heartbeat["market_open"] is True and heartbeat["memory_rss_bytes"] > 0
    assert run.daemon.stop()[0] == 0


# 4. A stall alerts once, the heartbeat says stalled, check exits 2; messages resuming recover.
def test_stall_alerts_once_and_recovers(start, fake, record_figure):
    run = start(streaming={"monitoring": {"alert_threshold_seconds": 1.5, "heartbeat_interval_seconds": 0.5}})
    assert fake.wait_for_subscribers(1, timeout=15)
    fake.push(session_timeline(recent_start_ms(), 5))
    wait_for(lambda: run.events("stream_stalled"), timeout=6, what="stall alert")
    assert wait_for(lambda: (run.heartbeat() or {}).get("status") == "stalled", timeout=3, what="stalled heartbeat")
    check = run_command("check", run.config_path)
    assert check.returncode == 2 and check.stdout.startswith("SPY-STREAMER CRITICAL - ") and "stalled" in check.stdout
    time.sleep(2.0)  # still silent: no second alert for the same stall
    (alert,) = run.events("stream_stalled")
    assert alert["level"] == "ERROR"
    assert 1.5 <= alert["silence_seconds"] <= 3.0   # threshold 1.5 s, checked at least once a second
    record_figure("alert threshold (s)", 1.5)
    record_figure("silence when the alert fired (s)", alert["silence_seconds"])
    record_figure("alerts for one stall", 1)
    record_figure("check exit code while stalled", check.returncode)
    # The stall forced a reconnect (a silent socket is often a dead one); data flows again.
    assert fake.wait_for_subscribers(1, timeout=10)
    fake.push(session_timeline(recent_start_ms(60), 5))
    wait_for(lambda: run.events("stream_recovered"), timeout=5, what="recovery")
    assert run.daemon.stop()[0] == 0


# 5. An early close a few seconds away: connection closed after a short grace, final flush,
#    heartbeat market_closed, and the process stays alive and asleep.
def test_early_close_ends_session_and_sleeps(start, fake, record_figure):
    now = datetime.now(timezone.utc)
    today = now.astimezone(midday_zone(now)).date().isoformat()
    close_at = (now + timedelta(seconds=4)).replace(microsecond=0)  # Polygon's rows carry whole seconds
    fake.holidays = holiday_rows(today, "Half Day", "early-close",
                                 iso_z(now - timedelta(minutes=10)), iso_z(close_at))
    run = start()
    assert fake.wait_for_subscribers(1, timeout=10)
    before_close = session_timeline(recent_start_ms(60), 30)
    fake.push(before_close)
    (ended,) = wait_for(lambda: run.events("session_ended"), timeout=20, what="session end at the early close")
    assert fake.active_connections() == 0
    after_close = (datetime.fromisoformat(ended["timestamp"]) - close_at).total_seconds()
    assert 5 <= after_close <= 7  # the close plus the 5 s grace for the last bars, then stopped
    record_figure("session end after the early close (s)", round(after_close, 2))
    assert len(stored_keys(run.data_dir)) == 30
    wait_for(lambda: [path.name for path in run.data_dir.glob("A/*/*.parquet")] == [f"day-{today}.parquet"],
             what="the day compacted after the close")
    assert run.heartbeat()["status"] == "market_closed"
    wait_for(lambda: run.events("market_closed"), timeout=3, what="market_closed line")
    time.sleep(1.0)
    assert run.daemon.process.poll() is None  # asleep until the next open, not exited
    assert fake.connections_total == 1
    assert run.daemon.stop()[0] == 0


# 6. Log size: thousands of messages, a few dozen lines; no message, tick or API key in any line.
def test_log_stays_small_and_clean(start, fake, record_figure):
    run = start(streaming={"monitoring": {"heartbeat_interval_seconds": 2}})
    assert fake.wait_for_subscribers(1, timeout=15)
    fake.push(session_timeline(recent_start_ms(300), 3000), frame_size=1)
    wait_for(lambda: (run.heartbeat() or {}).get("rows_written") == 3000, timeout=15, what="3000 rows")
    assert run.daemon.stop()[0] == 0
    text = run.log_file.read_text()
    lines = text.splitlines()
    assert len(lines) <= 30, lines
    record_figure("messages streamed", 3000)
    record_figure("log lines", len(lines))
    record_figure("log bytes", len(text.encode()))
    assert TEST_API_KEY not in text
    assert '"ev"' not in text and '"sym"' not in text and "\\\"ev\\\"" not in text
    assert all(entry["event"] and entry["level"] and entry["timestamp"] for entry in log_events(run.log_file))
    stdout, stderr = run.daemon.output()
    assert TEST_API_KEY not in stdout + stderr


def test_sigint_stops_gracefully(start, fake):
    run = start()
    assert fake.wait_for_subscribers(1, timeout=15)
    fake.push(session_timeline(recent_start_ms(), 20))
    code, seconds = run.daemon.stop(signal.SIGINT)
    assert code == 0 and seconds < 3
    assert len(stored_keys(run.data_dir)) == 20  # the final flush kept what the batch timer had not


def test_rejected_key_exits_78_without_retrying(tmp_path, fake):
    config = write_settings(tmp_path, window_settings(tmp_path, fake))
    daemon = Daemon(config, api_key="wrong-key")
    assert daemon.wait_exit(timeout=20) == 78
    assert len(fake.auth_attempts) == 1
    assert events_named(tmp_path / "log" / "spy_streamer.log", "auth_failed")
    assert "wrong-key" not in (tmp_path / "log" / "spy_streamer.log").read_text()


def test_missing_key_exits_78(tmp_path, fake):
    config = write_settings(tmp_path, window_settings(tmp_path, fake))
    daemon = Daemon(config, api_key="")
    assert daemon.wait_exit(timeout=20) == 78
    _, stderr = daemon.output()
    assert "POLYGON_API_KEY is not set" in stderr and "Traceback" not in stderr
