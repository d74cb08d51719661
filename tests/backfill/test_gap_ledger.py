"""The gap ledger (`<data_dir>/.gaps/<channel>/date=D.json`) and the backfill that owns it: requests merged
per symbol and range, outcomes recorded, a restart resuming what was not filled, a damaged file set aside,
the file small under a wildcard."""
from __future__ import annotations

import json
import logging
import threading
import time
from datetime import date

import pytest

from conftest import FakeClock, ny
from spy_streamer.backfill.gap_backfill import GapBackfiller
from spy_streamer.storage.layout import gap_ledger_path
from spy_streamer.backfill.gap_ledger import MAX_FILLED_KEPT, Gap, GapLedger, read_entries
from spy_streamer.capture.pipeline_stats import BackfillStats
from spy_streamer.data_sources.polygon_rest import RestAnswerError
from spy_streamer.capture.queue_items import RestBars
from test_batch_writer import gap_rig

DAY = date(2026, 11, 24)
T0 = int(ny(2026, 11, 24, 10).timestamp() * 1000)


def ledger(data_dir, channels=("A",)) -> GapLedger:
    return GapLedger(data_dir, DAY, channels, step_of=lambda channel: 1000 if channel == "A" else 0)


def on_disk(data_dir, channel="A") -> list[tuple]:
    return [(e.symbol, e.from_ms, e.to_ms, e.state, e.attempts, e.reason)
            for e in read_entries(gap_ledger_path(data_dir, channel, DAY))]


def events(caplog, name):
    return [record for record in caplog.records if getattr(record, "event", None) == name]


# --- the ledger alone ---

def test_requests_of_a_symbol_that_overlap_or_touch_are_one_entry(tmp_path):
    book = ledger(tmp_path)
    assert book.add(Gap("SPY", T0, T0 + 9000)) == 0
    assert book.add(Gap("SPY", T0 + 5000, T0 + 19_000)) == 1        # overlaps: absorbs the first request
    assert book.add(Gap("SPY", T0 + 20_000, T0 + 29_000)) == 1      # touches (the next second)
    assert book.add(Gap("SPY", T0 + 40_000, T0 + 49_000)) == 0      # a second apart: its own entry
    assert book.add(Gap("QQQ", T0, T0 + 9000)) == 0                 # another symbol
    assert book.add(Gap("SPY", T0, T0 + 9000, "T")) == 0            # another channel
    assert sorted((e.channel, e.symbol, e.from_ms, e.to_ms) for e in book.unfinished()) == [
        ("A", "QQQ", T0, T0 + 9000), ("A", "SPY", T0, T0 + 29_000), ("A", "SPY", T0 + 40_000, T0 + 49_000),
        ("T", "SPY", T0, T0 + 9000)]
    order = [book.next_pending().gap for _ in range(4)]      # a merged entry takes the place of its last request
    assert order == [Gap("SPY", T0, T0 + 29_000), Gap("SPY", T0 + 40_000, T0 + 49_000), Gap("QQQ", T0, T0 + 9000),
                     Gap("SPY", T0, T0 + 9000, "T")] and book.next_pending() is None


def test_the_file_is_outside_the_data_partitions_one_gap_a_line(tmp_path):
    book = ledger(tmp_path)
    book.add(Gap("SPY", T0, T0 + 9000))
    book.add(Gap("QQQ", T0, T0 + 4000))
    assert book.save(durable=0)
    path = tmp_path / ".gaps" / "A" / "date=2026-11-24.json"
    assert not (tmp_path / "A").exists()                  # a channel folder holds data only
    lines = path.read_text().splitlines()
    assert lines[1:-1] == [f'["QQQ",{T0},{T0 + 4000},"pending",0,null],', f'["SPY",{T0},{T0 + 9000},"pending",0,null]']
    assert json.loads(path.read_text())["columns"] == ["symbol", "from_ms", "to_ms", "state", "attempts", "reason"]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_gap_is_written_filled_only_once_the_writer_made_its_rows_durable(tmp_path):
    book = ledger(tmp_path)
    book.add(Gap("SPY", T0, T0 + 9000))
    entry = book.next_pending()
    book.attempted(entry)
    book.filled(entry, delivered=3)          # its last page is the third handed to the writer
    book.save(durable=2)
    assert on_disk(tmp_path)[0][3] == "pending" and book.dirty      # a kill now: the restart asks again
    book.save(durable=3)
    assert on_disk(tmp_path) == [("SPY", T0, T0 + 9000, "filled", 1, None)] and not book.dirty


def test_a_new_request_revives_a_failed_gap_it_touches(tmp_path):
    book = ledger(tmp_path)
    book.add(Gap("SPY", T0, T0 + 9000))
    entry = book.next_pending()
    book.attempted(entry, "HTTP 500")
    book.failed(entry)
    assert book.add(Gap("SPY", T0 + 10_000, T0 + 19_000)) == 0       # the failed one was no longer waiting
    (merged,) = book.unfinished()
    assert (merged.from_ms, merged.to_ms, merged.state, merged.attempts) == (T0, T0 + 19_000, "pending", 1)


def test_a_restart_requeues_pending_and_failed_gaps_not_filled_ones(tmp_path):
    book = ledger(tmp_path)
    for symbol, state in (("SPY", "filled"), ("QQQ", "failed"), ("IWM", "pending")):
        book.add(Gap(symbol, T0, T0 + 9000))
        entry = book.next_pending()
        book.attempted(entry, None if state == "filled" else "HTTP 500")
        book.filled(entry, 0) if state == "filled" else book.failed(entry) if state == "failed" else book.interrupted(entry)
    book.save(durable=0)

    again = ledger(tmp_path)
    resumed = again.load()
    assert sorted(entry.symbol for entry in resumed) == ["IWM", "QQQ"] and {e.state for e in resumed} == {"pending"}
    assert {e.symbol for e in again.unfinished()} == {"IWM", "QQQ"}


@pytest.mark.parametrize("content", [b"{half a docu", b"\xff\xfe not utf-8", b'{"version": 99, "gaps": []}',
                                     b'{"version": 1, "channel": "A", "gaps": [["SPY", 5, 1, "pending", 0, null]]}',
                                     b'{"version": 1, "channel": "A", "gaps": [["SPY", 1, 5, "done", 0, null]]}', b"[]"])
def test_a_damaged_ledger_is_set_aside_with_one_warning(tmp_path, caplog, content):
    path = gap_ledger_path(tmp_path, "A", DAY)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    book = ledger(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert book.load() == []
    assert len(events(caplog, "gap_ledger_set_aside")) == 1
    assert not path.exists() and path.with_name(".date=2026-11-24.json.corrupt").read_bytes() == content
    book.add(Gap("SPY", T0, T0 + 9000))                   # and the day goes on with a fresh ledger
    assert book.save(durable=0) and len(on_disk(tmp_path)) == 1


def test_the_ledger_stays_small_under_a_wildcard_with_many_symbols(tmp_path, record_figure):
    """5,000 symbols, three reconnects before REST answers (each asks again from each symbol's last row),
    then a day of filled gaps: one entry per symbol and range, the filled ones capped."""
    symbols = [f"S{i:04d}" for i in range(5000)]
    book = ledger(tmp_path)
    for reconnect in range(3):
        for symbol in symbols:
            book.add(Gap(symbol, T0 + reconnect * 10_000, T0 + reconnect * 10_000 + 15_000))
    assert len(book.unfinished()) == 5000
    book.save(durable=0)
    size = gap_ledger_path(tmp_path, "A", DAY).stat().st_size
    assert size < 5000 * 60                                    # about 56 bytes an entry
    for _ in range(5000):
        entry = book.next_pending()
        book.filled(entry, 0)
    book.save(durable=0)
    document = json.loads(gap_ledger_path(tmp_path, "A", DAY).read_text())
    assert len(document["gaps"]) == MAX_FILLED_KEPT and document["filled_earlier"] == 5000 - MAX_FILLED_KEPT
    record_figure("gap ledger bytes, 5,000 symbols x 3 reconnects pending", size)


def test_a_disk_that_refuses_the_ledger_warns_once_and_keeps_it_dirty(tmp_path, caplog):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data folder should be")
    book = ledger(blocker)
    book.add(Gap("SPY", T0, T0 + 9000))
    with caplog.at_level(logging.WARNING):
        assert not book.save(durable=0) and not book.save(durable=0)
    assert len(events(caplog, "gap_ledger_write_failed")) == 1 and book.dirty


# --- the backfill that owns it ---

class Rest:
    """A REST source that fails while `down`, else answers one page per gap; counts the calls per gap."""

    def __init__(self, down: bool = False):
        self.down, self.calls = down, []

    def __call__(self, gap, pace):
        self.calls.append(gap)
        pace()
        if self.down:
            raise RestAnswerError("HTTP 500")
        return [[{"t": gap.from_ms}]]


def backfiller(data_dir, rest, delivered=None, attempts=3, retry_seconds=0.01, **kwargs):
    delivered = [] if delivered is None else delivered
    return GapBackfiller(rest, delivered.append, BackfillStats(), FakeClock(ny(2026, 11, 24, 10)),
                         attempts=attempts, retry_seconds=retry_seconds, ledger=ledger(data_dir), **kwargs)


def running(filler):
    thread = threading.Thread(target=filler.run)
    thread.start()
    return thread


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def retrying_spy(data_dir):
    """A running backfill with REST down, in a long back-off after its first try of SPY's gap."""
    filler = backfiller(data_dir, Rest(down=True), attempts=5, retry_seconds=30)
    thread = running(filler)
    filler.request(Gap("SPY", T0, T0 + 9000))
    wait_until(lambda: filler.ledger.unfinished() and filler.ledger.unfinished()[0].attempts == 1)
    return filler, thread


def stop(filler, thread):
    filler.stop()
    thread.join(5)
    assert not thread.is_alive()


def test_a_gap_given_up_is_kept_as_failed_with_its_reason_and_attempts(tmp_path, caplog):
    """Regression: a gap given up after the retries was only logged."""
    filler = backfiller(tmp_path, Rest(down=True))
    thread = running(filler)
    filler.request(Gap("SPY", T0, T0 + 9000))
    wait_until(lambda: filler.stats.backfill_failures == 1)
    stop(filler, thread)
    assert on_disk(tmp_path) == [("SPY", T0, T0 + 9000, "failed", 3, "HTTP 500")]
    assert filler.stats.backfill_requests == filler.stats.backfill_finished == 1


def test_a_stop_during_the_retries_leaves_the_gap_pending_not_failed(tmp_path):
    filler, thread = retrying_spy(tmp_path)
    started = time.monotonic()
    stop(filler, thread)
    assert time.monotonic() - started < 1
    assert on_disk(tmp_path) == [("SPY", T0, T0 + 9000, "pending", 1, "HTTP 500")]
    assert filler.stats.backfill_failures == 0 and filler.stats.backfill_requests - filler.stats.backfill_finished == 1


def test_a_restart_resumes_the_unfinished_gaps_and_fills_each_once(tmp_path, caplog):
    """Regression: a restart forgot the gaps requested but not yet filled."""
    first, thread = retrying_spy(tmp_path)
    first.request(Gap("QQQ", T0, T0 + 9000))
    wait_until(lambda: first.stats.backfill_requests == 2)
    stop(first, thread)

    rest, delivered = Rest(), []
    second = backfiller(tmp_path, rest, delivered)
    with caplog.at_level(logging.INFO):
        thread = running(second)
        wait_until(lambda: second.stats.backfill_finished == 2)
        stop(second, thread)
    assert sorted(gap.symbol for gap in rest.calls) == ["QQQ", "SPY"]          # each fetched once
    assert sorted(page.symbol for page in delivered) == ["QQQ", "SPY"]
    assert second.stats.backfill_requests == 2 and second.stats.backfill_failures == 0   # resumed gaps count
    assert {row[3] for row in on_disk(tmp_path)} == {"filled"}
    assert events(caplog, "backfill_resumed")[0].gaps == 2


def test_requests_are_recorded_while_another_gap_waits_for_its_retry(tmp_path):
    """The writer's requests reach the ledger and the heartbeat during a back-off, not after it."""
    filler, thread = retrying_spy(tmp_path)
    filler.request(Gap("QQQ", T0, T0 + 9000))
    wait_until(lambda: filler.stats.backfill_requests == 2)
    wait_until(lambda: len(on_disk(tmp_path)) == 2)            # saved within LEDGER_SAVE_SECONDS
    stop(filler, thread)


def test_the_close_fills_what_the_thread_had_not_reached_and_marks_the_rest_failed(tmp_path):
    """Regression: requests still queued for the backfill thread at the close were dropped."""
    rest = Rest()
    filler = backfiller(tmp_path, rest)
    filler.request(Gap("SPY", T0, T0 + 9000))              # handed over, never taken: the thread has stopped
    filler.stop()
    closing, delivered = filler.for_close(), []
    closing.fill_remaining([Gap("QQQ", T0, T0 + 9000)], delivered.append)
    assert sorted(page.symbol for page in delivered) == ["QQQ", "SPY"]
    rest.down = True
    closing.fill_remaining([Gap("IWM", T0, T0 + 9000)], delivered.append)    # one try, no wait
    closing.save_ledger()
    assert sorted((row[0], row[3], row[4]) for row in on_disk(tmp_path)) == [
        ("IWM", "failed", 1), ("QQQ", "filled", 1), ("SPY", "filled", 1)]
    assert filler.stats.backfill_requests == filler.stats.backfill_finished == 3


def test_merged_requests_keep_requests_minus_finished_the_gaps_waiting(tmp_path):
    filler, thread = retrying_spy(tmp_path)
    for second in range(3):                                 # three requests that merge into one entry
        filler.request(Gap("QQQ", T0 + second * 10_000, T0 + second * 10_000 + 9000))
    wait_until(lambda: filler.stats.backfill_requests == 4)
    assert filler.stats.backfill_requests - filler.stats.backfill_finished == 2 == len(filler.ledger.unfinished())
    stop(filler, thread)


def test_the_writer_counts_rest_pages_durable_only_after_a_flush_succeeds(tmp_path):
    writer, _ = gap_rig(tmp_path / "data")
    bar = {"t": int(ny(2025, 6, 10, 9, 45).timestamp() * 1000), "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1}
    writer.accept_items([RestBars("SPY", [bar], 0, requested=(bar["t"], bar["t"])),
                         RestBars("SPY", [], 0, requested=(bar["t"], bar["t"]))])
    assert (writer.rest_pages_accepted, writer.rest_pages_durable) == (2, 0)
    writer.sink.write = lambda *args: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    assert not writer.flush() and writer.rest_pages_durable == 0
    del writer.sink.write
    assert writer.flush() and writer.rest_pages_durable == 2


def test_the_close_still_paces_its_requests_until_the_daemon_stops(tmp_path):
    """Regression: at the close the backfill's stop event cut the pacer's waits short, so thousands of
    wildcard gaps went to REST as fast as the loop could ask."""
    rest = Rest()
    filler = backfiller(tmp_path, rest, max_requests_per_second=10)
    filler.stop()
    gaps = [Gap(symbol, T0, T0 + 9000) for symbol in ("SPY", "QQQ", "IWM", "DIA")]
    started = time.monotonic()
    filler.for_close().fill_remaining(gaps, [].append)
    assert time.monotonic() - started >= 0.25                       # 4 requests at 10/s: 3 waits of 0.1 s
    stopping = filler.for_close()
    stopping.stop()
    more = [Gap(symbol, T0 + 20_000, T0 + 29_000) for symbol in ("SPY", "QQQ", "IWM", "DIA")]
    started = time.monotonic()
    stopping.fill_remaining(more, [].append)                         # the daemon is stopping: no waits
    assert time.monotonic() - started < 0.2
