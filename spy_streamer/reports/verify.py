"""`spy-streamer verify`: a day's stored second bars audited against Polygon's REST minute bars.

Polygon sends an `A` bar only for seconds that have trades, so a missing second is not necessarily lost:
the audit is per minute instead. For each symbol and minute of the session, the stored second bars must
add up to the REST minute aggregate: the volume sum, the first open, the last close, the highest high and
the lowest low. Minutes that disagree are listed with the difference; `--repair` refetches those minutes
as REST second bars and stores them through the writer (the same validation, dedup and `source = rest`).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..channels import channel_for
from ..channels.base import epoch_ms
from ..channels.parsing import rest_results_with_reasons
from ..channels.rules import ChannelRules
from ..storage.layout import visible_parquet_files

MINUTE_MS = 60_000
FIELDS = ("volume", "open", "close", "high", "low")
PRICE_TOLERANCE = 1e-6   # relative: REST and WebSocket prices are the same decimals, rounding aside


class VerifyError(Exception):
    """The day's files or Polygon's answer could not be read."""


@dataclass(frozen=True)
class Disagreement:
    symbol: str
    minute_ms: int
    field: str
    stored: float | None     # None: no stored second bar in that minute
    rest: float | None       # None: Polygon has no minute bar there

    def describe(self, tz) -> str:
        when = datetime.fromtimestamp(self.minute_ms / 1000, timezone.utc).astimezone(tz)
        if self.stored is None:
            return f"{self.symbol} {when:%H:%M} missing: no stored bar, REST minute has volume {self.rest:g}"
        if self.rest is None:
            return f"{self.symbol} {when:%H:%M} not in REST: stored volume {self.stored:g}"
        return (f"{self.symbol} {when:%H:%M} {self.field}: stored {self.stored:g}, REST {self.rest:g} "
                f"(diff {self.stored - self.rest:+g})")


@dataclass(frozen=True)
class Audit:
    day: date
    symbols: tuple[str, ...]
    minutes_checked: int
    disagreements: tuple[Disagreement, ...]
    refused: dict[str, int] = field(default_factory=dict)   # REST minute bars the rules refused, by reason

    def minutes_to_repair(self) -> list[tuple[str, int]]:
        return sorted({(item.symbol, item.minute_ms) for item in self.disagreements})


def stored_minutes(folder: Path, opens_ms: int, closes_ms: int) -> dict[tuple[str, int], dict[str, float]]:
    """Per (symbol, minute start): the stored second bars added up as Polygon builds a minute bar."""
    tables = []
    for path in visible_parquet_files(folder):
        try:
            tables.append(pq.read_table(path, columns=["symbol", "start", *FIELDS]))
        except (pa.ArrowException, OSError) as exc:
            raise VerifyError(f"cannot read {path}: {exc}") from None
    if not tables:
        return {}
    table = pa.concat_tables(tables)
    starts = epoch_ms(table.column("start"))
    table = table.set_column(1, "start", starts).filter(
        pc.and_(pc.greater_equal(starts, opens_ms), pc.less(starts, closes_ms)))
    minutes = pc.multiply(pc.divide(table.column("start"), MINUTE_MS), MINUTE_MS)  # integer division
    table = table.append_column("minute", minutes).sort_by([("symbol", "ascending"), ("start", "ascending")])
    grouped = table.group_by(["symbol", "minute"], use_threads=False).aggregate(
        [("volume", "sum"), ("open", "first"), ("close", "last"), ("high", "max"), ("low", "min")])
    return {(row["symbol"], row["minute"]): {"volume": row["volume_sum"], "open": row["open_first"],
                                             "close": row["close_last"], "high": row["high_max"],
                                             "low": row["low_min"]}
            for row in grouped.to_pylist()}


def rest_minutes(symbol: str, results, opens_ms: int, closes_ms: int, refused: Counter) -> dict[int, dict[str, float]]:
    """Polygon's minute results inside the session, by minute start. They pass the rules every stored
    `AM` bar passes (bounds, a whole minute, within the session asked for); each other one is counted in
    `refused` by reason, so a hostile answer is neither compared nor repaired after."""
    minutes_channel = channel_for("AM")
    table, rejected = rest_results_with_reasons(minutes_channel, symbol, results, 0)
    table = ChannelRules(minutes_channel, (f"AM.{symbol}",)).apply(table, rejected, (opens_ms, closes_ms - 1))
    refused.update(rejected)
    starts = epoch_ms(table.column("start")).to_pylist()
    values = table.select(FIELDS).to_pylist()
    minutes: dict[int, dict[str, float]] = {}
    for start, row in zip(starts, values):
        minutes.setdefault(start, {name: float(value) for name, value in row.items()})
    return minutes


def compare_minute(symbol: str, minute_ms: int, stored: dict | None, rest: dict | None) -> list[Disagreement]:
    if stored is None:
        return [Disagreement(symbol, minute_ms, "missing", None, rest["volume"])]
    if rest is None:
        return [Disagreement(symbol, minute_ms, "extra", stored["volume"], None)]
    return [Disagreement(symbol, minute_ms, field, stored[field], rest[field]) for field in FIELDS
            if not _same(field, stored[field], rest[field])]


def _same(field: str, stored: float, rest: float) -> bool:
    if field == "volume":
        return stored == rest
    return math.isclose(stored, rest, rel_tol=PRICE_TOLERANCE)


def audit_day(folder: Path, day: date, session: tuple[int, int], symbols: Iterable[str],
              fetch_minutes: Callable[[str, int, int], list]) -> Audit:
    """Compare every minute of the session for `symbols` (those subscribed and those stored)."""
    opens_ms, closes_ms = session
    stored = stored_minutes(folder, opens_ms, closes_ms)
    all_symbols = tuple(sorted(set(symbols) | {symbol for symbol, _ in stored}))
    disagreements: list[Disagreement] = []
    checked, refused = 0, Counter()
    for symbol in all_symbols:
        rest = rest_minutes(symbol, fetch_minutes(symbol, opens_ms, closes_ms - 1), opens_ms, closes_ms, refused)
        mine = {minute: values for (name, minute), values in stored.items() if name == symbol}
        for minute in sorted(set(rest) | set(mine)):
            checked += 1
            disagreements += compare_minute(symbol, minute, mine.get(minute), rest.get(minute))
    return Audit(day, all_symbols, checked, tuple(disagreements), dict(sorted(refused.items())))


def format_audit(audit: Audit, tz, channel: str, limit: int = 50) -> str:
    minutes = audit.minutes_to_repair()
    lines = [f"verify {audit.day} {channel}: {audit.minutes_checked} minutes of {len(audit.symbols)} symbol(s) "
             f"checked against Polygon's REST minute bars; {len(minutes)} disagree"
             + format_refusals(audit.refused, "REST minute bars")]
    lines += [f"  {item.describe(tz)}" for item in audit.disagreements[:limit]]
    if len(audit.disagreements) > limit:
        lines.append(f"  ... and {len(audit.disagreements) - limit} more")
    return "\n".join(lines)


def repair_minutes(minutes: list[tuple[str, int]], fetch_seconds: Callable[[str, int, int], list],
                   store: Callable[[str, list, tuple[int, int]], None]) -> None:
    """Refetch each disagreeing minute as REST second bars and hand them to `store(symbol, results,
    requested)`, `requested` being the first and last second asked for (a row outside it is refused)."""
    for symbol, minute in minutes:
        requested = (minute, minute + MINUTE_MS - 1000)
        store(symbol, fetch_seconds(symbol, *requested), requested)


def format_refusals(rejected: dict[str, int], what: str = "") -> str:
    """"; 3 <what> refused (bad_price 1, outside_request 2)", or "" when REST sent nothing to refuse."""
    if not rejected:
        return ""
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(rejected.items()))
    return f"; {sum(rejected.values())}{' ' + what if what else ''} refused ({reasons})"


def verify_command(config, day: date, channel: str, repair: bool) -> int:
    """`spy-streamer verify`: exit 0 when every minute agrees (after a repair, if asked), 1 otherwise;
    a repair refused because a daemon records into the same data_dir: EX_LOCKED."""
    from ..market.calendar_store import load_calendar
    from ..channels.subscriptions import symbols_of
    from ..config import require_api_key
    from ..storage.parquet_sink import ParquetSink
    from ..data_sources.polygon_rest import RestAnswerError, fetch_minute_aggs, make_rest_client

    client = make_rest_client(require_api_key(config), config.polygon.rest_base_url)
    calendar = load_calendar(config)
    session = calendar.session_on(day)
    if session is None:
        special = calendar.special_day(day)
        print(f"verify {day} {channel}: no session that day ({special.name if special else 'not a trading day'})")
        return 0
    bounds = (int(session.open.timestamp() * 1000), int(session.close.timestamp() * 1000))
    sink = ParquetSink(config.paths.data_dir)
    folder = sink.partition_dir(channel, day)
    symbols = symbols_of(channel, config.polygon.subscriptions)

    def audit() -> Audit:
        return audit_day(folder, day, bounds, symbols, lambda *span: fetch_minute_aggs(client, *span))

    try:
        result = audit()
        print(format_audit(result, calendar.tz, channel))
        if not repair or not result.disagreements:
            return 1 if result.disagreements else 0
        refused = _repair_locked(config, sink, calendar, session, client, result)
        if refused is not None:
            return refused
        result = audit()
        print(format_audit(result, calendar.tz, channel))
    except (RestAnswerError, VerifyError) as exc:
        print(f"spy-streamer: verify {day}: {exc}")
        return 1
    return 1 if result.disagreements else 0


def _repair_locked(config, sink, calendar, session, client, result: Audit) -> int | None:
    """The repair under the daemon's own data_dir lock, so it never writes beside a recording daemon
    (both would store the same rows, each unaware of the other's keys): EX_LOCKED when it is held,
    EX_CONFIG when the lock file is unsafe (as for the daemon), 1 when it cannot be made."""
    from ..exit_codes import EX_CONFIG, EX_LOCKED
    from ..instance_lock import InstanceLock, InstanceLocked, UnsafeLockFile

    lock = InstanceLock(config.paths.data_dir)
    try:
        lock.acquire()
    except (InstanceLocked, UnsafeLockFile, OSError) as exc:
        print(f"spy-streamer: verify {result.day} --repair refused, nothing written: {exc}")
        return {InstanceLocked: EX_LOCKED, UnsafeLockFile: EX_CONFIG}.get(type(exc), 1)
    try:
        _repair(config, sink, calendar, session, client, result)
    finally:
        lock.release()
    return None


def _repair(config, sink, calendar, session, client, result: Audit) -> None:
    """REST second bars of the disagreeing minutes through the writer: the same rules as the stream's
    bars, each within the minute asked for, the day's stored keys kept once."""
    import time

    from ..capture.batch_writer import BatchWriter
    from ..capture.pipeline_stats import WriterStats
    from ..capture.queue_items import RestBars
    from ..clock import FrozenClock
    from ..data_sources.polygon_rest import fetch_second_aggs

    writer = BatchWriter(None, sink, calendar, WriterStats(), 60.0, FrozenClock(session.open),
                         subscriptions=config.polygon.subscriptions)
    writer.start_day()
    repair_minutes(result.minutes_to_repair(), lambda *span: fetch_second_aggs(client, *span),
                   lambda symbol, results, requested: writer.accept_items(
                       [RestBars(symbol, results, time.time_ns(), requested=requested)]))
    if not writer.flush():
        raise VerifyError(f"could not write the repaired bars: {writer.stats.last_write_error}")
    print(f"repair: {writer.stats.rows_written} second bars stored from REST (source rest)"
          f"{format_refusals(writer.stats.rejected_reasons)}; verifying again")
