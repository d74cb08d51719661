"""The trade and quote dedup store (seen_bars.SeenTicks): bounded memory, the same answers as a set."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pytest

from spy_streamer.capture import seen_keys as seen_bars
from spy_streamer.channels import channel_for
from spy_streamer.capture.seen_keys import BUCKET_MS, SeenSlots, SeenTicks, seen_rows_for

TRADES = channel_for("T")
QUOTES = channel_for("Q")
DAY_OPENS_MS = 1_767_000_000_000


def trades(ids, times_ms, symbols=None, trf_ids=None) -> pa.Table:
    rows = len(ids)
    return pa.table({
        "symbol": pa.array(symbols or ["SPY"] * rows, pa.string()),
        "sip_timestamp": pa.array(np.asarray(times_ms, np.int64) * 1_000_000, pa.timestamp("ns", tz="UTC")),
        "exchange": pa.array([4] * rows, pa.int64()),
        "trade_id": pa.array([str(i) for i in ids], pa.string()),
        "trf_id": pa.array(trf_ids if trf_ids is not None else [None] * rows, pa.int64()),
    })


def test_trade_keys_take_bounded_memory_however_many_rows_the_day_has(tmp_path):
    """Regression: trades and quotes kept every key of the day in memory, 8 bytes a row plus merge copies:
    `T.*` at 20,000 trades a second grew the daemon from 172 to 340 MB in 10 minutes."""
    seen = seen_rows_for(TRADES, tmp_path)
    seen.resident = 50_000
    per_second = 2_000
    for second in range(120):   # 240,000 trades over 12 buckets
        ids = np.arange(per_second) + second * per_second
        assert seen.add_table(trades(ids, [DAY_OPENS_MS + second * 1000] * per_second)).to_pylist() \
            == [True] * per_second
    assert len(seen) == 240_000
    assert seen.memory_bytes() <= 8 * (50_000 + BUCKET_MS // 1000 * per_second) * 2
    # A backfill of the first minute: every trade is recognised in the spilled buckets, a new one is not.
    first_minute = np.arange(60 * per_second)
    again = trades([*first_minute, "new"], [*(DAY_OPENS_MS + first_minute // per_second * 1000), DAY_OPENS_MS])
    new = seen.add_table(again).to_pylist()
    assert new == [False] * len(first_minute) + [True] and len(seen) == 240_001


@pytest.mark.parametrize("channel", [TRADES, QUOTES], ids=["T", "Q"])
def test_answers_as_a_set_would_with_spills_late_rows_and_null_times(tmp_path, channel):
    rng = np.random.default_rng(11)
    seen = SeenTicks(channel, tmp_path, resident=300)
    expected: set = set()
    for _ in range(60):
        rows = int(rng.integers(0, 400))
        ids = rng.integers(0, 3_000, rows)
        symbols = [f"S{i}" for i in rng.integers(0, 3, rows)]
        times = DAY_OPENS_MS + ids * 37          # a key always comes with its time (the same trade or quote)
        null_time = ids % 97 == 0
        if channel is TRADES:
            table = trades(ids, times, symbols)
        else:
            table = pa.table({"symbol": symbols, "sequence_number": pa.array(ids, pa.int64()),
                              "sip_timestamp": pa.array(times * 1_000_000, pa.timestamp("ns", tz="UTC"))})
        table = table.set_column(table.schema.get_field_index("sip_timestamp"), "sip_timestamp",
                                 pa.array(np.where(null_time, 0, times) * 1_000_000,
                                          pa.timestamp("ns", tz="UTC"), mask=null_time))
        keys = list(zip(symbols, ids.tolist()))
        want = []
        for key in keys:
            want.append(key not in expected)
            expected.add(key)
        assert seen.add_table(table).to_pylist() == want
    assert len(seen) == len(expected)
    assert seen._spill._runs and max(len(runs) for runs in seen._spill._runs.values()) <= seen_bars.MAX_RUNS


def test_a_disk_that_refuses_the_spill_costs_memory_not_rows(tmp_path, caplog):
    seen = SeenTicks(TRADES, tmp_path / "missing", resident=10)
    with caplog.at_level(logging.WARNING):
        for second in range(0, 60, 5):
            assert seen.add_table(trades(range(second * 10, second * 10 + 10), [DAY_OPENS_MS + second * 1000] * 10)) \
                .to_pylist() == [True] * 10
    assert seen.add_table(trades([0, 559], [DAY_OPENS_MS, DAY_OPENS_MS + 55_000])).to_pylist() == [False, False]
    assert [r.event for r in caplog.records if getattr(r, "event", "") == "key_spill_failed"] == ["key_spill_failed"]
    assert len(seen) == 120


def test_the_spill_file_is_unlinked_and_closed_with_the_store(tmp_path):
    seen = SeenTicks(TRADES, tmp_path, resident=10)
    for second in range(0, 60, 10):
        seen.add_table(trades(range(second, second + 20), [DAY_OPENS_MS + second * 1000] * 20))
    assert seen._spill._runs and list(tmp_path.iterdir()) == []   # unlinked at once: a crash leaves nothing
    seen.close()
    assert seen._spill._file is None


AGGREGATES = channel_for("A")


def bars(symbols, starts_ms, mask=None) -> pa.Table:
    return pa.table({"symbol": pa.array(symbols, pa.string()),
                     "start": pa.array(starts_ms, pa.timestamp("ms", tz="UTC"), mask=mask)})


def test_bar_bits_take_bounded_memory_over_a_whole_market_day(tmp_path):
    """Regression: a bar channel's bits stayed in memory all day, 16 bytes a (symbol, 64 s): `A.*` over
    a whole day of 11,000 symbols, 64 MB and more with every hour (the issue allows 4 KB a symbol-day)."""
    seen = seen_rows_for(AGGREGATES, tmp_path)
    seen.resident = 2_000
    symbols = [f"S{index:04d}" for index in range(500)]
    for minute in range(120):
        starts = [DAY_OPENS_MS + (minute * 60 + second) * 1000 for second in range(60) for _ in symbols]
        assert seen.add_table(bars(symbols * 60, starts)).to_pylist() == [True] * len(starts)
    assert len(seen) == 500 * 7200
    assert seen.memory_bytes() <= 16 * (2_000 + 2 * len(symbols)) * 2
    # A backfill of the first minutes of one symbol finds every bar; a bar of a new second is new.
    first = [DAY_OPENS_MS + second * 1000 for second in range(600)]
    assert not any(seen.add_table(bars(["S0007"] * 600, first)).to_pylist())
    assert seen.add_table(bars(["S0007", "S0007"], [DAY_OPENS_MS - 1000, DAY_OPENS_MS])).to_pylist() == [True, False]


def test_bar_bits_answer_as_hashed_keys_do_with_spills_off_the_grid_and_null_times(tmp_path):
    rng = np.random.default_rng(7)
    slots, hashed = SeenSlots(AGGREGATES, tmp_path, resident=40), seen_bars.SeenKeys(("symbol", "start"))
    for _ in range(40):
        rows = int(rng.integers(0, 2000))
        starts = DAY_OPENS_MS + rng.integers(0, 6000, rows) * 1000 + rng.choice([0] * 18 + [1, 500], rows)
        table = bars([f"S{i}" for i in rng.integers(0, 50, rows)], starts, mask=rng.random(rows) < 0.05)
        assert slots.add_table(table).to_pylist() == hashed.add_table(table).to_pylist()
    assert len(slots) == len(hashed)
    runs = slots._spill._runs
    assert runs and max(len(bucket_runs) for bucket_runs in runs.values()) <= seen_bars.MAX_RUNS


def test_a_restart_reads_the_day_a_bounded_part_at_a_time(tmp_path, monkeypatch):
    """Regression: a restart read the key columns of the whole day into one table (a day of `T.*`, about
    100M trades, is gigabytes of keys) before a single row was written."""
    from datetime import date

    from spy_streamer.storage import parquet_sink
    from spy_streamer.capture.lane import Lane

    monkeypatch.setattr(parquet_sink, "READ_WHOLE_ROWS", 100)
    sink = parquet_sink.ParquetSink(tmp_path)
    day = date(2026, 1, 2)
    lane = Lane(TRADES, ("T.*",), backfill=False, spill_dir=tmp_path)
    for index, rows in enumerate((40, 250, 90)):
        first = sum((40, 250, 90)[:index])
        table = trades(range(first, first + rows), [DAY_OPENS_MS + i for i in range(first, first + rows)])
        full = pa.table({name: table.column(name) if name in table.column_names else pa.nulls(rows, field.type)
                         for name, field in zip(TRADES.schema.names, TRADES.schema)})
        sink.write("T", day, full.cast(TRADES.schema), 1_000 + index)
    parts = list(sink.stored_rows("T", day, lane.key_schema()))
    assert [part.num_rows for part in parts] == [40, 100, 100, 50, 90]
    assert all(all(lane.remember(part).to_pylist()) for part in parts) and len(lane.seen) == 380
    assert not any(lane.remember(trades([5, 300], [DAY_OPENS_MS + 5, DAY_OPENS_MS + 300])).to_pylist())
