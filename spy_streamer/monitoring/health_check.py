"""`spy-streamer check`: the heartbeat judged for monitors, as a monitoring plugin (Nagios, Icinga, cron,
container probes) expects: one line `SPY-STREAMER <STATE> - <text> | <perfdata>`, exit 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN.

Everything is read from the heartbeat, which carries the market state and the next open and close, so a
check needs no key, no network and no heavy import. Only when the heartbeat is too old to know whether
the market is open now does it ask the calendar (`market_open_now`, passed in).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from .rejection_watch import describe_rejections

from ..storage import layout
from ..storage.durable_files import read_regular_file
from .storage_health import storage_problem

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
FUTURE_TOLERANCE_SECONDS = 60.0   # a heartbeat dated later than this is a wrong clock, not a fresh beat
STALE_AFTER_INTERVALS = 2
PENDING_AFTER_INTERVALS = 2
REJECTING_AFTER_INTERVALS = 2
QUEUE_WARNING_FILL = 0.5
FRAME_REFUSED_WARNING_SECONDS = 3600   # an oversize frame keeps check at WARNING this long (its gap is backfilled)
# (label, heartbeat key, unit, the fixed `;warn;crit;min;max` tail of the guidelines' perfdata format).
# `age` gets its critical range from the heartbeat's interval (_Facts.perfdata).
COUNTER_LIMITS = ";;;0"
PERFDATA = (("age", "age_seconds", "s", None), ("messages", "messages_total", "c", COUNTER_LIMITS),
            ("rows", "rows_written", "c", COUNTER_LIMITS), ("pending", "rows_pending", "", ";;;0"),
            ("reconnects", "reconnects", "c", COUNTER_LIMITS), ("dropped", "dropped_queue_full", "c", COUNTER_LIMITS),
            ("write_errors", "write_errors", "c", COUNTER_LIMITS),
            ("queue_fill", "queue_fill_ratio", "", f";{QUEUE_WARNING_FILL:g};;0;1"), ("rss", "memory_rss_bytes", "B", ";;;0"))


MAX_HEARTBEAT_BYTES = 1 << 20


def heartbeat_path(config) -> Path:
    """Where the daemon writes its heartbeat (and every command reads it)."""
    return layout.heartbeat_path(config.paths.heartbeat_dir)


class HeartbeatUnreadable(ValueError):
    """The heartbeat file exists but is not a heartbeat."""


def load_heartbeat(path: Path) -> dict[str, Any] | None:
    """The heartbeat document; None when there is no file yet; HeartbeatUnreadable when it is not one."""
    try:
        text = read_regular_file(path, MAX_HEARTBEAT_BYTES)   # a FIFO or a symlink planted there: refused, no hang
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HeartbeatUnreadable(f"heartbeat {path} is unreadable: {exc.strerror or exc}") from None
    try:
        heartbeat = json.loads(text)
    except (ValueError, RecursionError) as exc:   # UnicodeDecodeError is a ValueError
        raise HeartbeatUnreadable(f"heartbeat {path} is not JSON: {str(exc)[:80]}") from None
    if not isinstance(heartbeat, dict):
        raise HeartbeatUnreadable(f"heartbeat {path} is not a JSON object")
    return heartbeat


def is_stale(heartbeat: dict[str, Any], age_seconds: float) -> bool:
    """Older than twice its interval from a daemon that never said it stopped: hung or dead. The one rule
    `check` and `status` share."""
    interval = heartbeat.get("heartbeat_interval_seconds")
    if heartbeat.get("status") in ("stopped", "failed") or isinstance(interval, bool) \
            or not isinstance(interval, (int, float)):
        return False
    return age_seconds > STALE_AFTER_INTERVALS * interval + 1


def heartbeat_written_at(path: Path) -> datetime | None:
    """When the heartbeat file was last written, by this host's clock (the file system's time): the proof
    that the daemon is alive even when its own clock, and so its `updated_at`, is off."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except (OSError, OverflowError, ValueError):
        return None


def age_and_clock_offset(heartbeat: dict[str, Any], now: datetime,
                         written_at: datetime | None) -> tuple[float, float | None]:
    """(seconds since the heartbeat was written, the daemon's clock minus this host's or None when they
    agree). With a daemon clock far off, `updated_at` says nothing about liveness; the file's time does."""
    age = heartbeat_age_seconds(heartbeat, now)
    if written_at is None:
        return age, None
    offset = (datetime.fromisoformat(heartbeat["updated_at"]) - written_at).total_seconds()
    if abs(offset) <= FUTURE_TOLERANCE_SECONDS:
        return age, None
    return (now - written_at).total_seconds(), offset


def heartbeat_age_seconds(heartbeat: dict[str, Any], now: datetime) -> float:
    """Seconds since the heartbeat was written; ValueError when it carries no valid `updated_at`."""
    try:
        updated_at = datetime.fromisoformat(heartbeat["updated_at"])
        return (now - updated_at).total_seconds()
    except (KeyError, TypeError, ValueError):
        raise ValueError("no valid updated_at") from None


@dataclass(frozen=True)
class Verdict:
    code: int
    text: str
    perfdata: str = ""

    def line(self) -> str:
        """One line whatever the text quotes (a file name, a parser's message): `|` starts perfdata."""
        text = " ".join(self.text.replace("|", "/").split())
        line = f"SPY-STREAMER {STATE_NAMES[self.code]} - {text}"
        return f"{line} | {self.perfdata}" if self.perfdata else line


def evaluate_health(heartbeat: dict[str, Any] | None, now: datetime,
                    market_open_now: Callable[[datetime], bool] | None = None,
                    written_at: datetime | None = None) -> Verdict:
    """The verdict on `heartbeat` (None: there is no heartbeat file) at `now`; `written_at` is the file's
    time (heartbeat_written_at), which tells a daemon with a wrong clock from a hung one."""
    if heartbeat is None:
        return Verdict(UNKNOWN, "no heartbeat file yet (has the daemon run with this config?)")
    try:
        facts = _Facts(heartbeat, now, written_at)
    except (KeyError, TypeError, ValueError) as exc:
        return Verdict(UNKNOWN, f"heartbeat is not usable: {exc}")
    code, problem = _judge(facts, market_open_now)
    return Verdict(code, f"{problem}; {facts.summary()}" if problem else facts.summary(), facts.perfdata())


def _judge(facts: "_Facts", market_open_now) -> tuple[int, str | None]:
    """(state, what is wrong); the first rule that applies wins, most severe first."""
    hb = facts.heartbeat
    if facts.age < -FUTURE_TOLERANCE_SECONDS:
        return CRITICAL, f"heartbeat is dated {-facts.age:.0f} s in the future (a wrong clock?)"
    if hb["status"] == "failed":
        return CRITICAL, f"daemon failed: {hb.get('failure') or 'unknown reason'}"
    market_open = facts.market_open(market_open_now)
    if hb["status"] == "stopped":
        storage = storage_problem(hb, facts.now)
        if market_open:
            return CRITICAL, "daemon stopped while the market is open" + (f"; {storage[1]}" if storage else "")
        return storage or (OK, None)
    if is_stale(hb, facts.age):
        return CRITICAL, f"heartbeat is {facts.age:.0f} s old (daemon hung or dead)"
    if hb["status"] == "stalled":
        return CRITICAL, "no market data while the market is open (stream stalled)"
    if hb.get("session_in_sight") is False:
        return CRITICAL, f"{hb.get('closed_reason') or 'no session in sight'}: capturing nothing"
    if market_open and hb["status"] == "market_closed":
        return CRITICAL, "the market is open but no session is running"
    waiting = facts.rows_waiting_seconds()
    if waiting is not None and waiting > PENDING_AFTER_INTERVALS * facts.write_interval:
        return CRITICAL, (f"{hb['rows_pending']} rows not written for {waiting:.0f} s "
                          f"({hb.get('last_write_error') or 'writer behind'})")
    rejecting = hb.get("rejecting_seconds")
    if market_open and isinstance(rejecting, (int, float)) and rejecting > REJECTING_AFTER_INTERVALS * facts.write_interval:
        return CRITICAL, (f"messages arrive but (nearly) every row is rejected, for {rejecting:.0f} s: "
                          f"{describe_rejections(hb.get('rejected_in_streak') or {})}")
    storage = storage_problem(hb, facts.now)
    if storage is not None and storage[0] == CRITICAL:
        return storage
    if facts.clock_offset is not None:
        return WARNING, (f"clock skew: the daemon's clock is {abs(facts.clock_offset):.0f} s "
                         f"{'ahead of' if facts.clock_offset > 0 else 'behind'} this host's (its heartbeat is "
                         f"still rewritten: alive)")
    code, problem = _warning(hb)
    return storage if code == OK and storage is not None else (code, problem)


def _warning(hb: dict[str, Any]) -> tuple[int, str | None]:
    if hb.get("last_write_error"):
        return WARNING, f"the last Parquet write failed ({hb['last_write_error']}); rows kept, retrying"
    if hb["status"] == "reconnecting":
        return WARNING, f"reconnecting ({hb.get('last_disconnect_reason') or 'connection lost'})"
    if hb.get("clock_skew_seconds") is not None:
        skew = hb["clock_skew_seconds"]
        return WARNING, (f"clock skew: the daemon's clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} "
                         f"the exchange timestamps of the events it receives")
    disagreements = hb.get("calendar_disagreements")
    if isinstance(disagreements, list) and disagreements and isinstance(disagreements[0], dict):
        first, others = disagreements[0], f" (and {len(disagreements) - 1} more day(s))" if len(disagreements) > 1 else ""
        return WARNING, (f"calendar: Polygon's list overrides the exchange rules on {first.get('date')}: Polygon "
                         f"says {first.get('polygon')}, the rules say {first.get('rules')}; Polygon's is applied{others}")
    if _frame_refused_lately(hb):
        return WARNING, (f"{hb['frames_too_large']} WebSocket frame(s) over the size limit refused, the last at "
                         f"{hb['last_frame_too_large_at']}; their window is backfilled from REST")
    if (hb.get("queue_fill_ratio") or 0) > QUEUE_WARNING_FILL:
        return WARNING, f"the frame queue is {hb['queue_fill_ratio']:.0%} full (writer behind)"
    if hb.get("gaps_over_bound"):
        return WARNING, f"{hb['gaps_over_bound']} gap(s) not backfilled: the gap ledger is full (see the log)"
    if hb.get("gap_ledger_set_aside"):
        return WARNING, (f"{hb['gap_ledger_set_aside']} gap ledger file(s) set aside at start, unreadable or over "
                         "the bound; their gaps are not backfilled (see the log)")
    unfinished = (hb.get("backfill_requests") or 0) - (hb.get("backfill_finished") or 0)
    if unfinished > 0:
        return WARNING, f"{unfinished} gap(s) waiting for REST backfill"
    if hb.get("backfill_failures"):
        return WARNING, f"{hb['backfill_failures']} gap(s) could not be backfilled from REST"
    return _failure_streaks(hb)


def _frame_refused_lately(hb: dict[str, Any]) -> bool:
    """A frame over the limit within FRAME_REFUSED_WARNING_SECONDS of this heartbeat (both the daemon's times)."""
    last = hb.get("last_frame_too_large_at")
    if not last:
        return False
    try:
        return datetime.fromisoformat(hb["updated_at"]) - datetime.fromisoformat(last) \
            < timedelta(seconds=FRAME_REFUSED_WARNING_SECONDS)
    except (KeyError, TypeError, ValueError):
        return True


def _failure_streaks(hb: dict[str, Any]) -> tuple[int, str | None]:
    """Anything else that keeps failing (monitoring/failure_streak.py): one rule for every streak."""
    failing = hb.get("failing")
    if not isinstance(failing, dict) or not failing:
        return OK, None
    name, state = next(iter(failing.items()))
    state = state if isinstance(state, dict) else {}
    others = f" (and {len(failing) - 1} more)" if len(failing) > 1 else ""
    return WARNING, (f"{name} failing since {state.get('since')}, {state.get('failures')} attempt(s): "
                     f"{str(state.get('last_error'))[:80]}{others}")


class _Facts:
    """The figures `check` needs, parsed once; KeyError/TypeError/ValueError when the heartbeat lacks one."""

    def __init__(self, heartbeat: dict[str, Any], now: datetime, written_at: datetime | None = None):
        self.heartbeat, self.now = heartbeat, now
        self.age, self.clock_offset = age_and_clock_offset(heartbeat, now, written_at)
        self.updated_at = datetime.fromisoformat(heartbeat["updated_at"])
        self.interval = _positive(heartbeat["heartbeat_interval_seconds"], "heartbeat_interval_seconds")
        self.write_interval = _positive(heartbeat.get("write_interval_seconds") or self.interval,
                                        "write_interval_seconds")
        if not isinstance(heartbeat["status"], str):
            raise ValueError("status is not text")

    def market_open(self, market_open_now) -> bool:
        """Per the heartbeat's own next open and close; the calendar only when those are behind us."""
        hb = self.heartbeat
        next_open, next_close = (_instant(hb[key]) for key in ("next_open", "next_close"))
        if next_close is None:       # no session in sight (a rule of its own)
            return False
        if hb["market_open"] and self.now < next_close:
            return True
        if next_open is not None and next_open > next_close:   # that session ended; the next opens at next_open
            if self.now < next_open:
                return False
        elif next_open is not None and self.now < next_close:
            return self.now >= next_open
        return market_open_now(self.now) if market_open_now is not None else False

    def rows_waiting_seconds(self) -> float | None:
        hb = self.heartbeat
        if not hb.get("rows_pending"):
            return None
        since = hb.get("pending_since") or hb.get("last_flush_at") or hb.get("started_at")
        return (self.updated_at - datetime.fromisoformat(since)).total_seconds() if since else None

    def summary(self) -> str:
        hb = self.heartbeat
        state = f"market closed ({hb['closed_reason']})" if hb.get("closed_reason") else hb["status"]
        if hb.get("closed_reason") and hb["status"] != "market_closed":
            state = f"{hb['status']}, {state}"
        return (f"{state}, heartbeat {self.age:.0f} s old, {hb.get('messages_total', 0)} messages, "
                f"{hb.get('rows_written', 0)} rows written")

    def perfdata(self) -> str:
        """`label=value[unit];warn;crit;min;max`, the limits where `_judge` has fixed ones: age is CRITICAL
        outside -60 s (a future date) to twice the interval plus a second (stale), as `is_stale` says."""
        values = {**self.heartbeat, "age_seconds": round(self.age, 1)}
        age_limits = f";;{-FUTURE_TOLERANCE_SECONDS:g}:{STALE_AFTER_INTERVALS * self.interval + 1:g}"
        return " ".join(f"{label}={values[key]}{unit}{limits or age_limits}" for label, key, unit, limits in PERFDATA
                        if isinstance(values.get(key), (int, float)) and not isinstance(values.get(key), bool))


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} is not a positive number")
    return float(value)
