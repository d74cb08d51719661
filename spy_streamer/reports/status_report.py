"""`spy-streamer status`: the market state and the heartbeat summary, written for a person."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import psutil

from ..monitoring.health_check import age_and_clock_offset, is_stale
from ..market.market_hours import MarketCalendar


def format_duration(seconds: float) -> str:
    minutes_total = int(seconds // 60)
    days, rest = divmod(minutes_total, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if days or hours:
        parts.append(f"{hours} h")
    parts.append(f"{minutes} min" if minutes_total else f"{int(seconds)} s")
    return " ".join(parts)


def both_zones(instant: datetime, tz, seconds: bool = False) -> str:
    """An instant in the exchange's zone and in UTC, always both, always in this form."""
    clock = "%H:%M:%S" if seconds else "%H:%M"
    return f"{instant.astimezone(tz):%a %Y-%m-%d {clock} %Z} ({instant.astimezone(timezone.utc):{clock}} UTC)"


def market_lines(calendar: MarketCalendar, now: datetime) -> list[str]:
    session = calendar.current_or_next_session(now)
    if session is None:
        return [f"market: CLOSED ({calendar.closed_reason(now)}): the daemon captures nothing until the "
                f"calendar has a session (see the calendar lines)"]
    if calendar.is_market_open(now):
        state = "OPEN"
        if session.early_close is not None:
            state += f" (early close today: {session.early_close.name})"
        lines = [f"market: {state}"]
    else:
        lines = [f"market: CLOSED ({calendar.closed_reason(now)})",
                 f"next open:  {both_zones(session.open, calendar.tz)} (in {format_duration((session.open - now).total_seconds())})"]
    lines.append(f"next close: {both_zones(session.close, calendar.tz)} (in {format_duration((session.close - now).total_seconds())})")
    return lines


def calendar_lines(calendar: MarketCalendar, now: datetime) -> list[str]:
    """The days Polygon's list overrides the exchange rules (from today on): applied, and said."""
    return [f"calendar: Polygon's list overrides the exchange rules on {item.describe()} (Polygon's applied)"
            for item in calendar.polygon_only_days(calendar.trading_day(now))]


HEARTBEAT_FIELDS = ("status", "connected", "updated_at", "last_message_at", "messages_total",
                    "rows_written", "rows_pending", "rejected_late", "rejected_invalid", "reconnects",
                    "queue_depth", "write_errors", "last_write_error", "failure")


INSTANT_FIELDS = ("updated_at", "last_message_at")


def heartbeat_lines(heartbeat: dict[str, Any] | None, now: datetime, tz=timezone.utc,
                    written_at: datetime | None = None) -> list[str]:
    """The heartbeat for a person. A stale one is called what it is: the last words of a process that is
    probably gone (the fields then describe the past, not now). ValueError when it has no valid time.
    `written_at` (the file's time) tells a daemon whose clock is off from one that stopped writing."""
    if heartbeat is None:
        return ["heartbeat: none yet (the daemon has not written one)"]
    age, clock_offset = age_and_clock_offset(heartbeat, now, written_at)
    pid = heartbeat.get("pid")
    lines = [f"heartbeat: pid {pid}, written {format_duration(abs(age))} {'ago' if age >= 0 else 'in the FUTURE'}"]
    if clock_offset is not None:
        lines.append(f"  CLOCK SKEW: the daemon's clock is {format_duration(abs(clock_offset))} "
                     f"{'ahead of' if clock_offset > 0 else 'behind'} this host's (its updated_at says so)")
    if is_stale(heartbeat, age):
        interval = heartbeat["heartbeat_interval_seconds"]
        alive = isinstance(pid, int) and psutil.pid_exists(pid)
        lines.append(f"  STALE: expected every {format_duration(interval)}; the daemon is probably "
                     f"{'hung' if alive else 'not running'} (pid {pid} {'exists' if alive else 'not found'}). "
                     f"Last known state:")
    lines += [f"  {field}: {_plain(field, heartbeat[field], tz)}" for field in HEARTBEAT_FIELDS if field in heartbeat]
    return lines + _storage_lines(heartbeat)


def _storage_lines(heartbeat: dict[str, Any]) -> list[str]:
    """The after-close compaction's failures and the lake's state (what `check` judges: storage_health)."""
    failed = heartbeat.get("compaction_failed")
    lines = [f"  compaction failed: {channel} {why}" for channel, why in sorted(failed.items())] \
        if isinstance(failed, dict) else []
    lake = heartbeat.get("lake")
    if isinstance(lake, dict):
        lines.append(f"  lake: {heartbeat.get('upload_backlog')} staged file(s), {lake.get('upload_backlog_rows')} "
                     f"rows, waiting since {lake.get('oldest_staged_at') or '-'}; last commit "
                     f"{lake.get('last_commit_at') or '-'}; failing since {lake.get('failing_since') or '-'}"
                     f" ({lake.get('last_error') or 'no error'})")
        rewrites = lake.get("rewrite_failed")
        lines += [f"  lake rewrite failed: {channel} {why}" for channel, why in sorted(rewrites.items())] \
            if isinstance(rewrites, dict) else []
    return lines


def _plain(field: str, value: Any, tz) -> str:
    """Values as a person reads them, not as Python prints them."""
    if field in INSTANT_FIELDS and isinstance(value, str):
        try:
            return both_zones(datetime.fromisoformat(value), tz, seconds=True)
        except ValueError:
            return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value is None else str(value)


def status_document(calendar: MarketCalendar, now: datetime, calendar_source: str,
                    heartbeat: dict[str, Any] | None, written_at: datetime | None = None) -> dict[str, Any]:
    """`status --json`: the same facts for a program (instants in ISO 8601 UTC)."""
    session = calendar.current_or_next_session(now)
    market_open = calendar.is_market_open(now)
    special = None if session is None else session.early_close
    document: dict[str, Any] = {
        "now": now.isoformat(),
        "market": {"open": market_open, "closed_reason": calendar.closed_reason(now),
                   "session_in_sight": session is not None,
                   "next_open": None if market_open or session is None else session.open.isoformat(),
                   "next_close": None if session is None else session.close.isoformat(), "timezone": str(calendar.tz),
                   "early_close": special.name if special is not None else None},
        "calendar": calendar_source,
        "calendar_disagreements": [item.as_row() for item in calendar.polygon_only_days(calendar.trading_day(now))],
        "heartbeat": heartbeat,
    }
    if heartbeat is not None:
        try:
            age, offset = age_and_clock_offset(heartbeat, now, written_at)
        except ValueError:
            age, offset = None, None
        document["heartbeat_age_seconds"] = age
        document["heartbeat_stale"] = age is not None and is_stale(heartbeat, age)
        document["daemon_clock_offset_seconds"] = offset
    return document
