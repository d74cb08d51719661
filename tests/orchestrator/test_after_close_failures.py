"""A failed after-close compaction is named and shown (issue 16 section 3). Measured before: one corrupt
micro-batch made it fail with `compaction_failed ... TProtocolException` in the log only; the file was not
named, `check` said OK, the heartbeat and `status` said nothing, and the channels after it were not tried."""
from __future__ import annotations

import logging
from datetime import date, timedelta

import pyarrow.parquet as pq

from conftest import ny
from fake_polygon import agg_event, session_timeline, trade_event
from channel_parsing import events_one_by_one
from daemon_harness import wait_for
from spy_streamer.monitoring.health_check import WARNING, evaluate_health, load_heartbeat
from spy_streamer.reports.status_report import heartbeat_lines
from spy_streamer.storage.parquet_sink import ParquetSink
from test_streaming_runner import TUESDAY, heartbeat, make_runner, ms  # noqa: F401 (fixture)

DAY = date(2025, 6, 10)
OPEN_MS = int(ny(2025, 6, 10, 9, 30).timestamp() * 1000)
RECEIVED_NS = int(ny(2025, 6, 10, 9, 35).timestamp() * 1_000_000_000)


def write(sink: ParquetSink, channel: str, day: date, events: list, stamp_ns: int):
    table, bad = events_one_by_one(events, channel, stamp_ns)
    assert not bad
    return sink.write(channel, day, table, stamp_ns)


def corrupt_a_page(path) -> None:
    """Overwrite the head of a data page: the footer still reads, the page does not decode."""
    column = pq.read_metadata(path).row_group(0).column(1)
    data = bytearray(path.read_bytes())
    data[column.data_page_offset:column.data_page_offset + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))


def test_a_corrupt_micro_batch_is_named_and_the_other_channels_still_compact(tmp_path, caplog):
    from spy_streamer.storage.compaction import CompactionStats, compact_after_close

    sink, stats = ParquetSink(tmp_path), CompactionStats()
    write(sink, "A", DAY, [agg_event(OPEN_MS + n * 1000) for n in range(10)], RECEIVED_NS)
    bad = write(sink, "A", DAY, [agg_event(OPEN_MS + n * 1000) for n in range(10, 20)], RECEIVED_NS + 1)
    write(sink, "T", DAY, [trade_event(OPEN_MS + n, trade_id=str(n)) for n in range(10)], RECEIVED_NS)
    corrupt_a_page(bad)
    caplog.set_level(logging.INFO, logger="spy_streamer")

    compact_after_close(tmp_path, DAY, ["A", "T"], stats)

    assert list(stats.compaction_failed) == ["A"] and str(bad) in stats.compaction_failed["A"]
    (failed,) = [record for record in caplog.records if getattr(record, "event", None) == "compaction_failed"]
    assert str(bad) in failed.getMessage()
    assert [path.name for path in sink.partition_dir("T", DAY).glob("*.parquet")] == ["day-2025-06-10.parquet"]

    bad.rename(bad.with_name(f".{bad.name}.corrupt"))   # a person sets it aside
    compact_after_close(tmp_path, DAY, ["A", "T"], stats)
    assert stats.compaction_failed == {} and stats.compactions == 3


def test_the_daemon_shows_a_failed_compaction_until_a_later_one_succeeds(make_runner, fake):
    runner = make_runner(ny(2026, 11, 24, 15, 59, 30))
    runner.reconcile()
    assert fake.wait_for_subscribers(1, timeout=10)
    fake.push(session_timeline(ms(ny(2026, 11, 24, 15, 59, 0)), 20))
    wait_for(lambda: runner.monitor.messages_total == 1, what="the frame read")
    earlier = int(ny(2026, 11, 24, 15, 58).timestamp() * 1e9)   # a batch flushed a minute before, since damaged
    written = write(runner.sink, "A", TUESDAY, session_timeline(ms(ny(2026, 11, 24, 15, 58, 0)), 20), earlier)
    corrupt_a_page(written)
    runner.clock.advance(35)                            # 16:00:05: the session ends, the day is compacted
    runner.reconcile()
    runner._after_close[1].join(30)

    beat = heartbeat(runner)
    assert str(written) in beat["compaction_failed"]["A"]
    verdict = evaluate_health(load_heartbeat(runner.monitor.path), runner.clock.now() + timedelta(seconds=1))
    assert verdict.code == WARNING and written.name in verdict.text
    assert any(written.name in line for line in heartbeat_lines(beat, runner.clock.now()))
