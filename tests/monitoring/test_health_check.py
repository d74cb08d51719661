"""`spy-streamer check` tells the truth: heartbeats written by a real HeartbeatMonitor on a FakeClock,
judged at chosen instants. Nothing here depends on when the suite runs."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import timedelta

import pytest

from conftest import REPO_ROOT, ny
from spy_streamer.monitoring.health_check import (CRITICAL, OK, UNKNOWN, WARNING, HeartbeatUnreadable, evaluate_health,
                                       load_heartbeat)
from test_heartbeat_monitor import FRIDAY_EVENING, TUESDAY_11, Rig, config  # noqa: F401 (fixture)

LINE = re.compile(r"^SPY-STREAMER (OK|WARNING|CRITICAL|UNKNOWN) - [^\n|]+( \| [^\n]+)?$")


def verdict_after(rig: Rig, seconds: float, **kwargs):
    verdict = evaluate_health(load_heartbeat(rig.path), rig.clock.now() + timedelta(seconds=seconds), **kwargs)
    assert LINE.match(verdict.line()), verdict.line()
    return verdict


def streaming(rig: Rig) -> Rig:
    rig.monitor.session_started()
    rig.reader.state, rig.reader.connected = "streaming", True
    rig.monitor.send_heartbeat()
    return rig


def test_no_heartbeat_is_unknown(config):
    rig = Rig(config, TUESDAY_11)
    verdict = evaluate_health(load_heartbeat(rig.path), rig.clock.now())
    assert verdict.code == UNKNOWN == 3 and "no heartbeat" in verdict.line()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"status": "streaming"}', "\udcff", "[" * 5000])
def test_garbage_heartbeat_is_unknown(config, text):
    rig = Rig(config, TUESDAY_11)
    rig.path.parent.mkdir(parents=True, exist_ok=True)
    rig.path.write_bytes(text.encode("utf-8", "surrogateescape"))
    try:
        verdict = evaluate_health(load_heartbeat(rig.path), rig.clock.now())
    except HeartbeatUnreadable:
        return
    assert verdict.code == UNKNOWN


def test_healthy_streaming_is_ok_with_perfdata(config):
    verdict = verdict_after(streaming(Rig(config, TUESDAY_11)), 10)
    assert verdict.code == OK == 0
    perf = dict(item.split("=") for item in verdict.perfdata.split())
    assert set(perf) == {"age", "messages", "rows", "pending", "reconnects", "dropped", "write_errors", "queue_fill",
                         "rss"}
    interval = Rig(config, TUESDAY_11).monitor.interval_seconds
    assert perf["age"] == f"10.0s;;-60:{2 * interval + 1:g}" and perf["rows"] == "0c;;;0" and "B;;;0" in perf["rss"]


def test_idle_while_closed_is_ok(config):
    rig = Rig(config, FRIDAY_EVENING)
    rig.monitor.send_heartbeat()
    assert verdict_after(rig, 30).code == OK


def test_stalled_is_critical(config):
    rig = Rig(config, TUESDAY_11)
    rig.monitor.session_started()
    rig.clock.advance(901)
    assert rig.monitor.check_stalled_stream() is True
    verdict = verdict_after(rig, 1)
    assert verdict.code == CRITICAL == 2 and "stalled" in verdict.text


def test_stale_heartbeat_is_critical_day_and_night(config):
    rig = streaming(Rig(config, TUESDAY_11))
    assert verdict_after(rig, 600).code == OK
    verdict = verdict_after(rig, 602)                    # more than 2 x 300 s
    assert verdict.code == CRITICAL and "old" in verdict.text
    night = Rig(config, FRIDAY_EVENING)
    night.monitor.send_heartbeat()
    assert verdict_after(night, 700).code == CRITICAL     # a dead daemon is a problem at night too


def test_a_heartbeat_from_the_future_is_critical(config):
    """Seen: `age=-97830735s` passed as OK."""
    rig = streaming(Rig(config, TUESDAY_11))
    assert verdict_after(rig, -30).code == OK             # a little clock jitter is fine
    verdict = verdict_after(rig, -97830735)
    assert verdict.code == CRITICAL and "future" in verdict.text


def test_stopped_is_ok_while_closed_and_critical_once_the_market_opens(config):
    rig = Rig(config, FRIDAY_EVENING)
    rig.monitor.send_heartbeat(status="stopped")
    assert verdict_after(rig, 3600).code == OK
    monday_10 = (62 + 4) * 3600                            # Friday 18:00 -> Monday 10:00 (the heartbeat knows)
    verdict = verdict_after(rig, monday_10)
    assert verdict.code == CRITICAL and "stopped" in verdict.text


def test_stopped_long_ago_asks_the_calendar(config):
    rig = Rig(config, FRIDAY_EVENING)
    rig.monitor.send_heartbeat(status="stopped")
    week = 7 * 24 * 3600                                   # past the next close the heartbeat knows of
    assert verdict_after(rig, week, market_open_now=lambda now: False).code == OK
    assert verdict_after(rig, week, market_open_now=lambda now: True).code == CRITICAL


def test_failed_is_critical_whatever_its_age(config):
    rig = Rig(config, FRIDAY_EVENING)
    rig.monitor.mark_failed("thread parquet-writer crashed: RecursionError")
    rig.monitor.send_heartbeat(status="failed")
    for seconds in (1, 3600, 3 * 24 * 3600):
        verdict = verdict_after(rig, seconds, market_open_now=lambda now: False)
        assert verdict.code == CRITICAL and "parquet-writer" in verdict.text


def test_open_market_without_a_session_is_critical(config):
    rig = Rig(config, TUESDAY_11)
    rig.monitor.send_heartbeat()                          # market_closed while the market is open
    assert verdict_after(rig, 5).code == CRITICAL


def test_one_failed_write_warns_and_failing_writes_are_critical(config):
    """Seen: OK while every Parquet write failed (write_errors 14, rows_written 0)."""
    rig = streaming(Rig(config, TUESDAY_11))              # write interval 30 s (the default)
    rig.writer.rows_pending, rig.writer.write_errors = 120, 1
    rig.writer.last_write_error = "OSError: [Errno 28] No space left on device"
    rig.monitor.send_heartbeat()
    verdict = verdict_after(rig, 1)
    assert verdict.code == WARNING == 1 and "write failed" in verdict.text
    rig.clock.advance(61)                                  # rows waiting longer than two intervals
    rig.writer.write_errors = 14
    rig.monitor.send_heartbeat()
    verdict = verdict_after(rig, 1)
    assert verdict.code == CRITICAL and "120 rows not written" in verdict.text and "write_errors=14c" in verdict.perfdata


@pytest.mark.parametrize("setup, words", [
    (lambda rig: setattr(rig.reader, "state", "reconnecting"), "reconnecting"),
    (lambda rig: setattr(rig.monitor, "queue_fill", lambda: (900, 0.8)), "80% full"),
    (lambda rig: setattr(rig.monitor.backfill, "backfill_failures", 2), "could not be backfilled"),
    (lambda rig: setattr(rig.monitor.backfill, "backfill_requests", 3), "3 gap(s) waiting for REST backfill"),
    (lambda rig: setattr(rig.writer, "clock_skew_seconds", 86402.0), "clock skew: the daemon's clock is 86402 s ahead"),
    (lambda rig: setattr(rig.monitor.backfill, "gap_ledger_set_aside", 1), "1 gap ledger file(s) set aside"),
    (lambda rig: setattr(rig.monitor.backfill, "gaps_over_bound", 4), "4 gap(s) not backfilled: the gap ledger is full"),
])
def test_warnings(config, setup, words):
    rig = streaming(Rig(config, TUESDAY_11))
    setup(rig)
    rig.monitor.send_heartbeat()
    verdict = verdict_after(rig, 1)
    assert verdict.code == WARNING and words in verdict.text


def test_check_command_is_fast_and_needs_no_key(tmp_path, config_file):
    """A cron or Nagios run: no key in the environment, no network, an answer well within a second."""
    path = config_file()
    env = {"PATH": "/usr/bin:/bin"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "spy_streamer", "check", "--config", str(path)],
                            capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == UNKNOWN and LINE.match(result.stdout.strip()) and not result.stderr
    assert elapsed < 3                                     # generous for a loaded CI machine
    probe = subprocess.run([sys.executable, "-m", "spy_streamer", "check", "--probe", "--config", str(path)],
                           capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=30)
    assert probe.returncode == 1


def test_check_timeout_answers_unknown():
    """A heartbeat on a hung disk (an NFS mount) must not hang the monitor. A FIFO used to stand in for
    one; it is refused at once now (test_durable_files), so the judge itself hangs here."""
    from spy_streamer.monitoring.check_plugin import _within_seconds
    started = time.monotonic()
    verdict = _within_seconds(0.3, lambda: time.sleep(20))
    assert verdict.code == UNKNOWN and "--timeout" in verdict.line() and time.monotonic() - started < 5


def test_check_names_a_heartbeat_fifo_at_once(tmp_path, config_file):
    import os
    path = config_file()
    heartbeat_dir = tmp_path / "heartbeat"
    heartbeat_dir.mkdir()
    os.mkfifo(heartbeat_dir / "polygon.json")
    result = subprocess.run([sys.executable, "-m", "spy_streamer", "check", "--timeout", "10", "--config", str(path)],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, cwd=REPO_ROOT, timeout=30)
    assert result.returncode == UNKNOWN and "FIFO" in result.stdout and "--timeout" not in result.stdout


@pytest.mark.parametrize("now, words", [
    (ny(2025, 12, 25, 11, 0), "holiday: Christmas Day"),
    (ny(2025, 11, 28, 14, 0), "early close"),
])
def test_holiday_and_early_close_afternoon_are_ok_and_named(config, now, words):
    """Seen: CRITICAL all day on holidays when `check` ran without the key. The daemon's calendar (rules,
    no network) puts the reason in the heartbeat; check needs nothing else."""
    rig = Rig(config, now)
    rig.monitor.send_heartbeat()
    verdict = verdict_after(rig, 60)
    assert verdict.code == OK and words in verdict.text, verdict.line()


def test_status_calls_a_stale_heartbeat_of_a_dead_process_what_it_is(config):
    """Seen: `status` showed `streaming, connected: True` for a process killed with -9."""
    from spy_streamer.reports.status_report import heartbeat_lines
    rig = streaming(Rig(config, TUESDAY_11))
    heartbeat = load_heartbeat(rig.path)
    heartbeat["pid"] = 2 ** 22 + 12345                      # beyond pid_max: no such process
    lines = heartbeat_lines(heartbeat, rig.clock.now() + timedelta(seconds=3600))
    assert "STALE" in lines[1] and "not running" in lines[1] and "not found" in lines[1]
    assert "  connected: yes" in lines and not any("True" in line or "None" in line for line in lines)
    fresh = heartbeat_lines(load_heartbeat(rig.path), rig.clock.now() + timedelta(seconds=5))
    assert not any("STALE" in line for line in fresh)
