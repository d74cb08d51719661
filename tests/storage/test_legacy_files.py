"""A day recorded across the upgrade to one schema (issue 19) holds micro-batches of both layouts: the
earlier one (bar times in ms; tick times in ns, no `_ns` columns, null conditions, newer fields missing)
and the current one. Without help no merge unifies them ("the day's files do not share one schema"):
`compact` first rewrites the old ones in the channel's schema, exactly."""
from __future__ import annotations

import json
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq

from fake_polygon import agg_event, trade_event
from spy_streamer.channels import CHANNELS, channel_for
from spy_streamer.channels.parsing import parse_frames
from spy_streamer.storage.compaction import compact_day
from spy_streamer.storage.parquet_sink import ParquetSink

DAY = date(2025, 12, 29)
T0 = 1_767_018_600_000
NS, MS, US = (pa.timestamp(unit, tz="UTC") for unit in ("ns", "ms", "us"))


def old_trades() -> pa.Table:
    """Two trades as the earlier layout stored them (its schema, written out here)."""
    exact = [T0 * 10**6 + 123_456_789, T0 * 10**6 + 987]
    return pa.table({
        "symbol": ["SPY", "SPY"], "sip_timestamp": pa.array(exact, pa.int64()).cast(NS),
        "participant_timestamp": pa.nulls(2, NS), "trf_timestamp": pa.nulls(2, NS),
        "exchange": [4, 4], "trade_id": ["old1", "old2"], "trf_id": pa.nulls(2, pa.int64()), "tape": [1, 1],
        "price": [500.0, 500.5], "size": [10.0, 20.0], "conditions": pa.array([[12], None], pa.list_(pa.int64())),
        "correction": pa.nulls(2, pa.int64()), "sequence_number": [1, 2],
        "received_at": pa.array([T0 * 1000, T0 * 1000], pa.int64()).cast(US), "source": ["ws", "rest"]})


def old_bars() -> pa.Table:
    start = pa.array([T0 - 1000], pa.int64()).cast(MS)
    return pa.table({"symbol": ["SPY"], "start": start, "end": pa.array([T0], pa.int64()).cast(MS),
                     **{name: [500.0] for name in ("open", "high", "low", "close", "vwap", "day_vwap",
                                                   "average_size", "official_open")},
                     "volume": [7], "accumulated_volume": [70],
                     "received_at": pa.array([T0 * 1000], pa.int64()).cast(US), "source": ["ws"]})


def current(events: list[dict], name: str) -> pa.Table:
    tables, rejected = parse_frames(CHANNELS, [(T0 * 10**6, json.dumps(events))])
    assert not rejected
    return tables[name][0]


def test_a_day_of_both_layouts_compacts_into_the_channels_schema(tmp_path):
    sink = ParquetSink(tmp_path)
    sink.write("T", DAY, old_trades(), 1)
    sink.write("T", DAY, current([trade_event(T0 + 5, trade_id="new1", sequence=3)], "T"), 2)
    sink.write("A", DAY, old_bars(), 1)
    sink.write("A", DAY, current([agg_event(T0, "SPY")], "A"), 2)

    for channel in ("T", "A"):
        result = compact_day(tmp_path, DAY, channel=channel)
        table = pq.read_table(result.path)
        assert table.schema.remove_metadata() == channel_for(channel).schema, channel

    trades = {row["trade_id"]: row for row in pq.read_table(compact_day(tmp_path, DAY, "T").path).to_pylist()}
    assert trades["old1"]["sip_timestamp_ns"] == T0 * 10**6 + 123_456_789        # exact, as it was
    assert trades["old1"]["sip_timestamp"].microsecond == 123_456
    assert (trades["old2"]["conditions"], trades["old2"]["source"]) == ([], "rest")
    assert trades["new1"]["sip_timestamp_ns"] == (T0 + 5) * 10**6
    bars = pq.read_table(compact_day(tmp_path, DAY, "A").path).to_pylist()
    assert [(bar["volume"], bar["otc"]) for bar in bars] == [(7, False), (100, False)]
