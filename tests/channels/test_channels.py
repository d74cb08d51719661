"""Channels as a first-class concept: AM, T and Q are stored (not counted as invalid), each under
`<data_dir>/<channel>/date=...`, one row per its dedup key, with its own rules and REST backfill; an
unsupported channel is refused at start-up."""
from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from channel_parsing import frames_to_table, rest_table, rules
from conftest import TEST_API_KEY
from fake_polygon import FakePolygon, agg_event, quote_event, quote_result, trade_event, trade_result
from spy_streamer.channels import CHANNELS, NAMES, channel_for
from spy_streamer.config import ConfigError, load_config
from spy_streamer.backfill.gap_backfill import Gap
from spy_streamer.data_sources.polygon_rest import iter_tick_pages, make_rest_client
from spy_streamer.capture.queue_items import GAP_POSSIBLE, RestBars
from test_batch_writer import Rig, data_dir, frame, ms, ny  # noqa: F401 (fixture data_dir)

ALL = ("A.SPY", "AM.SPY", "T.SPY", "Q.SPY")
T0 = ms(ny(2025, 6, 10, 9, 45))


def read(data_dir, channel: str) -> pa.Table:
    return ds.dataset(data_dir / channel, format="parquet", partitioning="hive").to_table()


def test_the_registry_names_what_compaction_and_report_need():
    assert NAMES == ("A", "AM", "T", "Q") and list(CHANNELS) == list(NAMES)
    for channel in CHANNELS.values():
        assert set(channel.dedup_key) <= set(channel.schema.names) and channel.time_column in channel.schema.names
        assert set(channel.sort_key) <= set(channel.schema.names)
        assert channel.schema.names[-2:] == ["received_at", "source"]
    assert channel_for("T").dedup_key == ("symbol", "exchange", "trf_id", "trade_id")
    assert channel_for("Q").dedup_key == ("symbol", "sequence_number")
    assert channel_for("AM").dedup_key == ("symbol", "start")
    with pytest.raises(KeyError, match="LULD"):
        channel_for("LULD")


def test_every_channel_is_stored_in_its_own_folder(data_dir):
    rig = Rig(data_dir, subscriptions=ALL)
    minute = dict(agg_event(T0, "SPY"), ev="AM", e=T0 + 60_000)
    rig.send([agg_event(T0), minute, trade_event(T0 + 1), quote_event(T0 + 2)])        # one mixed frame
    rig.send([trade_event(T0 + 5, trade_id="2", sequence=2), trade_event(T0 + 1)])   # a repeat of trade 1
    rig.send([quote_event(T0 + 6, sequence=2), quote_event(T0 + 2)])                 # a repeat of quote 1
    assert rig.stats.rejected_invalid == 0 and rig.stats.duplicates == 2
    assert rig.writer.flush()
    assert {path.name for path in data_dir.iterdir()} == {"A", "AM", "T", "Q"}
    minutes = read(data_dir, "AM")
    assert minutes.num_rows == 1 and (minutes.column("end")[0].as_py() - minutes.column("start")[0].as_py()).seconds == 60
    trades = read(data_dir, "T").sort_by("sip_timestamp")
    assert trades.column("trade_id").to_pylist() == ["1", "2"]
    assert trades.schema.field("sip_timestamp").type == pa.timestamp("us", tz="UTC")   # no TIMESTAMP(NANOS)
    assert trades.column("sip_timestamp_ns").to_pylist() == [(T0 + 1) * 10 ** 6, (T0 + 5) * 10 ** 6]
    assert trades.column("conditions").to_pylist()[0] == [12, 37] and trades.column("size").to_pylist() == [100.0, 100.0]
    quotes = read(data_dir, "Q").sort_by("sequence_number")
    assert quotes.column("conditions").to_pylist() == [[1], [1]] and quotes.column("indicators").to_pylist()[0] == [604]
    assert quotes.column("bid_price").to_pylist() == [499.99, 499.99]


def test_a_rest_trade_the_stream_delivered_is_not_stored_twice(data_dir):
    """Same trade, ms on the stream and ns from REST: the dedup key (symbol, exchange, trf_id, id) holds no time."""
    rig = Rig(data_dir, subscriptions=("T.SPY",))
    live = trade_event(T0)
    rig.send([live])
    missed = trade_event(T0 + 3, trade_id="9", sequence=9)
    rig.writer.accept_items([RestBars("SPY", [trade_result(live), trade_result(missed)], 0, "T",
                                      requested=(T0, T0 + 3))])
    assert rig.stats.duplicates == 0 and rig.stats.rows_backfilled == 1
    assert rig.writer.flush()
    rest = read(data_dir, "T").filter(pa.compute.equal(pa.compute.field("source"), "rest"))
    assert rest.column("sip_timestamp_ns").to_pylist() == [(T0 + 3) * 10 ** 6 + 123]   # ns kept
    assert rest.column("participant_timestamp_ns").to_pylist() == [(T0 + 3) * 10 ** 6 - 5000]
    assert rest.column("sip_timestamp").cast(pa.int64()).to_pylist() == [(T0 + 3) * 10 ** 3]   # and in us


def test_a_rest_quote_is_keyed_by_its_sequence_number(data_dir):
    rig = Rig(data_dir, subscriptions=("Q.SPY",))
    rig.send([quote_event(T0, sequence=5)])
    rig.writer.accept_items([RestBars("SPY", [quote_result(quote_event(T0, sequence=5)),
                                              quote_result(quote_event(T0 + 1, sequence=6))], 0, "Q",
                                      requested=(T0, T0 + 1))])
    assert rig.writer.flush() and read(data_dir, "Q").num_rows == 2 and rig.stats.rows_backfilled == 1


@pytest.mark.parametrize("channel, event, reason", [
    ("T", trade_event(T0, price=0.0), "bad_price"),
    ("T", trade_event(T0, price=float("inf")), "bad_price"),
    ("T", trade_event(T0, size=-5), "bad_volume"),
    ("T", trade_event(T0, trade_id=""), "bad_id"),
    ("T", trade_event(T0, symbol="spy"), "bad_symbol"),
    ("T", trade_event(T0, symbol="IWM"), "unsubscribed"),
    ("T", {**trade_event(T0), "t": -1}, "bad_times"),
    ("T", {**trade_event(T0), "p": None}, "missing_field"),
    ("T", {**trade_event(T0), "c": "12"}, "bad_type"),
    ("Q", quote_event(T0, bid=-1.0), "bad_price"),
    ("Q", {**quote_event(T0), "as": -3}, "bad_volume"),
    ("Q", quote_event(T0, sequence=-1), "bad_id"),
    ("Q", {**quote_event(T0), "q": None}, "missing_field"),
    ("Q", {**quote_event(T0), "i": [1.5]}, "bad_type"),
])
def test_each_channel_has_its_rules_counted_by_reason(channel, event, reason):
    table, rejected = frames_to_table([(0, frame([event]))], channel)
    kept = rules((f"{channel}.SPY",), channel).apply(table, rejected)
    assert kept.num_rows == 0 and rejected == Counter({reason: 1})


def test_a_one_sided_quote_is_kept():
    table, rejected = frames_to_table([(0, frame([quote_event(T0, bid=0.0)]))], "Q")
    assert rules(("Q.SPY",), "Q").apply(table, rejected).num_rows == 1 and not rejected


def test_events_of_a_channel_nobody_subscribed_are_wrong_events(data_dir):
    rig = Rig(data_dir, subscriptions=("A.SPY",))
    rig.send([agg_event(T0), trade_event(T0), quote_event(T0)])
    assert rig.stats.rejected_reasons == {"wrong_event": 2} and rig.stats.rows_pending == 1


def test_rest_results_map_to_the_same_columns_as_the_stream():
    table, rejected = rest_table("SPY", [trade_result(trade_event(T0))], "T")
    assert not rejected and table.column("trade_id").to_pylist() == ["1"] and table.column("exchange").to_pylist() == [4]
    table, rejected = rest_table("SPY", [{"sip_timestamp": 1}], "Q")
    assert rejected == Counter(missing_field=1)


def test_a_trade_gap_is_asked_between_the_last_trade_and_the_next_one(data_dir):
    gaps: list[Gap] = []
    rig = Rig(data_dir, subscriptions=("T.*",))
    rig.writer.request_backfill = gaps.append
    for lane in rig.writer.lanes.values():
        lane.backfill = True
    rig.send([trade_event(T0, "SPY"), trade_event(T0 + 10, "QQQ", trade_id="7")])
    rig.writer.accept_items([GAP_POSSIBLE])
    assert set(rig.writer.lanes["T"].gap_from) == {"SPY", "QQQ"}        # a wildcard: every symbol seen today
    rig.send([trade_event(T0 + 500, "SPY", trade_id="3")])
    assert gaps == [Gap("SPY", T0, T0 + 500, "T")]


def test_trades_and_quotes_come_from_v3_in_pages(data_dir):
    with FakePolygon(api_key=TEST_API_KEY) as fake:
        fake.add_ticks("trades", "SPY", [trade_result(trade_event(T0 + i, trade_id=str(i))) for i in range(25)])
        client = make_rest_client(TEST_API_KEY, fake.rest_base_url, timeout_seconds=2)
        pages = list(iter_tick_pages(client, "trades", "SPY", T0 + 5, T0 + 19, page_limit=4))
        assert [len(page) for page in pages] == [4, 4, 4, 3]
        assert [row["id"] for page in pages for row in page] == [str(i) for i in range(5, 20)]
        path, query = fake.rest_requests[0]
        assert path == "/v3/trades/SPY" and query["timestamp.gte"] == str((T0 + 5) * 10 ** 6)
        assert query["timestamp.lt"] == str((T0 + 20) * 10 ** 6)
        fake.add_ticks("quotes", "SPY", [quote_result(quote_event(T0, sequence=1))])
        pages = list(channel_for("Q").fetch(client, "SPY", T0, T0))
        assert pages == [[quote_result(quote_event(T0, sequence=1))]]


def test_a_pushed_trade_reaches_a_trade_subscriber_only():
    with FakePolygon(api_key=TEST_API_KEY) as fake:
        fake.add_to_timeline([trade_event(T0)])
        assert fake.timeline == {}                         # trades are not second bars for /v2/aggs


@pytest.mark.parametrize("subscriptions", [["LULD.SPY"], ["A.SPY", "FMV.*"], ["A.spy"], ["A."]])
def test_an_unsupported_channel_is_refused_at_start_up(config_file, subscriptions):
    with pytest.raises(ConfigError, match="polygon.subscriptions"):
        load_config(config_file(polygon={"subscriptions": subscriptions}))


def test_wildcards_and_the_new_keys_are_accepted(config_file):
    config = load_config(config_file(polygon={"subscriptions": ["A.*", "T.*", "Q.*", "AM.SPY", "A.BRK.B"]}))
    assert config.polygon.subscriptions == ("A.*", "T.*", "Q.*", "AM.SPY", "A.BRK.B")
    assert config.polygon.rest_max_requests_per_second == 20 and config.market_hours.extended_hours is False
    config = load_config(config_file(polygon={"rest_max_requests_per_second": 5},
                                     streaming={"market_hours": {"extended_hours": True}}))
    assert config.polygon.rest_max_requests_per_second == 5 and config.market_hours.extended_hours is True
    for bad in (0, True, "fast", 10_000):
        with pytest.raises(ConfigError, match="rest_max_requests_per_second"):
            load_config(config_file(polygon={"rest_max_requests_per_second": bad}))
