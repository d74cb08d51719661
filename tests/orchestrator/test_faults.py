"""Fault injection against the real daemon: every bar of the fake's timeline for the session ends up on
disk exactly once, whatever happens to the connection, the process or the disk."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest

from daemon_harness import midday_zone, recent_start_ms, stored_keys, wait_for
from fake_polygon import holiday_rows, session_timeline
from test_status_command import iso_z
from spy_streamer.storage.layout import gap_ledger_path, set_aside_name

AGGS = "/v2/aggs/ticker/SPY/range/1/second/"


class Timeline:
    """Three consecutive parts of one session: live before the fault, missed during it, live after."""

    def __init__(self, seconds_ago: int = 400, before: int = 100, during: int = 60, after: int = 100,
                 start_ms: int | None = None):
        bars = session_timeline(start_ms or recent_start_ms(seconds_ago), before + during + after)
        self.before, self.during, self.after = bars[:before], bars[before:before + during], bars[before + during:]
        self.all = bars

    def keys(self):
        return [("SPY", bar["s"]) for bar in self.all]


def assert_complete(run, timeline: Timeline, timeout: float = 15) -> None:
    """Every bar stored exactly once (the fake's whole timeline, nothing more)."""
    wait_for(lambda: len(stored_keys(run.data_dir)) >= len(timeline.all), timeout=timeout,
             what=f"{len(timeline.all)} rows on disk")
    time.sleep(0.5)  # anything extra (a duplicate) would land with the next flush
    keys = stored_keys(run.data_dir)
    assert sorted(keys) == timeline.keys()


def live_then_fault_then_live(run, fake, timeline: Timeline, fault) -> None:
    assert fake.wait_for_subscribers(1, timeout=15)
    fake.push(timeline.before, frame_size=1)
    wait_for(lambda: len(stored_keys(run.data_dir)) == len(timeline.before), what="first part stored")
    fault()
    fake.add_to_timeline(timeline.during)  # Polygon had these bars; the daemon was not listening
    assert fake.wait_for_subscribers(1, timeout=15)
    fake.push(timeline.after, frame_size=1)


@pytest.mark.parametrize("mode", ["abrupt", 1000, 1001, 1011])
def test_disconnect_loses_nothing(start, fake, mode):
    run = start()
    timeline = Timeline()
    live_then_fault_then_live(run, fake, timeline, lambda: fake.drop_connections(mode))
    assert_complete(run, timeline)
    heartbeat = wait_for(lambda: (run.heartbeat() or {}).get("rows_backfilled") == len(timeline.during) and
                         run.heartbeat(), what="backfill counted")
    assert heartbeat["reconnects"] >= 1 and heartbeat["last_disconnect_reason"]
    assert heartbeat["duplicates"] == 0
    # One gap from the open at start-up (nothing there), one for the disconnect.
    assert heartbeat["backfill_requests"] == 2 and heartbeat["backfill_failures"] == 0
    assert fake.subscriptions.count("A.SPY") >= 2      # re-subscribed after reconnecting
    assert len(fake.auth_attempts) >= 2                 # re-authenticated
    assert run.events("disconnected")
    assert run.daemon.stop()[0] == 0


def test_refused_handshakes_then_recovery(start, fake):
    run = start()
    timeline = Timeline()

    def outage():
        fake.set_refuse(True)
        fake.drop_connections("abrupt")
        wait_for(lambda: fake.refused_handshakes >= 1, timeout=10, what="a refused handshake")
        fake.set_refuse(False)

    live_then_fault_then_live(run, fake, timeline, outage)
    assert_complete(run, timeline)
    assert run.daemon.stop()[0] == 0


def test_backfill_retries_rest_errors(start, fake):
    run = start()
    timeline = Timeline()
    fake.set_rest_failure_count(AGGS, "garbage", 1)   # the first answer is not JSON: retried
    live_then_fault_then_live(run, fake, timeline, lambda: fake.drop_connections(1011))
    assert_complete(run, timeline, timeout=20)
    assert run.daemon.stop()[0] == 0


def test_rest_down_during_backfill_keeps_the_live_rows(start, fake):
    run = start()
    timeline = Timeline()
    fake.set_rest_failure(AGGS, "500")
    live_then_fault_then_live(run, fake, timeline, lambda: fake.drop_connections(1000))
    expected = len(timeline.before) + len(timeline.after)
    wait_for(lambda: len(stored_keys(run.data_dir)) == expected, what="live rows")
    assert run.daemon.process.poll() is None
    # Both gaps (start-up, disconnect) were asked for and are retried in the background (test_gap_backfill.py).
    wait_for(lambda: (run.heartbeat() or {}).get("backfill_requests") == 2, what="two backfill requests")
    assert run.daemon.stop()[0] == 0


def test_max_connections_alerts_and_backs_off(start, fake):
    run = start()
    assert fake.wait_for_subscribers(1, timeout=15)
    fake.set_max_connections_once()
    fake.drop_connections(1000)
    wait_for(lambda: run.events("max_connections"), timeout=10, what="max_connections alert")
    (alert,) = run.events("max_connections")
    assert alert["level"] == "ERROR" and alert["reason"] == "max_connections"
    connections = fake.connections_total
    time.sleep(3)  # a long backoff, not a tight fight with the other client
    assert fake.connections_total == connections
    assert run.daemon.stop()[0] == 0


def test_sigkill_mid_session_then_restart_loses_nothing(start, fake):
    run = start()
    timeline = Timeline()

    def crash():
        run.daemon.process.send_signal(signal.SIGKILL)
        run.daemon.process.wait(timeout=5)
        # What a kill in the middle of a write leaves behind: a hidden partial file.
        partition = next((run.data_dir / "A").iterdir())
        (partition / ".part-0-0-000001.parquet.tmp").write_bytes(b"PAR1 half a file")
        run.restart()

    live_then_fault_then_live(run, fake, timeline, crash)
    assert_complete(run, timeline)
    assert not list(run.data_dir.glob("A/*/.*.tmp"))
    assert run.events("partial_files_removed")
    assert run.daemon.stop()[0] == 0


def test_disk_failure_keeps_rows_until_the_disk_recovers(start, fake, tmp_path):
    blocker = tmp_path / "disk"
    blocker.write_text("a file where the data folder should be: every write fails")
    run = start(paths={"data_dir": str(blocker / "data")})
    assert fake.wait_for_subscribers(1, timeout=15)
    timeline = Timeline(during=0)
    fake.push(timeline.before, frame_size=1)
    wait_for(lambda: (run.heartbeat() or {}).get("write_errors", 0) >= 3, what="failing flushes")
    heartbeat = run.heartbeat()
    assert heartbeat["rows_pending"] == len(timeline.before) and heartbeat["last_write_error"]
    assert len(run.events("write_failed")) == 1          # one ERROR per failure streak
    blocker.unlink()                                      # the disk is back
    fake.push(timeline.after, frame_size=1)
    assert_complete(run, timeline)
    assert run.events("write_recovered")
    assert run.daemon.stop()[0] == 0


def test_malformed_frames_are_counted_not_fatal(start, fake):
    run = start()
    assert fake.wait_for_subscribers(1, timeout=15)
    bad_frames = ["not json", '{"ev": "A"}', '[{"ev": "A", "sym": "SPY"}]', '[{"ev": "T", "sym": "SPY"}]',
                  '[{"ev": "A", "sym": "SPY", "s": "soon", "e": 1, "o": 1, "h": 1, "l": 1, "c": 1, "v": 1}]', "[1, 2]"]
    for frame in bad_frames:
        fake.push_raw(frame)
    timeline = Timeline(during=0)
    fake.push(timeline.all, frame_size=1)
    assert_complete(run, timeline)
    assert wait_for(lambda: (run.heartbeat() or {}).get("rejected_invalid") == 7, what="7 rejected (one per bad frame or event)")
    assert run.daemon.process.poll() is None
    assert run.daemon.stop()[0] == 0
    text = run.log_file.read_text()
    assert "not json" not in text and len(text.splitlines()) < 40


def test_log_reopened_after_logrotate(start, fake, tmp_path):
    run = start(streaming={"monitoring": {"heartbeat_interval_seconds": 0.3}})
    assert fake.wait_for_subscribers(1, timeout=15)
    wait_for(lambda: run.log_file.exists() and run.events("heartbeat"), what="first lines")
    if shutil.which("logrotate"):
        state, rules = tmp_path / "logrotate.state", tmp_path / "logrotate.conf"
        rules.write_text(f"{run.log_file} {{\n  rotate 2\n  missingok\n  create\n}}\n")
        subprocess.run(["logrotate", "--force", "--state", str(state), str(rules)], check=True)
    else:  # what logrotate's default move-and-create does
        run.log_file.rename(run.log_file.with_name(run.log_file.name + ".1"))
    rotated = run.log_file.with_name(run.log_file.name + ".1")
    assert rotated.exists()
    wait_for(lambda: run.log_file.exists() and run.events("heartbeat"), what="lines in the fresh file")
    assert run.daemon.stop()[0] == 0
    assert run.events("stopped")                    # the last line went to the new file


def test_a_gap_still_open_at_the_close_is_filled_from_rest(start, fake):
    now = datetime.now(timezone.utc)
    today = now.astimezone(midday_zone(now)).date().isoformat()
    close_at = (now + timedelta(seconds=6)).replace(microsecond=0)
    fake.holidays = holiday_rows(today, "Half Day", "early-close",
                                 iso_z(now - timedelta(minutes=10)), iso_z(close_at))
    run = start()
    # Bars up to the last second before the close: the live part, then what was missed until the close.
    timeline = Timeline(before=100, during=100, after=0, start_ms=int(close_at.timestamp() * 1000) - 200_000)
    assert fake.wait_for_subscribers(1, timeout=10)
    fake.push(timeline.before, frame_size=1)
    wait_for(lambda: len(stored_keys(run.data_dir)) == 100, what="the live part stored")
    fake.set_refuse(True)                  # the connection is lost and does not come back before the close
    fake.drop_connections("abrupt")
    fake.add_to_timeline(timeline.during)
    wait_for(lambda: run.events("session_ended"), timeout=20, what="the session end at the close")
    assert_complete(run, timeline)
    assert run.daemon.stop()[0] == 0
    assert run.heartbeat()["rows_backfilled"] == 100


def ledger_gaps(run) -> list[tuple]:
    """The gap ledger of today's A partition, as (symbol, from_ms, to_ms, state)."""
    from spy_streamer.backfill.gap_ledger import read_entries
    return [(entry.symbol, entry.from_ms, entry.to_ms, entry.state)
            for path in run.data_dir.glob(".gaps/A/date=*.json") for entry in read_entries(path)]


def test_a_restart_resumes_a_gap_the_backfill_could_not_fill(start, fake):
    """Regression: a restart forgot the gaps requested but not yet filled. REST is down when the gap is
    asked for, the daemon is stopped (a deploy, a SIGTERM); the next start, with REST up, fills it once."""
    run = start()
    timeline = Timeline()
    fake.set_rest_failure(AGGS, "500")
    live_then_fault_then_live(run, fake, timeline, lambda: fake.drop_connections(1000))
    gap = ("SPY", timeline.during[0]["s"], timeline.during[-1]["s"])
    wait_for(lambda: (*gap, "pending") in ledger_gaps(run), timeout=15, what="the gap pending in the ledger")
    assert run.daemon.stop()[0] == 0
    assert (*gap, "pending") in ledger_gaps(run)             # not failed: the stop cut its retries short
    gap_path = f"{AGGS}{gap[1]}/"
    asked_before = fake.request_count(gap_path)

    fake.set_rest_failure(AGGS, None)
    run.restart()
    assert_complete(run, timeline)
    wait_for(lambda: (*gap, "filled") in ledger_gaps(run), timeout=15, what="the gap filled in the ledger")
    assert fake.request_count(gap_path) - asked_before == 1  # asked once after the restart
    assert run.events("backfill_resumed")
    heartbeat = wait_for(lambda: (run.heartbeat() or {}).get("backfill_finished") == 2 and run.heartbeat(),
                         what="both resumed gaps finished")
    assert heartbeat["backfill_requests"] == 2 and heartbeat["backfill_failures"] == 0
    assert run.daemon.stop()[0] == 0


def test_a_damaged_gap_ledger_is_set_aside_and_capture_goes_on(start, fake, tmp_path):
    now = datetime.now(timezone.utc)
    path = gap_ledger_path(tmp_path / "data", "A", now.astimezone(midday_zone(now)).date())
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"version": 1, "gaps": [["SPY", 1')   # cut off mid-write by hand
    run = start()
    assert fake.wait_for_subscribers(1, timeout=15)
    timeline = Timeline(during=0)
    fake.push(timeline.all, frame_size=1)
    assert_complete(run, timeline)
    (warning,) = run.events("gap_ledger_set_aside")
    assert warning["level"] == "WARNING"
    assert set_aside_name(path).read_bytes().startswith(b'{"version": 1')
    wait_for(lambda: ledger_gaps(run), what="a fresh ledger")   # the start-up gap, recorded anew
    wait_for(lambda: (run.heartbeat() or {}).get("gap_ledger_set_aside") == 1, what="the set-aside counted")
    assert run.daemon.stop()[0] == 0
