"""`spy-streamer export --flat-file`: a captured day in Polygon's flat-file layout (gzip CSV), so it joins
flat-file history: Polygon's header and column order, `ticker`, `id`, integer nanoseconds, conditions as
one comma-separated field, integer sizes, 0 for no TRF."""
from __future__ import annotations

import csv
import gzip
import json
from datetime import date

import pytest

from fake_polygon import agg_event, quote_event, trade_event
from spy_streamer import cli
from spy_streamer.channels import CHANNELS
from spy_streamer.channels.parsing import parse_frames
from spy_streamer.storage.parquet_sink import ParquetSink

DAY = date(2025, 12, 29)
T0 = 1_767_018_600_000          # 2025-12-29 14:30 UTC
# Polygon's headers, as its files begin (us_stocks_sip/trades_v1, quotes_v1, minute_aggs_v1).
HEADERS = {
    "T": "ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,sip_timestamp,"
         "size,tape,trf_id,trf_timestamp",
    "Q": "ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,indicators,"
         "participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp",
    "AM": "ticker,volume,open,close,high,low,window_start,transactions",
    "A": "ticker,volume,open,close,high,low,window_start,transactions",
}


@pytest.fixture
def exported(tmp_path, config_file):
    """export(channel) -> the rows of the exported file as (header, list of rows), through the CLI."""
    bare = {key: value for key, value in trade_event(T0 + 1, trade_id="b", exchange=11, sequence=3).items() if key != "c"}
    events = [trade_event(T0, trade_id="a", sequence=2, trf_id=202, size=250), bare,
              quote_event(T0, sequence=5), agg_event(T0, "SPY"), agg_event(T0 - 60_000, "AAPL"),
              dict(agg_event(T0, "SPY", volume=9000), ev="AM", e=T0 + 60_000)]
    tables, rejected = parse_frames(CHANNELS, [(T0 * 10 ** 6, json.dumps(events))])
    assert not rejected
    sink = ParquetSink(tmp_path / "data")
    for name, parts in tables.items():
        for part in parts:
            sink.write(name, DAY, part, 1)
    config = config_file()

    def export(channel: str):
        output = tmp_path / f"{channel}.csv.gz"
        assert cli.main(["export", "--config", str(config), "--date", DAY.isoformat(), "--channel", channel,
                         "--flat-file", "--output", str(output)]) == 0
        with gzip.open(output, "rt", newline="") as handle:
            lines = handle.read().splitlines()
        return lines[0], list(csv.reader(lines[1:])), lines
    return export


@pytest.mark.parametrize("channel", ["T", "Q", "AM", "A"])
def test_the_header_is_polygons(exported, channel):
    assert exported(channel)[0] == HEADERS[channel]


def test_trades_in_polygons_forms(exported):
    header, rows, lines = exported("T")
    assert lines[2].startswith("SPY,,0,11,b,")                      # no conditions: an empty field, as Polygon's
    trades = [dict(zip(header.split(","), row)) for row in rows]
    assert [trade["id"] for trade in trades] == ["a", "b"]             # sorted by ticker, then time
    first, bare = trades
    assert first["conditions"] == "12,37" and bare["conditions"] == ""
    assert first["sip_timestamp"] == str(T0 * 10 ** 6) and first["participant_timestamp"] == str((T0 - 1) * 10 ** 6)
    assert (first["size"], first["trf_id"], first["trf_timestamp"]) == ("250", "202", str((T0 - 1) * 10 ** 6))
    assert (bare["trf_id"], bare["trf_timestamp"], bare["correction"]) == ("0", "0", "0")
    assert (first["ticker"], first["price"], first["exchange"], first["tape"]) == ("SPY", "500.0", "4", "2")


def test_quotes_in_polygons_forms(exported):
    header, rows, _ = exported("Q")
    quote = dict(zip(header.split(","), rows[0]))
    assert (quote["conditions"], quote["indicators"], quote["ask_size"], quote["bid_size"]) == ("1", "604", "3", "2")
    assert quote["sip_timestamp"] == str(T0 * 10 ** 6) and quote["trf_timestamp"] == "0"


def test_bars_start_their_window_in_nanoseconds(exported):
    header, rows, _ = exported("A")
    assert [row[0] for row in rows] == ["AAPL", "SPY"]
    spy = dict(zip(header.split(","), rows[1]))
    assert (spy["window_start"], spy["volume"], spy["transactions"]) == (str(T0 * 10 ** 6), "100", "")


def test_a_day_without_files_is_one_line_and_exit_1(tmp_path, config_file, capsys):
    code = cli.main(["export", "--config", str(config_file()), "--date", DAY.isoformat(), "--channel", "T",
                     "--flat-file", "--output", str(tmp_path / "out.csv.gz")])
    assert code == 1 and not (tmp_path / "out.csv.gz").exists()
    assert capsys.readouterr().err.strip().startswith("spy-streamer: no T files for 2025-12-29")
