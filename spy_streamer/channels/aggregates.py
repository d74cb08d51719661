"""What the two aggregate channels share (`A` second bars, `AM` minute bars): one schema, one mapping,
one set of bar rules. They differ in bar length and REST source only.

Every field Polygon documents is stored: the WebSocket's A/AM event (with `otc`, and the fractional
volumes `dv`, `dav` that the successor client `massive` models) and the REST aggregate (with `n`, the
number of transactions, and `otc`). `start` and `end` are microsecond timestamps (Polygon's milliseconds,
exactly). No `otc` means false: Polygon leaves the field off when it is."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .base import (DECIMAL, MS_TO_US, RECEIVED_AT, SOURCE, US_UTC, Channel, Checks, after_epoch, all_of,
                   on_whole_units, prices_in_bounds, sizes_in_bounds)

SCHEMA = pa.schema([
    ("symbol", pa.string()),
    ("start", US_UTC),                   # bar start (Polygon's `s`, REST `t`: ms)
    ("end", US_UTC),                     # bar end (`e`; REST: start + the bar length)
    ("open", pa.float64()),
    ("high", pa.float64()),
    ("low", pa.float64()),
    ("close", pa.float64()),
    ("vwap", pa.float64()),              # the bar's volume-weighted price (`vw`)
    ("day_vwap", pa.float64()),          # today's VWAP so far (`a`; not in REST)
    ("average_size", pa.float64()),      # average trade size in the bar (`z`; not in REST)
    ("official_open", pa.float64()),     # today's official open (`op`; not in REST)
    ("volume", pa.int64()),              # shares in the bar (`v`)
    ("accumulated_volume", pa.int64()),  # shares today so far (`av`; not in REST)
    ("decimal_volume", DECIMAL),         # `v` with fractional shares, exactly (`dv`, a string; not in REST)
    ("decimal_accumulated_volume", DECIMAL),  # `av` likewise (`dav`; not in REST)
    ("transactions", pa.int64()),        # trades in the bar (REST `n`; not on the stream)
    ("otc", pa.bool_()),                 # an OTC ticker's bar (`otc`; absent means false)
    RECEIVED_AT,
    SOURCE,
])
WS_REQUIRED = {"symbol": "sym", "start": "s", "end": "e", "open": "o", "high": "h", "low": "l",
               "close": "c", "volume": "v"}
WS_OPTIONAL = {"vwap": "vw", "day_vwap": "a", "average_size": "z", "official_open": "op",
               "accumulated_volume": "av", "decimal_volume": "dv", "decimal_accumulated_volume": "dav", "otc": "otc"}
REST_REQUIRED = {"start": "t", "open": "o", "high": "h", "low": "l", "close": "c", "volume": "v"}
REST_OPTIONAL = {"vwap": "vw", "transactions": "n", "otc": "otc"}
PRICES = ("open", "high", "low", "close", "vwap", "day_vwap", "official_open")
# end - start: one second for "A", a minute for "AM"; a day is generous and keeps `end` a real instant
# (4611686018427387904 ms is one no reader can open).
MAX_BAR_MS = 86_400_000
_MAX_BAR = pa.scalar(MAX_BAR_MS * MS_TO_US, pa.duration("us"))


def bar_checks(col: dict[str, pa.Array], bar_ms: int) -> Checks:
    return [("bad_price", prices_in_bounds([col[name] for name in PRICES])),
            ("bad_volume", sizes_in_bounds([col["volume"], col["accumulated_volume"], col["average_size"],
                                            col["decimal_volume"], col["decimal_accumulated_volume"],
                                            col["transactions"]])),   # a count of trades: no more than shares
            ("bad_range", all_of([pc.less_equal(col["low"], col["open"]), pc.less_equal(col["low"], col["close"]),
                                  pc.less_equal(col["open"], col["high"]), pc.less_equal(col["close"], col["high"])])),
            # start >= 0 and end > start, so end - start cannot wrap around.
            ("bad_times", all_of([after_epoch(col["start"]), pc.greater(col["end"], col["start"]),
                                  pc.less_equal(pc.subtract(col["end"], col["start"]), _MAX_BAR)])),
            # Polygon's bars start on a whole second (A) or minute (AM): one at 10:00:00.500 would be a
            # second key for the second already stored at 10:00:00, and every sum over the day counts it twice.
            ("bad_start", on_whole_units(col["start"], bar_ms))]


def aggregate_channel(name: str, title: str, bar_ms: int, timespan: str) -> Channel:
    bar_us = bar_ms * MS_TO_US

    def complete(row: dict) -> None:  # REST results carry no end: they are the bars asked for
        row["end"] = row["start"] + bar_us if row["start"] + bar_us <= 2 ** 63 - 1 else row["start"]

    def fetch(client, symbol: str, from_ms: int, to_ms: int, pace=None):
        from ..data_sources.polygon_rest import iter_aggs_pages  # the REST client loads only where a backfill runs
        return iter_aggs_pages(client, symbol, timespan, from_ms, to_ms, pace=pace)

    return Channel(
        name=name, title=title, schema=SCHEMA, dedup_key=("symbol", "start"), sort_key=("symbol", "start"),
        time_column="start", ws_required=WS_REQUIRED, ws_optional=WS_OPTIONAL, rest_required=REST_REQUIRED,
        rest_optional=REST_OPTIONAL, checks=lambda columns: bar_checks(columns, bar_ms), fetch=fetch,
        rest_path=f"/v2/aggs/ticker/{{ticker}}/range/1/{timespan}/{{from}}/{{to}}", gap_step_ms=bar_ms,
        rest_complete=complete,
        ws_scale={"start": MS_TO_US, "end": MS_TO_US}, rest_scale={"start": MS_TO_US}, absent_as={"otc": False})
