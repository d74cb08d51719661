"""Only plausible bars of subscribed symbols are stored (channels.rules.ChannelRules), on every path, each
refusal counted under its reason; whatever is sent, the day reads back with pyarrow, DuckDB and pandas."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from conftest import ANY_TIME, ny
from fake_polygon import agg_event
from channel_parsing import events_one_by_one, frames_to_table, rest_table, rules as channel_rules
from spy_streamer.channels import REASONS
from test_batch_writer import Rig, data_dir, frame, ms, parquet_files, rig, stored_keys  # noqa: F401 (fixtures data_dir, rig)

START = ms(ny(2025, 6, 10, 9, 45))
FAR_END = 4611686018427387904   # the `e` of the defect report: no reader can open it as a timestamp


def bar(second: int = 0, symbol: str = "SPY", **fields) -> dict:
    return dict(agg_event(START + second * 1000, symbol), **fields)


def implausible() -> list[tuple[str, dict]]:
    """(reason, event) for each way a well-typed event can be implausible."""
    return [
        ("bad_times", bar(1, e=FAR_END)),
        ("bad_times", bar(2, e=START + 2000 - 1000)),                 # end == start
        ("bad_times", bar(3, e=START + 3000 - 5000)),                 # end before start
        ("bad_times", bar(4, e=START + 4000 + 86_400_001)),           # more than a day long
        ("bad_volume", bar(5, v=-1)),
        ("bad_volume", bar(6, av=-100)),
        ("bad_volume", bar(7, z=-1)),
        ("bad_price", bar(8, o=-500.0, l=-501.0)),
        ("bad_price", bar(9, c=0.0, l=0.0)),
        ("bad_price", bar(10, vw=-1.0)),
        ("bad_price", bar(11, op=0)),
        ("bad_range", bar(12, h=499.0)),                               # high below low
        ("bad_range", bar(13, o=600.0)),                               # open above high
        ("bad_range", bar(14, c=400.0)),                               # close below low
        ("bad_symbol", bar(15, symbol="")),
        ("bad_symbol", bar(16, symbol="S" * 500_000)),
        ("bad_symbol", bar(17, symbol="../../etc/passwd")),
        ("bad_symbol", bar(18, symbol="spy")),
        ("bad_symbol", bar(19, symbol="SPY\n")),
        ("unsubscribed", bar(20, symbol="IWM")),
    ]


def non_finite() -> list[tuple[str, str]]:
    """(reason, event text): NaN and infinities, which JSON has no words for but parsers accept."""
    text = json.dumps(bar(30))
    return [("bad_price", text.replace('"o": 500.0', '"o": NaN')),
            ("bad_price", text.replace('"h": 500.05', '"h": Infinity')),
            ("bad_price", text.replace('"vw": 500.01', '"vw": 1e999')),
            ("bad_price", text.replace('"l": 499.97', '"l": -Infinity')),
            ("bad_volume", text.replace('"z": 10', '"z": Infinity'))]


def good_bars() -> list[dict]:
    return [bar(40), bar(41, symbol="QQQ"), bar(42, vw=None, a=None, z=None, op=None, av=None),
            bar(43, o=500.0, h=500.0, l=500.0, c=500.0)]                   # a flat bar is fine


def read_day_everywhere(data_dir) -> int:
    """Rows of the whole data set read by pyarrow, DuckDB (hive, as the defect report did) and pandas."""
    table = ds.dataset(data_dir / "A", format="parquet", partitioning="hive").to_table()
    assert table.column("start").to_pylist() is not None and table.column("end").to_pylist() is not None
    pattern = str(data_dir / "A" / "*" / "*.parquet")
    rows = duckdb.sql(f"SELECT symbol, start, \"end\" FROM read_parquet('{pattern}', hive_partitioning=true)").fetchall()
    assert len(rows) == table.num_rows
    pandas = pytest.importorskip("pandas")
    assert len(pandas.read_parquet(data_dir / "A")) == table.num_rows
    return table.num_rows


def test_implausible_bars_are_rejected_by_reason_and_the_day_stays_readable(rig, data_dir):
    """Regression: e = 4611686018427387904 was stored and DuckDB's read of the day failed (timestamp out
    of range); negative volumes and prices, high < low, end before start, empty, huge and path-like
    symbols and unsubscribed symbols were all stored as real data."""
    cases = implausible()
    good = good_bars()
    rig.send([event for _, event in cases] + good)
    rig.send([good[0]])  # a repeat still counts as a repeat, not as invalid
    assert rig.stats.rejected_reasons == dict(Counter(reason for reason, _ in cases))
    assert rig.stats.rejected_invalid == len(cases)
    assert rig.stats.duplicates == 1
    assert rig.writer.flush() is True
    assert read_day_everywhere(data_dir) == len(good)
    assert sorted(stored_keys(data_dir)) == sorted((event["sym"], event["s"]) for event in good)


def test_nan_and_infinite_values_are_rejected(rig, data_dir):
    cases = non_finite()
    rig.writer.accept_frame(rig.clock.time_ns(), "[" + ",".join(text for _, text in cases) + "]")
    assert rig.stats.rejected_reasons == dict(Counter(reason for reason, _ in cases))
    assert rig.writer.flush() is True and parquet_files(data_dir) == []


def test_the_per_event_path_applies_the_same_rules(rig, data_dir):
    """A frame the fast path refuses (here: a string volume) goes event by event: same rules, same reasons."""
    cases = implausible()
    wrong_type = bar(50, v="100")
    rig.send([event for _, event in cases] + good_bars() + [wrong_type])
    assert rig.stats.rejected_reasons == dict(Counter(reason for reason, _ in cases) + Counter(bad_type=1))
    assert rig.writer.flush() is True
    assert read_day_everywhere(data_dir) == len(good_bars())


def test_rest_results_pass_the_same_rules(rig, data_dir):
    def result(second: int, **fields) -> dict:
        return dict({"t": START + second * 1000, "o": 500.0, "h": 500.5, "l": 499.5, "c": 500.2, "v": 10,
                     "vw": 500.1, "n": 3}, **fields)

    results = [result(0), result(1, v=-5), result(2, h=1.0), result(3, o=float("nan")), result(4, c=0),
               result(5, t=-1000), result(6, o="500")]
    rig.writer.accept_rest_results("SPY", results, rig.clock.time_ns(), "A", ANY_TIME)
    rig.writer.accept_rest_results("IWM", [result(7)], rig.clock.time_ns(), "A", ANY_TIME)
    rig.writer.accept_rest_results("../x", [result(8)], rig.clock.time_ns(), "A", ANY_TIME)
    assert rig.stats.rejected_reasons == {"bad_volume": 1, "bad_range": 1, "bad_price": 2, "bad_times": 1,
                                          "bad_type": 1, "unsubscribed": 1, "bad_symbol": 1}
    assert rig.writer.flush() is True
    assert stored_keys(data_dir) == [("SPY", START)]


@pytest.mark.parametrize("symbol", ["SPY", "A", "BRK.B", "ABC-P", "BACpB", "ABCw", "I:SPX", "X" * 24,
                                    "O:SPY251219C00650000", "3M"])
def test_plausible_tickers_are_stored_under_a_wildcard(data_dir, symbol):
    rig = Rig(data_dir, subscriptions=("A.*",))
    rig.send([bar(0, symbol=symbol)])
    assert rig.stats.rejected_invalid == 0 and rig.stats.rows_pending == 1


@pytest.mark.parametrize("symbol", ["", "spy", ".SPY", "-A", "X" * 25, "SP Y", "SPY/", "ÄPY", "SPY\u0000",
                                    "../../etc/passwd", "\ud800"])
def test_implausible_tickers_are_refused_even_under_a_wildcard(data_dir, symbol):
    rig = Rig(data_dir, subscriptions=("A.*",))
    rig.send([bar(0, symbol=symbol)])
    assert rig.stats.rejected_reasons == {"bad_symbol": 1}


def test_only_the_aggregate_subscriptions_count(data_dir):
    """T.* (trades) or AM.QQQ subscribe to no second aggregate."""
    rig = Rig(data_dir, subscriptions=("A.SPY", "T.*", "AM.QQQ"))
    rig.send([bar(0), bar(0, symbol="QQQ"), bar(0, symbol="MSFT")])
    assert rig.stats.rejected_reasons == {"unsubscribed": 2} and rig.stats.rows_pending == 1


def test_the_heartbeat_can_serialize_the_reasons(rig):
    rig.send([event for _, event in implausible()])
    document = json.loads(json.dumps(dataclasses.asdict(rig.stats), default=str))
    assert set(document["rejected_reasons"]) <= set(REASONS)
    assert sum(document["rejected_reasons"].values()) == document["rejected_invalid"] == len(implausible())


def test_reasons_are_replaced_not_mutated(rig):
    """The heartbeat thread may be iterating the dict: the writer swaps in a new one."""
    rig.send([bar(1, v=-1)])
    before = rig.stats.rejected_reasons
    rig.send([bar(2, v=-1), bar(3, symbol="")])
    assert before == {"bad_volume": 1}
    assert rig.stats.rejected_reasons == {"bad_volume": 2, "bad_symbol": 1}


def test_each_event_is_counted_once_under_its_first_broken_rule(rig):
    """An event breaking several rules counts once, under the first in REASONS order."""
    two_days_on = START + 2 * 86_400_000
    rig.send([bar(1, symbol="", v=-1, e=two_days_on), bar(2, v=-1, h=1.0, e=two_days_on), bar(3, h=1.0, e=two_days_on)])
    assert rig.stats.rejected_reasons == {"bad_symbol": 1, "bad_volume": 1, "bad_range": 1}


def test_the_fast_and_the_per_event_paths_agree():
    """The same events give the same rows and the same reasons by pyarrow's reader and by json.loads."""
    events = [event for _, event in implausible()] + good_bars() + [{"ev": "T"}, {"ev": "A"}, 7, None]
    fast, fast_rejected = frames_to_table([(0, frame(events))])
    slow, slow_rejected = events_one_by_one(json.loads(frame(events)))
    rules = channel_rules(("A.SPY", "A.QQQ"))
    fast = rules.apply(fast, fast_rejected)
    slow = rules.apply(slow, slow_rejected)
    assert fast_rejected == slow_rejected
    assert fast.equals(slow)
    assert fast_rejected == Counter(reason for reason, _ in implausible()) + Counter(
        wrong_event=1, missing_field=1, bad_shape=2)


def test_rest_parsing_alone_checks_only_types():
    """Parsing says whether a result is a bar; whether it is plausible is BarRules' job."""
    table, rejected = rest_table("SPY", [{"t": START, "o": -1.0, "h": 1.0, "l": 1.0, "c": 1.0,
                                                          "v": -1}])
    assert table.num_rows == 1 and not rejected
    assert channel_rules(("A.SPY",)).apply(table, rejected).num_rows == 0
    assert rejected == Counter(bad_price=1)
    assert isinstance(table.column("start").type, pa.TimestampType)
