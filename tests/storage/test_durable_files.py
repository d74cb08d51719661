"""Our own files (heartbeat, metrics textfile, calendar, gap ledger, Parquet) written without following a
symlink planted in our folders, and read back only when they are regular files of bounded size: a FIFO
never hangs a command (issue 16, section 6)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO_ROOT, settings, write_settings
from spy_streamer.backfill.gap_ledger import Gap, GapLedger, LedgerUnreadable, read_entries
from spy_streamer.market.calendar_store import KnownDays, load_known_days, save_known_days
from spy_streamer.monitoring.health_check import HeartbeatUnreadable, load_heartbeat
from spy_streamer.monitoring.metrics import MetricsPublisher
from spy_streamer.storage.durable_files import (RefusedFile, read_regular_file, write_atomically,
                                                write_json_atomically, write_text_atomically)
from spy_streamer.storage.layout import METRICS_TEXTFILE_NAME as TEXTFILE_NAME, day_file_name
from spy_streamer.storage.layout import gap_ledger_path as ledger_path
from spy_streamer.storage.parquet_sink import ParquetSink

DAY = date(2025, 6, 10)
PRECIOUS = "precious content of another file\n"


@pytest.fixture
def victim(tmp_path):
    """A file outside our folders that a planted symlink points at."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_text(PRECIOUS)
    return path


def plant(link, target):
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


# --- writes never follow a symlink planted under a temporary's name (measured: heartbeat over another file) ---

def test_the_heartbeat_write_does_not_follow_a_symlink_at_its_old_temp_name(tmp_path, victim):
    path = tmp_path / "heartbeat" / "polygon.json"
    plant(path.with_name(f".polygon.json.{os.getpid()}.tmp"), victim)   # the old, predictable name
    write_json_atomically(path, {"status": "streaming"})
    assert victim.read_text() == PRECIOUS
    assert json.loads(path.read_text()) == {"status": "streaming"}


def test_the_calendar_save_does_not_follow_a_symlink_at_its_old_temp_name(tmp_path, victim):
    path = tmp_path / "heartbeat" / "calendar.json"
    plant(path.with_name(f".calendar.json.{os.getpid()}.tmp"), victim)
    save_known_days(path, KnownDays())
    assert victim.read_text() == PRECIOUS
    assert load_known_days(path) == KnownDays()


def test_the_gap_ledger_save_does_not_follow_a_symlink_at_its_old_temp_name(tmp_path, victim):
    data_dir = tmp_path / "data"
    path = ledger_path(data_dir, "A", DAY)
    plant(path.with_name(f".{path.name}.{os.getpid()}.tmp"), victim)
    ledger = GapLedger(data_dir, DAY, ("A",), step_of=lambda channel: 1000)
    ledger.load()
    ledger.add(Gap("SPY", 1000, 5000, "A"))
    assert ledger.save(0)
    assert victim.read_text() == PRECIOUS
    assert [(entry.symbol, entry.from_ms, entry.to_ms) for entry in read_entries(path)] == [("SPY", 1000, 5000)]


def test_the_metrics_textfile_does_not_follow_a_symlink_at_its_old_temp_name(tmp_path, victim):
    folder = tmp_path / "heartbeat"
    # prometheus-client's write_to_textfile used `<path>.<pid>.<thread id>`
    plant(folder / f"{TEXTFILE_NAME}.{os.getpid()}.{threading.current_thread().ident}", victim)
    MetricsPublisher(folder).publish({"status": "streaming", "messages_total": 3})
    assert victim.read_text() == PRECIOUS
    assert "spy_streamer_messages_total 3.0" in (folder / TEXTFILE_NAME).read_text()
    assert oct((folder / TEXTFILE_NAME).stat().st_mode & 0o777) == oct(0o644)   # node_exporter may be another user


def test_a_parquet_flush_does_not_follow_a_symlink_at_its_old_temp_name(tmp_path, victim):
    sink = ParquetSink(tmp_path / "data")
    folder = sink.partition_dir("A", DAY)
    plant(folder / f".part-123-{os.getpid()}-000001.parquet.tmp", victim)
    written = sink.write("A", DAY, pa.table({"x": [1, 2]}), stamp_ns=123)
    assert victim.read_text() == PRECIOUS
    assert pq.read_table(written).column("x").to_pylist() == [1, 2]


def test_the_day_compaction_does_not_follow_a_symlink_at_its_old_temp_name(tmp_path, victim):
    from test_compaction import ws_batch
    from spy_streamer.storage.compaction import compact_day
    data_dir = tmp_path / "data"
    sink = ParquetSink(data_dir)
    ws_batch(sink, 0, 5, 1_749_562_500_000_000_000)
    final = sink.partition_dir("A", DAY) / day_file_name(DAY)
    plant(final.with_name(f".{final.name}.tmp"), victim)
    compact_day(data_dir, DAY)
    assert victim.read_text() == PRECIOUS
    assert not final.is_symlink() and pq.read_table(final).num_rows == 5


def test_a_symlink_at_the_final_name_is_replaced_not_followed(tmp_path, victim):
    path = tmp_path / "heartbeat" / "polygon.json"
    plant(path, victim)
    write_json_atomically(path, {"status": "streaming"})
    assert victim.read_text() == PRECIOUS
    assert not path.is_symlink()


def test_temporaries_are_hidden_fresh_names_and_private_until_renamed(tmp_path):
    path = tmp_path / "polygon.json"
    seen = []

    def fill(handle):
        seen.extend(name for name in os.listdir(tmp_path) if name != path.name)
        handle.write(b"{}")

    for _ in range(2):
        write_atomically(path, fill)
    assert len(seen) == 2 and seen[0] != seen[1]
    assert all(name.startswith(".polygon.json.") and name.endswith(".tmp") for name in seen)
    assert f".polygon.json.{os.getpid()}.tmp" not in seen
    assert os.listdir(tmp_path) == ["polygon.json"]


def test_a_failed_write_leaves_no_temporary_and_the_old_file(tmp_path):
    """Measured: the old heartbeat routine left its temporary behind when the rename failed."""
    occupied = tmp_path / "polygon.json"
    occupied.mkdir()
    (occupied / "keep").write_text("x")          # a non-empty folder: os.replace fails
    with pytest.raises(OSError):
        write_text_atomically(occupied, "{}")
    assert sorted(os.listdir(tmp_path)) == ["polygon.json"]

    path = tmp_path / "calendar.json"
    path.write_text("old")

    def refuse(temp):
        raise ValueError("not good enough")

    with pytest.raises(ValueError):
        write_atomically(path, lambda handle: handle.write(b"new"), verify=refuse)
    assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["calendar.json", "polygon.json"]


# --- reads: regular files of bounded size only ---

def test_read_regular_file_refuses_what_is_not_a_plain_small_file(tmp_path, victim):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(victim)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    for path, reason in ((fifo, "not a regular file but a FIFO"), (tmp_path, "not a regular file but a folder"),
                         (link, "a symbolic link"), (big, "larger than 100 bytes")):
        with pytest.raises(RefusedFile, match=reason):
            read_regular_file(path, 100)
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing", 100)
    assert read_regular_file(victim, 100) == PRECIOUS.encode()
    assert read_regular_file(link, 100, follow_symlinks=True) == PRECIOUS.encode()


def test_in_process_readers_report_a_fifo_or_a_symlink(tmp_path, victim, caplog):
    heartbeat = tmp_path / "polygon.json"
    os.mkfifo(heartbeat)
    with pytest.raises(HeartbeatUnreadable, match="not a regular file but a FIFO"):
        load_heartbeat(heartbeat)
    calendar = tmp_path / "calendar.json"
    calendar.symlink_to(victim)
    assert load_known_days(calendar) == KnownDays()
    assert "symbolic link" in caplog.text
    ledger = tmp_path / ".gaps.json"
    os.mkfifo(ledger)
    with pytest.raises(LedgerUnreadable, match="FIFO"):
        read_entries(ledger)


def run_cli(tmp_path, *arguments):
    """A command as a user runs it, without a key; a hang (the old code opening a FIFO) fails on the timeout."""
    config = write_settings(tmp_path, settings(tmp_path))
    env = {k: v for k, v in os.environ.items() if k not in ("POLYGON_API_KEY", "SPY_STREAMER_CONFIG")}
    return subprocess.run([sys.executable, "-m", "spy_streamer", *arguments, "--config", str(config)],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=30)


def test_status_json_and_check_do_not_hang_on_a_heartbeat_fifo(tmp_path):
    """Measured: a heartbeat that is a FIFO hung `status --json`."""
    (tmp_path / "heartbeat").mkdir()
    os.mkfifo(tmp_path / "heartbeat" / "polygon.json")
    status = run_cli(tmp_path, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert "FIFO" in json.loads(status.stdout)["heartbeat_problem"]
    check = run_cli(tmp_path, "check")
    assert "FIFO" in check.stdout and check.returncode in (1, 2, 3)


def test_status_does_not_hang_on_a_calendar_fifo(tmp_path):
    """Measured: `calendar.json` replaced by a FIFO hung `status`."""
    (tmp_path / "heartbeat").mkdir()
    os.mkfifo(tmp_path / "heartbeat" / "calendar.json")
    status = run_cli(tmp_path, "status")
    assert status.returncode == 0, status.stderr
    assert "market:" in status.stdout


def test_report_does_not_hang_on_a_gap_ledger_fifo(tmp_path):
    path = ledger_path(tmp_path / "data", "A", DAY)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    report = run_cli(tmp_path, "report", "--date", DAY.isoformat())
    assert "FIFO" in report.stdout + report.stderr


def test_compaction_neither_merges_nor_deletes_a_symlink_named_like_a_micro_batch(tmp_path, caplog):
    """Deletions during compaction never follow links, and a planted link is not data."""
    from test_compaction import ws_batch
    from spy_streamer.storage.compaction import compact_day
    data_dir = tmp_path / "data"
    sink = ParquetSink(data_dir)
    ws_batch(sink, 0, 5, 1_749_562_500_000_000_000)
    elsewhere = ParquetSink(tmp_path / "elsewhere")
    foreign = ws_batch(elsewhere, 10, 7, 1_749_562_500_000_000_000)
    link = sink.partition_dir("A", DAY) / "part-1-1-000001.parquet"
    link.symlink_to(foreign)
    result = compact_day(data_dir, DAY)
    assert result.rows == 5
    assert link.is_symlink() and pq.read_table(foreign).num_rows == 7
    assert "compaction_entries_refused" in [getattr(record, "event", None) for record in caplog.records]


def test_a_fifo_named_like_a_micro_batch_neither_hangs_a_restart_nor_compaction(tmp_path, caplog):
    """The same mistake as the heartbeat FIFO, in the data folders: a restart reads the day's files."""
    from test_compaction import ws_batch
    from spy_streamer.channels.aggregates import SCHEMA
    from spy_streamer.storage.compaction import compact_day
    data_dir = tmp_path / "data"
    sink = ParquetSink(data_dir)
    ws_batch(sink, 0, 5, 1_749_562_500_000_000_000)
    os.mkfifo(sink.partition_dir("A", DAY) / "part-2-2-000002.parquet")
    script = ("import sys; sys.path.insert(0, 'tests'); from pathlib import Path; from datetime import date; "
              "from spy_streamer.storage.parquet_sink import ParquetSink; from spy_streamer.channels.aggregates import SCHEMA; "
              f"print(sum(t.num_rows for t in ParquetSink(Path({str(data_dir)!r})).stored_rows('A', date(2025, 6, 10), SCHEMA)))")
    restart = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=30)
    assert restart.stdout.strip() == "5", restart.stderr
    assert compact_day(data_dir, DAY).rows == 5
    assert "compaction_entries_refused" in [getattr(record, "event", None) for record in caplog.records]
