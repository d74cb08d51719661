"""`spy-streamer verify`: a stored day audited minute by minute against the replay's REST minute bars,
with minutes made to disagree; `--repair` refetches them as REST second bars."""
from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest

from conftest import TEST_API_KEY, ny, settings, write_settings
from fake_polygon import session_timeline
from spy_streamer import cli
from spy_streamer.capture.batch_writer import BatchWriter
from spy_streamer.market.calendar_store import load_calendar
from spy_streamer.clock import FrozenClock
from spy_streamer.config import load_config
from spy_streamer.storage.parquet_sink import ParquetSink
from spy_streamer.capture.pipeline_stats import WriterStats

TEN = int(ny(2026, 11, 24, 10, 0).timestamp() * 1000)        # a Tuesday; 10:00 New York
MINUTE = 60_000


@pytest.fixture
def day(tmp_path, fake, monkeypatch):
    """Five minutes of SPY second bars known to Polygon; the stored copy lacks one second of 10:02."""
    monkeypatch.setenv("POLYGON_API_KEY", TEST_API_KEY)
    bars = session_timeline(TEN, 300)
    fake.add_to_timeline(bars)
    path = write_settings(tmp_path, settings(tmp_path, polygon={"rest_base_url": fake.rest_base_url}))
    config = load_config(path)
    writer = BatchWriter(None, ParquetSink(config.paths.data_dir), load_calendar(config), WriterStats(), 60.0,
                         FrozenClock(ny(2026, 11, 24, 10, 6)), subscriptions=("A.SPY",))
    writer.start_day()
    lost = bars[2 * 60 + 17]
    writer.accept_frame(0, json.dumps([bar for bar in bars if bar is not lost]))
    assert writer.flush()
    return path, config, lost


def verify(path, *extra) -> int:
    return cli.main(["verify", "--date", "2026-11-24", "--config", str(path), *extra])


def test_every_minute_agrees_when_nothing_is_missing(day, fake, capsys):
    path, config, lost = day
    fake.timeline.pop(("SPY", lost["s"]))                     # Polygon never had that second either
    assert verify(path) == 0
    assert "5 minutes of 1 symbol(s) checked" in capsys.readouterr().out


def test_disagreeing_minutes_are_listed_with_the_difference(day, fake, capsys):
    path, config, lost = day
    fake.minute_overrides[("SPY", TEN + 4 * MINUTE)] = {"h": 999.0}   # a minute that does not add up
    assert verify(path) == 1
    out = capsys.readouterr().out
    assert "2 disagree" in out
    assert f"SPY 10:02 volume: stored {sum(b['v'] for b in session_timeline(TEN, 300)[120:180]) - lost['v']}" in out
    assert "SPY 10:04 high" in out and "REST 999" in out


def test_repair_backfills_what_is_missing_and_lists_what_remains(day, fake, capsys):
    path, config, lost = day
    fake.minute_overrides[("SPY", TEN + 4 * MINUTE)] = {"h": 999.0}
    assert verify(path, "--repair") == 1                     # 10:04 cannot be repaired: the seconds agree
    out = capsys.readouterr().out
    assert "repair: 1 second bars stored from REST" in out
    assert out.rstrip().splitlines()[-2].endswith("1 disagree") and "10:04 high" in out.rstrip().splitlines()[-1]
    rows = ds.dataset(config.paths.data_dir / "A", partitioning="hive").to_table().to_pylist()
    repaired = [row for row in rows if row["source"] == "rest"]
    assert [int(row["start"].timestamp() * 1000) for row in repaired] == [lost["s"]]
    assert len(rows) == 300                                  # one row per (symbol, start): nothing twice
    fake.minute_overrides.clear()
    assert verify(path) == 0


def test_a_holiday_has_nothing_to_verify(tmp_path, fake, monkeypatch, capsys):
    monkeypatch.setenv("POLYGON_API_KEY", TEST_API_KEY)
    path = write_settings(tmp_path, settings(tmp_path, polygon={"rest_base_url": fake.rest_base_url}))
    assert cli.main(["verify", "--date", "2026-11-26", "--config", str(path)]) == 0
    assert "no session that day (Thanksgiving" in capsys.readouterr().out


def test_verify_without_a_key_is_exit_78(tmp_path, fake, monkeypatch, capsys):
    monkeypatch.delenv("POLYGON_API_KEY", raising=False)
    path = write_settings(tmp_path, settings(tmp_path, polygon={"rest_base_url": fake.rest_base_url}))
    assert cli.main(["verify", "--date", "2026-11-24", "--config", str(path)]) == 78


def test_a_hostile_rest_answer_to_a_repair_is_refused_and_counted(day, fake, capsys):
    """Measured: a repair against a hostile REST stored volume 2^62, prices of 1e308 and a low of 1e-300,
    second bars at .500 s and bars of minutes nobody asked for. Now only the lost bar is stored."""
    path, config, lost = day
    minute_of_lost = lost["s"] - lost["s"] % MINUTE

    def second(offset_ms: int, **fields) -> dict:
        return {"t": minute_of_lost + offset_ms, "o": 500.0, "h": 500.5, "l": 499.5, "c": 500.2, "v": 10,
                "vw": 500.1, "n": 1, **fields}

    fake.extra_aggs[("SPY", "second")] = [
        second(30_000, v=2 ** 62), second(31_000, o=1e308, h=1e308), second(32_000, l=1e-300),
        second(17_500), second(MINUTE), second(-3 * MINUTE)]
    assert verify(path, "--repair") == 0
    out = capsys.readouterr().out
    assert ("repair: 1 second bars stored from REST (source rest); 6 refused "
            "(bad_price 2, bad_start 1, bad_volume 1, outside_request 2)") in out
    rows = ds.dataset(config.paths.data_dir / "A", partitioning="hive").to_table().to_pylist()
    assert [int(row["start"].timestamp() * 1000) for row in rows if row["source"] == "rest"] == [lost["s"]]
    assert len(rows) == 300 and max(row["volume"] for row in rows) < 10 ** 12


def test_a_repair_refuses_while_a_daemon_records_into_the_same_folder(start, fake, tmp_path, monkeypatch, capsys):
    """Measured: a repair run beside the recording daemon stored 7 duplicate rows (it took no lock). Now it
    refuses with one line, exit 75, and writes nothing."""
    from daemon_harness import midday_zone, stored_rows, wait_for
    from spy_streamer.storage.layout import lock_path
    from datetime import datetime, timezone

    monkeypatch.setenv("POLYGON_API_KEY", TEST_API_KEY)
    fake.replay_live(("SPY",), since_ms=(int(datetime.now(timezone.utc).timestamp()) - 90) * 1000, delay_seconds=0.2)
    run = start(polygon={"subscriptions": ["A.SPY"]})
    wait_for(lambda: lock_path(run.data_dir).exists() and stored_rows(run.data_dir),
             timeout=30, what="the daemon recording")
    fake.minute_overrides.update({("SPY", (int(datetime.now(timezone.utc).timestamp()) // 60 - minutes) * MINUTE):
                                  {"h": 999.0} for minutes in range(3)})     # minutes that disagree
    today = datetime.now(timezone.utc).astimezone(midday_zone(datetime.now(timezone.utc))).date()
    capsys.readouterr()
    code = cli.main(["verify", "--date", today.isoformat(), "--config", str(run.config_path), "--repair"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 75, out
    assert out[-1].startswith(f"spy-streamer: verify {today} --repair refused, nothing written: another "
                              f"spy-streamer (pid {run.daemon.process.pid}")
    assert not any(line.startswith("repair:") for line in out)
    assert run.daemon.stop()[0] == 0


def test_hostile_rest_minute_bars_are_refused_not_compared(day, fake, capsys):
    """The audit's own input passes the same rules: a minute bar of 1e308, one at :30 and one of a minute
    outside the session are refused and counted, so they neither make a minute disagree nor get repaired."""
    path, config, lost = day
    fake.timeline.pop(("SPY", lost["s"]))                     # every real minute agrees
    hostile = {"o": 500.0, "h": 500.5, "l": 499.5, "c": 500.2, "v": 10, "vw": 500.1, "n": 1}
    fake.extra_aggs[("SPY", "minute")] = [dict(hostile, t=TEN + MINUTE, h=1e308), dict(hostile, t=TEN + 30_000),
                                          dict(hostile, t=TEN + 8 * 3_600_000)]
    assert verify(path) == 0
    assert ("5 minutes of 1 symbol(s) checked against Polygon's REST minute bars; 0 disagree; 3 REST minute bars "
            "refused (bad_price 1, bad_start 1, outside_request 1)") in capsys.readouterr().out


def test_a_repair_refuses_an_unsafe_lock_file_with_one_line(day, capsys):
    """The lock file a symlink (to a file the repair must not truncate): refused, untouched, exit 78."""
    from spy_streamer.storage.layout import lock_path
    path, config, lost = day
    victim = config.paths.data_dir.parent / "victim.txt"
    victim.write_text("keep me")
    lock_path(config.paths.data_dir).symlink_to(victim)
    assert verify(path, "--repair") == 78
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("spy-streamer: verify 2026-11-24 --repair refused, nothing written:")
    assert victim.read_text() == "keep me"
    rows = ds.dataset(config.paths.data_dir / "A", partitioning="hive").to_table()
    assert rows.num_rows == 299 and "rest" not in rows.column("source").to_pylist()
