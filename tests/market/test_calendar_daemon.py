"""Trust at the calendar's and the clock's seams, run as a user would: the daemon as a subprocess against the
fake Polygon (whose `upcoming` list is the poison or the truth), then `check`, `status`, `report` and
`compact` as subprocesses. The session window is around now in a zone where it is midday, every day."""
from __future__ import annotations

import json
import os
import time
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone

import pytest

from conftest import REPO_ROOT
from daemon_harness import recent_start_ms, stored_rows, wait_for
from fake_polygon import holiday_rows, session_timeline
from spy_streamer.market.calendar_store import KnownDays, load_known_days, save_known_days
from spy_streamer.market.special_days import SpecialDay
from test_heartbeat_monitor import Rig, config  # noqa: F401 (fixture)
from test_status_command import local_today, run_command



def run_without_key(*arguments: str, config_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("POLYGON_API_KEY", "SPY_STREAMER_CONFIG")}
    return subprocess.run([sys.executable, "-m", "spy_streamer", *arguments, "--config", str(config_path)],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)


def poison_rows(first: date, days: int) -> list[dict]:
    return [row for n in range(days) for row in holiday_rows((first + timedelta(n)).isoformat(), "Poison")]


def save_closed(tmp_path, days: list[date], name: str = "Poison") -> None:
    save_known_days(tmp_path / "heartbeat" / "calendar.json", KnownDays({day: SpecialDay(day, name) for day in days}))


def alive_and_beating(run, seconds: float = 2.0) -> dict:
    """The daemon still runs after `seconds` and its heartbeat keeps being rewritten."""
    first = wait_for(run.heartbeat, timeout=15, what="a heartbeat")
    time.sleep(seconds)
    assert run.daemon.process.poll() is None, run.daemon.output()
    latest = run.heartbeat()
    assert latest["updated_at"] > first["updated_at"]
    return latest


def stores_rows(run, fake) -> None:
    assert fake.wait_for_subscribers(1, timeout=15)
    fake.push(session_timeline(recent_start_ms(120), 60))
    wait_for(lambda: (run.heartbeat() or {}).get("rows_written") == 60, timeout=15, what="60 rows stored")
    assert len(stored_rows(run.data_dir)) == 60


def test_a_month_of_closures_is_a_named_state_and_the_truth_ends_it(tmp_path, fake, start):
    """Seen: an answer listing the next 35-70 days as closed made `run` and `status` crash on every start
    (`RuntimeError: no market session in the next 30 days`, exit 1), even after Polygon answered the truth."""
    fake.holidays = poison_rows(local_today(), 40)
    run = start()
    beat = alive_and_beating(run)
    assert beat["session_in_sight"] is False and beat["next_open"] is None
    assert run.events("no_session_in_sight")          # (a session begun before the first refresh ended)
    wait_for(lambda: fake.active_connections() == 0, what="no connection")
    check = run_command("check", run.config_path)
    assert check.returncode == 2 and "no session in the next 30 days" in check.stdout, check.stdout
    status = run_command("status", run.config_path, api_key=None)
    assert status.returncode == 0 and "no session in the next 30 days" in status.stdout, status.stderr
    assert f"{local_today()}: Polygon says closed (Poison)" not in status.stdout    # no rules: none to contradict
    for command in (["report"], ["compact", "--date", local_today().isoformat()]):
        result = run_without_key(*command, config_path=run.config_path)
        assert "Traceback" not in result.stderr and result.returncode in (0, 1), result.stderr
    fake.holidays = []                                     # Polygon answers the truth again
    run.restart()                                          # (a running daemon learns it within half an hour)
    stores_rows(run, fake)
    assert load_known_days(run.heartbeat_dir / "calendar.json").days == {}


def test_a_closure_retracted_by_the_next_answer_no_longer_stops_capture(tmp_path, fake, start):
    """Seen: one answer listed today closed; after Polygon answered `[]` a restart still stored 0 rows."""
    save_closed(tmp_path, [local_today()], "Wrongly closed")
    fake.holidays = []
    run = start()
    stores_rows(run, fake)
    assert run.daemon.stop()[0] == 0


@pytest.mark.parametrize("content", ["fifo", "huge", "malformed"])
def test_an_unusable_calendar_file_is_one_warning_and_blocks_nothing(tmp_path, fake, start, content):
    """Seen: `calendar.json` replaced by a FIFO hung `run` before its first log line."""
    path = tmp_path / "heartbeat" / "calendar.json"
    path.parent.mkdir(parents=True)
    if content == "fifo":
        os.mkfifo(path)
    else:
        path.write_text(json.dumps({"days": [{"date": "2026-01-02", "status": "closed"}] * 40_000})
                        if content == "huge" else '{"days": [')
    fake.set_rest_failure("/v1/marketstatus/upcoming", "500")   # the file is not replaced by a refresh
    run = start()
    stores_rows(run, fake)
    assert len(run.events("calendar_cache_unreadable")) == 1
    assert run.daemon.stop()[0] == 0


def test_every_row_rejected_makes_check_critical_with_the_reasons(fake, start):
    """Seen: every bar rejected as late (rows_written frozen) while `check` said OK."""
    run = start()
    assert fake.wait_for_subscribers(1, timeout=15)
    yesterday = recent_start_ms(86400 + 600)

    def critical():
        fake.push(session_timeline(yesterday + int(time.time()) % 3600 * 1000, 20))   # whole seconds: valid bars
        return run_command("check", run.config_path).stdout.startswith("SPY-STREAMER CRITICAL")

    wait_for(critical, timeout=20, interval=0.3, what="check CRITICAL")
    line = run_command("check", run.config_path).stdout
    assert "every row is rejected" in line and "late " in line, line
    assert run.heartbeat()["rows_written"] == 0


def test_a_daemon_clock_an_hour_behind_is_clock_skew_not_a_hung_daemon(config):
    """Seen: a clock 1 h behind made `check` say "heartbeat is 3600 s old (daemon hung or dead)" while the
    daemon was capturing. The heartbeat here is written by a monitor whose clock is an hour behind."""
    rig = Rig(config, datetime.now(timezone.utc) - timedelta(hours=1))
    rig.monitor.session_started()
    rig.reader.state, rig.reader.connected = "streaming", True
    rig.monitor.send_heartbeat()
    check = run_command("check", config.source)
    assert "clock skew" in check.stdout and "hung" not in check.stdout, check.stdout
    assert "behind this host's" in check.stdout and check.returncode == 1
    status = run_command("status", config.source, api_key=None)
    assert "CLOCK SKEW: the daemon's clock is 1 h 0 min behind" in status.stdout and "STALE" not in status.stdout
