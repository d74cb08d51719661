"""`spy-streamer report`: a day's coverage from the real Parquet files, gaps against the session.

The day is Tuesday 2025-06-10. SPY's bars (seconds after the 09:30 open) are laid out with known holes:
0-11 missing (at the open), 12-99 stored, 100 missing (one second: normal, not a gap at the default
threshold), 101-299 stored, 300-344 missing, 345-579 stored (345-359 from REST backfill), and with the
session cut at 09:40 (600 s) in the config, 580-599 missing at the end.
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, datetime, timezone

import pytest

from conftest import NY, REPO_ROOT, ny, settings, write_settings
from spy_streamer.storage.layout import gap_ledger_path
from fake_polygon import agg_event
import channel_parsing
from spy_streamer.channels.subscriptions import symbols_of
from spy_streamer.storage.compaction import compact_day
from spy_streamer.config import MarketHoursConfig
from spy_streamer.reports.coverage_report import day_coverage, find_gaps, format_coverage, load_coverage, session_bounds
from spy_streamer.market.market_hours import MarketCalendar
from spy_streamer.storage.parquet_sink import ParquetSink

DAY = date(2025, 6, 10)
OPEN = ny(2025, 6, 10, 9, 30)
OPEN_MS = int(OPEN.timestamp() * 1000)
SESSION = (OPEN, ny(2025, 6, 10, 9, 40))
RECEIVED_NS = int(ny(2025, 6, 10, 9, 45).timestamp() * 1_000_000_000)
CALENDAR = MarketCalendar(MarketHoursConfig(NY, frozenset(range(5)), OPEN.time(), SESSION[1].time()))


def ws_table(seconds, symbol="SPY"):
    events = [agg_event(OPEN_MS + second * 1000, symbol) for second in seconds]
    return channel_parsing.events_one_by_one(events, "A", RECEIVED_NS)[0]


def rest_table(seconds):
    results = [{"t": OPEN_MS + second * 1000, "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1} for second in seconds]
    return channel_parsing.rest_table("SPY", results, "A", RECEIVED_NS)[0]


@pytest.fixture
def data_dir(tmp_path):
    """The day described in the module docstring, as three micro-batch files."""
    sink = ParquetSink(tmp_path / "data")
    sink.write("A", DAY, ws_table(range(12, 100)), 1)
    sink.write("A", DAY, ws_table(range(101, 300)), 2)
    sink.write("A", DAY, rest_table(range(345, 360)), 3)
    sink.write("A", DAY, ws_table(range(360, 580)), 4)
    return tmp_path / "data"


def gap_list(coverage):
    return [(gap.symbol, f"{gap.start.astimezone(NY):%H:%M:%S}", gap.seconds) for gap in coverage.gaps]


def test_find_gaps_counts_stretches_no_bar_covers():
    bars = [(10_000, 11_000), (11_000, 12_000), (13_000, 14_000), (20_000, 21_000)]
    assert find_gaps(bars, 0, 30_000, 1000) == [(0, 10_000), (14_000, 20_000), (21_000, 30_000)]
    assert find_gaps(bars, 0, 30_000, 0) == [(0, 10_000), (12_000, 13_000), (14_000, 20_000), (21_000, 30_000)]
    assert find_gaps([], 0, 5_000, 1000) == [(0, 5_000)]
    assert find_gaps([(0, 1_000), (5_000, 6_000)], 0, 3_000, 1000) == [(1_000, 3_000)]  # bars after the end


def test_a_day_with_known_gaps(data_dir):
    coverage = load_coverage(data_dir, DAY, SESSION, 1.0)

    assert gap_list(coverage) == [("SPY", "09:35:00", 45.0), ("SPY", "09:39:40", 20.0), ("SPY", "09:30:00", 12.0)]
    assert coverage.missing_seconds == 77.0
    assert (coverage.rows, coverage.rest_rows, coverage.repeated_rows, coverage.symbols) == (522, 15, 0, ("SPY",))
    assert coverage.first_bar == ny(2025, 6, 10, 9, 30, 12) and coverage.last_bar == ny(2025, 6, 10, 9, 39, 39)
    files = sorted((data_dir / "A" / "date=2025-06-10").glob("*.parquet"))
    assert coverage.files == 4 and coverage.total_bytes == sum(path.stat().st_size for path in files)


def test_the_threshold_decides_which_gaps_count(data_dir):
    assert [seconds for _, _, seconds in gap_list(load_coverage(data_dir, DAY, SESSION, 0))] == [45, 20, 12, 1]
    assert [seconds for _, _, seconds in gap_list(load_coverage(data_dir, DAY, SESSION, 20))] == [45]


def test_a_subscribed_symbol_without_bars_misses_the_whole_session(data_dir):
    coverage = load_coverage(data_dir, DAY, SESSION, 1.0, symbols_of("A", ("A.SPY", "A.QQQ", "A.*", "T.MSFT")))
    assert gap_list(coverage)[0] == ("QQQ", "09:30:00", 600.0)


def test_repeats_are_counted_and_compaction_keeps_the_coverage(data_dir):
    ParquetSink(data_dir).write("A", DAY, ws_table(range(12, 22)), 5)
    before = load_coverage(data_dir, DAY, SESSION, 1.0)

    compact_day(data_dir, DAY)
    after = load_coverage(data_dir, DAY, SESSION, 1.0)

    assert (before.rows, before.repeated_rows, after.rows, after.repeated_rows) == (532, 10, 522, 0)
    assert after.files == 1 and after.gaps == before.gaps and after.rest_rows == before.rest_rows == 15


def test_session_bounds():
    assert session_bounds(CALENDAR, DAY, ny(2025, 6, 11, 8, 0)) == SESSION
    assert session_bounds(CALENDAR, DAY, ny(2025, 6, 10, 9, 35)) == (OPEN, ny(2025, 6, 10, 9, 35))  # so far
    assert session_bounds(CALENDAR, DAY, ny(2025, 6, 10, 9, 0)) is None                             # not open yet
    assert session_bounds(CALENDAR, date(2025, 6, 14), ny(2025, 6, 16, 8, 0)) is None               # Saturday


def test_the_text_for_a_person(data_dir):
    text = format_coverage(load_coverage(data_dir, DAY, SESSION, 1.0), NY)

    assert text.splitlines()[1:] == [
        f"files: 4, {sum(p.stat().st_size for p in (data_dir / 'A' / 'date=2025-06-10').iterdir()):,} bytes",
        "rows: 522 (SPY), 15 from REST backfill",
        "first bar: 09:30:12 EDT, last bar: 09:39:39 EDT",
        "unfilled gaps (gap ledger): 0",
        "session: 09:30:00 EDT - 09:40:00 EDT",
        "gaps longer than 1 s: 3, 1 min 17 s missing in all",
        "  SPY 09:35:00 EDT - 09:35:45 EDT  45 s",
        "  SPY 09:39:40 EDT - 09:40:00 EDT  20 s",
        "  SPY 09:30:00 EDT - 09:30:12 EDT  12 s",
    ]


def test_only_the_largest_gaps_are_listed():
    table = ws_table(range(0, 600, 3))  # a bar every third second: 199 two-second holes and one at the end
    text = format_coverage(day_coverage(DAY, REPO_ROOT, [], table, SESSION, 1.0), NY)
    assert "gaps longer than 1 s: 200, 6 min 40 s missing in all" in text
    assert text.splitlines()[-1] == "  ... and 195 shorter"


def test_an_empty_day():
    coverage = day_coverage(DAY, REPO_ROOT, [], ws_table([]), None, 1.0)
    text = format_coverage(coverage, NY)
    assert "rows: 0 (no symbols), 0 from REST backfill" in text and "first bar" not in text
    assert "session: none to check" in text


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------

def run_report(tmp_path, *arguments):
    config_path = write_settings(tmp_path, settings(tmp_path, streaming={"market_hours": {"end_time": "09:40"}}))
    env = {k: v for k, v in os.environ.items() if k not in ("POLYGON_API_KEY", "SPY_STREAMER_CONFIG")}
    return subprocess.run([sys.executable, "-m", "spy_streamer", "report", *arguments, "--config", str(config_path)],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)


def test_report_command(data_dir, tmp_path):
    result = run_report(tmp_path, "--date", "2025-06-10", "--gap-seconds", "15")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"coverage of Tue 2025-06-10 in {data_dir / 'A' / 'date=2025-06-10'}"
    assert "rows: 522 (SPY), 15 from REST backfill" in lines
    assert lines[-3:] == ["gaps longer than 15 s: 2, 1 min 05 s missing in all",
                          "  SPY 09:35:00 EDT - 09:35:45 EDT  45 s",
                          "  SPY 09:39:40 EDT - 09:40:00 EDT  20 s"]


def test_report_command_defaults_and_bad_arguments(tmp_path):
    days = {datetime.now(timezone.utc).astimezone(NY).date()}
    today = run_report(tmp_path)
    days.add(datetime.now(timezone.utc).astimezone(NY).date())  # in case the run straddled midnight
    bad = run_report(tmp_path, "--gap-seconds", "-1")

    assert today.returncode == 0, today.stderr
    assert today.stdout.split(" in ")[0] in {f"coverage of {day:%a %Y-%m-%d}" for day in days}
    assert "rows: 0 (no symbols)" in today.stdout
    assert bad.returncode == 2 and "--gap-seconds" in bad.stderr


def test_report_reads_any_channel(tmp_path):
    """Trades have no `end`: each covers its own instant; repeats are told by the channel's dedup key."""
    from fake_polygon import trade_event
    from spy_streamer.storage.parquet_sink import ParquetSink
    from spy_streamer.reports.coverage_report import load_coverage
    open_ms = int(ny(2025, 6, 10, 9, 30).timestamp() * 1000)
    trades, _ = channel_parsing.events_one_by_one([trade_event(open_ms + 1000, trade_id="1"), trade_event(open_ms + 9000, trade_id="2")], "T")
    day = ny(2025, 6, 10, 12).date()
    ParquetSink(tmp_path).write("T", day, trades, 1)
    ParquetSink(tmp_path).write("T", day, trades.slice(0, 1), 2)          # one trade twice
    session = (ny(2025, 6, 10, 9, 30), ny(2025, 6, 10, 9, 30, 20))
    coverage = load_coverage(tmp_path, day, session, 5, ("SPY",), "T")
    assert coverage.rows == 3 and coverage.repeated_rows == 1 and coverage.symbols == ("SPY",)
    assert [round(gap.seconds) for gap in coverage.gaps] == [11, 8]   # largest first: 9:30:09-9:30:20, 9:30:01-9:30:09


# --------------------------------------------------------------------------------------------------
# unfilled gaps from the gap ledger; the progress bar
# --------------------------------------------------------------------------------------------------

def write_ledger(data_dir, outcomes):
    """A gap ledger for DAY with (symbol, first second, last second, outcome) entries."""
    from spy_streamer.backfill.gap_ledger import Gap, GapLedger
    book = GapLedger(data_dir, DAY, ("A",), step_of=lambda channel: 1000)
    for symbol, first, last, outcome in sorted(outcomes, key=lambda outcome: outcome[3] == "pending"):
        book.add(Gap(symbol, OPEN_MS + first * 1000, OPEN_MS + last * 1000))
        if outcome == "pending":   # last: asked for, not tried yet
            continue
        entry = book.next_pending()
        if outcome == "filled":
            book.filled(entry, 0)
        else:
            for _ in range(5):
                book.attempted(entry, outcome)
            book.failed(entry)
    assert book.save(durable=0)


def test_the_unfilled_gaps_are_listed_with_both_clocks_and_why(data_dir):
    write_ledger(data_dir, [("SPY", 300, 344, "HTTP 500"), ("QQQ", 0, 11, "pending"), ("SPY", 0, 11, "filled")])
    text = format_coverage(load_coverage(data_dir, DAY, SESSION, 1.0), NY).splitlines()
    start = text.index("unfilled gaps (gap ledger): 2")
    assert text[start + 1:start + 3] == [
        "  A QQQ 09:30:00 EDT - 09:30:11 EDT (13:30:00 - 13:30:11 UTC)  waiting for REST backfill",
        "  A SPY 09:35:00 EDT - 09:35:44 EDT (13:35:00 - 13:35:44 UTC)  failed after 5 attempt(s): HTTP 500"]


def test_a_wildcards_many_unfilled_gaps_are_counted_and_the_first_listed(data_dir):
    from spy_streamer.reports.coverage_report import UNFILLED_SHOWN
    write_ledger(data_dir, [(f"S{i:03d}", 300, 344, "HTTP 429") for i in range(UNFILLED_SHOWN + 7)])
    text = format_coverage(load_coverage(data_dir, DAY, SESSION, 1.0), NY)
    assert f"unfilled gaps (gap ledger): {UNFILLED_SHOWN + 7}" in text and "  ... and 7 more" in text


def test_an_unreadable_ledger_is_said_not_fatal(data_dir):
    gap_ledger_path(data_dir, "A", DAY).parent.mkdir(parents=True)
    gap_ledger_path(data_dir, "A", DAY).write_text("{not json")
    text = format_coverage(load_coverage(data_dir, DAY, SESSION, 1.0), NY)
    assert "unfilled gaps: unknown, the gap ledger is unreadable" in text and "rows: 522 (SPY)" in text


def many_files(data_dir, count=60):
    """`count` more one-bar files (a day of micro-batches): enough for the progress bar."""
    sink = ParquetSink(data_dir)
    for second in range(count):
        sink.write("A", DAY, ws_table([580 + second % 20], symbol=f"X{second:02d}"), 10 + second)


def test_report_command_lists_unfilled_gaps_and_draws_no_bar_on_a_pipe(data_dir, tmp_path):
    write_ledger(data_dir, [("SPY", 300, 344, "HTTP 500")])
    many_files(data_dir)
    result = run_report(tmp_path, "--date", "2025-06-10")
    assert result.returncode == 0, result.stderr
    assert "unfilled gaps (gap ledger): 1" in result.stdout and "files: 64," in result.stdout
    assert "  A SPY 09:35:00 EDT - 09:35:44 EDT (13:35:00 - 13:35:44 UTC)  failed after 5 attempt(s): HTTP 500" \
        in result.stdout
    assert result.stderr == "" and "\x1b" not in result.stdout      # plain text: no bar, no escape codes


def test_report_draws_a_progress_bar_on_a_terminal(data_dir, tmp_path):
    import pty
    many_files(data_dir)
    config_path = write_settings(tmp_path, settings(tmp_path, streaming={"market_hours": {"end_time": "09:40"}}))
    env = {k: v for k, v in os.environ.items() if k not in ("POLYGON_API_KEY", "SPY_STREAMER_CONFIG")}
    primary, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "spy_streamer", "report", "--date", "2025-06-10",
                                "--config", str(config_path)], stdout=subprocess.PIPE, stderr=terminal,
                               env=dict(env, TERM="xterm", COLUMNS="100"), cwd=REPO_ROOT)
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:   # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(primary)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert b"reading the day's files" in drawn and b"64/64" in drawn
    assert b"reading" not in stdout                                   # the bar never reaches stdout


def test_the_daemon_never_imports_rich():
    """rich is for `report` at a terminal: the daemon's import path stays without it."""
    code = "import spy_streamer.orchestrator.streaming_runner, spy_streamer.cli, sys; assert 'rich' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=60)
