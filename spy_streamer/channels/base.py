"""What every channel module declares (`Channel`), and the rules and mapping helpers they share.

A channel is data, not code paths: its schema, the WebSocket and REST field names of each column, its
plausibility checks, its dedup key and its REST source. The writer, the sink, compaction and `report`
read these attributes and never test a channel's name, so adding a channel (`LULD`, `FMV`) is adding a
module beside the others and one line in the registry (`channels/__init__.py`).

Whatever the bytes, nothing here raises on an event: each refused event is counted once, under one
reason of REASONS.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable, Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc

# Every stored instant is a timestamp in microseconds, UTC: what Spark, Trino and Iceberg read (Spark refuses
# TIMESTAMP(NANOS) by default, Iceberg v2 has no nanoseconds). An instant Polygon gives in nanoseconds is
# also kept exactly, as int64, in `<name>_ns` beside it (exact_time). One schema locally and in the lake.
US_UTC = pa.timestamp("us", tz="UTC")
NS_SUFFIX = "_ns"
RECEIVED_AT = pa.field("received_at", US_UTC)
SOURCE = pa.field("source", pa.string())                 # "ws" or "rest"
SESSION = pa.field("session", pa.string())               # "pre", "regular", "post" (extended hours only)
INT_LIST = pa.list_(pa.int64())
# Polygon's fractional sizes and volumes are decimal strings ("0.5"): kept exactly, as decimals with 20
# digits before the point (any int64 volume) and 18 after. What does not fit is refused, never rounded.
DECIMAL = pa.decimal128(38, 18)
DECIMAL_PATTERN = r"^-?[0-9]{1,20}(\.[0-9]{1,18})?$"
_DECIMAL_TEXT = re.compile(DECIMAL_PATTERN)
MS_TO_US, MS_TO_NS = 1000, 1_000_000


def exact_time(name: str) -> list[pa.Field]:
    """An instant given in nanoseconds: `name` (timestamp us UTC, for every engine) and `name_ns` (int64,
    exact). Channels map the source field to `name_ns`; `name` is derived from it (to_schema)."""
    return [pa.field(name, US_UTC), pa.field(name + NS_SUFFIX, pa.int64())]

# Why an event was not stored; the heartbeat shows a count per reason (WriterStats.rejected_reasons).
REASONS = (
    "not_json",       # a frame that is not UTF-8 JSON: counted once, its events unknown
    "bad_shape",      # a frame that is not an array, or an element that is not an object
    "wrong_event",    # an object whose "ev" is missing or names no subscribed channel
    "missing_field",  # a required key missing or null
    "bad_type",       # a value of the wrong JSON type, or one no int64/float64 holds
    "bad_symbol",     # not a plausible ticker (TICKER_PATTERN)
    "unsubscribed",   # a plausible ticker nobody subscribed to on this channel
    "bad_price",      # a price outside MIN_PRICE..MAX_PRICE (NaN and infinities included; a quote may be 0)
    "bad_volume",     # a volume or size below 0, or not below MAX_SHARES (or not finite)
    "bad_range",      # bars: not low <= min(open, close) <= max(open, close) <= high
    "bad_times",      # a time before 1970 or past what a microsecond timestamp holds, or a bar whose end is
                      # not after its start (or a day after it)
    "bad_start",      # bars: a start not on a whole bar (second for A, minute for AM): it would count one twice
    "bad_id",         # trades: an empty trade id; trades and quotes: a negative sequence number
    "outside_request",  # REST: a row outside the range that was asked for
)
# Bounds no real print reaches (the README lists them): whatever a server sends beyond them is refused,
# so a stored day never holds a price of 1e308 or a volume of 2^62 that would swamp every sum over it.
MIN_PRICE = 1e-6          # OTC sub-penny quotes go to six decimals; 1e-300 is not a price
MAX_PRICE = 1e7           # BRK.A, the dearest US share, trades under $1M: ten times that is no print
MAX_SHARES = 10 ** 12     # a whole day of the whole US market is about 1.5e10 shares
# Polygon stock tickers: capitals and digits, "." before a share class (BRK.B), "-" or a lower-case CQS
# suffix for preferreds, rights, warrants, when-issued (ABC-P, BACpB, ABCw), ":" after a market prefix
# (I:SPX). 1 to 24 characters: the longest form (an option, O: + root + 15) fits, a path or a blob does not.
TICKER_PATTERN = r"^[A-Z0-9][A-Za-z0-9.:\-]{0,23}$"
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
FLOAT_LIMIT = 2 ** 1023  # ints beyond this overflow float()

Checks = list[tuple[str, "pa.Array | bool"]]


@dataclass(frozen=True)
class Channel:
    """One Polygon stocks channel. The names the compaction and lake code rely on: `name`, `schema`,
    `dedup_key`, `sort_key`, `time_column`."""
    name: str                            # the WebSocket `ev` and subscription prefix: "A", "T"...
    title: str                           # for people: "second aggregates"
    schema: pa.Schema                    # stored columns, `received_at` and `source` last
    dedup_key: tuple[str, ...]           # one row per these columns per day
    sort_key: tuple[str, ...]            # the order of a compacted day file
    time_column: str                     # the instant that places a row in a day and a session
    ws_required: Mapping[str, str]       # column <- WebSocket event key; missing or null: refused
    ws_optional: Mapping[str, str]
    rest_required: Mapping[str, str]     # column <- REST result key
    rest_optional: Mapping[str, str]
    checks: Callable[[dict[str, pa.Array]], Checks]   # plausibility, beyond the ticker's (Arrow columns)
    fetch: Callable[..., Iterable[list]]  # (rest_client, symbol, from_ms, to_ms, pace) -> pages of raw REST results
    rest_path: str                       # the REST source, for people and the README
    gap_step_ms: int                     # spacing of consecutive rows' times: a gap starts one step after the last
    ws_types: Mapping[str, pa.DataType] = field(default_factory=dict)  # JSON type when not the column's
    ws_scale: Mapping[str, int] = field(default_factory=dict)     # int column *= this (WebSocket ms -> ns)
    rest_scale: Mapping[str, int] = field(default_factory=dict)
    rest_complete: Callable[[dict], None] | None = None           # fills what REST does not send (a bar's end)
    ws_adapt: Callable[[str, object], object] | None = None       # per-event path: (column, value) -> stored form
    ws_adapt_columns: Callable[[pa.Table], pa.Table] | None = None  # fast path: the same, on columns
    # What an absent field means, where Polygon documents one: no `c` is no condition ([]), no `otc` is false.
    absent_as: Mapping[str, object] = field(default_factory=dict)

    @functools.cached_property   # read per batch: a schema walk each time showed in profiles
    def data_columns(self) -> tuple[str, ...]:
        return tuple(name for name in self.schema.names if name not in ("received_at", "source"))

    @functools.cached_property
    def exact_times(self) -> tuple[str, ...]:
        """The timestamp columns derived from a `<name>_ns` column (exact_time)."""
        names = set(self.schema.names)
        return tuple(name for name in self.schema.names if name + NS_SUFFIX in names)

    def time_ms(self, table: pa.Table) -> pa.Array:
        """The time column as int64 milliseconds (what the session and day bounds are compared with)."""
        return epoch_ms(table.column(self.time_column))

    def marker(self) -> str:
        """Text every compact frame of this channel holds (Polygon's form): with several channels
        subscribed, a frame holding it is routed to this channel's fast path at once."""
        return f'"ev":"{self.name}"'

    def spaced_marker(self) -> re.Pattern:
        """The same with any JSON spacing (`"ev" : "A"`): routes a frame the compact marker missed."""
        return _spaced_marker(self.name)


@functools.lru_cache(maxsize=None)
def _spaced_marker(name: str) -> re.Pattern:
    return re.compile(r'"ev"\s*:\s*"%s"' % re.escape(name))


def epoch_ms(column) -> pa.Array:
    """A timestamp column as int64 milliseconds since 1970, whatever its unit."""
    unit = column.type.unit
    column = pc.cast(column, pa.int64())
    return column if unit == "ms" else pc.divide(column, {"us": 1000, "ns": 1_000_000}[unit])


def one_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as one Array: a single chunk as it is (`combine_chunks` copies even one, 4 us a column of a
    batch), several concatenated."""
    if not isinstance(column, pa.ChunkedArray):
        return column
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def us_from_ns(column) -> pa.Array:
    """Exact nanoseconds (int64) as a microsecond timestamp (truncated, as the lake always did)."""
    return pc.cast(pc.cast(column, pa.timestamp("ns", tz="UTC")), US_UTC, safe=False)


# --- shared checks (vectorized; a check is (reason, ok per row) or True when every row passes) ---

# Compute calls take Arrow scalars: given a Python value, pyarrow converts it anew on every call (and may
# probe sys.path for an optional dateutil each time), a fixed cost paid by every batch on every check.
TRUE, FALSE = pa.scalar(True), pa.scalar(False)
ZERO_INT, ZERO_FLOAT = pa.scalar(0, pa.int64()), pa.scalar(0.0)
LOWEST_PRICE, HIGHEST_PRICE = pa.scalar(MIN_PRICE), pa.scalar(MAX_PRICE)
SHARES_LIMIT = {"int": pa.scalar(MAX_SHARES, pa.int64()), "float": pa.scalar(float(MAX_SHARES))}


def present_or(check: pa.Array) -> pa.Array:
    """A check on an optional column: a missing value (null) passes."""
    return pc.fill_null(check, TRUE) if check.null_count else check


def all_of(checks: list) -> pa.Array | bool:
    """Row-wise AND; `True` stands for a check every row passed."""
    arrays = [check for check in checks if check is not True]
    if not arrays:
        return True
    result = arrays[0]
    for check in arrays[1:]:
        result = pc.and_(result, check)
    return result


def prices_in_bounds(columns: list[pa.Array], optional: bool = True, zero_allowed: bool = False) -> pa.Array | bool:
    """Every price within MIN_PRICE..MAX_PRICE (refuses NaN and infinities); with `zero_allowed`, 0 too
    (a quote's "no bid")."""
    wrap = present_or if optional else (lambda check: check)
    checks = []
    for price in columns:
        bounded = pc.and_(pc.greater_equal(price, LOWEST_PRICE), pc.less_equal(price, HIGHEST_PRICE))
        checks.append(wrap(pc.or_(bounded, pc.equal(price, ZERO_FLOAT)) if zero_allowed else bounded))
    return all_of(checks)


def sizes_in_bounds(columns: list[pa.Array]) -> pa.Array | bool:
    """Volumes and sizes where present: 0 <= size < MAX_SHARES (refuses NaN and infinities)."""
    checks = []
    for size in columns:
        floating = pa.types.is_floating(size.type)
        zero, limit = (ZERO_FLOAT, SHARES_LIMIT["float"]) if floating else (ZERO_INT, SHARES_LIMIT["int"])
        checks.append(present_or(pc.and_(pc.greater_equal(size, zero), pc.less(size, limit))))
    return all_of(checks)


def sequence_at_least_zero(column: pa.Array) -> pa.Array:
    """Polygon's sequence numbers count up from 0; a negative one is no sequence number (null passes)."""
    return present_or(pc.greater_equal(column, ZERO_INT))


def on_whole_units(column: pa.Array, unit_ms: int) -> pa.Array:
    """A timestamp on a whole `unit_ms` (integer division truncates: start - start // unit * unit == 0)."""
    per_ms = {"ms": 1, "us": 1000, "ns": 1_000_000}[column.type.unit]
    times, unit = pc.cast(column, pa.int64()), pa.scalar(unit_ms * per_ms, pa.int64())
    return pc.equal(pc.subtract(times, pc.multiply(pc.divide(times, unit), unit)), ZERO_INT)


def within(times_ms: pa.Array, first_ms: int, last_ms: int) -> pa.Array:
    """first_ms <= time <= last_ms, row by row."""
    return pc.and_(pc.greater_equal(times_ms, pa.scalar(first_ms, pa.int64())),
                   pc.less_equal(times_ms, pa.scalar(last_ms, pa.int64())))


def after_epoch(column: pa.Array) -> pa.Array:
    return pc.greater_equal(pc.cast(column, pa.int64()), ZERO_INT)


def keep_passing(table: pa.Table, checks: Checks, rejected: Counter) -> pa.Table:
    """The rows of `table` passing every (reason, ok) check (a null `ok` fails); each other row counted in
    `rejected` once, under the reason of its first failed check."""
    passing = all_of([ok for _, ok in checks])
    if passing is True or pc.all(pc.fill_null(passing, FALSE)).as_py():  # the usual case: nothing to tell apart
        return table
    passing, left = True, len(passing)
    for reason, ok in checks:
        if ok is True:
            continue
        ok = pc.fill_null(ok, FALSE)
        passing = ok if passing is True else pc.and_(passing, ok)
        still = pc.sum(passing).as_py() or 0
        if still < left:
            rejected[reason] += left - still
        left = still
    return table.filter(passing)


# --- per-event mapping (REST results and frames the fast path refused) ---

class InvalidEvent(ValueError):
    """An event that is not a row of its channel; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def checked(kind: pa.DataType, column: str, value):
    """`value` as a Python value an Arrow column of `kind` holds; InvalidEvent("bad_type") otherwise."""
    value_type = type(value)
    if pa.types.is_integer(kind) or pa.types.is_timestamp(kind):
        # JSON gives Polygon's volumes and timestamps as ints; tolerate 12.0 but nothing fractional,
        # and nothing Arrow's int64 cannot hold (that would fail the whole flush, not one row).
        if (value_type is int or (value_type is float and value.is_integer())) and INT64_MIN <= value <= INT64_MAX:
            return int(value)
    elif pa.types.is_floating(kind):
        if value_type is float or (value_type is int and -FLOAT_LIMIT < value < FLOAT_LIMIT):
            return float(value)
    elif pa.types.is_list(kind):
        if value_type is list:
            return [checked(kind.value_type, column, item) for item in value]
    elif pa.types.is_decimal(kind):
        # The wire form is a string; a plain JSON number (no exponent) is taken as the digits it shows.
        text = value if value_type is str else repr(value) if value_type in (int, float) else None
        if text is not None and _DECIMAL_TEXT.match(text):
            return Decimal(text)
    elif pa.types.is_boolean(kind):
        if value_type is bool:
            return value
    elif value_type is str:
        # A lone surrogate ("\ud800" is valid JSON) has no UTF-8 form; replaced, it fails the ticker rule.
        return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")
    raise InvalidEvent("bad_type", column)


def map_event(channel: Channel, event, required: Mapping[str, str], optional: Mapping[str, str],
              scale: Mapping[str, int], adapt=None) -> dict:
    """One decoded JSON object as a row dict of `channel`'s columns (unmapped columns absent)."""
    if type(event) is not dict:
        raise InvalidEvent("bad_shape")
    row = {}
    for columns, must in ((required, True), (optional, False)):
        for column, key in columns.items():
            value = event.get(key)
            if value is None:
                if must:
                    raise InvalidEvent("missing_field", key)
                row[column] = None
                continue
            if adapt is not None:
                value = adapt(column, value)
            value = checked(_json_kind(channel, column), column, value)
            if column in scale:
                value = _scaled(value, scale[column], column)
            row[column] = value
    return row


def _json_kind(channel: Channel, column: str) -> pa.DataType:
    kind = channel.schema.field(column).type
    return pa.int64() if pa.types.is_timestamp(kind) else kind


def _scaled(value: int, factor: int, column: str) -> int:
    """A time in the stored unit (scales are ms -> us or ns): one no int64 holds is no real instant."""
    scaled = value * factor
    if not INT64_MIN <= scaled <= INT64_MAX:
        raise InvalidEvent("bad_times", column)
    return scaled


def empty_table(channel: Channel) -> pa.Table:
    return channel.schema.empty_table()
