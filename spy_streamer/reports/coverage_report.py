"""`spy-streamer report`: how completely one day was recorded, written for a person.

Pure functions: `read_day` loads the few columns needed, `day_coverage` turns them (plus the file list and
the session bounds) into a `Coverage`, `format_coverage` writes the text. A gap is a stretch of the
session no stored bar covers (a bar covers `start` to `end`), the session's first and last minutes
included; Polygon sends no bar for a second without trades, so one-second holes are normal and the
threshold is "longer than N seconds".
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import date, datetime, timezone, tzinfo
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from ..channels import Channel, channel_for
from ..channels.base import epoch_ms
from ..backfill.gap_ledger import FAILED, GapEntry, GapLedger, LedgerUnreadable, read_day_ledger
from ..market.market_hours import MarketCalendar, SpecialDay
from ..storage.layout import partition_dir, visible_parquet_files

COLUMNS = ("symbol", "start", "end", "source")   # what day_coverage reads: every channel is brought to these
_MS_UTC = pa.timestamp("ms", tz="UTC")                # day_coverage works in milliseconds, whatever the channel
LARGEST_GAPS_SHOWN = 5
UNFILLED_SHOWN = 20          # a wildcard may leave thousands: the count says how many, the ledger lists all
FILES_PER_READ = 16          # a chunk of files per scan: pyarrow reads a chunk's files in parallel,
                             # and the progress bar moves between chunks


class CoverageError(Exception):
    """The day's files cannot be read."""


@dataclass(frozen=True)
class CoverageGap:
    symbol: str
    start: datetime   # first instant no bar covers (UTC)
    end: datetime     # where coverage resumes, or the session's end

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass(frozen=True)
class Coverage:
    day: date
    folder: Path
    files: int
    total_bytes: int
    rows: int
    repeated_rows: int                     # rows whose (symbol, start) another row already has
    rest_rows: int                         # rows from REST gap backfill (source == "rest")
    symbols: tuple[str, ...]
    first_bar: datetime | None
    last_bar: datetime | None
    session: tuple[datetime, datetime] | None
    gap_seconds: float                     # gaps longer than this are listed
    gaps: tuple[CoverageGap, ...]                  # largest first
    unfilled: tuple[GapEntry, ...] = ()            # the gap ledger's gaps REST has not (yet) filled
    ledger_problem: str | None = None              # the ledger could not be read

    @property
    def missing_seconds(self) -> float:
        return sum(gap.seconds for gap in self.gaps)


def session_bounds(calendar: MarketCalendar, day: date, now: datetime) -> tuple[datetime, datetime] | None:
    """The part of the day's session that has happened by `now`; None when there is none (yet)."""
    session = calendar.session_on(day)
    if session is None:
        return None
    opens, closes = session.regular   # pre-market and after-hours are sparse: gaps there say little
    if now <= opens:
        return None
    return opens, min(closes, now)


def read_day(files: list[Path], channel: Channel | None = None,
             advance: Callable[[int], None] = lambda files_read: None) -> pa.Table:
    """COLUMNS of `files` plus the channel's dedup key: `start`/`end` (ms) are a bar's, or a trade's or
    quote's own time twice; a file without `source` (older layout) reads as nulls there. `advance(n)` is
    told each time n more files have been read."""
    channel = channel or channel_for("A")
    names = dict.fromkeys(("symbol", channel.time_column, "end", "source", *channel.dedup_key))
    schema = pa.schema([channel.schema.field(name) for name in names if name in channel.schema.names])
    tables = [schema.empty_table()]
    try:
        for first in range(0, len(files), FILES_PER_READ):
            chunk = [str(path) for path in files[first:first + FILES_PER_READ]]
            tables.append(ds.dataset(chunk, schema=schema, format="parquet").to_table())
            advance(len(chunk))
    except (pa.ArrowException, OSError) as exc:
        raise CoverageError(f"cannot read the day's files: {exc}") from None
    table = pa.concat_tables(tables)
    start = channel.time_ms(table).cast(_MS_UTC)
    end = epoch_ms(table.column("end")).cast(_MS_UTC) if "end" in table.column_names else start
    keys = [name for name in channel.dedup_key if name not in COLUMNS]
    return pa.table({"symbol": table.column("symbol"), "start": start, "end": end, "source": table.column("source"),
                     **{name: table.column(name) for name in keys}})


def find_gaps(bars: list[tuple[int, int]], open_ms: int, close_ms: int, longer_than_ms: float) -> list[tuple[int, int]]:
    """Uncovered stretches [from, to) of [open_ms, close_ms) longer than `longer_than_ms`.

    `bars` are (start_ms, end_ms) sorted by start.
    """
    gaps, covered = [], open_ms
    for start, end in bars:
        if start >= close_ms:
            break
        if start - covered > longer_than_ms:
            gaps.append((covered, start))
        covered = max(covered, end)
    if close_ms - covered > longer_than_ms:
        gaps.append((covered, close_ms))
    return gaps


Progress = Callable[[int], AbstractContextManager[Callable[[int], None]]]


def load_coverage(data_dir: Path, day: date, session: tuple[datetime, datetime] | None, gap_seconds: float,
                  expected_symbols: tuple[str, ...] = (), channel: str = "A", progress: Progress | None = None) -> Coverage:
    """Read the day's visible files of `channel` and its gap ledger, and describe them; CoverageError when
    the files cannot be read. `progress(total_files)` gives a context yielding `advance(files_read)`."""
    folder = partition_dir(data_dir, channel, day)
    files = visible_parquet_files(folder)
    chosen = channel_for(channel)
    key = tuple("start" if name == chosen.time_column else name for name in chosen.dedup_key)  # as read_day names it
    with (progress or (lambda total: nullcontext(lambda files_read: None)))(len(files)) as advance:
        table = read_day(files, chosen, advance)
    coverage = day_coverage(day, folder, files, table, session, gap_seconds, expected_symbols, key)
    unfilled, problem = _unfilled_gaps(data_dir, channel, day)
    return dataclasses.replace(coverage, unfilled=unfilled, ledger_problem=problem)


def _unfilled_gaps(data_dir: Path, channel: str, day: date) -> tuple[tuple[GapEntry, ...], str | None]:
    """The ledger's unfinished gaps by time, those of a symbol that overlap or touch merged as the daemon
    merges them, and what was wrong if it could not be read."""
    try:
        entries = read_day_ledger(data_dir, channel, day)
    except LedgerUnreadable as exc:
        return (), str(exc)
    merged = GapLedger(None, day, (channel,))
    for entry in entries:
        merged.restore(entry, requeue=False)
    return tuple(sorted(merged.unfinished(), key=lambda entry: (entry.from_ms, entry.symbol))), None


def day_coverage(day: date, folder: Path, files: list[Path], table: pa.Table,
                 session: tuple[datetime, datetime] | None, gap_seconds: float,
                 expected_symbols: tuple[str, ...] = (), dedup_key: tuple[str, ...] = ("symbol", "start")) -> Coverage:
    """`table` holds COLUMNS of `files` (and the dedup key's other columns); `expected_symbols` get a
    whole-session gap when they have no row."""
    starts = epoch_ms(table.column("start"))
    symbols = tuple(sorted(set(pc.unique(table.column("symbol")).to_pylist()) - {None}))
    return Coverage(
        day=day, folder=folder, files=len(files), total_bytes=sum(path.stat().st_size for path in files),
        rows=table.num_rows,
        repeated_rows=table.num_rows - table.group_by(list(dedup_key)).aggregate([]).num_rows,
        rest_rows=pc.sum(pc.equal(table.column("source"), "rest")).as_py() or 0,
        symbols=symbols,
        first_bar=_instant(pc.min(starts).as_py()), last_bar=_instant(pc.max(starts).as_py()),
        session=session, gap_seconds=gap_seconds,
        gaps=tuple(sorted(_session_gaps(table, session, gap_seconds, set(symbols) | set(expected_symbols)),
                          key=lambda gap: (-gap.seconds, gap.start, gap.symbol))),
    )


def _session_gaps(table: pa.Table, session: tuple[datetime, datetime] | None, gap_seconds: float,
                  symbols: set[str]) -> list[CoverageGap]:
    if session is None:
        return []
    open_ms, close_ms = (int(instant.timestamp() * 1000) for instant in session)
    bars = _bars_by_symbol(table)
    return [CoverageGap(symbol, _instant(start), _instant(end))
            for symbol in sorted(symbols)
            for start, end in find_gaps(bars[symbol], open_ms, close_ms, gap_seconds * 1000)]


def _bars_by_symbol(table: pa.Table) -> dict[str, list[tuple[int, int]]]:
    columns = [table.column("symbol").to_pylist()] + [
        epoch_ms(table.column(name)).to_pylist() for name in ("start", "end")]
    bars: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for symbol, start, end in zip(*columns):
        bars[symbol].append((start, end))
    for symbol_bars in bars.values():
        symbol_bars.sort()
    return bars


def _instant(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


# --- text ---

def format_coverage(coverage: Coverage, tz: tzinfo, special: SpecialDay | None = None) -> str:
    """`special`: the calendar's holiday or early close of the day, named in the session line."""
    lines = [f"coverage of {coverage.day:%a %Y-%m-%d} in {coverage.folder}",
             f"files: {coverage.files}, {coverage.total_bytes:,} bytes",
             _rows_line(coverage)]
    if coverage.rows:
        lines.append(f"first bar: {_clock(coverage.first_bar, tz)}, last bar: {_clock(coverage.last_bar, tz)}")
    lines += _unfilled_lines(coverage, tz)
    lines += _gap_lines(coverage, tz, special)
    return "\n".join(lines)


def _unfilled_lines(coverage: Coverage, tz: tzinfo) -> list[str]:
    """What the backfill was asked for and has not filled: channel, symbol, the missing rows' first and
    last times (exchange zone and UTC) and why."""
    if coverage.ledger_problem:
        return [f"unfilled gaps: unknown, the gap ledger is unreadable ({coverage.ledger_problem})"]
    lines = [f"unfilled gaps (gap ledger): {len(coverage.unfilled)}"]
    for entry in coverage.unfilled[:UNFILLED_SHOWN]:
        first, last = _instant(entry.from_ms), _instant(entry.to_ms)
        lines.append(f"  {entry.channel} {entry.symbol} {_clock(first, tz)} - {_clock(last, tz)} "
                     f"({first:%H:%M:%S} - {last:%H:%M:%S} UTC)  {_why_unfilled(entry)}")
    if len(coverage.unfilled) > UNFILLED_SHOWN:
        lines.append(f"  ... and {len(coverage.unfilled) - UNFILLED_SHOWN} more")
    return lines


def _why_unfilled(entry: GapEntry) -> str:
    if entry.state == FAILED:
        return f"failed after {entry.attempts} attempt(s): {entry.reason}"
    tried = f", {entry.attempts} attempt(s) so far: {entry.reason}" if entry.attempts else ""
    return f"waiting for REST backfill{tried}"


def _rows_line(coverage: Coverage) -> str:
    line = f"rows: {coverage.rows:,} ({', '.join(coverage.symbols) or 'no symbols'}), " \
           f"{coverage.rest_rows:,} from REST backfill"
    if coverage.repeated_rows:
        line += (f"; {coverage.repeated_rows:,} rows repeat an earlier (symbol, start) "
                 "(left by an interrupted compaction? run `spy-streamer compact`)")
    return line


def _gap_lines(coverage: Coverage, tz: tzinfo, special: SpecialDay | None) -> list[str]:
    if coverage.session is None:
        if special is not None and special.closed:
            return [f"session: closed ({special.name})"]
        return ["session: none to check (not a trading day in the configured hours, or not open yet)"]
    opens, closes = coverage.session
    lines = [f"session: {_clock(opens, tz)} - {_clock(closes, tz)}"
             + (f" (early close: {special.name})" if special is not None else ""),
             f"gaps longer than {coverage.gap_seconds:g} s: {len(coverage.gaps)}, "
             f"{_length(coverage.missing_seconds)} missing in all"]
    lines += [f"  {gap.symbol} {_clock(gap.start, tz)} - {_clock(gap.end, tz)}  {_length(gap.seconds)}"
              for gap in coverage.gaps[:LARGEST_GAPS_SHOWN]]
    if len(coverage.gaps) > LARGEST_GAPS_SHOWN:
        lines.append(f"  ... and {len(coverage.gaps) - LARGEST_GAPS_SHOWN} shorter")
    return lines


def _clock(instant: datetime, tz: tzinfo) -> str:
    return f"{instant.astimezone(tz):%H:%M:%S %Z}"


def _length(seconds: float) -> str:
    """`12 s`, `4 min 05 s`, `1 h 02 min 05 s`: gaps need the seconds that format_duration rounds away."""
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
