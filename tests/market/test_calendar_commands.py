"""`compact` and `report` on holidays and early closes: the same calendar as the daemon (exchange rules and
Polygon's list as last saved), no key and no network. Dates are fixed and in the past, so the answers do
not depend on the day the tests run."""
import os
import subprocess
import sys
from datetime import date

import pytest

from conftest import REPO_ROOT, ny, settings, write_settings
from spy_streamer.market.calendar_store import KnownDays, save_known_days
from spy_streamer.storage.compaction import compaction_refusal
from spy_streamer.config import load_config
from spy_streamer.market.market_hours import MarketCalendar
from spy_streamer.market.special_days import SpecialDay

HOURS = load_config(REPO_ROOT / "config" / "settings.yaml").market_hours
EARLY_CLOSE = date(2025, 11, 28)


@pytest.mark.parametrize("now, allowed", [
    (ny(2025, 11, 28, 12, 59), False),
    (ny(2025, 11, 28, 13, 0, 30), False),      # the writer's last flush after the 13:00 close
    (ny(2025, 11, 28, 13, 1), True),           # not 16:01
])
def test_compaction_waits_for_the_early_close_only(now, allowed):
    assert (compaction_refusal(MarketCalendar(HOURS), EARLY_CLOSE, now) is None) == allowed


def test_the_refusal_names_the_early_settle_time():
    refusal = compaction_refusal(MarketCalendar(HOURS), EARLY_CLOSE, ny(2025, 11, 28, 12))
    assert refusal.endswith("after 13:01:00 EST")


def test_a_holiday_has_no_session_to_wait_for():
    assert compaction_refusal(MarketCalendar(HOURS), date(2025, 12, 25), ny(2025, 12, 25, 10)) is None


def run_report(tmp_path, day):
    config_path = write_settings(tmp_path, settings(tmp_path))
    env = {k: v for k, v in os.environ.items() if k not in ("POLYGON_API_KEY", "SPY_STREAMER_CONFIG")}
    return subprocess.run([sys.executable, "-m", "spy_streamer", "report", "--date", day, "--config",
                           str(config_path)], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)


def test_report_shows_a_holiday_as_closed(tmp_path):
    result = run_report(tmp_path, "2025-12-25")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "session: closed (Christmas Day)"


def test_report_shows_an_early_close_as_the_shorter_session(tmp_path):
    result = run_report(tmp_path, "2025-11-28")
    assert "session: 09:30:00 EST - 13:00:00 EST (early close: Day after Thanksgiving Day)" in result.stdout
    assert "gaps longer than 1 s: 1, 3 h 30 min 00 s missing in all" in result.stdout   # SPY: no file that day


def test_report_uses_polygons_saved_list(tmp_path):
    day = date(2024, 3, 12)   # an ordinary Tuesday by the rules
    save_known_days(tmp_path / "heartbeat" / "calendar.json", KnownDays({day: SpecialDay(day, "Closed for weather")}))
    assert run_report(tmp_path, day.isoformat()).stdout.splitlines()[-1] == "session: closed (Closed for weather)"


def test_compact_covers_every_subscribed_channel(tmp_path):
    """With A and T subscribed, `compact` merges each channel's day (a channel without files is only said)."""
    import pyarrow.parquet as pq
    from fake_polygon import session_timeline
    from spy_streamer import cli
    from channel_parsing import events_one_by_one
    from spy_streamer.storage.parquet_sink import ParquetSink
    path = write_settings(tmp_path, settings(tmp_path, polygon={"subscriptions": ["A.SPY", "T.SPY"]}))
    bars = session_timeline(int(ny(2026, 11, 24, 10, 0).timestamp() * 1000), 20)
    table, _ = events_one_by_one(bars, "A")
    sink = ParquetSink(tmp_path / "data")
    for part in (table.slice(0, 10), table.slice(10)):
        sink.write("A", date(2026, 11, 24), part, 1)
    assert cli.main(["compact", "--date", "2026-11-24", "--config", str(path)]) == 0
    (day_file,) = (tmp_path / "data" / "A" / "date=2026-11-24").glob("*.parquet")
    assert day_file.name == "day-2026-11-24.parquet" and pq.read_metadata(day_file).num_rows == 20
    assert cli.main(["compact", "--date", "2026-11-24", "--channel", "T", "--config", str(path)]) == 1
