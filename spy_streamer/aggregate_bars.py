"""Polygon aggregate events -> Arrow tables in the Parquet schema of DESIGN.md.

The fast path parses many raw WebSocket frames at once with pyarrow's JSON reader (C++, columnar, off the
GIL): each frame, a JSON array, becomes one NDJSON line `{"f": [...]}`. No Python object is made per event.
A batch the fast path refuses (not JSON, wrong types, odd shapes) is retried frame by frame, and a frame
it still refuses goes through the per-event path, which counts each bad event instead of failing.
REST aggregates (few, already decoded) take the per-event path too. A `source` column tells them apart.
"""
from __future__ import annotations

import json
import math

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


class InvalidBar(ValueError):
    """An event that is not a well-formed aggregate."""


# --- fast path: a batch of raw frames -> one table ---

def _json_type(column: str) -> pa.DataType:
    # Timestamps are parsed as plain ints (ms) and cast afterwards.
    return pa.int64() if column in INT_COLUMNS else SCHEMA.field(column).type


_WS_COLUMNS = {**WS_REQUIRED, **WS_OPTIONAL}
_EVENT_STRUCT = pa.struct([("ev", pa.string())] + [(key, _json_type(column)) for column, key in _WS_COLUMNS.items()])
_PARSE_OPTIONS = pa_json.ParseOptions(explicit_schema=pa.schema([("f", pa.list_(_EVENT_STRUCT))]),
                                      unexpected_field_behavior="ignore")
_MIN_BLOCK_BYTES = 1 << 20


def ws_frames_to_table(frames: list[tuple[int, str | bytes]]) -> tuple[pa.Table, int]:
    """(well-formed bars of these `(received_ns, frame)` items as a SCHEMA table, count of invalid events)."""
    try:
        return _parse_frames(frames)
    except (pa.ArrowInvalid, ValueError):
        pass
    tables, invalid = [], 0
    for item in frames:  # find the bad frame(s); the others keep the fast path
        try:
            table, bad = _parse_frames([item])
        except (pa.ArrowInvalid, ValueError):
            table, bad = _parse_frame_per_event(*item)
        tables.append(table)
        invalid += bad
    return pa.concat_tables(tables), invalid


def _parse_frames(frames: list[tuple[int, str | bytes]]) -> tuple[pa.Table, int]:
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
    null_frames = lists.null_count
    return _events_to_table(events, received_us, null_frames)


def _events_to_table(events: pa.StructArray, received_us: pa.Array, null_frames: int) -> tuple[pa.Table, int]:
    fields = dict(zip([field.name for field in events.type], events.flatten()))  # parent nulls included
    valid = pc.equal(fields["ev"], CHANNEL)
    for key in WS_REQUIRED.values():
        valid = pc.and_kleene(valid, pc.is_valid(fields[key]))
    for column, key in _WS_COLUMNS.items():
        if column in FLOAT_COLUMNS:  # a price like 1e400 parses as infinity: not a price
            valid = pc.and_kleene(valid, pc.or_kleene(pc.is_finite(fields[key]), pc.is_null(fields[key])))
    valid = pc.fill_null(valid, False)
    columns = [fields[key] for key in _WS_COLUMNS.values()] + [received_us]
    table = pa.Table.from_arrays(columns, names=list(_WS_COLUMNS) + ["received_at"]).filter(valid)
    invalid = len(events) - table.num_rows + null_frames
    return _to_schema(table, "ws"), invalid


def _to_schema(table: pa.Table, source: str) -> pa.Table:
    arrays = []
    for field in SCHEMA:
        if field.name == "source":
            arrays.append(pa.repeat(pa.scalar(source, pa.string()), table.num_rows))
        else:
            arrays.append(table.column(field.name).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


# --- per-event path: malformed frames and REST results ---

def _checked(column: str, value):
    kind = type(value)
    if column in INT_COLUMNS:
        # JSON gives Polygon's volumes and timestamps as ints; tolerate 12.0 but nothing fractional,
        # and nothing Arrow's int64 cannot hold (that would fail the whole flush, not one row).
        if (kind is int or (kind is float and value.is_integer())) and INT64_MIN <= value <= INT64_MAX:
            return int(value)
    elif column in FLOAT_COLUMNS:
        if (kind is float and math.isfinite(value)) or (kind is int and -FLOAT_LIMIT < value < FLOAT_LIMIT):
            return float(value)
    elif kind is str and value:
        return value
    raise InvalidBar(f"{column}: {str(value)[:40]}")


def _map_event(event, required: dict[str, str], optional: dict[str, str]) -> dict:
    if not isinstance(event, dict):
        raise InvalidBar("not an object")
    try:
        row = {column: _checked(column, event[key]) for column, key in required.items()}
    except KeyError as missing:
        raise InvalidBar(f"missing {missing}") from None
    for column, key in optional.items():
        value = event.get(key)
        row[column] = None if value is None else _checked(column, value)
    return row


def ws_bar(event) -> dict:
    """One WebSocket "A" event as a row dict; InvalidBar when it is not one."""
    if not isinstance(event, dict) or event.get("ev") != CHANNEL:
        raise InvalidBar("not an aggregate event")
    return _map_event(event, WS_REQUIRED, WS_OPTIONAL)


def rest_bar(result, symbol: str) -> dict:
    """One REST aggregate result (one-second bar) as a row dict; InvalidBar when it is not one."""
    row = _map_event(result, REST_REQUIRED, REST_OPTIONAL)
    row.update(symbol=symbol, end=row["start"] + 1000, day_vwap=None, average_size=None,
               official_open=None, accumulated_volume=None)
    return row


def _parse_frame_per_event(received_ns: int, frame: str | bytes) -> tuple[pa.Table, int]:
    try:
        events = json.loads(frame)
    except ValueError:
        return empty_table(), 1
    if not isinstance(events, list):
        return empty_table(), 1
    return rows_to_table(events, ws_bar, received_ns, "ws")


def rest_results_to_table(symbol: str, results: list, received_ns: int) -> tuple[pa.Table, int]:
    return rows_to_table(results, lambda result: rest_bar(result, symbol), received_ns, "rest")


def rows_to_table(items: list, to_row, received_ns: int, source: str) -> tuple[pa.Table, int]:
    """Map each item with `to_row`; (table of the good ones, count of the bad ones)."""
    columns: dict[str, list] = {name: [] for name in DATA_COLUMNS}
    invalid = 0
    for item in items:
        try:
            row = to_row(item)
        except InvalidBar:
            invalid += 1
            continue
        for name in DATA_COLUMNS:
            columns[name].append(row[name])
    rows = len(columns["symbol"])
    arrays = [pa.array(columns[name], type=SCHEMA.field(name).type) for name in DATA_COLUMNS]
    arrays.append(pa.repeat(pa.scalar(received_ns // 1000, SCHEMA.field("received_at").type), rows))
    arrays.append(pa.repeat(pa.scalar(source, pa.string()), rows))
    return pa.Table.from_arrays(arrays, schema=SCHEMA), invalid


def empty_table() -> pa.Table:
    return SCHEMA.empty_table()
