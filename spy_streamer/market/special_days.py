"""Special days (a holiday, or an early close) and their row form, which is Polygon's.

`GET /v1/marketstatus/upcoming` answers one row per exchange and day:
    {"date": "2026-11-27", "exchange": "NYSE", "name": "Thanksgiving", "status": "early-close",
     "open": "2026-11-27T14:30:00.000Z", "close": "2026-11-27T18:00:00.000Z"}
The calendar cache (calendar_store) keeps the days it learned in the same form, without `exchange`, so one
parser reads both.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Iterable
from zoneinfo import ZoneInfo

MAX_NAME_CHARS = 100   # a name is shown in logs, `status` and `check`: a hostile one stays one line's worth
# The equity session follows NYSE and NASDAQ (not OTC).
EQUITY_EXCHANGES = ("NYSE", "NASDAQ")
EXCHANGE_TZ = ZoneInfo("America/New_York")


@dataclass(frozen=True)
class SpecialDay:
    """A holiday (`close is None`: closed all day) or an early close at `close` (an aware UTC instant).

    `open` is a late open when one is known (Polygon writes the regular 09:30 there); None keeps the
    configured open.
    """
    day: date
    name: str
    open: datetime | None = None
    close: datetime | None = None

    @property
    def closed(self) -> bool:
        return self.close is None


def parse_polygon_rows(rows: Iterable[dict[str, Any]]) -> dict[date, SpecialDay]:
    """Polygon's rows to one SpecialDay per date; rows of other exchanges and bad rows are skipped."""
    days: dict[date, SpecialDay] = {}
    for row in rows:
        if not isinstance(row, dict) or row.get("exchange") not in EQUITY_EXCHANGES:
            continue
        special = special_day_from_row(row)
        # If one exchange closes all day and another only early, the stricter answer wins.
        if special is not None and (special.day not in days or special.closed):
            days[special.day] = special
    return days


def special_day_from_row(row: dict[str, Any]) -> SpecialDay | None:
    """One row (`date`, `name`, `status` closed|early-close, `open`, `close`), or None when it is not one:
    an early close's instants must fall on its own date in New York, the open before the close."""
    try:
        day = date.fromisoformat(row["date"])
        name = " ".join(str(row.get("name") or "").split())[:MAX_NAME_CHARS] or "holiday"   # one line
        if row["status"] == "closed":
            return SpecialDay(day, name)
        if row["status"] == "early-close":
            opens = _instant_on(day, row["open"]) if row.get("open") else None
            closes = _instant_on(day, row["close"])
            return SpecialDay(day, name, opens, closes) if opens is None or opens < closes else None
    except (KeyError, TypeError, ValueError, OverflowError):   # OverflowError: an instant near year 1 or 9999
        pass
    return None


def special_day_to_row(special: SpecialDay) -> dict[str, Any]:
    row: dict[str, Any] = {"date": special.day.isoformat(), "name": special.name,
                           "status": "closed" if special.closed else "early-close"}
    if special.open is not None:
        row["open"] = _iso_z(special.open)
    if special.close is not None:
        row["close"] = _iso_z(special.close)
    return row


def _instant_on(day: date, text: str) -> datetime:
    """`text` as a UTC instant; ValueError unless it falls on `day` in New York (a close of 2099 on a day
    of 2026 is not an early close)."""
    # Polygon writes "2026-11-27T18:00:00.000Z"; fromisoformat accepts "Z" from Python 3.11 on.
    instant = datetime.fromisoformat(text)
    if instant.tzinfo is None:
        raise ValueError(f"timestamp without a zone: {text!r}")
    if instant.astimezone(EXCHANGE_TZ).date() != day:
        raise ValueError(f"{text!r} is not on {day}")
    return instant.astimezone(timezone.utc)


def _iso_z(instant: datetime) -> str:
    return instant.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
