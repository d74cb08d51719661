"""`Q`: NBBO quotes (tick level), REST source `/v3/quotes/{ticker}`.

Every field Polygon documents is stored. Times as for trades: WebSocket milliseconds (`t`, `pt`, `trft`),
REST nanoseconds, each kept exactly in `<name>_ns` beside a microsecond timestamp. The stream sends one
condition (`c`, an int), REST a list (`conditions`): stored as a list either way, [] when there is none
(and `indicators` likewise).
Dedup key (symbol, sequence_number): Polygon's sequence number is unique per ticker and day.
A bid or ask of 0 means no bid or ask (a one-sided market) and is kept; negative or infinite is not.
Crossed (bid > ask) and locked (bid == ask) quotes are real market states and are kept.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .base import INT_LIST, MS_TO_NS, RECEIVED_AT, SOURCE, Channel, Checks, after_epoch, exact_time, \
    prices_in_bounds, sequence_at_least_zero, sizes_in_bounds

SCHEMA = pa.schema([
    ("symbol", pa.string()),
    *exact_time("sip_timestamp"),          # when the SIP published the quote (WS `t`, ms; REST ns)
    *exact_time("participant_timestamp"),  # when the exchange made it (WS `pt`, ms; REST ns)
    *exact_time("trf_timestamp"),          # WS `trft` (ms), REST ns
    ("trf_id", pa.int64()),              # trade reporting facility (`trfi`; not in REST)
    ("bid_exchange", pa.int64()),        # Polygon exchange id (`bx`)
    ("bid_price", pa.float64()),         # USD (`bp`)
    ("bid_size", pa.float64()),          # shares (`bs`; round lots before Nov 2025 on some feeds: as Polygon sends)
    ("ask_exchange", pa.int64()),        # `ax`
    ("ask_price", pa.float64()),         # `ap`
    ("ask_size", pa.float64()),          # `as`
    ("conditions", INT_LIST),            # `c` (one code on the stream) / `conditions`; [] when none
    ("indicators", INT_LIST),            # `i`; [] when none
    ("tape", pa.int64()),                # `z`
    ("sequence_number", pa.int64()),     # `q`: unique per ticker and day
    RECEIVED_AT,
    SOURCE,
])


def quote_checks(col: dict[str, pa.Array]) -> Checks:
    # A bid above the ask (crossed) or equal to it (locked) is a real market state: kept as sent.
    return [("bad_price", prices_in_bounds([col["bid_price"], col["ask_price"]], zero_allowed=True)),
            ("bad_volume", sizes_in_bounds([col["bid_size"], col["ask_size"]])),
            ("bad_times", after_epoch(col["sip_timestamp"])),
            ("bad_id", sequence_at_least_zero(col["sequence_number"]))]


def _one_condition_as_list(column: str, value):
    return [value] if column == "conditions" and type(value) in (int, float) else value


def _condition_column_as_lists(table: pa.Table) -> pa.Table:
    """Fast path: the stream's `c` (parsed as int64) becomes a one-item list, null stays null."""
    codes = table.column("conditions").combine_chunks()
    offsets = pa.array(range(len(codes) + 1), pa.int32())
    lists = pa.ListArray.from_arrays(offsets, pc.fill_null(codes, 0), mask=codes.is_null())
    return table.set_column(table.column_names.index("conditions"), "conditions", lists)


def fetch(client, symbol: str, from_ms: int, to_ms: int, pace=None):
    from ..data_sources.polygon_rest import iter_tick_pages  # the REST client loads only where a backfill runs
    return iter_tick_pages(client, "quotes", symbol, from_ms, to_ms, pace=pace)


CHANNEL = Channel(
    name="Q", title="quotes", schema=SCHEMA, dedup_key=("symbol", "sequence_number"),
    sort_key=("symbol", "sip_timestamp_ns", "sequence_number"), time_column="sip_timestamp",
    ws_required={"symbol": "sym", "sip_timestamp_ns": "t", "sequence_number": "q"},
    ws_optional={"participant_timestamp_ns": "pt", "trf_timestamp_ns": "trft", "trf_id": "trfi",
                 "bid_exchange": "bx", "bid_price": "bp", "bid_size": "bs",
                 "ask_exchange": "ax", "ask_price": "ap", "ask_size": "as", "conditions": "c",
                 "indicators": "i", "tape": "z"},
    rest_required={"sip_timestamp_ns": "sip_timestamp", "sequence_number": "sequence_number"},
    rest_optional={"participant_timestamp_ns": "participant_timestamp", "trf_timestamp_ns": "trf_timestamp",
                   "bid_exchange": "bid_exchange", "bid_price": "bid_price", "bid_size": "bid_size",
                   "ask_exchange": "ask_exchange", "ask_price": "ask_price", "ask_size": "ask_size",
                   "conditions": "conditions", "indicators": "indicators", "tape": "tape"},
    checks=quote_checks, fetch=fetch, rest_path="/v3/quotes/{ticker}", gap_step_ms=0,
    ws_types={"conditions": pa.int64()},
    ws_scale={"sip_timestamp_ns": MS_TO_NS, "participant_timestamp_ns": MS_TO_NS, "trf_timestamp_ns": MS_TO_NS},
    ws_adapt=_one_condition_as_list, ws_adapt_columns=_condition_column_as_lists,
    absent_as={"conditions": [], "indicators": []})
