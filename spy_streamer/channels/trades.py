"""`T`: every trade (tick level), REST source `/v3/trades/{ticker}`.

Every field Polygon documents is stored (the WebSocket's T event, /v3/trades' results, and the successor
client `massive`'s models). Times: the WebSocket sends milliseconds (`t`, `pt`, `trft`), REST nanoseconds;
each is kept exactly in `<name>_ns` and as a microsecond timestamp `<name>` (base.exact_time).
The size: `s` is an integer on the stream, a float on REST; `ds` / `decimal_size` (a string, fractional
shares included) is kept exactly as a decimal. No `c` means no condition: an empty list, never null.
Dedup key: Polygon documents the trade id as unique per (ticker, exchange, TRF), hence (symbol, exchange,
trf_id, trade_id): the same in both sources, whatever their timestamp precision.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .base import DECIMAL, INT_LIST, MS_TO_NS, RECEIVED_AT, SOURCE, Channel, Checks, after_epoch, all_of, \
    exact_time, prices_in_bounds, sequence_at_least_zero, sizes_in_bounds

SCHEMA = pa.schema([
    ("symbol", pa.string()),
    *exact_time("sip_timestamp"),          # when the SIP saw the trade (WS `t`, ms; REST ns)
    *exact_time("participant_timestamp"),  # when the exchange executed it (WS `pt`, ms; REST ns)
    *exact_time("trf_timestamp"),          # when a TRF reported it (WS `trft`, ms; REST ns)
    ("exchange", pa.int64()),            # Polygon exchange id (`x`)
    ("trade_id", pa.string()),           # `i` / `id`
    ("trf_id", pa.int64()),              # trade reporting facility (`trfi`), off-exchange trades only
    ("tape", pa.int64()),                # 1 NYSE, 2 NYSE American/Arca/regional, 3 Nasdaq (`z`)
    ("price", pa.float64()),             # USD per share (`p`)
    ("size", pa.float64()),              # shares (`s`; REST may send fractional sizes)
    ("decimal_size", DECIMAL),           # shares, fractions exactly (`ds` / `decimal_size`, a string)
    ("conditions", INT_LIST),            # Polygon condition codes (`c`); [] when none
    ("correction", pa.int64()),          # REST only
    ("sequence_number", pa.int64()),     # per ticker, increasing over the day (`q`)
    RECEIVED_AT,
    SOURCE,
])


def trade_checks(col: dict[str, pa.Array]) -> Checks:
    return [("bad_price", prices_in_bounds([col["price"]], optional=False)),
            ("bad_volume", sizes_in_bounds([col["size"], col["decimal_size"]])),
            ("bad_times", after_epoch(col["sip_timestamp"])),
            ("bad_id", all_of([pc.greater(pc.utf8_length(col["trade_id"]), 0),
                               sequence_at_least_zero(col["sequence_number"])]))]


def fetch(client, symbol: str, from_ms: int, to_ms: int, pace=None):
    from ..data_sources.polygon_rest import iter_tick_pages  # the REST client loads only where a backfill runs
    return iter_tick_pages(client, "trades", symbol, from_ms, to_ms, pace=pace)


CHANNEL = Channel(
    name="T", title="trades", schema=SCHEMA, dedup_key=("symbol", "exchange", "trf_id", "trade_id"),
    sort_key=("symbol", "sip_timestamp_ns", "sequence_number"), time_column="sip_timestamp",
    ws_required={"symbol": "sym", "sip_timestamp_ns": "t", "exchange": "x", "trade_id": "i", "price": "p",
                 "size": "s"},
    ws_optional={"participant_timestamp_ns": "pt", "trf_timestamp_ns": "trft", "trf_id": "trfi", "tape": "z",
                 "decimal_size": "ds", "conditions": "c", "sequence_number": "q"},
    rest_required={"sip_timestamp_ns": "sip_timestamp", "exchange": "exchange", "trade_id": "id", "price": "price",
                   "size": "size"},
    rest_optional={"participant_timestamp_ns": "participant_timestamp", "trf_timestamp_ns": "trf_timestamp",
                   "trf_id": "trf_id", "tape": "tape", "decimal_size": "decimal_size", "conditions": "conditions",
                   "correction": "correction", "sequence_number": "sequence_number"},
    checks=trade_checks, fetch=fetch, rest_path="/v3/trades/{ticker}", gap_step_ms=0,
    ws_scale={"sip_timestamp_ns": MS_TO_NS, "participant_timestamp_ns": MS_TO_NS, "trf_timestamp_ns": MS_TO_NS},
    absent_as={"conditions": []})
