"""BatchWriter + ParquetSink: frames in, one durable Parquet file per flush out.

The writer gets a FakeClock inside a regular session (Tuesday 2025-06-10, 10:00 New York) and a calendar
built from the default market hours; only the flush-timer tests use a clock whose monotonic time is
real, and they wait well under two seconds.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import queue
import threading
import time
from datetime import datetime, time as clock_time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from conftest import ANY_TIME, FakeClock, ny
from conftest import logged_events as events_named
from spy_streamer.clock import FrozenClock
from fake_polygon import agg_event, session_timeline
from spy_streamer.storage import parquet_sink
from spy_streamer.channels.aggregates import SCHEMA
from spy_streamer.capture.batch_writer import BatchWriter
from spy_streamer.backfill.gap_backfill import Gap
from spy_streamer.config import MarketHoursConfig
from spy_streamer.market.market_hours import MarketCalendar
from spy_streamer.storage.parquet_sink import ParquetSink
from spy_streamer.capture.pipeline_stats import WriterStats
from spy_streamer.capture.queue_items import END_OF_STREAM, GAP_POSSIBLE, RestBars
from spy_streamer.channels import channel_for
from spy_streamer.capture.seen_keys import SeenKeys, SeenSlots, key_hashes

pytestmark = pytest.mark.usefixtures("info_logs")  # the INFO records matter here

NEW_YORK = ZoneInfo("America/New_York")
HOURS = MarketHoursConfig(timezone=NEW_YORK, active_days=frozenset(range(5)),
                          start_time=clock_time(9, 30), end_time=clock_time(16, 0))
SESSION_NOW = ny(2025, 6, 10, 10, 0)   # a Tuesday, no holiday nearby
DAY = "2025-06-10"
SUBSCRIPTIONS = ("A.SPY", "A.QQQ")

EXPECTED_SCHEMA = {
    "symbol": pa.string(),
    "start": pa.timestamp("us", tz="UTC"),   # Polygon's milliseconds in the unit every engine reads (issue 19)
    "end": pa.timestamp("us", tz="UTC"),
    "open": pa.float64(), "high": pa.float64(), "low": pa.float64(), "close": pa.float64(),
    "vwap": pa.float64(), "day_vwap": pa.float64(), "average_size": pa.float64(),
    "official_open": pa.float64(),
    "volume": pa.int64(), "accumulated_volume": pa.int64(),
    "decimal_volume": pa.decimal128(38, 18), "decimal_accumulated_volume": pa.decimal128(38, 18),
    "transactions": pa.int64(), "otc": pa.bool_(),
    "received_at": pa.timestamp("us", tz="UTC"),
    "source": pa.string(),
}


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def frame(events) -> str:
    return json.dumps(list(events))





class Rig:
    def __init__(self, data_dir: Path, clock=None, interval_seconds: float = 30.0,
                 subscriptions: tuple[str, ...] = SUBSCRIPTIONS):
        self.clock = clock or FakeClock(SESSION_NOW)
        self.calendar = MarketCalendar(HOURS)
        self.frames: queue.Queue = queue.Queue()
        self.sink = ParquetSink(data_dir)
        self.stats = WriterStats()
        self.writer = BatchWriter(self.frames, self.sink, self.calendar, self.stats, interval_seconds, self.clock,
                                  subscriptions=subscriptions)
        self.writer.start_day()

    def send(self, events, received_ns: int | None = None) -> int:
        received_ns = self.clock.time_ns() if received_ns is None else received_ns
        self.writer.accept_frame(received_ns, frame(events))
        return received_ns


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def rig(data_dir) -> Rig:
    return Rig(data_dir)


def partition(data_dir: Path) -> Path:
    return data_dir / "A" / f"date={DAY}"


def parquet_files(data_dir: Path) -> list[Path]:
    return sorted(partition(data_dir).glob("*.parquet")) if partition(data_dir).exists() else []


def stored(data_dir: Path) -> list[dict]:
    table = ds.dataset(data_dir / "A", format="parquet", partitioning="hive").to_table()
    return sorted(table.to_pylist(), key=lambda row: (row["symbol"], row["start"]))


def stored_keys(data_dir: Path) -> list[tuple[str, int]]:
    return [(row["symbol"], ms(row["start"])) for row in stored(data_dir)]


def utc_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=timezone.utc)


# --------------------------------------------------------------------------------------------------
# Frames -> Parquet
# --------------------------------------------------------------------------------------------------

def test_flush_writes_one_parquet_file_with_the_design_schema_and_the_sent_values(rig, data_dir):
    sent = session_timeline(ms(ny(2025, 6, 10, 9, 45)), 5)
    received_ns = rig.send(sent[:3]) + 1234  # not a whole millisecond: received_at keeps microseconds
    rig.send(sent[3:], received_ns=received_ns)

    assert rig.writer.flush() is True

    files = parquet_files(data_dir)
    assert len(files) == 1
    assert not files[0].name.startswith((".", "_"))
    schema = pq.read_schema(files[0])
    assert {name: schema.field(name).type for name in schema.names} == EXPECTED_SCHEMA
    assert schema.names == list(EXPECTED_SCHEMA)

    rows = stored(data_dir)
    assert len(rows) == 5
    for row, event in zip(rows, sent):
        assert row["symbol"] == event["sym"] == "SPY"
        assert row["start"] == utc_ms(event["s"]) and row["end"] == utc_ms(event["e"])
        assert (row["open"], row["high"], row["low"], row["close"]) == (event["o"], event["h"], event["l"], event["c"])
        assert (row["vwap"], row["day_vwap"], row["average_size"], row["official_open"]) == \
            (event["vw"], event["a"], float(event["z"]), event["op"])
        assert (row["volume"], row["accumulated_volume"]) == (event["v"], event["av"])
        assert row["source"] == "ws"
    first_received = rig.clock.time_ns() // 1000
    assert [ms_us(row["received_at"]) for row in rows] == [first_received] * 3 + [received_ns // 1000] * 2

    assert rig.stats.rows_written == 5 and rig.stats.batches_written == 1
    assert rig.stats.rows_pending == 0 and rig.stats.events_received == 5
    assert rig.stats.last_flush_at == rig.clock.now()


def ms_us(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def test_dataset_reads_every_flush_and_the_hive_date(rig, data_dir):
    start = ms(ny(2025, 6, 10, 9, 30))
    for batch in range(3):
        rig.send(session_timeline(start + batch * 10_000, 10))
        rig.clock.advance(30)
        assert rig.writer.flush() is True
    assert len(parquet_files(data_dir)) == 3
    table = ds.dataset(data_dir / "A", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 30
    assert {str(value) for value in table.column("date").to_pylist()} == {DAY}
    assert rig.stats.batches_written == 3 and rig.stats.rows_written == 30


def test_empty_flush_writes_no_file(rig, data_dir):
    assert rig.writer.flush() is True
    assert parquet_files(data_dir) == []
    assert rig.stats.batches_written == 0


def test_optional_fields_may_be_missing(rig, data_dir):
    event = agg_event(ms(ny(2025, 6, 10, 9, 50)))
    for key in ("vw", "a", "z", "op", "av"):
        del event[key]
    rig.send([event])
    assert rig.writer.flush() is True
    (row,) = stored(data_dir)
    assert row["vwap"] is None and row["accumulated_volume"] is None and row["official_open"] is None
    assert row["volume"] == event["v"]


def test_bytes_frames_and_integral_floats_are_accepted(rig, data_dir):
    event = agg_event(ms(ny(2025, 6, 10, 9, 51)))
    event["v"] = 12.0   # JSON may give an integral volume as a float
    event["o"] = 500    # and a price as an int
    rig.writer.accept_frame(rig.clock.time_ns(), frame([event]).encode())
    assert rig.writer.flush() is True
    (row,) = stored(data_dir)
    assert row["volume"] == 12 and row["open"] == 500.0


# --------------------------------------------------------------------------------------------------
# Duplicates
# --------------------------------------------------------------------------------------------------

def test_duplicates_within_a_batch_are_stored_once(rig, data_dir):
    bars = session_timeline(ms(ny(2025, 6, 10, 9, 40)), 4)
    rig.send(bars)
    rig.send(bars[1:3])
    rig.send([bars[0], bars[0]])
    assert rig.stats.duplicates == 4
    assert rig.stats.rows_pending == 4
    assert rig.writer.flush() is True
    assert stored_keys(data_dir) == [("SPY", bar["s"]) for bar in bars]


def test_duplicates_across_flushes_are_stored_once(rig, data_dir):
    bars = session_timeline(ms(ny(2025, 6, 10, 9, 40)), 4)
    rig.send(bars[:2])
    assert rig.writer.flush()
    rig.clock.advance(30)
    rig.send(bars)          # two repeats, two new
    assert rig.writer.flush()
    rig.clock.advance(30)
    rig.send(bars)          # all repeats: no new file
    assert rig.writer.flush()
    assert rig.stats.duplicates == 6
    assert len(parquet_files(data_dir)) == 2
    assert stored_keys(data_dir) == [("SPY", bar["s"]) for bar in bars]


def test_same_start_of_another_symbol_is_not_a_duplicate(rig, data_dir):
    start = ms(ny(2025, 6, 10, 9, 40))
    rig.send([agg_event(start, "SPY"), agg_event(start, "QQQ")])
    assert rig.stats.duplicates == 0
    assert rig.writer.flush()
    assert stored_keys(data_dir) == [("QQQ", start), ("SPY", start)]


def test_the_repeat_check_costs_bytes_per_row_not_per_symbol(data_dir):
    """Regression: each symbol took a session bitmap (23.4 KB), about 260 MB under "A.*" (~11,000 tickers)
    before a single bar; the issue allows at most 4 KB per symbol-day on top of the rows."""
    rig = Rig(data_dir, subscriptions=("A.*",))
    symbols = [f"S{index:03d}" for index in range(50)]
    rig.send([agg_event(ms(ny(2025, 6, 10, 9, 30)), symbol) for symbol in symbols])
    lane = rig.writer.lanes["A"]
    assert len(lane.seen) == len(symbols) and lane.seen.memory_bytes() == 16 * len(symbols)   # a word each
    rig.send([agg_event(ms(ny(2025, 6, 10, 15, 59, 59)), symbol) for symbol in symbols[:2]]
             + [agg_event(ms(ny(2025, 6, 10, 9, 30)), symbols[0])])
    assert rig.stats.duplicates == 1 and rig.stats.rows_pending == len(symbols) + 2
    # The next 63 seconds of each symbol share its word: no more memory for 63 more bars a symbol.
    before = lane.seen.memory_bytes()
    opens = ms(ny(2025, 6, 10, 9, 30))
    rig.send([agg_event(opens + second * 1000, symbol) for second in range(1, 64) for symbol in symbols])
    assert len(lane.seen) == 64 * len(symbols) + 2 and lane.seen.memory_bytes() <= before + 16 * len(symbols)


def test_repeats_are_recognised_within_a_batch_across_batches_and_after_merging():
    seen = SeenKeys()
    table = pa.table({"symbol": ["SPY", "SPY", "SPY", "SPY", "QQQ"],
                      "start": pa.array([1_000_000, 1_000_500, 999_000, 1_000_000, 1_000_000], pa.int64())})
    keys = key_hashes(table, ("symbol", "start"))
    assert seen.add(keys).to_pylist() == [True, True, True, False, True]
    assert seen.add(keys).to_pylist() == [False] * 5
    many = np.arange(200_000, dtype=np.uint64) * np.uint64(7919)   # past the merge threshold
    assert pc.all(seen.add(many)).as_py() and not pc.any(seen.add(many)).as_py()
    assert seen.add(keys).to_pylist() == [False] * 5 and len(seen) == 200_004


def test_bar_keys_as_bits_agree_with_hashed_keys_off_the_grid_and_null_times_included():
    rng = np.random.default_rng(7)
    slots, hashed = SeenSlots(channel_for("A")), SeenKeys(("symbol", "start"))
    for _ in range(12):
        rows = int(rng.integers(0, 2000))
        starts = 1_767_000_000_000 + rng.integers(0, 3000, rows) * 1000 + rng.choice([0] * 18 + [1, 500], rows)
        table = pa.table({"symbol": pa.array([f"S{i}" for i in rng.integers(0, 200, rows)], pa.string()),
                          "start": pa.array(starts, pa.timestamp("ms", tz="UTC"), mask=rng.random(rows) < 0.05)})
        assert slots.add_table(table).to_pylist() == hashed.add_table(table).to_pylist()
    assert len(slots) == len(hashed)


def test_null_key_parts_are_a_value_of_their_own():
    table = pa.table({"symbol": ["SPY", "SPY", "SPY"], "trf_id": pa.array([None, 0, None], pa.int64())})
    keys = key_hashes(table, ("symbol", "trf_id"))
    assert keys[0] == keys[2] and keys[0] != keys[1]


def test_a_string_key_hashes_alike_whatever_else_is_in_its_batch():
    ids = ["1", "", "x" * 64, "y" * 65, "z" * 500, "Ä", "1\x00"]
    alone = [key_hashes(pa.table({"trade_id": [text]}), ("trade_id",))[0] for text in ids]
    together = key_hashes(pa.table({"trade_id": pa.array(ids).slice(0)}), ("trade_id",))
    assert list(together) == alone and len(set(alone)) == len(ids)
    assert list(key_hashes(pa.table({"trade_id": pa.array(ids, pa.large_string())}), ("trade_id",))) == alone


def test_a_restarted_writer_does_not_store_existing_keys_again(rig, data_dir):
    bars = session_timeline(ms(ny(2025, 6, 10, 9, 40)), 6)
    rig.send(bars[:4])
    assert rig.writer.flush()

    # A new process later the same day: new sink, new writer, same data dir.
    clock = FakeClock(SESSION_NOW + timedelta(minutes=5))
    restarted = Rig(data_dir, clock=clock)
    restarted.send(bars)    # Polygon replays a few bars after a reconnect
    assert restarted.stats.duplicates == 4
    assert restarted.writer.flush()
    assert stored_keys(data_dir) == [("SPY", bar["s"]) for bar in bars]


def test_a_writer_on_another_day_does_not_see_yesterdays_keys(rig, data_dir):
    bars = session_timeline(ms(ny(2025, 6, 10, 9, 40)), 3)
    rig.send(bars)
    assert rig.writer.flush()
    tomorrow = Rig(data_dir, clock=FakeClock(ny(2025, 6, 11, 10, 0)))
    same_time_tomorrow = session_timeline(ms(ny(2025, 6, 11, 9, 40)), 3)
    tomorrow.send(same_time_tomorrow)
    assert tomorrow.stats.duplicates == 0
    assert tomorrow.writer.flush()
    assert (data_dir / "A" / "date=2025-06-11").is_dir()
    assert len(stored(data_dir)) == 6


# --------------------------------------------------------------------------------------------------
# Late, out-of-session and malformed input
# --------------------------------------------------------------------------------------------------

def test_bars_from_yesterday_are_rejected_late(rig, data_dir):
    rig.send([agg_event(ms(ny(2025, 6, 9, 10, 0))), agg_event(ms(ny(2025, 6, 9, 15, 59, 59))),
              agg_event(ms(ny(2025, 6, 9, 23, 59, 59)))])
    assert rig.stats.rejected_late == 3
    assert rig.stats.rows_pending == 0
    assert rig.writer.flush() and parquet_files(data_dir) == []


def test_pre_market_and_after_hours_bars_are_not_stored(rig, data_dir):
    inside = [agg_event(ms(ny(2025, 6, 10, 9, 30, 0))), agg_event(ms(ny(2025, 6, 10, 15, 59, 59)))]
    outside = [agg_event(ms(ny(2025, 6, 10, 8, 0))), agg_event(ms(ny(2025, 6, 10, 17, 0))),
               agg_event(ms(ny(2025, 6, 10, 9, 29, 59))), agg_event(ms(ny(2025, 6, 10, 16, 0, 0))),
               agg_event(ms(ny(2025, 6, 11, 10, 0)))]
    rig.send(outside + inside)
    assert rig.stats.outside_session == 5
    assert rig.stats.rejected_late == 0
    assert rig.writer.flush()
    assert stored_keys(data_dir) == [("SPY", event["s"]) for event in inside]


def test_nothing_is_stored_on_a_weekend_day(data_dir):
    saturday = Rig(data_dir, clock=FakeClock(ny(2025, 6, 14, 11, 0)))
    saturday.send([agg_event(ms(ny(2025, 6, 14, 10, 0)))])
    assert saturday.stats.outside_session == 1
    assert saturday.writer.flush() and not (data_dir / "A").exists()


DEEP = 5000  # far beyond Python's recursion limit (1000)


@pytest.mark.parametrize("bad_frame, reason", [
    ("not json", "not_json"),
    ('{"a": 1}', "bad_shape"),
    ('[{"ev": "A"}]', "missing_field"),
    ("[1]", "bad_shape"),
    ("[null]", "bad_shape"),
    ("null", "bad_shape"),
    ('"a string"', "bad_shape"),
    (b"\xff\xfe not utf-8", "not_json"),
    ("[" * DEEP + "]" * DEEP, "bad_shape"),
    ('{"x":' * DEEP + "1" + "}" * DEEP, "bad_shape"),
    ("[" * DEEP, "bad_shape"),
    ("[" + "1" * 5000 + "]", "bad_shape"),
])
def test_malformed_frames_are_counted_not_raised(rig, data_dir, bad_frame, reason):
    """Regression (deep nesting): json.loads raised RecursionError, which is no ValueError, and the
    writer thread died."""
    rig.writer.accept_frame(rig.clock.time_ns(), bad_frame)
    assert rig.stats.rejected_invalid == 1
    assert rig.stats.rejected_reasons == {reason: 1}
    assert rig.stats.rows_pending == 0
    assert rig.writer.flush() is True and parquet_files(data_dir) == []


def bad_events() -> list[dict]:
    start = ms(ny(2025, 6, 10, 9, 45))
    string_price = agg_event(start); string_price["o"] = "500.0"
    string_volume = agg_event(start); string_volume["v"] = "100"
    fractional_volume = agg_event(start); fractional_volume["v"] = 12.5
    bool_volume = agg_event(start); bool_volume["v"] = True
    string_start = agg_event(start); string_start["s"] = str(start)
    empty_symbol = agg_event(start); empty_symbol["sym"] = ""
    no_close = agg_event(start); del no_close["c"]
    trade = agg_event(start); trade["ev"] = "T"
    string_optional = agg_event(start); string_optional["vw"] = "x"
    return [string_price, string_volume, fractional_volume, bool_volume, string_start, empty_symbol,
            no_close, trade, string_optional]


def test_malformed_events_are_counted_and_the_good_ones_in_the_same_frame_kept(rig, data_dir):
    bad = bad_events()
    good = agg_event(ms(ny(2025, 6, 10, 9, 46)))
    rig.send(bad + [good])
    assert rig.stats.rejected_invalid == len(bad)
    assert rig.writer.flush() is True
    assert stored_keys(data_dir) == [("SPY", good["s"])]


def test_an_out_of_range_volume_is_rejected_not_fatal(rig, data_dir):
    """Regression: an int beyond int64 used to pass validation and then make flush() raise OverflowError
    (not OSError), killing the writer thread and losing the batch."""
    good = agg_event(ms(ny(2025, 6, 10, 9, 46)))
    huge = agg_event(ms(ny(2025, 6, 10, 9, 47)))
    huge["v"] = 2 ** 63
    rig.send([good, huge])
    try:
        flushed = rig.writer.flush()
    except Exception as exc:  # noqa: BLE001 - the bug being shown
        pytest.fail(f"flush raised {type(exc).__name__}: {exc}")
    assert flushed is True
    assert rig.stats.rejected_invalid == 1
    assert stored_keys(data_dir) == [("SPY", good["s"])]


def test_an_int_too_large_for_a_float_price_is_rejected_not_raised(rig):
    """Regression: a price given as an int too large for a float (10**400) used to make accept_frame()
    raise OverflowError instead of counting rejected_invalid."""
    event = agg_event(ms(ny(2025, 6, 10, 9, 46)))
    event["o"] = 10 ** 400
    try:
        rig.send([event])
    except Exception as exc:  # noqa: BLE001 - the bug being shown
        pytest.fail(f"accept_frame raised {type(exc).__name__}: {exc}")
    assert rig.stats.rejected_invalid == 1


def send_raw(rig: Rig, text: str | bytes) -> None:
    rig.writer.accept_frame(rig.clock.time_ns(), text)


def accepts(rig: Rig, text: str | bytes) -> None:
    try:
        send_raw(rig, text)
    except Exception as exc:  # noqa: BLE001 - the bug being shown
        pytest.fail(f"accept_frame raised {type(exc).__name__}: {exc}")


def test_a_deeply_nested_element_costs_only_itself(rig, data_dir):
    """Regression: one element nested 5,000 deep crashed the writer; now it is counted and the good bars
    of the same frame are kept."""
    good = [agg_event(ms(ny(2025, 6, 10, 9, 46))), agg_event(ms(ny(2025, 6, 10, 9, 47)))]
    deep = "[" * DEEP + "]" * DEEP
    accepts(rig, f"[{json.dumps(good[0])},{deep},{json.dumps(good[1])}]")
    assert rig.stats.rejected_reasons == {"bad_shape": 1}
    assert rig.writer.flush() is True
    assert stored_keys(data_dir) == [("SPY", bar["s"]) for bar in good]


def test_a_symbol_with_a_lone_surrogate_is_rejected_not_raised(rig, data_dir):
    """Regression: "\\ud800" is valid JSON but has no UTF-8 form; building the Arrow column raised
    UnicodeEncodeError in the writer thread."""
    bad = agg_event(ms(ny(2025, 6, 10, 9, 46)), symbol="\ud800")
    good = agg_event(ms(ny(2025, 6, 10, 9, 47)))
    bad_type = agg_event(ms(ny(2025, 6, 10, 9, 48))); bad_type["v"] = "1"   # forces the per-event path
    accepts(rig, frame([bad, good, bad_type]))   # json.dumps escapes it: "\\ud800"
    assert rig.stats.rejected_reasons == {"bad_symbol": 1, "bad_type": 1}
    assert rig.writer.flush() is True
    assert stored_keys(data_dir) == [("SPY", good["s"])]


def test_bytes_that_are_not_utf8_in_an_unread_field_do_not_lose_the_frame(rig, data_dir):
    """Regression: one invalid byte anywhere made the whole frame "not JSON", its good bars lost."""
    good = agg_event(ms(ny(2025, 6, 10, 9, 46)))
    bad_symbol = agg_event(ms(ny(2025, 6, 10, 9, 47)), symbol="SP\u00ff")
    text = frame([dict(good, note="\u00ff"), bad_symbol]).replace("\\u00ff", "\u00ff")
    accepts(rig, text.encode("latin-1"))                   # \xff alone: not UTF-8
    assert rig.stats.rejected_reasons == {"bad_symbol": 1}
    assert rig.writer.flush() is True
    assert stored_keys(data_dir) == [("SPY", good["s"])]


def test_an_integer_of_thousands_of_digits_does_not_lose_the_frame(rig, data_dir):
    """Regression: Python refuses to parse ints of over 4300 digits (ValueError), so one such number made
    the whole frame "not JSON"."""
    good = agg_event(ms(ny(2025, 6, 10, 9, 46)))
    huge_volume = agg_event(ms(ny(2025, 6, 10, 9, 47)))
    huge_price = agg_event(ms(ny(2025, 6, 10, 9, 48)))
    text = frame([dict(good, extra="HUGE"), dict(huge_volume, v="HUGE"), dict(huge_price, o="-HUGE")])
    accepts(rig, text.replace('"-HUGE"', "-" + "9" * 5000).replace('"HUGE"', "9" * 5000))
    assert rig.stats.rejected_reasons == {"bad_type": 1, "bad_price": 1}
    assert rig.writer.flush() is True
    assert stored_keys(data_dir) == [("SPY", good["s"])]


@pytest.mark.parametrize("start", [2 ** 63 - 1, 2 ** 63 - 1000])
def test_a_rest_bar_whose_end_would_overflow_is_rejected_not_raised(rig, data_dir, start):
    """Regression: REST bars get end = start + 1000, which overflowed int64 and raised OverflowError."""
    results = [{"t": start, "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1}]
    try:
        rig.writer.accept_rest_results("SPY", results, rig.clock.time_ns(), "A", ANY_TIME)
    except Exception as exc:  # noqa: BLE001 - the bug being shown
        pytest.fail(f"accept_rest_results raised {type(exc).__name__}: {exc}")
    assert rig.stats.rejected_invalid == 1 and rig.stats.rows_pending == 0


@pytest.mark.parametrize("results", [None, {"t": 1}, "text"])
def test_rest_results_that_are_not_a_list_are_counted(rig, results):
    rig.writer.accept_rest_results("SPY", results, rig.clock.time_ns(), "A", ANY_TIME)
    assert rig.stats.rejected_reasons == {"bad_shape": 1}


# --------------------------------------------------------------------------------------------------
# The flush timer (real monotonic time, short interval)
# --------------------------------------------------------------------------------------------------

def start_writer(rig: Rig) -> threading.Thread:
    thread = threading.Thread(target=rig.writer.run, name="test-writer", daemon=True)
    thread.start()
    return thread


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_the_flush_timer_fires_without_further_messages(data_dir):
    rig = Rig(data_dir, clock=FrozenClock(SESSION_NOW), interval_seconds=0.2)
    thread = start_writer(rig)
    try:
        bars = session_timeline(ms(ny(2025, 6, 10, 9, 35)), 5)
        rig.frames.put((time.time_ns(), frame(bars)))
        # Nothing else is sent: the file must appear because the interval elapsed, not because of a message.
        wait_until(lambda: parquet_files(data_dir), timeout=2.0, what="a Parquet file from the timer")
        assert stored_keys(data_dir) == [("SPY", bar["s"]) for bar in bars]
        # Written on the parquet-flush thread: counted once the writer takes its outcome in, soon after.
        wait_until(lambda: rig.stats.batches_written == 1, timeout=1.0, what="the flush counted")
        assert rig.stats.rows_pending == 0 and rig.stats.pending_since is None
        assert thread.is_alive()

        # A second quiet period: another batch written on its own.
        more = session_timeline(ms(ny(2025, 6, 10, 9, 36)), 3)
        rig.frames.put((time.time_ns(), frame(more)))
        wait_until(lambda: len(parquet_files(data_dir)) == 2, timeout=2.0, what="a second file")
    finally:
        rig.frames.put(END_OF_STREAM)
        thread.join(2)
    assert not thread.is_alive()
    assert rig.stats.rows_written == 8


def test_end_of_stream_ends_run_after_a_final_flush(data_dir):
    rig = Rig(data_dir, clock=FrozenClock(SESSION_NOW), interval_seconds=60)
    thread = start_writer(rig)
    bars = session_timeline(ms(ny(2025, 6, 10, 9, 35)), 7)
    rig.frames.put((time.time_ns(), frame(bars[:4])))
    rig.frames.put((time.time_ns(), frame(bars[4:])))
    rig.frames.put(END_OF_STREAM)
    thread.join(2)
    assert not thread.is_alive(), "run() did not return after END_OF_STREAM"
    # The 60 s timer never fired; everything came out in the final flush.
    assert rig.stats.batches_written == 1
    assert stored_keys(data_dir) == [("SPY", bar["s"]) for bar in bars]


def test_run_parses_ahead_yet_keeps_queue_order_and_the_first_received_row(data_dir, monkeypatch):
    """Batches of two frames, each parsed while the one before is accepted: a repeat in a later batch is
    dropped, the first received kept; a REST page and a gap marker between frames keep their place."""
    monkeypatch.setattr("spy_streamer.capture.batch_writer.MAX_FRAMES_PER_PARSE", 2)
    rig = Rig(data_dir, clock=FrozenClock(SESSION_NOW), interval_seconds=60)
    bars = session_timeline(ms(ny(2025, 6, 10, 9, 35)), 9)
    changed = dict(bars[0], v=bars[0]["v"] + 1)
    for index, bar in enumerate(bars):
        rig.frames.put((time.time_ns(), frame([bar])))
        if index == 3:
            rig.frames.put(GAP_POSSIBLE)
            rig.frames.put((time.time_ns(), frame([changed])))
    rig.frames.put(END_OF_STREAM)
    start_writer(rig).join(2)
    assert stored_keys(data_dir) == [("SPY", bar["s"]) for bar in bars]
    assert [row["volume"] for row in stored(data_dir)][0] == bars[0]["v"] and rig.stats.duplicates == 1


def test_an_idle_writer_writes_no_empty_files(data_dir):
    rig = Rig(data_dir, clock=FrozenClock(SESSION_NOW), interval_seconds=0.05)
    thread = start_writer(rig)
    time.sleep(0.3)
    rig.frames.put(END_OF_STREAM)
    thread.join(2)
    assert not thread.is_alive()
    assert not (data_dir / "A").exists()


# --------------------------------------------------------------------------------------------------
# Disk failures
# --------------------------------------------------------------------------------------------------

def test_a_failing_disk_keeps_the_rows_and_logs_once(tmp_path, caplog):
    data_dir = tmp_path / "data"
    data_dir.write_text("a file where the data folder should be: every mkdir under it fails")
    rig = Rig(data_dir)
    bars = session_timeline(ms(ny(2025, 6, 10, 9, 40)), 10)

    rig.send(bars[:4])
    assert rig.writer.flush() is False
    rig.clock.advance(30)
    rig.send(bars[4:8])
    assert rig.writer.flush() is False
    rig.clock.advance(30)
    rig.send(bars[8:])
    assert rig.writer.flush() is False

    assert rig.stats.write_errors == 3
    assert rig.stats.rows_pending == 10
    assert rig.stats.rows_written == 0 and rig.stats.batches_written == 0
    assert rig.stats.last_write_error and "Error" in rig.stats.last_write_error
    failures = events_named(caplog, "write_failed")
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    # Repeats during the outage are still recognised as repeats.
    rig.send(bars[:2])
    assert rig.stats.duplicates == 2

    data_dir.unlink()  # the operator frees the path
    rig.clock.advance(30)
    assert rig.writer.flush() is True
    assert stored_keys(data_dir) == [("SPY", bar["s"]) for bar in bars]
    assert len(parquet_files(data_dir)) == 1
    assert rig.stats.rows_written == 10 and rig.stats.rows_pending == 0
    assert rig.stats.last_write_error is None
    assert len(events_named(caplog, "write_recovered")) == 1
    assert len(events_named(caplog, "write_failed")) == 1

    # A new failure streak logs again, once.
    data_dir.rename(tmp_path / "moved")
    data_dir.write_text("blocked again")
    rig.send(session_timeline(ms(ny(2025, 6, 10, 9, 50)), 2))
    assert rig.writer.flush() is False
    assert rig.writer.flush() is False
    assert len(events_named(caplog, "write_failed")) == 2


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_a_read_only_partition_keeps_the_rows(rig, data_dir, caplog):
    folder = partition(data_dir)
    folder.mkdir(parents=True)
    folder.chmod(0o500)
    try:
        rig.send(session_timeline(ms(ny(2025, 6, 10, 9, 40)), 3))
        assert rig.writer.flush() is False
        assert rig.writer.flush() is False
        assert rig.stats.rows_pending == 3 and rig.stats.write_errors == 2
        assert len(events_named(caplog, "write_failed")) == 1
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)
    assert rig.writer.flush() is True
    assert len(stored(data_dir)) == 3


def test_a_failed_write_leaves_no_partial_file(rig, data_dir, monkeypatch):
    real_write_table = pq.write_table
    seen_during_write: list[list[str]] = []

    def failing_write_table(table, handle, **kwargs):
        real_write_table(table.slice(0, 1), handle, **kwargs)  # some bytes are on disk...
        seen_during_write.append(sorted(p.name for p in partition(data_dir).iterdir()))
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk fills up

    monkeypatch.setattr(parquet_sink.pq, "write_table", failing_write_table)
    rig.send(session_timeline(ms(ny(2025, 6, 10, 9, 40)), 3))
    assert rig.writer.flush() is False
    # While being written, the file has a hidden temporary name, never a .parquet one.
    (names,) = seen_during_write
    assert len(names) == 1 and names[0].startswith(".") and names[0].endswith(".tmp") and ".parquet." in names[0]
    # After the failure the temporary is gone and nothing half-written is visible.
    assert list(partition(data_dir).iterdir()) == []
    assert "No space left" in rig.stats.last_write_error

    monkeypatch.setattr(parquet_sink.pq, "write_table", real_write_table)
    assert rig.writer.flush() is True
    assert len(stored(data_dir)) == 3


def test_a_failed_directory_fsync_after_the_rename_does_not_duplicate_rows(rig, data_dir, monkeypatch):
    """Regression: a failed folder fsync after os.replace used to fail the flush although the file was in
    place, so the writer kept the rows and stored them a second time."""
    real_fsync_directory = parquet_sink.fsync_directory
    calls = {"n": 0}

    def flaky_fsync_directory(directory):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync_directory(directory)

    monkeypatch.setattr(parquet_sink, "fsync_directory", flaky_fsync_directory)
    bars = session_timeline(ms(ny(2025, 6, 10, 9, 40)), 3)
    rig.send(bars)
    rig.writer.flush()
    rig.clock.advance(30)
    rig.writer.flush()
    assert stored_keys(data_dir) == [("SPY", bar["s"]) for bar in bars]


# --------------------------------------------------------------------------------------------------
# Temporary files
# --------------------------------------------------------------------------------------------------

def test_remove_temp_files_removes_leftovers_only(rig, data_dir, caplog):
    rig.send(session_timeline(ms(ny(2025, 6, 10, 9, 40)), 3))
    assert rig.writer.flush()
    folder = partition(data_dir)
    other_day = data_dir / "A" / "date=2025-06-09"
    other_day.mkdir(parents=True)
    leftovers = [folder / ".part-1-2-000001.parquet.tmp", folder / ".part-3-4-000009.parquet.tmp",
                 other_day / ".part-5-6-000002.parquet.tmp"]
    for path in leftovers:
        path.write_bytes(b"PAR1 half a file")  # killed before the footer
    keep = [*parquet_files(data_dir)]

    assert rig.sink.remove_temp_files() == 3
    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in keep)
    assert len(events_named(caplog, "partial_files_removed")) == 1
    assert rig.sink.remove_temp_files() == 0
    assert len(events_named(caplog, "partial_files_removed")) == 1
    assert len(stored(data_dir)) == 3


def test_remove_temp_files_on_a_fresh_data_dir(tmp_path):
    assert ParquetSink(tmp_path / "nothing-here").remove_temp_files() == 0


def test_a_leftover_temp_file_does_not_break_readers_or_the_restart(rig, data_dir):
    bars = session_timeline(ms(ny(2025, 6, 10, 9, 40)), 3)
    rig.send(bars)
    assert rig.writer.flush()
    (partition(data_dir) / ".part-9-9-000001.parquet.tmp").write_bytes(b"PAR1 half")
    assert len(stored(data_dir)) == 3              # pyarrow skips the hidden temporary
    restarted = Rig(data_dir, clock=FakeClock(SESSION_NOW + timedelta(minutes=1)))
    restarted.send(bars)
    assert restarted.stats.duplicates == 3         # stored_bars ignores the temporary too


def test_an_unreadable_parquet_file_does_not_stop_the_writer(data_dir):
    folder = partition(data_dir)
    folder.mkdir(parents=True)
    (folder / "part-0-0-000001.parquet").write_bytes(b"PAR1 truncated by a disk error")
    restarted = Rig(data_dir)  # start_day() reads the existing keys
    # kept for a person, outside the partition (Polars would read even a hidden file there)
    assert sorted(path.name for path in folder.iterdir()) == []
    assert (data_dir / ".set-aside" / "A" / folder.name / ".part-0-0-000001.parquet.corrupt").exists()
    bars = session_timeline(ms(ny(2025, 6, 10, 9, 40)), 3)
    restarted.send(bars)
    assert restarted.writer.flush() is True
    assert restarted.stats.rows_written == 3
    assert len(stored(data_dir)) == 3                               # the whole folder reads again
    pl = pytest.importorskip("polars")
    assert pl.scan_parquet(data_dir / "A", hive_partitioning=True).collect().height == 3


def test_the_partition_holds_only_complete_parquet_files(rig, data_dir):
    for batch in range(3):
        rig.send(session_timeline(ms(ny(2025, 6, 10, 9, 40)) + batch * 5000, 5))
        rig.clock.advance(30)
        assert rig.writer.flush()
    names = sorted(p.name for p in partition(data_dir).iterdir())
    assert len(names) == 3 and all(name.endswith(".parquet") and not name.startswith(".") for name in names)
    for path in partition(data_dir).iterdir():
        assert pq.ParquetFile(path).metadata.num_rows == 5


def test_schema_constant_matches_the_design():
    assert {field.name: field.type for field in SCHEMA} == EXPECTED_SCHEMA


# --------------------------------------------------------------------------------------------------
# Gaps for the REST backfill
# --------------------------------------------------------------------------------------------------

def gap_rig(data_dir: Path) -> tuple[BatchWriter, list[Gap]]:
    gaps: list[Gap] = []
    writer = BatchWriter(queue.Queue(), ParquetSink(data_dir), MarketCalendar(HOURS), WriterStats(), 30,
                         FakeClock(SESSION_NOW), request_backfill=gaps.append, subscriptions=("A.SPY",))
    writer.start_day()
    return writer, gaps


def test_a_start_mid_session_asks_for_the_bars_since_the_open(data_dir):
    writer, gaps = gap_rig(data_dir)
    writer.accept_frame(0, frame(session_timeline(ms(ny(2025, 6, 10, 9, 59, 58)), 2)))
    assert gaps == [Gap("SPY", ms(ny(2025, 6, 10, 9, 30)), ms(ny(2025, 6, 10, 9, 59, 57)))]
    writer.accept_frame(0, frame(session_timeline(ms(ny(2025, 6, 10, 10, 0)), 2)))
    assert len(gaps) == 1                                  # closed by the first live bar, asked once


def test_a_possible_gap_is_asked_for_between_the_last_bar_and_the_next_live_one(data_dir):
    writer, gaps = gap_rig(data_dir)
    writer.accept_items([(0, frame(session_timeline(ms(ny(2025, 6, 10, 9, 30)), 10))), GAP_POSSIBLE])
    gaps.clear()
    writer.accept_frame(0, frame(session_timeline(ms(ny(2025, 6, 10, 9, 30, 5)), 1)))   # a late repeat
    assert gaps == []
    writer.accept_frame(0, frame(session_timeline(ms(ny(2025, 6, 10, 9, 30, 20)), 1)))
    assert gaps == [Gap("SPY", ms(ny(2025, 6, 10, 9, 30, 10)), ms(ny(2025, 6, 10, 9, 30, 19)))]


def test_rest_bars_fill_the_gap_without_counting_overlap_as_repeats(data_dir):
    writer, _ = gap_rig(data_dir)
    live = session_timeline(ms(ny(2025, 6, 10, 9, 30)), 10)
    writer.accept_frame(0, frame(live))
    rest = [{"t": bar["s"], "o": bar["o"], "h": bar["h"], "l": bar["l"], "c": bar["c"], "v": bar["v"],
             "vw": bar["vw"], "n": 1} for bar in session_timeline(ms(ny(2025, 6, 10, 9, 30)), 15)]
    writer.accept_items([RestBars("SPY", rest, 0, requested=(rest[0]["t"], rest[-1]["t"]))])
    assert writer.flush()
    assert writer.stats.rows_written == 15 and writer.stats.rows_backfilled == 5 and writer.stats.duplicates == 0
    rows = sorted(stored(data_dir), key=lambda row: row["start"])
    assert [row["source"] for row in rows] == ["ws"] * 10 + ["rest"] * 5
    assert rows[-1]["day_vwap"] is None and rows[-1]["end"] == utc_ms(rest[-1]["t"] + 1000)


def test_a_gap_begins_after_the_latest_row_whether_flushed_pending_or_stored_before_a_restart(data_dir):
    """The latest row time per symbol is folded lazily (at each flush, and from what is pending when a gap
    opens), not per batch: the gap must still begin one bar after each symbol's latest row, whichever batch
    brought it and in whatever order, a failed flush's rows included, and a repeat must not move it."""
    gaps: list[Gap] = []
    rig = Rig(data_dir, clock=FrozenClock(SESSION_NOW), subscriptions=("A.*",))
    rig.writer.request_backfill = gaps.append
    lane = rig.writer.lanes["A"]
    lane.backfill = True
    opens = ms(ny(2025, 6, 10, 9, 30))

    def bars(symbol, seconds):
        return 0, compact_frame([agg_event(opens + second * 1000, symbol) for second in seconds])

    rig.writer.accept_items([bars("SPY", range(0, 10)), bars("QQQ", range(0, 3))])
    assert rig.writer.flush()                                            # folded from the flushed rows
    rig.writer.accept_items([bars("QQQ", [7]), bars("QQQ", [5]), bars("SPY", [4])])   # pending, out of order
    rig.writer.accept_items([GAP_POSSIBLE])
    assert lane.gap_from == {"SPY": opens + 10_000, "QQQ": opens + 8_000}
    assert rig.stats.duplicates == 1                                     # SPY at 4 s, a repeat
    rig.writer.accept_items([bars("SPY", [12]), bars("QQQ", [9]), bars("IWM", [30])])
    assert gaps == [Gap("SPY", opens + 10_000, opens + 11_000), Gap("QQQ", opens + 8_000, opens + 8_000)]
    assert lane.gap_from == {}

    def refuse(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_write, rig.sink.write = rig.sink.write, refuse
    rig.writer.accept_items([bars("IWM", [40])])
    assert not rig.writer.flush()                                        # kept pending: still counted
    rig.writer.accept_items([GAP_POSSIBLE])
    assert lane.gap_from == {"SPY": opens + 13_000, "QQQ": opens + 10_000, "IWM": opens + 41_000}
    rig.sink.write = real_write
    assert rig.writer.flush()
    restarted = BatchWriter(queue.Queue(), ParquetSink(data_dir), MarketCalendar(HOURS), WriterStats(), 30,
                            FrozenClock(SESSION_NOW), request_backfill=gaps.append, subscriptions=("A.*",))
    restarted.start_day()                                                # from the day's files
    assert restarted.lanes["A"].gap_from == lane.gap_from


def compact_frame(events) -> str:
    """A frame as Polygon sends it (no spaces): the fast path's input."""
    return json.dumps(list(events), separators=(",", ":"))


def test_keys_in_any_order_parse_alike_on_the_fast_path(rig, data_dir):
    """The fast path orders the JSON reader's fields as the first frame of a batch sends them (a faster
    parse): frames sending the keys in another order, in the same batch or the next, give the same rows."""
    opens = ms(ny(2025, 6, 10, 9, 30))
    bars = [agg_event(opens + second * 1000, "SPY", price=500 + second) for second in range(6)]
    shuffled = [dict(reversed(list(bar.items()))) for bar in bars]
    rig.writer.accept_items([(0, compact_frame(bars[:2])), (0, compact_frame(shuffled[2:4]))])
    rig.writer.accept_items([(0, compact_frame(shuffled[4:5])), (0, compact_frame(bars[5:]))])
    assert rig.writer.flush() and not rig.stats.rejected_reasons
    fast = [{key: value for key, value in row.items() if key != "received_at"} for row in stored(data_dir)]
    other = Rig(data_dir.parent / "slow")
    other.send(bars)   # spaced JSON: the per-event path
    assert other.writer.flush()
    assert fast == [{key: value for key, value in row.items() if key != "received_at"}
                    for row in stored(data_dir.parent / "slow")]


def test_a_flush_dictionary_encodes_only_the_few_valued_columns_and_every_reader_opens_it(rig, data_dir):
    """Dictionaries for symbol and source only, min/max for all but the floats: cheaper to write, still
    read by pyarrow and DuckDB (compaction) alike, with the statistics a reader prunes by."""
    import duckdb
    rig.send(session_timeline(ms(ny(2025, 6, 10, 9, 30)), 50))
    assert rig.writer.flush()
    [path] = parquet_files(data_dir)
    row_group = pq.ParquetFile(path).metadata.row_group(0)
    columns = {row_group.column(i).path_in_schema: row_group.column(i) for i in range(row_group.num_columns)}
    assert {name for name, column in columns.items() if "RLE_DICTIONARY" in column.encodings} == {"symbol", "source"}
    assert columns["symbol"].is_stats_set and columns["start"].is_stats_set and not columns["open"].is_stats_set
    assert duckdb.sql(f"SELECT count(*), min(start) FROM read_parquet('{path}')").fetchall() == \
        [(50, pq.read_table(path).column("start")[0].as_py())]


def test_run_flushes_in_the_background_and_loses_nothing_when_a_flush_fails_or_the_stream_ends(data_dir):
    """run() writes each interval's rows on the parquet-flush thread while it goes on accepting frames: a
    flush that fails gives its rows back (written with what came since, at the next attempt), one still
    in flight at END_OF_STREAM is waited for, and every accepted row ends up in exactly one file."""
    rig = Rig(data_dir, clock=FrozenClock(SESSION_NOW), interval_seconds=0.05)
    real_write, calls, written = rig.sink.write, [], threading.Event()

    def slow_then_failing_write(channel, day, table, stamp_ns):
        calls.append(table.num_rows)
        time.sleep(0.1)                      # a slow disk: frames keep coming meanwhile
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        written.set()
        return real_write(channel, day, table, stamp_ns)

    rig.sink.write = slow_then_failing_write
    thread = start_writer(rig)
    bars = session_timeline(ms(ny(2025, 6, 10, 9, 35)), 40)
    for bar in bars:
        rig.frames.put((time.time_ns(), compact_frame([bar])))
        time.sleep(0.01)
    rig.frames.put(END_OF_STREAM)
    thread.join(5)
    assert not thread.is_alive() and written.is_set()
    assert len(calls) >= 3 and rig.stats.write_errors == 1
    assert stored_keys(data_dir) == [("SPY", bar["s"]) for bar in bars]          # each once, none lost
    assert rig.stats.rows_written == 40 and rig.stats.rows_pending == 0 and rig.stats.pending_since is None
    assert rig.stats.batches_written == len(parquet_files(data_dir)) == len(calls) - 1


def test_an_early_flush_of_a_full_batch_leaves_the_interval_flush_on_its_cadence(data_dir, monkeypatch):
    """Rows past MAX_PENDING_ROWS are flushed at once, as an extra: the rows after them are still written at
    the interval's own time, not a whole interval after the extra flush."""
    monkeypatch.setattr("spy_streamer.capture.batch_writer.MAX_PENDING_ROWS", 5)
    rig = Rig(data_dir, clock=FrozenClock(SESSION_NOW), interval_seconds=2.0)
    started = time.monotonic()
    thread = start_writer(rig)
    try:
        bars = session_timeline(ms(ny(2025, 6, 10, 9, 35)), 6)
        time.sleep(1.2)
        rig.frames.put((time.time_ns(), frame(bars[:5])))
        wait_until(lambda: len(parquet_files(data_dir)) == 1, timeout=0.5, what="the early flush")
        rig.frames.put((time.time_ns(), frame(bars[5:])))
        wait_until(lambda: len(parquet_files(data_dir)) == 2, timeout=3.0, what="the interval's flush")
        assert time.monotonic() - started < 2.0 + 0.7, "the interval's flush waited a whole interval after the extra"
    finally:
        rig.frames.put(END_OF_STREAM)
        thread.join(2)
    assert stored_keys(data_dir) == [("SPY", bar["s"]) for bar in bars]
