"""The compiled frame parser (channels/_frame_columns.c) against pyarrow's JSON reader, its oracle.

For any text, the compiled parser either refuses (None: the reader and the per-event path then decide) or
gives exactly the columns the reader gives. It must take every well-formed frame of Polygon's events, in
any spelling (spacing, key order, escapes), or the fast path would fall off a cliff. Doubles are correctly
rounded (equal to Python's float()). Nothing it is given crashes it.
"""
from __future__ import annotations

import json
from decimal import Decimal
import math
import random

import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from spy_streamer.channels import channel_for, frame_columns, parsing
from spy_streamer.channels.base import DECIMAL, DECIMAL_PATTERN
from spy_streamer.demo.replay_events import agg_event, quote_event, trade_event

pytestmark = pytest.mark.skipif(not frame_columns.AVAILABLE, reason="the compiled parser is not built")

CHANNELS = ("A", "AM", "T", "Q")


def fields_of(name: str) -> dict[str, pa.DataType]:
    return parsing._event_fields(channel_for(name))


def reader_columns(name: str, texts: list[str]):
    """The reader's columns, or None when it refuses the frames."""
    fields = fields_of(name)
    try:
        lists = parsing._read_lines(texts, parsing._reader_options(channel_for(name), fields)).column("f")
    except (ValueError, pa.ArrowException):
        return None
    lists = lists.combine_chunks()
    if lists.null_count or lists.flatten().null_count:
        return None   # `null` frames or events: the reader's to take (and count)
    events = lists.flatten()
    return {key: events.field(key) for key in fields}, [len(frame) for frame in lists.to_pylist()]


def assert_agrees(name: str, texts: list[str], must_take: bool = False) -> None:
    parsed = frame_columns.parse(texts, fields_of(name))
    if parsed is None:
        assert not must_take, f"refused well-formed frames: {texts[:1]}"
        return
    expected = reader_columns(name, [text.replace("\n", " ").replace("\r", " ") for text in texts])
    assert expected is not None, f"took frames the reader refuses: {texts}"
    columns, per_frame = parsed
    want, want_per_frame = expected
    assert list(per_frame) == want_per_frame
    for key, column in columns.items():
        column.validate(full=True)
        expected_column = want[key].cast(DECIMAL) if column.type == DECIMAL else want[key]   # to_schema's cast
        assert column.equals(expected_column), (key, column, expected_column)


# --- events of each channel, as Polygon's documentation shows them, with values drawn ---

ints = st.integers(-2**63, 2**63 - 1)
doubles = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-2**53, 2**53)
texts = st.text(max_size=12)
VALUES = {pa.string(): texts, pa.int64(): ints, pa.float64(): doubles, pa.bool_(): st.booleans(),
          pa.list_(pa.int64()): st.lists(ints, max_size=4), DECIMAL: st.from_regex(DECIMAL_PATTERN, fullmatch=True)}
unknown = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts,
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                       max_leaves=6)


@st.composite
def events(draw, name: str) -> dict:
    event = {"ev": name}
    for key, kind in fields_of(name).items():
        if key != "ev" and draw(st.integers(0, 9)):   # now and then a key is missing...
            event[key] = None if not draw(st.integers(0, 9)) else draw(VALUES[kind])   # ...or null
    event.update(draw(st.dictionaries(st.sampled_from(["n", "zz", "T", "extra"]), unknown, max_size=2)))
    order = draw(st.permutations(list(event)))
    return {key: event[key] for key in order}


@st.composite
def frames(draw, name: str) -> list[str]:
    spellings = [dict(separators=(",", ":")), dict(separators=(", ", ": ")), dict(indent=1),
                 dict(separators=(",", ":"), ensure_ascii=False)]
    spelling = draw(st.sampled_from(spellings))
    return [json.dumps(draw(st.lists(events(name), max_size=4)), **spelling)
            for _ in range(draw(st.integers(1, 4)))]


@pytest.mark.parametrize("name", CHANNELS)
@settings(max_examples=60)
@given(data=st.data())
def test_well_formed_frames_of_every_channel_are_taken_and_agree_with_the_reader(name, data):
    texts = data.draw(frames(name))
    assert_agrees(name, texts, must_take=True)


@settings(max_examples=150)
@given(texts=frames("T"), cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6),
                                                  st.text(max_size=3)), min_size=1, max_size=3))
def test_mangled_frames_are_refused_or_agree_with_the_reader(texts, cuts):
    """Bytes removed, inserted or replaced anywhere: a refusal, or the reader's own answer."""
    mangled = []
    for text in texts:
        for start, length, insert in cuts:
            start %= len(text) + 1
            text = text[:start] + insert + text[start + length % 4:]
        mangled.append(text)
    assert_agrees("T", mangled)


@settings(max_examples=300)
@given(number=st.from_regex(r"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?\Z"))
def test_doubles_are_correctly_rounded(number):
    parsed = frame_columns.parse([f'[{{"p":{number}}}]'], {"p": pa.float64()})
    expected = float(number)
    if math.isinf(expected):
        assert parsed is None   # the reader decides what an overflow is
    else:
        value = parsed[0]["p"][0].as_py()
        assert value == expected and math.copysign(1, value) == math.copysign(1, expected), (number, value)


@pytest.mark.parametrize("text, taken", [
    ('[{"v":9223372036854775807}]', True), ('[{"v":-9223372036854775808}]', True),
    ('[{"v":9223372036854775808}]', False), ('[{"v":1.0}]', False), ('[{"v":1e3}]', False),
    ('[{"v":01}]', False), ('[{"v":-}]', False), ('[{"v":+1}]', False), ('[{"v":"1"}]', False),
    ('[{"sym":"\\ud83d\\ude00"}]', True), ('[{"sym":"\\ud83d"}]', False), ('[{"sym":"\\ude00"}]', False),
    ('[{"sym":"a\\u0000b"}]', True), ('[{"sym":"tab\there"}]', False), ('[{"sym":"\\x"}]', False),
    ('[{"sym":"a","sym":"b"}]', False), ('[{"s\\u0079m":"SPY"}]', True), ('[{"sym":1}]', False),
    ('[{"dv":"12345678901234567890.123456789012345678"}]', True), ('[{"dv":"-0.5"}]', True),
    ('[{"dv":"123456789012345678901"}]', False), ('[{"dv":"1.1234567890123456789"}]', False),
    ('[{"dv":"1."}]', False), ('[{"dv":".5"}]', False), ('[{"dv":"1e3"}]', False), ('[{"dv":100}]', False),
    ('[{"otc":true}]', True), ('[{"otc":1}]', False), ('[{"otc":tru}]', False), ('[{"c":[1,2,3]}]', True),
    ('[{"c":[1,null]}]', False), ('[{"c":[1.5]}]', False), ('[{"c":[]}]', True), ('[{"c":{}}]', False),
    ('[]', True), ('[{}]', True), ('null', False), ('[null]', False), ('[1]', False), ('{}', False),
    ('[{"x":1}] [{"x":1}]', False), ('[{"x":1},]', False), ('[,{"x":1}]', False), ('[{"x":1}{"x":2}]', False),
    ('[{"x" 1}]', False), ('[{"x":1,}]', False), ('[{"n":' + "[" * 100 + "]" * 100 + "}]", False),
    ('[{"n":' + "[" * 10 + "]" * 10 + "}]", True), ('[{"n":{"a":[1,{"b":"\\u00e9"}]}}]', True), ("", False),
    (' \n\t[ { "x" : 1 } ]\r\n ', True), ('[{"x":1}', False), ('[{"x":1}]]', False), ('["x"]', False),
])
def test_edges_of_the_grammar(text, taken):
    name, fields = "T", fields_of("T")
    fields = {**fields, "v": pa.int64(), "otc": pa.bool_(), "dv": DECIMAL}
    parsed = frame_columns.parse([text], fields)
    assert (parsed is not None) == taken, text
    if taken:
        columns, per_frame = parsed
        expected = json.loads(text)
        assert list(per_frame) == [len(expected)]
        for index, event in enumerate(expected):
            for key, value in event.items():
                if key in columns:
                    assert columns[key][index].as_py() == (Decimal(value) if key == "dv" else value), text


def test_frames_that_are_not_text_or_not_utf8_are_refused():
    assert frame_columns.parse([b'[{"x":1}]'], fields_of("T")) is None
    assert frame_columns.parse(['[{"i":"\ud800"}]'], fields_of("T")) is None   # a lone surrogate


def test_random_bytes_never_crash_it():
    generator = random.Random(20261205)
    alphabet = '[]{}",:0123456789.eE-+ \\utrfalsn"x"ev"sym'
    for _ in range(3000):
        text = "".join(generator.choice(alphabet) for _ in range(generator.randint(0, 60)))
        assert_agrees("T", [text])


def test_the_list_given_may_change_while_it_parses():
    """The parser reads a copy of the list, holding each frame: the caller's list is its own."""
    texts = ['[{"ev":"T","sym":"SPY","p":1.5}]'] * 1000
    parsed = frame_columns.parse(texts, fields_of("T"))
    texts.clear()
    assert parsed[0]["sym"].to_pylist() == ["SPY"] * 1000


# --- the whole fast path, with and without the compiled parser ---

SAMPLES = {
    "A": lambda i: agg_event(1_767_000_000_000 + i * 1000, f"S{i % 7}", volume=100 + i) | {"dv": f"{100 + i}.25"},
    "AM": lambda i: agg_event(1_767_000_000_000 + i * 60_000, f"S{i % 7}") | {"ev": "AM"},
    "T": lambda i: trade_event(1_767_000_000_000 + i, f"S{i % 7}", trade_id=str(i), trf_id=i % 3 or None) | {"ds": "0.5"},
    "Q": lambda i: quote_event(1_767_000_000_000 + i, f"S{i % 7}", sequence=i, trf_id=i % 2 or None),
}


@pytest.mark.parametrize("name", CHANNELS)
@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_the_fast_path_stores_the_same_table_with_or_without_the_compiled_parser(monkeypatch, name, separators):
    """The reader's path is what a machine without a C compiler runs: the same rows, the same counts."""
    events = [SAMPLES[name](i) for i in range(300)]
    events[5] = {**events[5], "p": "not a price", "o": "not a price"}       # a frame the parsers refuse
    events[9] = {**events[9], "ev": "XX"}                                  # an event of no channel
    events[11] = {key: value for key, value in events[11].items() if key != "sym"}   # a required key missing
    frames = [(1_767_000_000_000_000_000 + i, json.dumps(events[i:i + 25], separators=separators))
              for i in range(0, 300, 25)]
    channels = {name: channel_for(name)}
    compiled = parsing.parse_frames(channels, frames)
    monkeypatch.setattr(frame_columns, "AVAILABLE", False)
    reader = parsing.parse_frames(channels, frames)
    assert compiled[1] == reader[1] and sum(compiled[1].values()) >= 2
    assert pa.concat_tables(compiled[0][name]).equals(pa.concat_tables(reader[0][name]))
    assert pa.concat_tables(compiled[0][name]).num_rows >= 250
