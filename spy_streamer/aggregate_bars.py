"""Polygon aggregate events -> columns of the Parquet schema (DESIGN.md), built per column, not per row.

The WebSocket and the REST aggregates name their fields differently; both map onto one schema, and a
`source` column tells them apart. Missing optional fields become nulls.
"""
from __future__ import annotations

import pyarrow as pa

CHANNEL = "A"

SCHEMA = pa.schema([
    ("symbol", pa.string()),
    ("start", pa.timestamp("ms", tz="UTC")),
    ("end", pa.timestamp("ms", tz="UTC")),
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

# Parquet column <- WebSocket "A" event key. Required keys first: an event without them is invalid.
WS_REQUIRED = {"symbol": "sym", "start": "s", "end": "e", "open": "o", "high": "h", "low": "l",
               "close": "c", "volume": "v"}
WS_OPTIONAL = {"vwap": "vw", "day_vwap": "a", "average_size": "z", "official_open": "op",
               "accumulated_volume": "av"}
# Parquet column <- REST /v2/aggs result key (no day VWAP, average size, official open or accumulated volume).
REST_REQUIRED = {"start": "t", "open": "o", "high": "h", "low": "l", "close": "c", "volume": "v"}
REST_OPTIONAL = {"vwap": "vw"}

FLOAT_COLUMNS = {"open", "high", "low", "close", "vwap", "day_vwap", "average_size", "official_open"}
INT_COLUMNS = {"start", "end", "volume", "accumulated_volume"}
FLOAT_LIMIT = 2 ** 1023  # ints beyond this overflow float()
DATA_COLUMNS = tuple(name for name in SCHEMA.names if name not in ("received_at", "source"))


class InvalidBar(ValueError):
    """An event that is not a well-formed aggregate."""


INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _checked(column: str, value):
    kind = type(value)
    if column in INT_COLUMNS:
        # JSON gives Polygon's volumes and timestamps as ints; tolerate 12.0 but nothing fractional,
        # and nothing Arrow's int64 cannot hold (that would fail the whole flush, not one row).
        if (kind is int or (kind is float and value.is_integer())) and INT64_MIN <= value <= INT64_MAX:
            return int(value)
    elif column in FLOAT_COLUMNS:
        if kind is float or (kind is int and -FLOAT_LIMIT < value < FLOAT_LIMIT):
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


class BarColumns:
    """Accepted rows kept as one Python list per column until they become an Arrow table."""

    def __init__(self):
        self.columns: dict[str, list] = {name: [] for name in SCHEMA.names}

    def __len__(self) -> int:
        return len(self.columns["symbol"])

    def append(self, row: dict, received_at_us: int, source: str) -> None:
        for name in DATA_COLUMNS:
            self.columns[name].append(row[name])
        self.columns["received_at"].append(received_at_us)
        self.columns["source"].append(source)

    def to_table(self) -> pa.Table:
        arrays = [pa.array(self.columns[field.name], type=field.type) for field in SCHEMA]
        return pa.Table.from_arrays(arrays, schema=SCHEMA)
