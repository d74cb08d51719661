"""Fuzzing the writer with whatever a server could send.

Frames mix valid bars with garbage of every kind (wrong types, deep nesting, huge numbers, NaN and
infinities, unicode and lone surrogates, bytes that are not UTF-8, non-lists, nulls, missing and extra
fields, implausible values, unsubscribed symbols). A real BatchWriter and ParquetSink take them; the
properties: nothing raises (the writer thread would die), every valid bar is stored exactly once, each
refusal is counted under a known reason, and the day reads back with pyarrow and DuckDB.
"""
from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow.dataset as ds
from hypothesis import event, given, settings, strategies as st

from conftest import ANY_TIME, FakeClock
from fake_polygon import agg_event
from channel_parsing import events_one_by_one, frames_to_table, rules as channel_rules
from spy_streamer.channels import REASONS
from spy_streamer.channels.base import MAX_SHARES
from spy_streamer.capture.queue_items import RestBars
from test_batch_writer import SESSION_NOW, Rig, ms, ny

OPEN_MS = ms(ny(2025, 6, 10, 9, 30))
SUBSCRIBED = ("SPY", "QQQ")
SUBSCRIPTIONS = tuple(f"A.{symbol}" for symbol in SUBSCRIBED)
DEEP = "[" * 3000 + "]" * 3000

# --- valid bars ---

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=8)
prices = st.floats(min_value=0.01, max_value=1e6, allow_nan=False)


@st.composite
def valid_bars(draw, second: int) -> dict:
    """A plausible bar of a subscribed symbol starting `second` s after the open; optional fields may be
    missing, unknown fields may be added."""
    low, high = sorted([draw(prices), draw(prices)])
    event = agg_event(OPEN_MS + second * 1000, draw(st.sampled_from(SUBSCRIBED)))
    event.update(l=low, h=high, o=draw(st.floats(low, high)), c=draw(st.floats(low, high)),
                 v=draw(st.integers(0, MAX_SHARES - 1)), e=event["s"] + draw(st.sampled_from([1000, 60_000])))
    for key in draw(st.sets(st.sampled_from(["vw", "a", "z", "op", "av"]))):
        del event[key]
    extra = draw(st.dictionaries(st.sampled_from(["n", "x", "i", "T"]), json_values, max_size=2))
    return {**extra, **event}


# --- garbage: each strategy gives the text of one array element that is not a storable bar ---

def broken(event: dict, change: dict, drop: tuple[str, ...] = ()) -> dict:
    event = {**event, **change}
    for key in drop:
        event.pop(key, None)
    return event


def breakages(event: dict) -> st.SearchStrategy[dict]:
    """`event` changed so that it can never be stored."""
    huge = 2 ** 63
    return st.sampled_from([
        broken(event, {"ev": "T"}), broken(event, {}, ("ev",)), broken(event, {}, ("sym",)), broken(event, {}, ("c",)),
        broken(event, {"v": "100"}), broken(event, {"otc": "yes"}), broken(event, {"dv": "1e3"}), broken(event, {"v": 1.5}), broken(event, {"v": True}), broken(event, {"v": huge}),
        broken(event, {"s": str(event["s"])}), broken(event, {"o": None}), broken(event, {"h": [1]}),
        broken(event, {"sym": ""}), broken(event, {"sym": "../../etc/passwd"}), broken(event, {"sym": "IWM"}),
        broken(event, {"sym": "\ud800"}), broken(event, {"sym": "S" * 5000}), broken(event, {"sym": 5}),
        broken(event, {"v": -1}), broken(event, {"o": -1.0, "l": -2.0}), broken(event, {"h": 0.001, "l": 0.002}),
        broken(event, {"o": math.nan}), broken(event, {"c": math.inf}), broken(event, {"vw": -math.inf}),
        broken(event, {"e": 4611686018427387904}), broken(event, {"e": event["s"]}), broken(event, {"e": event["s"] - 1}),
    ])


raw_garbage = st.sampled_from([DEEP, "9" * 5000, "-" + "9" * 400, "1e999", "NaN", "null", "true", '"\\ud800"',
                               '{"ev": "A", "x": ' + DEEP + "}", "{}", "[]", '{"ev": null}'])


@st.composite
def garbage_elements(draw, template: dict) -> str:
    kind = draw(st.sampled_from(["value", "broken", "raw"]))
    if kind == "value":
        return json.dumps(draw(json_values))
    if kind == "broken":
        return json.dumps(draw(breakages(template)))
    return draw(raw_garbage)


# --- frames ---

@st.composite
def mixed_frames(draw, seconds: list[int]) -> tuple[str | bytes, list[dict]]:
    """(a frame holding valid bars at these seconds among garbage, the valid bars)."""
    bars = [draw(valid_bars(second)) for second in seconds]
    template = bars[0] if bars else agg_event(OPEN_MS)
    elements = [json.dumps(event) for event in bars]
    for _ in range(draw(st.integers(0, 4))):
        elements.insert(draw(st.integers(0, len(elements))), draw(garbage_elements(template)))
    separator = draw(st.sampled_from([",", ", ", ",\n", " ,\r\n "]))   # a frame may span lines
    text = "[" + separator.join(elements) + "]"
    if draw(st.booleans()):
        return text, bars
    # Bytes; maybe with a byte that is not UTF-8 inside an element nobody stores.
    data = text.encode("utf-8")
    if draw(st.booleans()):
        data = data[:-1] + b',{"note": "\xff\xfe"}]' if elements else b'[{"note": "\xff"}]'
    return data, bars


whole_garbage = st.one_of(
    st.binary(max_size=64), st.text(max_size=64), st.sampled_from([DEEP, "[" * 3000, "null", '{"ev": "A"}', "",
                                                                  "[" + "1" * 5000 + "]", "\ufeff[]"]),
    json_values.map(json.dumps))


@st.composite
def sessions(draw) -> tuple[list, list[dict]]:
    """(queue items in order: frames, garbage frames and REST results; the valid live bars among them)."""
    count = draw(st.integers(0, 20))
    seconds = draw(st.permutations(range(count)))
    items, valid, at = [], [], 0
    while at < count or draw(st.integers(0, 3)) == 0:
        if at >= count and len(items) > 12:
            break
        if draw(st.integers(0, 4)) == 0:
            items.append((0, draw(whole_garbage)))
            continue
        take = draw(st.integers(0, min(6, count - at)))
        text, bars = draw(mixed_frames(seconds[at:at + take]))
        at += take
        items.append((draw(st.integers(0, 2 ** 62)), text))
        valid.extend(bars)
        if draw(st.integers(0, 5)) == 0:   # REST results that are garbage too: stored never, counted always
            items.append(RestBars("SPY", draw(st.lists(json_values | breakages(agg_event(OPEN_MS)), max_size=3)), 0,
                                   requested=ANY_TIME))
    return items, valid


def stored_rows(data_dir: Path) -> list[dict]:
    if not (data_dir / "A").exists():
        return []
    table = ds.dataset(data_dir / "A", format="parquet", partitioning="hive").to_table()
    pattern = str(data_dir / "A" / "*" / "*.parquet")
    ((count, _),) = duckdb.sql(f"SELECT count(*), max(\"end\") FROM read_parquet('{pattern}', hive_partitioning=true)"
                               ).fetchall()
    assert count == table.num_rows
    return table.to_pylist()


@settings(max_examples=40)
@given(sessions(), st.integers(1, 2000))
def test_whatever_is_sent_the_writer_survives_and_stores_each_valid_bar_once(session, batch):
    items, valid = session
    with tempfile.TemporaryDirectory() as folder:
        rig = Rig(Path(folder), clock=FakeClock(SESSION_NOW), subscriptions=SUBSCRIPTIONS)
        for at in range(0, len(items), batch):   # the writer takes the queue in runs of any length
            rig.writer.accept_items(items[at:at + batch])
        assert rig.writer.flush() is True
        rows = stored_rows(Path(folder))
    assert sorted((row["symbol"], ms(row["start"]), row["volume"], row["open"]) for row in rows) == \
        sorted((bar["sym"], bar["s"], bar["v"], bar["o"]) for bar in valid)
    assert rig.stats.duplicates == 0 and rig.stats.rows_written == len(valid)
    assert set(rig.stats.rejected_reasons) <= set(REASONS)
    assert sum(rig.stats.rejected_reasons.values()) == rig.stats.rejected_invalid
    for reason in rig.stats.rejected_reasons:
        event(reason)   # --hypothesis-show-statistics: how often each refusal was exercised


@settings(max_examples=300)
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_no_bytes_make_parsing_raise(data):
    table, rejected = frames_to_table([(0, data)])
    assert set(rejected) <= set(REASONS)


# Well-typed events with any values: the fast path takes them, so both paths can be compared.
typed_events = st.fixed_dictionaries(
    {"ev": st.sampled_from(["A", "A", "A", "AM"]), "sym": st.sampled_from(["SPY", "QQQ", "IWM", "", "spy", "B.B"]),
     "s": st.integers(-2 ** 63, 2 ** 63 - 1) | st.integers(OPEN_MS, OPEN_MS + 10_000),
     "e": st.integers(-2 ** 63, 2 ** 63 - 1) | st.integers(OPEN_MS, OPEN_MS + 20_000),
     "o": st.floats(), "h": st.floats(), "l": st.floats(), "c": st.floats(), "v": st.integers(-2 ** 63, 2 ** 63 - 1)},
    optional={"vw": st.floats(), "a": st.floats(), "z": st.floats(), "op": st.floats(),
              "av": st.integers(-2 ** 63, 2 ** 63 - 1)})
typed_events = typed_events | st.builds(lambda second: agg_event(OPEN_MS + second * 1000), st.integers(0, 100))


@settings(max_examples=150)
@given(st.lists(typed_events, max_size=8))
def test_the_fast_and_the_per_event_paths_store_and_refuse_alike(events):
    """One definition of the rules: pyarrow's columnar reader and json.loads event by event agree."""
    text = json.dumps(events)
    fast, fast_rejected = frames_to_table([(0, text)])
    slow, slow_rejected = events_one_by_one(json.loads(text))
    rules = channel_rules(("A.SPY", "A.QQQ", "A.B.B"))
    assert rules.apply(fast, fast_rejected).equals(rules.apply(slow, slow_rejected))
    assert fast_rejected == slow_rejected
    assert sum(fast_rejected.values()) + rules.apply(fast, Counter()).num_rows == len(events)


# Trades and quotes: well-typed events with any values go through both paths alike, and nothing raises.
ints = st.integers(-2 ** 63, 2 ** 63 - 1)
trade_events = st.fixed_dictionaries(
    {"ev": st.sampled_from(["T", "T", "Q"]), "sym": st.sampled_from(["SPY", "IWM", "", "spy"]), "x": ints,
     "i": st.text(max_size=3), "p": st.floats(), "s": st.integers(-10, 2 ** 40) | st.floats(), "t": ints},
    optional={"c": st.lists(ints, max_size=3), "q": ints, "z": ints, "trfi": ints, "trft": ints})
quote_events = st.fixed_dictionaries(
    {"ev": st.sampled_from(["Q", "Q", "T"]), "sym": st.sampled_from(["SPY", "IWM", "", "spy"]), "t": ints, "q": ints},
    optional={"bp": st.floats(), "ap": st.floats(), "bs": st.integers(-10, 10) | st.floats(), "as": st.floats(),
              "bx": ints, "ax": ints, "c": ints, "i": st.lists(ints, max_size=3), "z": ints, "trft": ints})


@settings(max_examples=150)
@given(st.sampled_from(["T", "Q"]), st.data())
def test_trades_and_quotes_take_both_paths_alike(channel, data):
    events = data.draw(st.lists(trade_events if channel == "T" else quote_events, max_size=6))
    text = json.dumps(events)
    fast, fast_rejected = frames_to_table([(0, text)], channel)
    slow, slow_rejected = events_one_by_one(json.loads(text), channel)
    checked = channel_rules((f"{channel}.SPY",), channel)
    assert checked.apply(fast, fast_rejected).equals(checked.apply(slow, slow_rejected))
    assert fast_rejected == slow_rejected and set(fast_rejected) <= set(REASONS)


@settings(max_examples=100)
@given(st.lists(trade_events | quote_events | json_values, max_size=6))
def test_a_writer_of_every_channel_survives_anything(events):
    with tempfile.TemporaryDirectory() as folder:
        rig = Rig(Path(folder), clock=FakeClock(SESSION_NOW), subscriptions=("A.*", "AM.SPY", "T.*", "Q.SPY"))
        rig.writer.accept_frame(0, json.dumps(events))
        assert rig.writer.flush()
        assert set(rig.stats.rejected_reasons) <= set(REASONS)
