"""Keep-first per key in the lake, for every channel: `lake-compact --channel C` and the close-time rewrite
keep the first received row of each of the channel's own keys (issue 16 section 3: both failed on trades
and quotes with `No match for FieldRef.Name(start)`; the rewrite stopped at T and never tried Q)."""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest

pytest.importorskip("pyiceberg")
pytest.importorskip("moto.server")

from channel_parsing import events_one_by_one  # noqa: E402
from fake_polygon import agg_event, quote_event, trade_event  # noqa: E402
from spy_streamer.storage.iceberg_committer import IcebergCommitter  # noqa: E402
from spy_streamer.storage.iceberg_maintenance import open_table  # noqa: E402
from spy_streamer.storage.parquet_sink import ParquetSink  # noqa: E402
from test_heartbeat_monitor import config  # noqa: E402,F401 (fixture)
from test_iceberg_lake import DAY, DAY_START_MS, NAMESPACE, lake, s3  # noqa: E402,F401,F811 (fixtures)

CHANNELS = ("A", "AM", "T", "Q")
# Each channel's own key (channels/) and the order of its compacted rows, as the README states them.
KEY_COLUMNS = {"A": ("symbol", "start"), "AM": ("symbol", "start"), "T": ("symbol", "exchange", "trf_id", "trade_id"),
               "Q": ("symbol", "sequence_number")}
ORDER = {"A": ("symbol", "start"), "AM": ("symbol", "start"), "T": ("symbol", "sip_timestamp", "sequence_number"),
         "Q": ("symbol", "sip_timestamp", "sequence_number")}
KEYS = 8        # distinct keys per channel
REPEATED = 3    # of which the second batch repeats this many, received later, with another price


def event(channel: str, n: int, price: float) -> dict:
    """The n-th event of `channel` (one key each), at `price`."""
    at = DAY_START_MS + n * 1000
    if channel == "A":
        return agg_event(at, price=price)
    if channel == "AM":
        return {**agg_event(DAY_START_MS + n * 60_000, price=price), "ev": "AM", "e": DAY_START_MS + (n + 1) * 60_000}
    if channel == "T":   # same time for two trades: the id, not the time, is the key
        return trade_event(DAY_START_MS + (n // 2) * 1000, trade_id=str(n), price=price, sequence=n)
    return quote_event(DAY_START_MS + (n // 2) * 1000, sequence=n + 1, bid=price, ask=price + 0.02)


def batch(channel: str, numbers, price: float, received_ns: int) -> pa.Table:
    table, bad = events_one_by_one([event(channel, n, price) for n in numbers], channel, received_ns)
    assert not bad
    return table


def stage_repeats(data_dir, channel: str) -> None:
    """KEYS rows at 100.0, then REPEATED of them again at 200.0, received a second later."""
    sink, early = ParquetSink(data_dir), time.time_ns()
    sink.write(channel, DAY, batch(channel, range(KEYS), 100.0, early), early)
    sink.write(channel, DAY, batch(channel, range(REPEATED), 200.0, early + 10**9), early + 1)


def price_column(channel: str) -> str:
    return {"T": "price", "Q": "bid_price"}.get(channel, "open")


def assert_first_of_each_key(catalog, channel: str) -> None:
    rows = open_table(catalog, NAMESPACE, channel).scan().to_arrow()
    assert rows.num_rows == KEYS == rows.group_by(list(KEY_COLUMNS[channel])).aggregate([]).num_rows
    assert set(rows[price_column(channel)].to_pylist()) == {100.0}    # the first received of each key stayed
    order = list(ORDER[channel])
    assert rows.select(order).equals(rows.select(order).sort_by([(name, "ascending") for name in order]))


def committed(lake, channels=CHANNELS):
    data_dir, _, catalog = lake
    for channel in channels:
        stage_repeats(data_dir, channel)
    IcebergCommitter(catalog, data_dir, NAMESPACE).commit_pending()
    for channel in channels:
        assert open_table(catalog, NAMESPACE, channel).scan().to_arrow().num_rows == KEYS + REPEATED
    return catalog


@pytest.mark.parametrize("channel", CHANNELS)
def test_lake_compact_keeps_the_first_row_of_each_channel_key(channel, lake, tmp_path, capsys):
    import yaml

    from conftest import settings
    from spy_streamer.cli import main

    data_dir, location, _ = lake
    catalog = committed(lake, (channel,))
    config = tmp_path / "settings.yaml"
    values = settings(tmp_path, storage={"kind": "iceberg", "warehouse": location.warehouse,
                                         "s3_endpoint": location.s3_endpoint})
    values["paths"]["data_dir"] = str(data_dir)
    config.write_text(yaml.safe_dump(values))

    code = main(["lake-compact", "--config", str(config), "--date", DAY.isoformat(), "--channel", channel])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"({KEYS} rows, {REPEATED} repeats dropped" in captured.out
    assert_first_of_each_key(catalog, channel)


def test_the_close_time_rewrite_compacts_every_channel(lake, caplog):
    data_dir, _, catalog = lake
    committed(lake)
    committer = IcebergCommitter(catalog, data_dir, NAMESPACE)
    opens = datetime.fromtimestamp(DAY_START_MS / 1000, timezone.utc)
    caplog.set_level(logging.INFO, logger="spy_streamer")

    committer.compact_session(opens, opens + timedelta(hours=6, minutes=30))

    for channel in CHANNELS:
        assert_first_of_each_key(catalog, channel)
    compacted = [record for record in caplog.records if getattr(record, "event", None) == "lake_day_compacted"]
    assert sorted(record.table for record in compacted) == sorted(f"{NAMESPACE}.{name}" for name in
                                                                  ("second_aggregates", "minute_aggregates",
                                                                   "trades", "quotes"))
    assert committer.stats.rewrite_failed == {}


def test_a_failed_rewrite_of_one_table_warns_until_a_later_one_succeeds(lake, caplog, monkeypatch, config):
    """Measured: the rewrite failed on T, never tried Q, logged the wrong consequence, `check` stayed OK."""
    from spy_streamer.monitoring.health_check import OK, WARNING, evaluate_health, load_heartbeat
    from spy_streamer.storage import iceberg_maintenance
    from test_heartbeat_monitor import FRIDAY_EVENING, Rig

    data_dir, _, catalog = lake
    committed(lake)
    committer = IcebergCommitter(catalog, data_dir, NAMESPACE)
    rig = Rig(config, FRIDAY_EVENING, lake=committer.stats)
    opens = datetime.fromtimestamp(DAY_START_MS / 1000, timezone.utc)
    rewrite = iceberg_maintenance.compact_partition

    def failing_on_trades(table, day, channel):
        if channel == "T":
            raise OSError("the store refused the rewrite")
        return rewrite(table, day, channel)

    monkeypatch.setattr(iceberg_maintenance, "compact_partition", failing_on_trades)
    caplog.set_level(logging.INFO, logger="spy_streamer")
    committer.compact_session(opens, opens + timedelta(hours=6, minutes=30))

    for channel in ("A", "AM", "Q"):
        assert_first_of_each_key(catalog, channel)                   # the others were rewritten
    (failed,) = [record for record in caplog.records if getattr(record, "event", None) == "lake_rewrite_failed"]
    assert "every row is in the table" in failed.getMessage() and "--channel T" in failed.getMessage()
    rig.monitor.send_heartbeat()
    verdict = evaluate_health(load_heartbeat(rig.path), rig.clock.now())
    assert verdict.code == WARNING and "lake_rewrite_T" in verdict.text

    monkeypatch.setattr(iceberg_maintenance, "compact_partition", rewrite)
    committer.compact_session(opens, opens + timedelta(hours=6, minutes=30))   # the next close's
    assert_first_of_each_key(catalog, "T")
    rig.monitor.send_heartbeat()
    assert evaluate_health(load_heartbeat(rig.path), rig.clock.now()).code == OK
    assert committer.stats.rewrite_failed == {}


def test_keep_first_follows_each_channels_declared_key():
    from spy_streamer.capture.keep_first import KeepFirst

    for channel in CHANNELS:
        assert KeepFirst.of(channel).dedup_key == KEY_COLUMNS[channel]


def test_first_received_per_key_is_the_rule_for_every_channel():
    """In memory (the lake) and as the writer sees it: a later repeat of a key never replaces the first."""
    from spy_streamer.capture.keep_first import KeepFirst, first_received_per_key

    for channel in CHANNELS:
        early = 10**18
        late, first = batch(channel, range(REPEATED), 200.0, early + 10**9), batch(channel, range(KEYS), 100.0, early)
        kept = first_received_per_key(pa.concat_tables([late, first]), KeepFirst.of(channel))
        assert kept.num_rows == KEYS
        assert pc.all(pc.equal(kept[price_column(channel)], 100.0)).as_py(), channel
