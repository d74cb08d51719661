"""`spy-streamer status`: the market state and the heartbeat summary, written for a person."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from .market_hours import MarketCalendar


def format_duration(seconds: float) -> str:
    minutes_total = int(seconds // 60)
    days, rest = divmod(minutes_total, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if days or hours:
        parts.append(f"{hours} h")
    parts.append(f"{minutes} min" if minutes_total else f"{int(seconds)} s")
    return " ".join(parts)


def _local(calendar: MarketCalendar, instant: datetime) -> str:
    return f"{instant.astimezone(calendar.tz):%a %Y-%m-%d %H:%M %Z}"


def market_lines(calendar: MarketCalendar, now: datetime) -> list[str]:
    session = calendar.current_or_next_session(now)
    if calendar.is_market_open(now):
        state = "OPEN"
        if session.early_close is not None:
            state += f" (early close today: {session.early_close.name})"
        lines = [f"market: {state}"]
    else:
        lines = [f"market: CLOSED ({calendar.closed_reason(now)})",
                 f"next open:  {_local(calendar, session.open)} (in {format_duration((session.open - now).total_seconds())})"]
    lines.append(f"next close: {_local(calendar, session.close)} (in {format_duration((session.close - now).total_seconds())})")
    return lines


HEARTBEAT_FIELDS = ("status", "connected", "updated_at", "last_message_at", "messages_total",
                    "rows_written", "rejected_late", "reconnects", "queue_depth")


def heartbeat_lines(heartbeat: dict[str, Any] | None, age_seconds: float | None) -> list[str]:
    if heartbeat is None:
        return ["heartbeat: none yet (the daemon has not written one)"]
    lines = [f"heartbeat: pid {heartbeat.get('pid')}, written {format_duration(age_seconds or 0)} ago"]
    lines += [f"  {field}: {heartbeat[field]}" for field in HEARTBEAT_FIELDS if field in heartbeat]
    return lines


# Nagios plugin convention, so `check` plugs into existing monitors.
CHECK_OK, CHECK_CRITICAL, CHECK_UNKNOWN = 0, 2, 3


def evaluate_health(heartbeat: dict[str, Any] | None, age_seconds: float | None,
                    market_open: bool) -> tuple[int, str]:
    """(exit code, one line) for `spy-streamer check`."""
    if heartbeat is None:
        return CHECK_UNKNOWN, "UNKNOWN: no heartbeat file yet"
    status = heartbeat.get("status")
    interval = heartbeat.get("heartbeat_interval_seconds")
    if not isinstance(interval, (int, float)) or interval <= 0:
        return CHECK_UNKNOWN, "UNKNOWN: heartbeat has no interval"
    summary = (f"status={status} age={age_seconds:.0f}s messages={heartbeat.get('messages_total')} "
               f"rows={heartbeat.get('rows_written')} reconnects={heartbeat.get('reconnects')}")
    if status == "stalled":
        return CHECK_CRITICAL, f"CRITICAL: stream stalled; {summary}"
    if status == "stopped":
        if market_open:
            return CHECK_CRITICAL, f"CRITICAL: daemon stopped while the market is open; {summary}"
        return CHECK_OK, f"OK: daemon stopped, market closed; {summary}"
    if age_seconds > 2 * interval:
        return CHECK_CRITICAL, f"CRITICAL: heartbeat is stale (daemon hung or dead); {summary}"
    if market_open and status == "market_closed":
        return CHECK_CRITICAL, f"CRITICAL: market is open but no session is running; {summary}"
    return CHECK_OK, f"OK: {summary}"
