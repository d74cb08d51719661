"""The gap ledger is an input too (issue 16, section 5) and lives outside the data partitions (issue 19):
bounded in bytes and in gaps, what is over the bound set aside and counted, overlapping ranges merged on
load and listed merged, an old in-partition ledger carried over."""
from __future__ import annotations

import json
import logging
import tracemalloc

import pytest

from conftest import NY
from spy_streamer.backfill import gap_ledger
from spy_streamer.backfill.gap_ledger import Gap, GapLedger, LedgerFull, read_day_ledger
from spy_streamer.reports.coverage_report import format_coverage, load_coverage
from spy_streamer.storage.layout import gap_ledger_path, legacy_gap_ledger_path, partition_dir, set_aside_name
from test_gap_ledger import DAY, T0, Rest, backfiller, events, ledger, running, stop, wait_until


def write_ledger(path, rows, channel="A") -> None:
    """A ledger file as the daemon writes it, with `rows` of (symbol, from_ms, to_ms, state, attempts, reason)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = json.dumps({"version": 1, "channel": channel, "day": DAY.isoformat(), "filled_earlier": 0,
                       "columns": list(gap_ledger.COLUMNS)})
    lines = ",\n".join(json.dumps(row, separators=(",", ":")) for row in rows)
    path.write_text(f'{head[:-1]}, "gaps": [\n{lines}\n]}}\n')


def test_a_ledger_of_a_million_gaps_is_set_aside_unread(tmp_path, caplog):
    """Measured: a 63 MB ledger of 1,000,000 pending gaps for symbols never seen took RSS to 700-790 MB and
    queued 1,000,000 REST requests (14 h). Now it is set aside unread: one warning, counted, nothing asked."""
    path = gap_ledger_path(tmp_path, "A", DAY)
    write_ledger(path, ([f"Z{i:07d}", T0, T0 + 59_000, "pending", 0, None] for i in range(1_000_000)))
    assert path.stat().st_size > 50_000_000
    rest = Rest()
    filler = backfiller(tmp_path, rest)
    tracemalloc.start()
    with caplog.at_level(logging.WARNING):
        thread = running(filler)
        wait_until(lambda: filler.stats.gap_ledger_set_aside, timeout=60)
        peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    stop(filler, thread)
    assert peak < 20_000_000                                   # the file was never parsed
    assert rest.calls == [] and filler.stats.backfill_requests == 0
    assert filler.stats.gap_ledger_set_aside == 1 and len(events(caplog, "gap_ledger_set_aside")) == 1
    assert not path.exists() and set_aside_name(path).stat().st_size > 50_000_000   # renamed, not deleted


def test_a_ledger_over_the_gap_bound_is_set_aside(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(gap_ledger, "MAX_LEDGER_GAPS", 10)
    path = gap_ledger_path(tmp_path, "A", DAY)
    write_ledger(path, ([f"S{i:02d}", T0, T0 + 9000, "pending", 0, None] for i in range(11)))
    book = ledger(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert book.load() == []
    (warning,) = events(caplog, "gap_ledger_set_aside")
    assert "11 gaps, over the bound of 10" in warning.getMessage() and book.set_aside == 1
    assert set_aside_name(path).exists() and not path.exists()


def test_a_request_beyond_the_bound_is_refused_unless_it_merges(tmp_path, monkeypatch):
    monkeypatch.setattr(gap_ledger, "MAX_LEDGER_GAPS", 3)
    book = ledger(tmp_path)
    for second in range(3):
        book.add(Gap("SPY", T0 + second * 60_000, T0 + second * 60_000 + 9000))
    with pytest.raises(LedgerFull):
        book.add(Gap("QQQ", T0, T0 + 9000))
    assert book.add(Gap("SPY", T0 + 10_000, T0 + 19_000)) == 1   # touches the first: merged, no new entry
    assert book.save(durable=0) and len(read_day_ledger(tmp_path, "A", DAY)) == 3


def test_the_backfill_gives_up_requests_over_the_bound_with_one_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(gap_ledger, "MAX_LEDGER_GAPS", 2)
    filler = backfiller(tmp_path, Rest(down=True), attempts=5, retry_seconds=30)
    with caplog.at_level(logging.WARNING):
        thread = running(filler)
        for second in range(6):
            filler.request(Gap(f"S{second}", T0, T0 + 9000))
        wait_until(lambda: filler.stats.backfill_requests == 6)
        stop(filler, thread)
    assert filler.stats.gaps_over_bound == 4 and filler.stats.backfill_failures == 4
    assert filler.stats.backfill_requests - filler.stats.backfill_finished == 2     # the two held still wait
    assert len(events(caplog, "gap_ledger_full")) == 1


OVERLAPPING = [["SPY", T0, T0 + 9000, "pending", 0, None], ["SPY", T0 + 5000, T0 + 20_000, "failed", 5, "HTTP 500"],
               ["SPY", T0 + 21_000, T0 + 30_000, "pending", 0, None],                   # touches: merged too
               ["SPY", T0 + 60_000, T0 + 69_000, "failed", 5, "HTTP 500"],
               ["SPY", T0 + 62_000, T0 + 64_000, "failed", 2, "HTTP 429"],
               ["QQQ", T0, T0 + 9000, "filled", 1, None], ["QQQ", T0 + 5000, T0 + 6000, "pending", 0, None]]


def test_overlapping_ranges_of_a_symbol_are_merged_on_load(tmp_path):
    """Measured: overlapping ranges of one symbol were listed separately, though the README says merged."""
    write_ledger(gap_ledger_path(tmp_path, "A", DAY), OVERLAPPING)
    book = ledger(tmp_path)
    resumed = sorted((entry.symbol, entry.from_ms, entry.to_ms, entry.attempts) for entry in book.load())
    assert resumed == [("QQQ", T0 + 5000, T0 + 6000, 0), ("SPY", T0, T0 + 30_000, 5),
                       ("SPY", T0 + 60_000, T0 + 69_000, 5)]
    assert book.save(durable=0)
    assert len(read_day_ledger(tmp_path, "A", DAY)) == 4          # and saved merged (QQQ's filled one kept)


def test_report_lists_overlapping_ranges_merged(tmp_path):
    write_ledger(gap_ledger_path(tmp_path, "A", DAY), OVERLAPPING)
    text = format_coverage(load_coverage(tmp_path, DAY, None, 1.0), NY).splitlines()
    start = text.index("unfilled gaps (gap ledger): 3")
    listed = text[start + 1:start + 4]
    assert [line.split()[1] for line in listed] == ["SPY", "QQQ", "SPY"]
    assert listed[0].endswith("waiting for REST backfill, 5 attempt(s) so far: HTTP 500")
    assert listed[2].endswith("failed after 5 attempt(s): HTTP 500")


def test_an_old_ledger_in_the_partition_is_carried_out_of_it(tmp_path):
    """Issue 19: `.gaps.json` inside `date=` stopped Polars scanning a channel folder. An old one is read
    (by `report` too), saved in `.gaps/`, then removed: the partition holds data only."""
    legacy = legacy_gap_ledger_path(tmp_path, "A", DAY)
    write_ledger(legacy, [["SPY", T0, T0 + 9000, "pending", 0, None]])
    assert [entry.symbol for entry in read_day_ledger(tmp_path, "A", DAY)] == ["SPY"]
    book = ledger(tmp_path)
    assert [entry.gap for entry in book.load()] == [Gap("SPY", T0, T0 + 9000)] and book.dirty
    assert book.save(durable=0)
    assert not legacy.exists() and list(partition_dir(tmp_path, "A", DAY).iterdir()) == []
    assert [(entry.symbol, entry.state) for entry in read_day_ledger(tmp_path, "A", DAY)] == [("SPY", "pending")]


def test_an_old_ledger_that_is_damaged_is_set_aside_out_of_the_partition(tmp_path, caplog):
    legacy = legacy_gap_ledger_path(tmp_path, "A", DAY)
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b'{"version": 1, "gaps": [["SPY", 1')
    book = ledger(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert book.load() == [] and book.set_aside == 1
    assert list(partition_dir(tmp_path, "A", DAY).iterdir()) == []
    aside = gap_ledger_path(tmp_path, "A", DAY).with_name(".legacy-date=2026-11-24.json.corrupt")
    assert aside.read_bytes().startswith(b'{"version": 1')
