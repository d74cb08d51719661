"""End-of-day compaction: the day's micro-batches (written by the real ParquetSink) -> one day file.

All on Tuesday 2025-06-10 (a regular session); the CLI tests run the real command as a subprocess.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from datetime import date, timedelta

import duckdb
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from conftest import REPO_ROOT, ny, settings, write_settings
from daemon_harness import wait_for
from fake_polygon import agg_event
from channel_parsing import events_one_by_one, rest_table
from spy_streamer.channels.aggregates import SCHEMA
from spy_streamer.capture.keep_first import KeepFirst, first_received_per_key
from spy_streamer.storage import compaction_merge
from spy_streamer.storage.compaction import (SPILL_FOLDER, CompactionError, Outcome, compact_day,
                                     compaction_refusal, day_file_name, merge_files, verify_compacted)
from spy_streamer.config import load_config
from spy_streamer.market.market_hours import MarketCalendar
from spy_streamer.storage.parquet_sink import ParquetSink

DAY = date(2025, 6, 10)
OPEN_MS = int(ny(2025, 6, 10, 9, 30).timestamp() * 1000)
RECEIVED_NS = int(ny(2025, 6, 10, 9, 35).timestamp() * 1_000_000_000)


def ws_batch(sink, first_second, count, received_ns, price=500.0, symbol="SPY", stamp_ns=None):
    """One micro-batch of live bars at OPEN + first_second ... (prices tell batches apart)."""
    events = [agg_event(OPEN_MS + (first_second + i) * 1000, symbol, price) for i in range(count)]
    table, invalid = events_one_by_one(events, "A", received_ns)
    assert not invalid
    return sink.write("A", DAY, table, stamp_ns or received_ns)


def rest_batch(sink, first_second, count, received_ns, price=600.0):
    results = [{"t": OPEN_MS + (first_second + i) * 1000, "o": price, "h": price, "l": price, "c": price,
                "v": 10, "vw": price} for i in range(count)]
    table, invalid = rest_table("SPY", results, "A", received_ns)
    assert not invalid
    return sink.write("A", DAY, table, received_ns)


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def sink(data_dir):
    return ParquetSink(data_dir)


def folder_of(data_dir):
    return data_dir / "A" / f"date={DAY.isoformat()}"


def names(data_dir):
    return sorted(path.name for path in folder_of(data_dir).iterdir())


def day_rows(data_dir):
    """(symbol, start ms, close, source) of every row readers see, in file order."""
    table = ds.dataset(data_dir / "A", format="parquet", partitioning="hive").to_table()
    return [(row["symbol"], int(row["start"].timestamp() * 1000), row["close"], row["source"])
            for row in table.to_pylist()]


def duckdb_rows(data_dir):
    query = (f"SELECT symbol, epoch_ms(start), close, source, CAST(date AS VARCHAR) "
             f"FROM read_parquet('{data_dir}/A/*/*.parquet', hive_partitioning=true) ORDER BY ALL")
    with duckdb.connect() as connection:
        return connection.execute(query).fetchall()


def second_of(start_ms):
    return (start_ms - OPEN_MS) // 1000


# --------------------------------------------------------------------------------------------------
# compact_day
# --------------------------------------------------------------------------------------------------

def test_micro_batches_become_one_sorted_unique_zstd_file(sink, data_dir):
    ws_batch(sink, 0, 10, RECEIVED_NS, price=500.0)                 # seconds 0-9
    ws_batch(sink, 5, 10, RECEIVED_NS + 10**9, price=501.0)        # 5-14, 5-9 repeated
    rest_batch(sink, 12, 9, RECEIVED_NS + 2 * 10**9)              # 12-20, 12-14 repeated
    ws_batch(sink, 3, 2, RECEIVED_NS, price=502.0, symbol="QQQ")   # another symbol, sorts first

    result = compact_day(data_dir, DAY)

    assert result.outcome is Outcome.COMPACTED
    assert (result.files, result.rows_read, result.rows, result.repeats_dropped) == (4, 31, 23, 8)
    assert names(data_dir) == [day_file_name(DAY)] == ["day-2025-06-10.parquet"]
    assert result.path == folder_of(data_dir) / "day-2025-06-10.parquet"
    assert result.bytes == result.path.stat().st_size
    rows = day_rows(data_dir)
    keys = [(symbol, start) for symbol, start, _, _ in rows]
    assert keys == sorted(set(keys)) and len(keys) == 23
    spy = {second_of(start): (close, source) for symbol, start, close, source in rows if symbol == "SPY"}
    assert sorted(spy) == list(range(21))
    assert spy[7] == (500.02, "ws") and spy[12] == (501.02, "ws") and spy[20] == (600.0, "rest")
    metadata = pq.ParquetFile(result.path).metadata
    assert metadata.row_group(0).column(0).compression == "ZSTD"
    assert pq.read_schema(result.path).remove_metadata() == SCHEMA


def test_the_first_received_row_wins_whatever_the_file_names_say(sink, data_dir):
    # The file named later (larger stamp) holds the bars received first.
    ws_batch(sink, 0, 3, RECEIVED_NS + 5 * 10**9, price=700.0, stamp_ns=1)
    ws_batch(sink, 0, 3, RECEIVED_NS, price=500.0, stamp_ns=2)

    compact_day(data_dir, DAY)

    assert [close for _, _, close, _ in day_rows(data_dir)] == [500.02] * 3


def test_readers_see_the_same_rows_before_and_after(sink, data_dir):
    ws_batch(sink, 30, 20, RECEIVED_NS + 10**9)
    rest_batch(sink, 0, 30, RECEIVED_NS + 2 * 10**9)
    ws_batch(sink, 50, 5, RECEIVED_NS + 3 * 10**9, symbol="QQQ")
    before_arrow, before_duckdb = sorted(day_rows(data_dir)), duckdb_rows(data_dir)

    compact_day(data_dir, DAY)

    assert len(before_duckdb) == 55 and before_duckdb[0][4] == "2025-06-10"
    assert day_rows(data_dir) == before_arrow  # and in sorted order now
    assert duckdb_rows(data_dir) == before_duckdb


def sabotaging_verify(temp, expected_rows):
    """Cuts the new file in half before the real check, as a failing disk might."""
    with open(temp, "r+b") as handle:
        handle.truncate(temp.stat().st_size // 2)
    verify_compacted(temp, expected_rows)


def test_a_failed_verification_keeps_every_input_file(sink, data_dir, caplog):
    ws_batch(sink, 0, 10, RECEIVED_NS)
    compact_day(data_dir, DAY)
    late = ws_batch(sink, 10, 10, RECEIVED_NS + 10**9)
    before = {name: (folder_of(data_dir) / name).read_bytes() for name in names(data_dir)}

    with pytest.raises(CompactionError, match="does not read back.*nothing changed"):
        compact_day(data_dir, DAY, verify=sabotaging_verify)

    assert {name: (folder_of(data_dir) / name).read_bytes() for name in names(data_dir)} == before
    assert late.exists() and len(day_rows(data_dir)) == 20  # no temporary left, nothing lost
    failures = [record for record in caplog.records if getattr(record, "event", None) == "compaction_failed"]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR


def test_a_wrong_row_count_fails_the_verification(sink, data_dir):
    ws_batch(sink, 0, 10, RECEIVED_NS)

    with pytest.raises(CompactionError, match="reads back 10 rows, expected 11"):
        compact_day(data_dir, DAY, verify=lambda temp, expected: verify_compacted(temp, expected + 1))

    assert names(data_dir)[0].startswith("part-") and len(names(data_dir)) == 1


def test_verify_compacted_reads_the_whole_file(sink, tmp_path):
    good = ws_batch(sink, 0, 4, RECEIVED_NS)
    verify_compacted(good, 4)
    with pytest.raises(CompactionError, match="reads back 4 rows, expected 5"):
        verify_compacted(good, 5)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size - 20])  # footer cut off
    with pytest.raises(CompactionError, match="does not read back"):
        verify_compacted(corrupt, 4)


def test_a_late_backfill_is_merged_into_the_day_file(sink, data_dir):
    ws_batch(sink, 0, 10, RECEIVED_NS)
    compact_day(data_dir, DAY)
    rest_batch(sink, 8, 10, RECEIVED_NS + 60 * 10**9)   # 8-9 already in the day file, received earlier

    result = compact_day(data_dir, DAY)

    assert (result.outcome, result.files, result.rows, result.repeats_dropped) == (Outcome.COMPACTED, 2, 18, 2)
    assert names(data_dir) == ["day-2025-06-10.parquet"]
    sources = [source for _, _, _, source in day_rows(data_dir)]
    assert sources == ["ws"] * 10 + ["rest"] * 8


def test_compacting_a_compacted_day_changes_nothing(sink, data_dir, caplog):
    caplog.set_level(logging.INFO)
    ws_batch(sink, 0, 10, RECEIVED_NS)
    first = compact_day(data_dir, DAY)
    stat = first.path.stat()

    again = compact_day(data_dir, DAY)

    assert (again.outcome, again.rows, again.bytes) == (Outcome.ALREADY_COMPACTED, 10, first.bytes)
    assert (first.path.stat().st_mtime_ns, first.path.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    assert [getattr(record, "event", None) for record in caplog.records] == ["day_compacted", "compaction_skipped"]


def test_a_crash_after_the_rename_is_repaired_by_the_next_run(sink, data_dir, tmp_path):
    ws_batch(sink, 0, 10, RECEIVED_NS)
    ws_batch(sink, 5, 10, RECEIVED_NS + 10**9)
    saved = tmp_path / "saved"
    shutil.copytree(folder_of(data_dir), saved)
    compact_day(data_dir, DAY)
    for path in saved.iterdir():  # as if the process died before deleting the micro-batches
        shutil.copy2(path, folder_of(data_dir))
    assert len(day_rows(data_dir)) == 15 + 20  # the documented window: repeats visible, nothing lost

    result = compact_day(data_dir, DAY)

    assert (result.files, result.rows) == (3, 15)
    assert names(data_dir) == ["day-2025-06-10.parquet"] and len(day_rows(data_dir)) == 15


def test_an_unreadable_file_stops_the_compaction(sink, data_dir):
    ws_batch(sink, 0, 10, RECEIVED_NS)
    (folder_of(data_dir) / "part-9-9-000009.parquet").write_bytes(b"PAR1 not really")
    before = names(data_dir)

    with pytest.raises(CompactionError, match="cannot read .*part-9-9-000009.parquet.*nothing changed"):
        compact_day(data_dir, DAY)

    assert names(data_dir) == before


def test_hidden_files_are_not_merged_or_removed(sink, data_dir):
    ws_batch(sink, 0, 3, RECEIVED_NS)
    (folder_of(data_dir) / ".part-1-1-000001.parquet.corrupt").write_bytes(b"kept for a person")

    compact_day(data_dir, DAY)

    assert names(data_dir) == [".part-1-1-000001.parquet.corrupt", "day-2025-06-10.parquet"]


def test_a_day_without_files_has_nothing_to_compact(data_dir):
    result = compact_day(data_dir, DAY)
    assert result.outcome is Outcome.NO_DATA and not (data_dir / "A").exists()


def test_one_compaction_of_a_day_at_a_time(sink, data_dir):
    ws_batch(sink, 0, 3, RECEIVED_NS)
    fd = os.open(folder_of(data_dir), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another compaction holds the folder
        with pytest.raises(CompactionError, match="another compaction"):
            compact_day(data_dir, DAY)
    finally:
        os.close(fd)
    assert names(data_dir)[0].startswith("part-")


def test_the_log_line_carries_files_rows_and_bytes(sink, data_dir, caplog):
    caplog.set_level(logging.INFO)
    ws_batch(sink, 0, 4, RECEIVED_NS)
    ws_batch(sink, 2, 4, RECEIVED_NS + 1)

    result = compact_day(data_dir, DAY)

    [record] = [record for record in caplog.records if record.levelno >= logging.INFO]
    assert (record.event, record.files, record.rows, record.bytes) == ("day_compacted", 2, 6, result.bytes)


# --------------------------------------------------------------------------------------------------
# bounded memory: the merge streams in batches, in a child process that can be stopped
# --------------------------------------------------------------------------------------------------

def test_repeats_across_streamed_batches_and_row_groups(sink, data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(compaction_merge, "BATCH_ROWS", 7)        # (in this process: merge_files called directly)
    monkeypatch.setattr(compaction_merge, "ROW_GROUP_ROWS", 10)
    for copy in range(3):  # every bar three times; the middle copy was received first
        ws_batch(sink, 0, 25, RECEIVED_NS + (1, 0, 2)[copy] * 10**9, price=500.0 + copy)
    inputs = sorted(folder_of(data_dir).glob("*.parquet"))
    temp = tmp_path / ".day.tmp"

    summary = merge_files(inputs, temp, tmp_path / "spill")

    assert summary == {"rows_read": 75, "rows": 25}
    assert pq.ParquetFile(temp).num_row_groups >= 3 and not (tmp_path / "spill").exists()
    table = pq.read_table(temp)
    assert table.column("close").to_pylist() == [501.02] * 25
    assert [int(t.timestamp()) for t in table.column("start").to_pylist()] == [OPEN_MS // 1000 + i for i in range(25)]
    assert table.schema.remove_metadata() == SCHEMA


def test_keys_whose_sort_does_not_group_them(sink, data_dir, tmp_path):
    """A channel sorted by a column outside its key (a trade's time, say) still keeps one row per key."""
    ws_batch(sink, 0, 5, RECEIVED_NS + 10**9, price=500.0)
    ws_batch(sink, 0, 5, RECEIVED_NS, price=501.0)
    keys = KeepFirst(dedup_key=("symbol", "start"), sort_key=("symbol", "close"))
    inputs = sorted(folder_of(data_dir).glob("*.parquet"))

    summary = merge_files(inputs, tmp_path / ".day.tmp", tmp_path / "spill", keys)

    assert summary["rows"] == 5
    assert pq.read_table(tmp_path / ".day.tmp").column("close").to_pylist() == [501.02] * 5


def test_verify_compacted_refuses_a_file_out_of_key_order(sink, tmp_path):
    unsorted = ws_batch(sink, 0, 3, RECEIVED_NS, symbol="SPY")
    table = pq.read_table(unsorted)
    pq.write_table(table.take([0, 2, 1]), tmp_path / "unsorted.parquet")
    pq.write_table(table.take([0, 1, 1, 2]), tmp_path / "repeated.parquet")
    with pytest.raises(CompactionError, match=r"not in \(symbol, start\) order with one row per key at row 2"):
        verify_compacted(tmp_path / "unsorted.parquet", 3)
    with pytest.raises(CompactionError, match="at row 2"):
        verify_compacted(tmp_path / "repeated.parquet", 4)


def merging_children(parent=None):
    process = psutil.Process(parent) if parent else psutil.Process()
    return [child for child in process.children(recursive=True)
            if "spy_streamer.storage.compaction" in " ".join(child.cmdline())]


def freeze_the_merging_child(parent=None) -> list:
    """SIGSTOP the merging child as soon as it exists, as if the day were huge. (A FIFO named like a
    micro-batch used to block it; such an entry is refused as data now.) It is still importing its
    libraries at that point: well over the 50 ms a poll takes."""
    children = wait_for(lambda: merging_children(parent), timeout=20, interval=0.01, what="the merging child")
    for child in children:
        child.suspend()
    return children


def assert_nothing_changed(data_dir, before):
    assert names(data_dir) == before  # no temporary, no spill folder, every input


def test_a_cancelled_compaction_stops_its_child_and_changes_nothing(sink, data_dir):
    ws_batch(sink, 0, 10, RECEIVED_NS)
    before = names(data_dir)
    cancel = threading.Event()

    def freeze_then_cancel():
        freeze_the_merging_child()
        cancel.set()

    threading.Thread(target=freeze_then_cancel).start()
    with pytest.raises(CompactionError, match="stopped before the end; nothing changed"):
        compact_day(data_dir, DAY, cancel=cancel)

    assert_nothing_changed(data_dir, sorted(before + [SPILL_FOLDER]) if SPILL_FOLDER in names(data_dir) else before)
    assert not merging_children()
    assert compact_day(data_dir, DAY).rows == 10


def test_the_child_of_a_killed_compaction_exits_and_the_next_run_merges_everything(sink, data_dir):
    ws_batch(sink, 0, 10, RECEIVED_NS)
    ws_batch(sink, 5, 10, RECEIVED_NS + 1)
    before = names(data_dir)
    parent = subprocess.Popen([sys.executable, "-c", "import sys; from datetime import date; from pathlib import Path; "
                               "from spy_streamer.storage.compaction import compact_day; "
                               f"compact_day(Path({str(data_dir)!r}), date(2025, 6, 10))"], cwd=REPO_ROOT)
    try:
        children = freeze_the_merging_child(parent.pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        for child in children:
            child.resume()   # killed by PR_SET_PDEATHSIG already, or sees its new parent at once
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive
    finally:
        parent.kill()
    assert_nothing_changed(data_dir, sorted(before + [SPILL_FOLDER]) if SPILL_FOLDER in names(data_dir) else before)

    result = compact_day(data_dir, DAY)

    assert (result.files, result.rows) == (2, 15) and names(data_dir) == ["day-2025-06-10.parquet"]


# --------------------------------------------------------------------------------------------------
# which days may be compacted
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def calendar(tmp_path):
    return MarketCalendar(load_config(write_settings(tmp_path, settings(tmp_path))).market_hours)


@pytest.mark.parametrize("now, day, allowed", [
    (ny(2025, 6, 11, 9, 0), DAY, True),                       # the day before
    (ny(2025, 6, 10, 12, 0), DAY, False),                     # session in progress
    (ny(2025, 6, 10, 16, 0, 30), DAY, False),                 # the writer's last flush may be running
    (ny(2025, 6, 10, 16, 1, 0), DAY, True),                   # settled
    (ny(2025, 6, 10, 8, 0), DAY, False),                      # before the open
    (ny(2025, 6, 9, 20, 0), DAY, False),                      # the future
    (ny(2025, 6, 14, 11, 0), date(2025, 6, 14), True),        # a Saturday: no session to wait for
])
def test_compaction_refusal(calendar, now, day, allowed):
    assert (compaction_refusal(calendar, day, now) is None) == allowed


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------

def run_compact(config_path, day):
    env = {k: v for k, v in os.environ.items() if k not in ("POLYGON_API_KEY", "SPY_STREAMER_CONFIG")}
    return subprocess.run([sys.executable, "-m", "spy_streamer", "compact", "--date", day, "--config",
                           str(config_path)], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)


def test_compact_command(sink, data_dir, tmp_path):
    config_path = write_settings(tmp_path, settings(tmp_path))
    ws_batch(sink, 0, 10, RECEIVED_NS)
    ws_batch(sink, 5, 10, RECEIVED_NS + 1)

    done = run_compact(config_path, "2025-06-10")
    again = run_compact(config_path, "2025-06-10")
    empty = run_compact(config_path, "2025-06-09")
    future = run_compact(config_path, (date.today() + timedelta(days=3)).isoformat())

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"2025-06-10: compacted 2 files into {folder_of(data_dir)}/"
                                        "day-2025-06-10.parquet (15 rows, 5 repeats dropped, "
                                        f"{(folder_of(data_dir) / 'day-2025-06-10.parquet').stat().st_size:,} bytes)"]
    assert again.returncode == 0 and again.stdout.startswith("2025-06-10: already compacted")
    assert empty.returncode == 1 and "no data to compact" in empty.stdout
    assert future.returncode == 1 and "is in the future" in future.stderr
    logged = [json.loads(line) for line in (tmp_path / "log" / "spy_streamer.log").read_text().splitlines()]
    assert [line["event"] for line in logged] == ["day_compacted", "compaction_skipped", "compaction_skipped"]
    assert (logged[0]["files"], logged[0]["rows"], logged[0]["level"]) == (2, 15, "INFO")


def test_compact_command_config_error_exits_78(tmp_path):
    bad = write_settings(tmp_path, settings(tmp_path, streaming={"batching": {"write_interval_seconds": 0}}))
    result = run_compact(bad, "2025-06-10")
    assert result.returncode == 78 and "write_interval_seconds" in result.stderr


def test_trades_keep_nanoseconds_and_drop_repeats_by_their_own_key(data_dir):
    """Keys and order come from the channel registry: T by (symbol, exchange, trf_id, trade_id), sorted by
    (symbol, sip_timestamp, sequence_number); a trade off a TRF has no trf_id, and its repeat still goes."""
    from spy_streamer.channels import channel_for
    from spy_streamer.channels.parsing import to_schema
    channel = channel_for("T")
    schema = channel.schema
    ns = int(ny(2025, 6, 10, 9, 45).timestamp()) * 10**9 + 123_456_789

    def trades(received_ns, ids, price):
        rows = {"symbol": ["SPY"] * len(ids), "sip_timestamp_ns": [ns + i for i in ids],
                "participant_timestamp_ns": [ns] * len(ids),
                "exchange": [4] * len(ids), "trade_id": [str(i) for i in ids],
                "tape": [1] * len(ids), "price": [price] * len(ids), "size": [100.0] * len(ids),
                "conditions": [[12, 37]] * len(ids), "sequence_number": ids,
                "received_at": [received_ns // 1000] * len(ids)}
        return to_schema(channel, pa.table({name: pa.array(values, schema.field(name).type)
                                            for name, values in rows.items()}), "ws", {})

    sink = ParquetSink(data_dir)
    sink.write("T", DAY, trades(RECEIVED_NS + 10**9, [3, 2, 1], 500.5), 1)
    sink.write("T", DAY, trades(RECEIVED_NS, [2, 4], 500.0), 2)

    result = compact_day(data_dir, DAY, channel="T")

    table = pq.read_table(result.path)
    assert (result.rows_read, result.rows) == (5, 4) and table.schema.remove_metadata() == schema
    assert table.column("sip_timestamp_ns").to_pylist() == [ns + 1, ns + 2, ns + 3, ns + 4]
    assert table.column("price").to_pylist() == [500.5, 500.0, 500.5, 500.0]
    assert table.column("conditions").to_pylist()[0] == [12, 37]


def test_the_day_is_sorted_a_range_of_symbols_at_a_time(sink, data_dir, tmp_path):
    for symbol in ("SPY", "AAPL", "QQQ", "IWM"):
        ws_batch(sink, 0, 6, RECEIVED_NS + 1, price=500.0, symbol=symbol)
        ws_batch(sink, 3, 6, RECEIVED_NS, price=501.0, symbol=symbol)
    inputs = sorted(folder_of(data_dir).glob("*.parquet"))

    assert merge_files(inputs, tmp_path / ".day.tmp", tmp_path / "spill", bucket_rows=8) == {"rows_read": 48, "rows": 36}

    table = pq.read_table(tmp_path / ".day.tmp")
    assert table.column("symbol").to_pylist() == [s for s in ("AAPL", "IWM", "QQQ", "SPY") for _ in range(9)]
    assert table.column("close").to_pylist()[:9] == [500.02] * 3 + [501.02] * 6


def random_day(sink, channel, files=6, rows=40, seed=7):
    """`files` micro-batches of `channel` over five symbols with few keys each: repeats within and across
    files, ties of `received_at` (the file read first, then the row first, wins), and one file written
    before the channel had its last-but-one column (an older schema). The sort key follows from the dedup
    key, so two runs order the rows alike."""
    from spy_streamer.channels import channel_for
    schema, rng = channel_for(channel).schema, np.random.default_rng(seed)
    dropped = [name for name in schema.names if name not in KeepFirst.of(channel).columns][-2]
    for index in range(files):
        key = rng.integers(0, 12, rows)
        ns = int(ny(2025, 6, 10, 9, 45).timestamp()) * 10**9 + key * 1000
        special = {"symbol": rng.choice(["AAPL", "IWM", "QQQ", "SPY", "TSLA"], rows).tolist(),
                   "start": OPEN_MS + key * 1000, "end": OPEN_MS + key * 1000 + 1000,
                   "sip_timestamp": ns, "sequence_number": key, "exchange": key % 3, "trade_id": key.astype(str).tolist(),
                   "trf_id": [None if k % 4 == 0 else int(k % 2) for k in key],
                   "received_at": RECEIVED_NS // 1000 + rng.integers(0, 3, rows),
                   "source": rng.choice(["ws", "rest"], rows).tolist()}
        columns = {}
        for field in schema:
            if field.name in special:
                values = special[field.name]
            elif pa.types.is_floating(field.type):
                values = rng.random(rows)
            elif pa.types.is_list(field.type):
                values = [[int(value)] for value in rng.integers(0, 60, rows)]
            else:  # other integers and timestamps
                values = rng.integers(0, 10**6, rows)
            columns[field.name] = pa.array(values).cast(field.type) if isinstance(values, np.ndarray) \
                else pa.array(values, field.type)
        table = pa.table(columns, schema=schema)
        sink.write(channel, DAY, table.drop_columns([dropped]) if index == 2 else table, 10**18 + index)
    return sorted((sink.partition_dir(channel, DAY)).glob("*.parquet"))


@pytest.mark.parametrize("channel", ["A", "AM", "T", "Q"])
def test_a_day_split_into_buckets_of_symbols_compacts_as_one(channel, sink, tmp_path, monkeypatch):
    """A day larger than `bucket_rows` is copied into one spill file per range of symbols and each is
    sorted by itself: the result is the file the one-piece merge writes, for every channel."""
    inputs, keys = random_day(sink, channel), KeepFirst.of(channel)
    whole = merge_files(inputs, tmp_path / ".whole.tmp", tmp_path / "spill", keys)
    buckets, partition = [], compaction_merge.partition
    monkeypatch.setattr(compaction_merge, "partition", lambda *args: buckets.append(partition(*args)) or buckets[-1])

    split = merge_files(inputs, tmp_path / ".split.tmp", tmp_path / "spill", keys, bucket_rows=25)

    assert split == whole and whole["rows"] < whole["rows_read"] == 240
    assert len(buckets) == 1 and len(buckets[0]) == 5 and not (tmp_path / "spill").exists()
    assert pq.read_table(tmp_path / ".split.tmp").equals(pq.read_table(tmp_path / ".whole.tmp"))
    # and both are the in-memory rule's answer (the lake's): keep-first is one definition
    reference = first_received_per_key(pa.concat_tables(
        [pq.read_table(path) for path in inputs], promote_options="default"), keys)
    assert pq.read_table(tmp_path / ".split.tmp").equals(reference.select(whole_schema(tmp_path)))


def whole_schema(tmp_path):
    return pq.read_schema(tmp_path / ".whole.tmp").names


def test_a_killed_bucketed_run_leaves_spill_files_the_next_run_replaces(sink, data_dir):
    random_day(sink, "A")
    spill = folder_of(data_dir) / SPILL_FOLDER
    spill.mkdir()
    (spill / "bucket-00000.arrows").write_bytes(b"half a bucket")  # as a SIGKILL during the split leaves it
    before = [name for name in names(data_dir) if name != SPILL_FOLDER]

    result = compact_day(data_dir, DAY, bucket_rows=25)

    assert (result.files, result.rows_read) == (len(before), 240) and names(data_dir) == [day_file_name(DAY)]


def test_a_bucket_lost_on_the_way_fails_the_verification(sink, tmp_path, monkeypatch):
    """Order and row count alone would pass a day file missing a whole range of symbols."""
    inputs, partition = random_day(sink, "A"), compaction_merge.partition
    monkeypatch.setattr(compaction_merge, "partition", lambda *args: partition(*args)[1:])

    with pytest.raises(CompactionError, match=r"symbol values: 1 missing \['AAPL'\], 0 not in the inputs"):
        merge_files(inputs, tmp_path / ".day.tmp", tmp_path / "spill", bucket_rows=25)


def test_trades_of_one_busy_symbol_compact_within_a_small_memory_limit(data_dir, tmp_path):
    """A million trades of one symbol (a bucket of its own) under a 128 MB limit: sorted by key, each key's
    first kept and spilled, sorted again. (The window this replaced, row_number() over the key, ran out of
    DuckDB's memory at 256 MB on one symbol's 30M trades: `benchmarks/compaction.py --channel T --symbols 1
    --rows 30000000`; too slow for a test.)"""
    from spy_streamer.channels import channel_for
    schema, sink, rows = channel_for("T").schema, ParquetSink(data_dir), 100_000
    ns = int(ny(2025, 6, 10, 9, 45).timestamp()) * 10**9
    for index in range(10):
        ids = np.arange(rows) + index * (rows - rows // 10)  # the first tenth repeats the file before
        columns = {"symbol": pa.array(np.full(rows, "SPY", dtype=object), pa.string()),
                   "sip_timestamp": pa.array(ns + ids * 1000), "trf_timestamp": pa.array(ns + ids * 1000),
                   "exchange": pa.array(ids % 16), "tape": pa.array(ids % 3), "trf_id": pa.array(ids % 7),
                   "conditions": pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * rows + 1, 2, dtype=np.int32)),
                                                          pa.array(np.tile([12, 37], rows))),
                   "trade_id": pa.array(ids).cast(pa.string()), "sequence_number": pa.array(ids),
                   "price": pa.array(np.full(rows, 500.0)), "size": pa.array(np.full(rows, 100.0)),
                   "received_at": pa.array(np.full(rows, RECEIVED_NS // 1000 + index)),
                   "source": pa.array(np.full(rows, "ws", dtype=object), pa.string())}
        table = pa.table({field.name: columns[field.name].cast(field.type) if field.name in columns
                          else pa.nulls(rows, field.type) for field in schema}, schema=schema)
        sink.write("T", DAY, table, 10**18 + index)
    inputs = sorted(sink.partition_dir("T", DAY).glob("*.parquet"))

    summary = merge_files(inputs, tmp_path / ".day.tmp", tmp_path / "spill", KeepFirst.of("T"),
                          memory_limit="128MB", threads=1)

    assert summary == {"rows_read": 10 * rows, "rows": 10 * rows - 9 * (rows // 10)}
