"""`spy-streamer status` and `check` as a user runs them, against the loopback fake Polygon, with and
without a key (then from the calendar cache a daemon saved)."""
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import REPO_ROOT, TEST_API_KEY, write_settings
from daemon_harness import midday_zone, window_settings
from fake_polygon import holiday_rows
from spy_streamer.market.calendar_refresh import STATUS_TIMEOUT_SECONDS
from spy_streamer.market.calendar_store import KnownDays, save_known_days
from spy_streamer.market.special_days import SpecialDay


def run_command(command, config_path, api_key=TEST_API_KEY):
    env = {k: v for k, v in os.environ.items() if k not in ("POLYGON_API_KEY", "SPY_STREAMER_CONFIG")}
    if api_key:
        env["POLYGON_API_KEY"] = api_key
    return subprocess.run([sys.executable, "-m", "spy_streamer", command, "--config", str(config_path)],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)


def iso_z(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def local_today():
    return datetime.now(timezone.utc).astimezone(midday_zone(datetime.now(timezone.utc))).date()


def test_status_in_open_window(tmp_path, fake):
    result = run_command("status", write_settings(tmp_path, window_settings(tmp_path, fake)))
    assert result.returncode == 0, result.stderr
    assert "market: OPEN" in result.stdout
    assert "next close:" in result.stdout and "heartbeat: none yet" in result.stdout


def test_status_on_a_holiday_names_it(tmp_path, fake):
    fake.holidays = holiday_rows(local_today().isoformat(), "Founders Day")
    result = run_command("status", write_settings(tmp_path, window_settings(tmp_path, fake)))
    assert result.returncode == 0, result.stderr
    assert "market: CLOSED (holiday: Founders Day)" in result.stdout
    assert "next open:" in result.stdout


def test_status_after_an_early_close(tmp_path, fake):
    now = datetime.now(timezone.utc)
    fake.holidays = holiday_rows(local_today().isoformat(), "Half Day", "early-close",
                                 iso_z(now - timedelta(minutes=10)), iso_z(now - timedelta(minutes=1)))
    result = run_command("status", write_settings(tmp_path, window_settings(tmp_path, fake)))
    assert "market: CLOSED (early close (Half Day) at" in result.stdout, result.stdout + result.stderr


def test_status_before_an_early_close(tmp_path, fake):
    now = datetime.now(timezone.utc)
    fake.holidays = holiday_rows(local_today().isoformat(), "Half Day", "early-close",
                                 iso_z(now - timedelta(minutes=10)), iso_z(now + timedelta(minutes=5)))
    result = run_command("status", write_settings(tmp_path, window_settings(tmp_path, fake)))
    assert "market: OPEN (early close today: Half Day)" in result.stdout, result.stdout + result.stderr
    assert "(in 4 min)" in result.stdout or "(in 5 min)" in result.stdout


def test_status_with_rest_down_still_answers(tmp_path, fake):
    fake.set_rest_failure("/v1/marketstatus/upcoming", "500")
    result = run_command("status", write_settings(tmp_path, window_settings(tmp_path, fake)))
    assert result.returncode == 0 and "market: OPEN" in result.stdout
    assert "holidays_unavailable" in result.stderr and "Traceback" not in result.stderr


def test_status_without_key_uses_the_saved_calendar(tmp_path, fake):
    result = run_command("status", write_settings(tmp_path, window_settings(tmp_path, fake)), api_key=None)
    assert result.returncode == 0
    assert "calendar: no exchange rules + Polygon's list never fetched (POLYGON_API_KEY is not set)" in result.stdout
    assert fake.request_count("/") == 0


def save_today(tmp_path, special_day_of):
    """Polygon's list as a daemon saved it earlier, with one special day today (in the window's zone)."""
    today = local_today()
    save_known_days(tmp_path / "heartbeat" / "calendar.json",
                    KnownDays({today: special_day_of(today)}, datetime.now(timezone.utc) - timedelta(hours=1)))


def test_status_without_key_on_a_holiday_names_it(tmp_path, fake):
    save_today(tmp_path, lambda today: SpecialDay(today, "Founders Day"))
    result = run_command("status", write_settings(tmp_path, window_settings(tmp_path, fake)), api_key=None)
    assert result.returncode == 0, result.stderr
    assert "market: CLOSED (holiday: Founders Day)" in result.stdout and "next open:" in result.stdout
    assert "Polygon's list as fetched" in result.stdout and fake.request_count("/") == 0


def test_status_without_key_after_an_early_close(tmp_path, fake):
    close = datetime.now(timezone.utc) - timedelta(minutes=1)
    save_today(tmp_path, lambda today: SpecialDay(today, "Half Day", None, close))
    result = run_command("status", write_settings(tmp_path, window_settings(tmp_path, fake)), api_key=None)
    assert "market: CLOSED (early close (Half Day) at" in result.stdout, result.stdout + result.stderr
    assert fake.request_count("/") == 0


def test_status_waits_at_most_3_s_for_a_hung_endpoint(tmp_path, fake):
    save_today(tmp_path, lambda today: SpecialDay(today, "Founders Day"))
    fake.set_rest_failure("/v1/marketstatus/upcoming", "hang")
    started = time.monotonic()
    result = run_command("status", write_settings(tmp_path, window_settings(tmp_path, fake)))
    assert time.monotonic() - started < STATUS_TIMEOUT_SECONDS + 4   # the interpreter's start included
    assert "market: CLOSED (holiday: Founders Day)" in result.stdout   # the saved list still applies
    assert "(refresh failed)" in result.stdout and "holidays_unavailable" in result.stderr


def test_status_with_key_saves_what_it_learned(tmp_path, fake):
    fake.holidays = holiday_rows(local_today().isoformat(), "Founders Day")
    config_path = write_settings(tmp_path, window_settings(tmp_path, fake))
    assert "(fetched now)" in run_command("status", config_path).stdout
    fake.holidays = []
    offline = run_command("status", config_path, api_key=None)
    assert "market: CLOSED (holiday: Founders Day)" in offline.stdout


def test_check_without_heartbeat_is_unknown(tmp_path, fake):
    result = run_command("check", write_settings(tmp_path, window_settings(tmp_path, fake)))
    assert result.returncode == 3
    assert result.stdout.startswith("SPY-STREAMER UNKNOWN - ") and len(result.stdout.splitlines()) == 1


def test_status_json_for_programs_and_both_zones_for_people(tmp_path, fake):
    import json
    path = write_settings(tmp_path, window_settings(tmp_path, fake))
    env = {k: v for k, v in os.environ.items() if k not in ("POLYGON_API_KEY", "SPY_STREAMER_CONFIG")}
    result = subprocess.run([sys.executable, "-m", "spy_streamer", "status", "--json", "--config", str(path)],
                            capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    document = json.loads(result.stdout)
    assert document["market"]["open"] is True and document["heartbeat"] is None
    assert datetime.fromisoformat(document["market"]["next_close"]).tzinfo is not None
    text = run_command("status", path, api_key=None).stdout
    assert "UTC)" in text.split("next close:")[1].splitlines()[0]
    assert "True" not in text and "None" not in text
