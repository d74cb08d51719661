"""The calendar cache: what Polygon's `upcoming` list taught, kept across restarts, and the one way every
command and the daemon build the calendar (`load_calendar`), without a key and without the network.

File: `<heartbeat_dir>/calendar.json`, replaced atomically (durable_files):
    {"source": "polygon /v1/marketstatus/upcoming", "fetched_at": "2026-11-25T14:00:05Z",
     "days": [{"date": "2026-11-26", "name": "Thanksgiving", "status": "closed"},
              {"date": "2026-11-27", "name": "Thanksgiving", "status": "early-close",
               "open": "2026-11-27T14:30:00.000Z", "close": "2026-11-27T18:00:00.000Z"}]}
The days are Polygon's rows (special_days), less `exchange`. A missing file means nothing learned yet; an
unreadable one is reported once and ignored (the exchange rules still apply), never fatal.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping

from ..config import Config
from ..storage import layout
from ..storage.durable_files import read_regular_file, write_json_atomically
from .market_hours import MarketCalendar
from .special_days import SpecialDay, special_day_from_row, special_day_to_row

log = logging.getLogger(__name__)

SOURCE = "polygon /v1/marketstatus/upcoming"
MAX_CALENDAR_BYTES = 1_000_000   # a few hundred bytes a year of special days; more is not ours
ANSWER_SPAN_DAYS = 90


@dataclass(frozen=True)
class KnownDays:
    """Special days learned from Polygon and when they were last fetched (None: never)."""
    days: Mapping[date, SpecialDay] = field(default_factory=dict)
    fetched_at: datetime | None = None


def calendar_path(config: Config) -> Path:
    return layout.calendar_path(config.paths.heartbeat_dir)


def load_calendar(config: Config) -> MarketCalendar:
    """The configured hours, the exchange rules and what Polygon taught before: no key, no network."""
    return load_calendar_and_fetch_time(config)[0]


def load_calendar_and_fetch_time(config: Config) -> tuple[MarketCalendar, datetime | None]:
    """The calendar, and when Polygon's list in it was fetched (None: never): the file is read once."""
    known = load_known_days(calendar_path(config))
    return MarketCalendar(config.market_hours, known.days), known.fetched_at


def answer_window(learned: Mapping[date, SpecialDay], fetched_on: date) -> tuple[date, date]:
    """The dates one `upcoming` answer speaks for: from the day it was fetched through the last day it lists,
    and at least ANSWER_SPAN_DAYS. An honest answer always reaches that far (NYSE never goes 90 days without
    a holiday, and the list names the next one), so an answer that lists less says "nothing special here"."""
    last_listed = max(learned, default=fetched_on)
    return fetched_on, max(last_listed, fetched_on + timedelta(days=ANSWER_SPAN_DAYS))


def apply_answer(known: Mapping[date, SpecialDay], learned: Mapping[date, SpecialDay],
                 fetched_on: date) -> dict[date, SpecialDay]:
    """The latest answer is the authority for its window: a day listed before and left out now is no longer
    special (a retraction wins). Known days outside the window (the past, or beyond its horizon) are kept."""
    first, last = answer_window(learned, fetched_on)
    kept = {day: special for day, special in known.items() if not first <= day <= last}
    return {**kept, **learned}


def load_known_days(path: Path) -> KnownDays:
    try:   # a FIFO, a symlink or a huge file is refused (an OSError), never waited on
        return _parse_document(json.loads(read_regular_file(path, MAX_CALENDAR_BYTES)))
    except (FileNotFoundError, NotADirectoryError):   # nothing saved yet (the folder may be missing too)
        return KnownDays()
    except (OSError, ValueError, TypeError, AttributeError, RecursionError, OverflowError) as exc:
        log.warning("calendar cache %s is unreadable (%s); using the exchange rules only until the next "
                    "refresh", path, exc, extra={"event": "calendar_cache_unreadable"})
        return KnownDays()


def save_known_days(path: Path, known: KnownDays) -> None:
    """Atomic replace; OSError when the folder is not writable."""
    write_json_atomically(path, {
        "source": SOURCE,
        "fetched_at": None if known.fetched_at is None else
        known.fetched_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "days": [special_day_to_row(known.days[day]) for day in sorted(known.days)],
    })


def _parse_document(document: Any) -> KnownDays:
    if not isinstance(document, dict) or not isinstance(document.get("days"), list):
        raise ValueError("not a calendar cache document")
    days = [special_day_from_row(row) for row in document["days"] if isinstance(row, dict)]
    fetched_at = document.get("fetched_at")
    return KnownDays({special.day: special for special in days if special is not None},
                     datetime.fromisoformat(fetched_at) if fetched_at else None)
