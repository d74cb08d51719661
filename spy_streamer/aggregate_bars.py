"""Polygon aggregate events -> Arrow tables in the Parquet schema (README "Files", docs/ARCHITECTURE.md), and the rules a bar must pass.

The fast path parses many raw WebSocket frames at once with pyarrow's JSON reader (C++, columnar, off the
GIL): each frame, a JSON array, becomes one NDJSON line `{"f": [...]}`. No Python object is made per event.
A batch the fast path refuses (not JSON, wrong types, odd shapes) is retried frame by frame, and a frame
it still refuses goes through the per-event path, which counts each bad event instead of failing.
REST aggregates (few, already decoded) take the per-event path too. A `source` column tells them apart.

Parsing only decides whether an event *is* a bar (JSON, shape, field types); `BarRules` then decides
whether its values are plausible, on Arrow columns, for every path alike. Whatever the bytes, nothing
here raises: each refused event (or unreadable frame) is counted once, under one reason of REASONS.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

CHANNEL = "A"
MS_UTC = pa.timestamp("ms", tz="UTC")

SCHEMA = pa.schema([
    ("symbol", pa.string()),
    ("start", MS_UTC),
    ("end", MS_UTC),
    ("open", pa.float64()),
    ("high", pa.float64()),
    ("low", pa.float64()),
    ("close", pa.float64()),
    ("vwap", pa.float64()),
    ("day_vwap", pa.float64()),
    ("average_size", pa.float64()),
    ("official_open", pa.float64()),
    ("volume", pa.int64()),
    ("accumulated_volume", pa.int64()),
    ("received_at", pa.timestamp("us", tz="UTC")),
    ("source", pa.string()),
])

# Parquet column <- WebSocket "A" event key. Required keys: an event without them is invalid.
WS_REQUIRED = {"symbol": "sym", "start": "s", "end": "e", "open": "o", "high": "h", "low": "l",
               "close": "c", "volume": "v"}
WS_OPTIONAL = {"vwap": "vw", "day_vwap": "a", "average_size": "z", "official_open": "op",
               "accumulated_volume": "av"}
# Parquet column <- REST /v2/aggs result key (no day VWAP, average size, official open or accumulated volume).
REST_REQUIRED = {"start": "t", "open": "o", "high": "h", "low": "l", "close": "c", "volume": "v"}
REST_OPTIONAL = {"vwap": "vw"}
REST_BAR_MS = 1000  # REST results carry no end: they are the one-second bars asked for

FLOAT_COLUMNS = {"open", "high", "low", "close", "vwap", "day_vwap", "average_size", "official_open"}
INT_COLUMNS = {"start", "end", "volume", "accumulated_volume"}
DATA_COLUMNS = tuple(name for name in SCHEMA.names if name not in ("received_at", "source"))
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
FLOAT_LIMIT = 2 ** 1023  # ints beyond this overflow float()


def subscribed_symbols(subscriptions: tuple[str, ...]) -> tuple[str, ...]:
    """Symbols of the aggregate subscriptions, in order ("A.SPY" -> "SPY"); a wildcard names none."""
    prefix = f"{CHANNEL}."
    return tuple(dict.fromkeys(item[len(prefix):] for item in subscriptions
                               if item.startswith(prefix) and "*" not in item))


# --- the rules: what a stored bar is (one definition, on Arrow columns, for every path) ---

# Why an event was not stored; the heartbeat shows a count per reason (WriterStats.rejected_reasons).
REASONS = (
    "not_json",       # a frame that is not UTF-8 JSON: counted once, its events unknown
    "bad_shape",      # a frame that is not an array, or an element that is not an object
    "wrong_event",    # an object whose "ev" is missing or not "A"
    "missing_field",  # a required key missing or null
    "bad_type",       # a value of the wrong JSON type, or one no int64/float64 holds
    "bad_symbol",     # not a plausible ticker (TICKER_PATTERN)
    "unsubscribed",   # a plausible ticker nobody subscribed to
    "bad_price",      # a price (o h l c vw a op) not finite or not > 0
    "bad_volume",     # a volume (v av) or average size (z) below 0, or z not finite
    "bad_range",      # not low <= min(open, close) <= max(open, close) <= high
    "bad_times",      # start before 1970, end not after start, or end more than MAX_BAR_MS after it
)
# Polygon stock tickers: capitals and digits, "." before a share class (BRK.B), "-" or a lower-case CQS
# suffix for preferreds, rights, warrants, when-issued (ABC-P, BACpB, ABCw), ":" after a market prefix
# (I:SPX). 1 to 24 characters: the longest form (an option, O: + root + 15) fits, a path or a blob does not.
TICKER_PATTERN = r"^[A-Z0-9][A-Za-z0-9.:\-]{0,23}$"
# end - start: one second for "A", a minute for "AM"; a day is generous and keeps `end` a real instant
# (4611686018427387904 ms is one no reader can open).
MAX_BAR_MS = 86_400_000
PRICES = ("open", "high", "low", "close", "vwap", "day_vwap", "official_open")


class BarRules:
    """The checks every bar passes before it is stored, vectorized over a SCHEMA table."""

    def __init__(self, subscriptions: tuple[str, ...]):
        self.any_symbol = f"{CHANNEL}.*" in subscriptions
        self.symbols = pa.array(subscribed_symbols(subscriptions), pa.string())

    def apply(self, table: pa.Table, rejected: Counter) -> pa.Table:
        """The rows of `table` that break no rule; each other row counted in `rejected` under its first broken rule."""
        if not table.num_rows:
            return table
        columns = {name: table.column(name).combine_chunks() for name in DATA_COLUMNS}
        return keep_passing(table, self._checks(columns), rejected)

    def _checks(self, col: dict[str, pa.Array]) -> list[tuple[str, pa.Array | bool]]:
        plausible, subscribed = self._symbol_checks(col["symbol"])
        prices = [col[name] for name in PRICES]
        sizes = [col["volume"], col["accumulated_volume"], col["average_size"]]
        return [("bad_symbol", plausible), ("unsubscribed", subscribed),
                # > 0 refuses NaN and -inf; the row's largest price refuses +inf (skipping missing ones).
                ("bad_price", _all([_present_or(pc.greater(price, 0.0)) for price in prices]
                                   + [pc.less(pc.max_element_wise(*prices), math.inf)])),
                ("bad_volume", _all([_present_or(pc.greater_equal(size, 0)) for size in sizes]
                                    + [_present_or(pc.less(col["average_size"], math.inf))])),
                ("bad_range", _all([pc.less_equal(col["low"], col["open"]), pc.less_equal(col["low"], col["close"]),
                                    pc.less_equal(col["open"], col["high"]), pc.less_equal(col["close"], col["high"])])),
                # start >= 0 and end > start, so end - start cannot wrap around.
                ("bad_times", _all([pc.greater_equal(col["start"], _EPOCH), pc.greater(col["end"], col["start"]),
                                    pc.less_equal(pc.subtract(col["end"], col["start"]), _MAX_BAR)]))]

    def _symbol_checks(self, symbols: pa.Array) -> tuple[pa.Array | bool, pa.Array | bool]:
        # Checked once per distinct symbol (a batch has few), and spread over the rows only when one fails.
        encoded = pc.dictionary_encode(symbols)
        names = encoded.dictionary
        plausible = pc.match_substring_regex(names, TICKER_PATTERN)
        subscribed = plausible if self.any_symbol else pc.is_in(names, value_set=self.symbols)
        return tuple(True if pc.all(check).as_py() else check.take(encoded.indices)
                     for check in (plausible, subscribed))


_EPOCH = pa.scalar(0, MS_UTC)
_MAX_BAR = pa.scalar(MAX_BAR_MS, pa.duration("ms"))


def _present_or(check: pa.Array) -> pa.Array:
    """A check on an optional column: a missing value (null) passes."""
    return pc.fill_null(check, True) if check.null_count else check


def _all(checks: list[pa.Array | bool]) -> pa.Array | bool:
    """Row-wise AND; `True` stands for a check every row passed."""
    arrays = [check for check in checks if check is not True]
    if not arrays:
        return True
    result = arrays[0]
    for check in arrays[1:]:
        result = pc.and_(result, check)
    return result


def keep_passing(table: pa.Table, checks: list[tuple[str, pa.Array | bool]], rejected: Counter) -> pa.Table:
    """The rows of `table` passing every (reason, ok) check (a null `ok` fails); each other row counted in
    `rejected` once, under the reason of its first failed check."""
    passing = _all([ok for _, ok in checks])
    if passing is True or pc.all(pc.fill_null(passing, False)).as_py():  # the usual case: nothing to tell apart
        return table
    passing, left = True, len(passing)
    for reason, ok in checks:
        if ok is True:
            continue
        ok = pc.fill_null(ok, False)
        passing = ok if passing is True else pc.and_(passing, ok)
        still = pc.sum(passing).as_py() or 0
        if still < left:
            rejected[reason] += left - still
        left = still
    return table.filter(passing)


# --- fast path: a batch of raw frames -> one table ---

def _json_type(column: str) -> pa.DataType:
    # Timestamps are parsed as plain ints (ms) and cast afterwards.
    return pa.int64() if column in INT_COLUMNS else SCHEMA.field(column).type


_WS_COLUMNS = {**WS_REQUIRED, **WS_OPTIONAL}
_EVENT_STRUCT = pa.struct([("ev", pa.string())] + [(key, _json_type(column)) for column, key in _WS_COLUMNS.items()])
_PARSE_OPTIONS = pa_json.ParseOptions(explicit_schema=pa.schema([("f", pa.list_(_EVENT_STRUCT))]),
                                      unexpected_field_behavior="ignore")
_MIN_BLOCK_BYTES = 1 << 20
# What the fast path raises for input it cannot take (the slower paths then decide, event by event).
_FAST_PATH_REFUSALS = (ValueError, pa.ArrowException)


def ws_frames_to_table(frames: list[tuple[int, str | bytes]]) -> tuple[pa.Table, Counter]:
    """(the aggregate events of these `(received_ns, frame)` items as a SCHEMA table, refused events by reason).

    The values are not checked yet: that is `BarRules.apply`."""
    try:
        return _parse_frames(frames)
    except _FAST_PATH_REFUSALS:
        pass
    tables, rejected = [], Counter()
    for item in frames:  # find the bad frame(s); the others keep the fast path
        try:
            table, refused = _parse_frames([item])
        except _FAST_PATH_REFUSALS:
            table, refused = _parse_frame_per_event(*item)
        tables.append(table)
        rejected.update(refused)
    return pa.concat_tables(tables), rejected


def _parse_frames(frames: list[tuple[int, str | bytes]]) -> tuple[pa.Table, Counter]:
    texts = [frame if type(frame) is str else frame.decode("utf-8") for _, frame in frames]
    if any("\n" in text or "\r" in text for text in texts):
        raise ValueError("a frame spans lines; NDJSON needs one line per frame")
    lines = "\n".join(['{"f":' + text + "}" for text in texts]).encode("utf-8")
    block = max(_MIN_BLOCK_BYTES, 2 * max(map(len, texts)) + 16)  # a line may not straddle two blocks
    parsed = pa_json.read_json(pa.py_buffer(lines), read_options=pa_json.ReadOptions(block_size=block),
                               parse_options=_PARSE_OPTIONS)
    if parsed.num_rows != len(texts):
        raise ValueError("frame count changed in parsing")
    lists = parsed.column("f").combine_chunks()
    events = lists.flatten()
    received_us = pa.array([received_ns // 1000 for received_ns, _ in frames], pa.int64())
    received_us = received_us.take(pc.list_parent_indices(lists))
    rejected = Counter()
    if lists.null_count:  # a frame `null`: not an array
        rejected["bad_shape"] += lists.null_count
    return _events_to_table(events, received_us, rejected), rejected


def _events_to_table(events: pa.StructArray, received_us: pa.Array, rejected: Counter) -> pa.Table:
    fields = dict(zip([field.name for field in events.type], events.flatten()))  # parent nulls included
    checks = [("bad_shape", events.is_valid()), ("wrong_event", pc.equal(fields["ev"], CHANNEL)),
              ("missing_field", _all([fields[key].is_valid() for key in WS_REQUIRED.values()]))]
    columns = [fields[key] for key in _WS_COLUMNS.values()] + [received_us]
    table = pa.Table.from_arrays(columns, names=list(_WS_COLUMNS) + ["received_at"])
    return _to_schema(keep_passing(table, checks, rejected), "ws")


def _to_schema(table: pa.Table, source: str) -> pa.Table:
    arrays = []
    for field in SCHEMA:
        if field.name == "source":
            arrays.append(pa.repeat(pa.scalar(source, pa.string()), table.num_rows))
        else:
            arrays.append(table.column(field.name).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


# --- per-event path: frames the fast path refused, and REST results ---

class InvalidBar(ValueError):
    """An event that is not an aggregate; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _checked(column: str, value):
    """`value` as the column's Python type; InvalidBar("bad_type") when no Arrow column of that type holds it."""
    kind = type(value)
    if column in INT_COLUMNS:
        # JSON gives Polygon's volumes and timestamps as ints; tolerate 12.0 but nothing fractional,
        # and nothing Arrow's int64 cannot hold (that would fail the whole flush, not one row).
        if (kind is int or (kind is float and value.is_integer())) and INT64_MIN <= value <= INT64_MAX:
            return int(value)
    elif column in FLOAT_COLUMNS:
        if kind is float or (kind is int and -FLOAT_LIMIT < value < FLOAT_LIMIT):
            return float(value)
    elif kind is str:
        # A lone surrogate ("\ud800" is valid JSON) has no UTF-8 form; replaced, it fails the ticker rule.
        return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")
    raise InvalidBar("bad_type", column)


def _map_event(event, required: dict[str, str], optional: dict[str, str]) -> dict:
    if type(event) is not dict:
        raise InvalidBar("bad_shape")
    row = {}
    for column, key in required.items():
        value = event.get(key)
        if value is None:
            raise InvalidBar("missing_field", key)
        row[column] = _checked(column, value)
    for column, key in optional.items():
        value = event.get(key)
        row[column] = None if value is None else _checked(column, value)
    return row


def ws_bar(event) -> dict:
    """One WebSocket "A" event as a row dict; InvalidBar when it is not one."""
    if type(event) is not dict:
        raise InvalidBar("bad_shape")
    if event.get("ev") != CHANNEL:
        raise InvalidBar("wrong_event")
    return _map_event(event, WS_REQUIRED, WS_OPTIONAL)


def rest_bar(result, symbol: str) -> dict:
    """One REST aggregate result (one-second bar) as a row dict; InvalidBar when it is not one."""
    row = _map_event(result, REST_REQUIRED, REST_OPTIONAL)
    row.update(symbol=_checked("symbol", symbol), end=_checked("end", row["start"] + REST_BAR_MS),
               day_vwap=None, average_size=None, official_open=None, accumulated_volume=None)
    return row


def _parse_int(digits: str):
    # Python refuses ints of over 4300 digits (a ValueError that would lose the whole frame). Beyond 20
    # digits no int64 holds it anyway; as a float (infinite if need be) it is what pyarrow's reader makes of it.
    return int(digits) if len(digits) <= 20 else float(digits)


def _loads(text: str):
    return json.loads(text, parse_int=_parse_int)


def _parse_frame_per_event(received_ns: int, frame: str | bytes) -> tuple[pa.Table, Counter]:
    # Bytes that are not UTF-8 may sit in a field nobody reads; replaced, a bad one fails a rule instead.
    text = frame if type(frame) is str else frame.decode("utf-8", "replace")
    try:
        events = _loads(text)
    except RecursionError:  # nested deeper than Python's parser goes: parse element by element
        events = _array_elements(text)
    except ValueError:
        return empty_table(), Counter(not_json=1)
    if type(events) is not list:
        return empty_table(), Counter(bad_shape=1)
    return rows_with_reasons(events, ws_bar, received_ns, "ws")


class _Unparsed:
    """An element of an array that json.loads cannot read: counted under `reason`."""

    def __init__(self, reason: str):
        self.reason = reason


# A JSON string (escapes included) or one of the characters that shape an array; everything else is skipped.
# Possessive, and an unterminated string runs to the end: each quote is scanned once, so any text is linear.
_ARRAY_TOKENS = re.compile(r'(?s)"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)|[\[\]{},]')


def _array_elements(text: str):
    """The elements of the JSON array `text`, each parsed on its own (those too deep to parse, as _Unparsed)."""
    body = text.strip()
    if not body.startswith("["):
        return None  # not an array: counted as bad_shape
    pieces, depth, begin = [], 0, 1
    for token in _ARRAY_TOKENS.finditer(body):
        mark = token.group()[0]
        if mark in "[{":
            depth += 1
        elif mark in "]}":
            depth -= 1
        if depth == 0 or (mark == "," and depth == 1):
            pieces.append(body[begin:token.start()])
            begin = token.end()
        if depth == 0:
            break
    if depth or body[begin:].strip():
        pieces.append(body[begin:])  # unbalanced or trailing text: not JSON, counted as such
    if pieces == [""] or (len(pieces) == 1 and not pieces[0].strip()):
        return []
    return [_element(piece) for piece in pieces]


def _element(piece: str):
    try:
        return _loads(piece)
    except RecursionError:
        return _Unparsed("bad_shape")
    except ValueError:
        return _Unparsed("not_json")


def rest_results_with_reasons(symbol: str, results: list, received_ns: int) -> tuple[pa.Table, Counter]:
    if type(results) is not list:
        return empty_table(), Counter(bad_shape=1)
    return rows_with_reasons(results, lambda result: rest_bar(result, symbol), received_ns, "rest")


def rest_results_to_table(symbol: str, results: list, received_ns: int) -> tuple[pa.Table, int]:
    table, rejected = rest_results_with_reasons(symbol, results, received_ns)
    return table, sum(rejected.values())


def rows_to_table(items: list, to_row, received_ns: int, source: str) -> tuple[pa.Table, int]:
    """Map each item with `to_row`; (table of the good ones, count of the bad ones)."""
    table, rejected = rows_with_reasons(items, to_row, received_ns, source)
    return table, sum(rejected.values())


def rows_with_reasons(items: list, to_row, received_ns: int, source: str) -> tuple[pa.Table, Counter]:
    """Map each item with `to_row`; (table of the good ones, the bad ones counted by reason)."""
    columns: dict[str, list] = {name: [] for name in DATA_COLUMNS}
    rejected = Counter()
    for item in items:
        if type(item) is _Unparsed:
            rejected[item.reason] += 1
            continue
        try:
            row = to_row(item)
        except InvalidBar as invalid:
            rejected[invalid.reason] += 1
            continue
        for name in DATA_COLUMNS:
            columns[name].append(row[name])
    rows = len(columns["symbol"])
    arrays = [pa.array(columns[name], type=SCHEMA.field(name).type) for name in DATA_COLUMNS]
    arrays.append(pa.repeat(pa.scalar(received_ns // 1000, SCHEMA.field("received_at").type), rows))
    arrays.append(pa.repeat(pa.scalar(source, pa.string()), rows))
    return pa.Table.from_arrays(arrays, schema=SCHEMA), rejected


def empty_table() -> pa.Table:
    return SCHEMA.empty_table()
