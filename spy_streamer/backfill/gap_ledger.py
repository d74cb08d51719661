"""The gap ledger: every range asked of the REST backfill, kept on disk per channel and trading day, so a
restart resumes what was not filled and `report` lists what never was.

Where: `<data_dir>/.gaps/<channel>/date=YYYY-MM-DD.json` (storage/layout.py), in the data folder the
`data_dir` lock guards, but outside the date partitions: those hold data only, so every engine (Polars,
Spark) can scan `<data_dir>/<channel>/`. The heartbeat folder may be a tmpfs that a reboot empties, which
would lose exactly what this file is for. A ledger an earlier release left in the partition
(`date=.../.gaps.json`) is read with the new one and removed once its gaps are saved in the new place.

Who writes: only the backfill thread (after the close, the one-shot thread that replaced it), in whole
files replaced atomically, at most every few seconds: never a write per frame, nor one per gap.

Bounded: one entry per (channel, symbol, range); a range that overlaps or touches an unfinished one of
the same symbol is merged into it, whether requested (a wildcard reconnect asks for thousands of gaps, and
a second reconnect before they are filled asks again) or read from a file; only the latest MAX_FILLED_KEPT
filled entries of a channel are listed, the older ones counted. The ledger is an input too: a file over
MAX_LEDGER_BYTES or MAX_LEDGER_GAPS is set aside unread (a hostile 63 MB file of a million gaps took
750 MB and would have queued 14 h of REST requests), and a channel holds at most MAX_LEDGER_GAPS entries
in memory: a request beyond that is refused (LedgerFull), counted and given up.
"""
from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable

from ..monitoring.failure_streak import FailureStreak
from ..storage.durable_files import read_regular_file, write_text_atomically
from ..storage.layout import gap_ledger_path, legacy_gap_ledger_path, set_aside_name

log = logging.getLogger(__name__)

VERSION = 1
PENDING, FILLED, FAILED = "pending", "filled", "failed"
STATES = (PENDING, FILLED, FAILED)      # on disk; in memory also FETCHING (written as pending) and MERGED
FETCHING, MERGED = "fetching", "merged"
COLUMNS = ("symbol", "from_ms", "to_ms", "state", "attempts", "reason")
MAX_FILLED_KEPT = 1000     # per channel file: a filled gap needs nothing more, its rows say `source: rest`
# Per channel and day. A pending gap for every US symbol (about 11,000) fits four times over: 42 minutes of
# requests at the default 20 a second. At most about 300 bytes an entry (a failed one's reason), so a file
# this module wrote always stays under MAX_LEDGER_BYTES.
MAX_LEDGER_GAPS = 50_000
MAX_LEDGER_BYTES = 16 << 20


@dataclass(frozen=True)
class Gap:
    symbol: str
    from_ms: int   # first missing row time (a bar's start), inclusive
    to_ms: int     # last missing row time, inclusive
    channel: str = "A"


@dataclass(eq=False)
class GapEntry:
    """A ledger line. `delivered` numbers the last page handed to the writer for it (0: none yet)."""
    channel: str
    symbol: str
    from_ms: int
    to_ms: int
    state: str = PENDING
    attempts: int = 0
    reason: str | None = None
    delivered: int = 0

    @property
    def gap(self) -> Gap:
        return Gap(self.symbol, self.from_ms, self.to_ms, self.channel)


class LedgerUnreadable(ValueError):
    """A ledger file that is not one this module wrote (or holds more than it ever writes)."""


class LedgerFull(Exception):
    """A channel's ledger already holds MAX_LEDGER_GAPS entries and the request merges into none."""


def read_entries(path: Path) -> list[GapEntry]:
    """The entries of one ledger file ([] when there is none); LedgerUnreadable when it is damaged."""
    try:
        document = json.loads(read_regular_file(path, MAX_LEDGER_BYTES))   # a FIFO or symlink: refused, no hang
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise LedgerUnreadable(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    if type(document) is not dict or document.get("version") != VERSION or type(document.get("gaps")) is not list:
        raise LedgerUnreadable(f"{path}: not a version {VERSION} gap ledger")
    if len(document["gaps"]) > MAX_LEDGER_GAPS:
        raise LedgerUnreadable(f"{path}: {len(document['gaps']):,} gaps, over the bound of {MAX_LEDGER_GAPS:,}")
    channel = document.get("channel")
    return [_entry_from_row(path, channel, row) for row in document["gaps"]]


def read_day_ledger(data_dir: Path, channel: str, day: date) -> list[GapEntry]:
    """The entries of a day's ledger and of one an earlier release left in the partition (read-only: for
    `report`); LedgerUnreadable when either is damaged or over the bound."""
    return [entry for path in (legacy_gap_ledger_path(data_dir, channel, day), gap_ledger_path(data_dir, channel, day))
            for entry in read_entries(path)]


def _entry_from_row(path: Path, channel, row) -> GapEntry:
    """Every field checked: a person may have edited the file, and a bad value must not reach a REST call."""
    fits = (type(channel) is str and type(row) is list and len(row) == len(COLUMNS)
            and type(row[0]) is str and type(row[1]) is int and type(row[2]) is int and row[1] <= row[2]
            and row[3] in STATES and type(row[4]) is int and row[4] >= 0 and (row[5] is None or type(row[5]) is str))
    if not fits:
        raise LedgerUnreadable(f"{path}: a gap entry is not (symbol, from_ms, to_ms, state, attempts, reason)")
    return GapEntry(channel, *row)


def _channel_step_ms(channel: str) -> int:
    from ..channels import channel_for  # pyarrow: only once a daemon merges gaps
    return channel_for(channel).gap_step_ms


class GapLedger:
    """The day's gaps of the subscribed channels, in memory, with the work order of the unfinished ones.

    Not thread-safe: one thread owns it at a time (see the module docstring)."""

    def __init__(self, data_dir: Path | None, day: date | None, channels: tuple[str, ...] = (),
                 step_of: Callable[[str], int] = _channel_step_ms):
        """`data_dir` None: kept in memory only (tests, and a backfill without a day)."""
        self.data_dir, self.day, self.channels = data_dir, day, channels
        self.step_of = step_of
        self.loaded = False
        self._entries: dict[tuple[str, str], list[GapEntry]] = {}
        self._todo: deque[GapEntry] = deque()
        self._filled: dict[str, deque[GapEntry]] = {}      # per channel, in the order they were filled
        self._filled_earlier: dict[str, int] = {}          # per channel: filled entries no longer listed
        self._dirty: set[str] = set()
        self._sizes: dict[str, int] = {}                   # per channel: entries held (MAX_LEDGER_GAPS at most)
        self._legacy: set[str] = set()                     # channels whose old in-partition file awaits removal
        self.set_aside = 0                                 # files set aside at load (unreadable or over the bound)
        self._save_streak = FailureStreak("gap_ledger_write", log, "gap_ledger_write_failed",
                                          "gap_ledger_write_recovered")

    # --- start: what an earlier process left ---

    def load(self) -> list[GapEntry]:
        """Read the day's files; the unfinished entries (failed ones included: REST may be back) become
        pending again, merged where they overlap or touch, and are returned in their work order. A damaged
        file, or one over the bound, is set aside (renamed, not deleted) with one warning each."""
        self.loaded = True
        if self.data_dir is None:
            return []
        for channel in self.channels:
            legacy = legacy_gap_ledger_path(self.data_dir, channel, self.day)
            path = gap_ledger_path(self.data_dir, channel, self.day)
            for source, aside in ((path, set_aside_name(path)),     # an old one's too goes out of the partition
                                  (legacy, set_aside_name(path.with_name(f"legacy-{path.name}")))):
                for entry in self._read_or_set_aside(source, aside):
                    self.restore(entry)
            if legacy.is_file():
                self._legacy.add(channel)
                self._dirty.add(channel)    # saved in the new place at once, then the old file goes
        return [entry for entry in self._todo if entry.state == PENDING]

    def _read_or_set_aside(self, path: Path, hidden: Path) -> list[GapEntry]:
        try:
            return read_entries(path)
        except LedgerUnreadable as exc:
            try:
                hidden.parent.mkdir(parents=True, exist_ok=True)
                path.replace(hidden)
            except OSError:
                pass  # the next save replaces it anyway
            self.set_aside += 1
            log.warning("gap ledger set aside as %s, unread; its gaps are forgotten (the gap since the last "
                        "stored row is still asked for): %s", hidden.name, exc, extra={"event": "gap_ledger_set_aside"})
            return []

    def restore(self, entry: GapEntry, requeue: bool = True) -> None:
        """An entry read from a file: a filled one as it was; an unfinished one merged into the unfinished
        entries of its symbol it overlaps or touches (a file may list them apart), pending again (with
        `requeue`; else failed when all it merged had failed: what `report` shows)."""
        if entry.state == FILLED:
            self._insert(entry)
        elif self._sizes.get(entry.channel, 0) < MAX_LEDGER_GAPS:   # two files of a day may hold twice that
            self._merge_in(entry, keep_failed=not requeue)

    def _insert(self, entry: GapEntry) -> None:
        self._entries.setdefault((entry.channel, entry.symbol), []).append(entry)
        self._sizes[entry.channel] = self._sizes.get(entry.channel, 0) + 1
        if entry.state == FILLED:
            self._filled.setdefault(entry.channel, deque()).append(entry)

    # --- requests ---

    def add(self, gap: Gap) -> int:
        """Record a requested gap, merged with the unfinished entries of its symbol it overlaps or touches;
        returns how many pending entries the merge absorbed (each was a request of its own). LedgerFull
        when the channel holds MAX_LEDGER_GAPS entries and the gap merges into none of them."""
        entry = GapEntry(gap.channel, gap.symbol, gap.from_ms, gap.to_ms)
        if self._sizes.get(gap.channel, 0) >= MAX_LEDGER_GAPS and not self._touching(entry):
            raise LedgerFull(f"the {gap.channel} gap ledger holds {MAX_LEDGER_GAPS:,} gaps")
        return self._merge_in(entry)

    def _touching(self, entry: GapEntry) -> list[GapEntry]:
        """The unfinished entries of `entry`'s symbol that it overlaps or touches (one step apart). Not the
        entry being fetched: its outcome is about to be recorded (an overlap is fetched twice)."""
        step = max(self.step_of(entry.channel), 1)
        return [other for other in self._entries.get((entry.channel, entry.symbol), ())
                if other.state in (PENDING, FAILED)
                and other.from_ms <= entry.to_ms + step and entry.from_ms <= other.to_ms + step]

    def _merge_in(self, entry: GapEntry, keep_failed: bool = False) -> int:
        """`entry` and the unfinished entries it touches become one pending entry (failed, with
        `keep_failed`, when all of them had failed), last in the work order; returns how many pending
        ones it absorbed."""
        touching = self._touching(entry)
        parts = (entry, *touching)
        most_tried = max(parts, key=lambda part: part.attempts)    # its attempts and last error carry over
        merged = GapEntry(entry.channel, entry.symbol, min(part.from_ms for part in parts),
                          max(part.to_ms for part in parts), attempts=most_tried.attempts, reason=most_tried.reason)
        absorbed = sum(other.state == PENDING for other in touching)
        if keep_failed and all(part.state == FAILED for part in parts):
            merged.state = FAILED
        for other in touching:
            self._entries[(entry.channel, entry.symbol)].remove(other)
            other.state = MERGED     # its place in the work order is skipped
        self._sizes[entry.channel] = self._sizes.get(entry.channel, 0) - len(touching)
        self._insert(merged)
        self._todo.append(merged)
        self._dirty.add(entry.channel)
        return absorbed

    def has_pending(self) -> bool:
        while self._todo and self._todo[0].state != PENDING:
            self._todo.popleft()
        return bool(self._todo)

    def next_pending(self) -> GapEntry | None:
        """The oldest pending entry, now FETCHING; None when none waits."""
        if not self.has_pending():
            return None
        entry = self._todo.popleft()
        entry.state = FETCHING
        return entry

    def interrupted(self, entry: GapEntry) -> None:
        """A stop cut the fetch short: first in line again (and pending in the file)."""
        entry.state = PENDING
        self._todo.appendleft(entry)

    def unfinished(self) -> list[GapEntry]:
        return [entry for entries in self._entries.values() for entry in entries if entry.state != FILLED]

    # --- outcomes ---

    def attempted(self, entry: GapEntry, error: str | None = None) -> None:
        entry.attempts += 1
        entry.reason = error
        self._dirty.add(entry.channel)

    def filled(self, entry: GapEntry, delivered: int) -> None:
        """`delivered`: the number of the entry's last page; the file says `filled` once the writer has
        made that page durable (until then a restart must fetch the rows again)."""
        entry.state, entry.delivered, entry.reason = FILLED, delivered, None
        self._filled.setdefault(entry.channel, deque()).append(entry)
        self._dirty.add(entry.channel)

    def failed(self, entry: GapEntry) -> None:
        entry.state = FAILED
        self._dirty.add(entry.channel)

    # --- saving ---

    @property
    def dirty(self) -> bool:
        """The files are behind: a change, or filled rows the writer had not yet made durable at the last save."""
        return bool(self._dirty)

    def save(self, durable: int) -> bool:
        """Write the files of the channels that changed; False after one warning per failure streak when
        the disk refuses (they stay dirty for the next save)."""
        if self.data_dir is None:
            self._dirty.clear()
            return True
        try:
            for channel in sorted(self._dirty):
                self._save_channel(channel, durable)
        except OSError as exc:
            self._save_failed(exc)
            return False
        self._save_streak.succeeded("the gap ledger is written again")
        return True

    def _save_channel(self, channel: str, durable: int) -> None:
        self._trim_filled(channel, durable)
        write_text_atomically(gap_ledger_path(self.data_dir, channel, self.day), self._text(channel, durable))
        if channel in self._legacy:     # its gaps are in the new file now
            legacy_gap_ledger_path(self.data_dir, channel, self.day).unlink(missing_ok=True)
            self._legacy.discard(channel)
        filled = self._filled.get(channel)
        if not filled or filled[-1].delivered <= durable:  # else written again once the rows are durable
            self._dirty.discard(channel)

    def _save_failed(self, exc: OSError) -> None:
        self._save_streak.failed(exc, "cannot write the gap ledger (retrying)")

    def _trim_filled(self, channel: str, durable: int) -> None:
        filled = self._filled.get(channel, deque())
        while len(filled) > MAX_FILLED_KEPT and filled[0].delivered <= durable:
            entry = filled.popleft()
            self._entries[(entry.channel, entry.symbol)].remove(entry)
            self._sizes[channel] -= 1
            self._filled_earlier[channel] = self._filled_earlier.get(channel, 0) + 1

    def _text(self, channel: str, durable: int) -> str:
        """One gap a line (a person can read it, a diff stays small); compact JSON all the same."""
        rows = sorted((self._row(entry, durable) for (name, _), entries in self._entries.items() if name == channel
                       for entry in entries), key=lambda row: (row[0], row[1]))
        head = json.dumps({"version": VERSION, "channel": channel, "day": self.day.isoformat(),
                           "filled_earlier": self._filled_earlier.get(channel, 0), "columns": COLUMNS})
        lines = ",\n".join(json.dumps(row, separators=(",", ":")) for row in rows)
        return f'{head[:-1]}, "gaps": [\n{lines}\n]}}\n'

    @staticmethod
    def _row(entry: GapEntry, durable: int) -> list:
        # Filled but its rows not yet durable: a restart now must ask again, so it is written as pending.
        state = PENDING if entry.state == FETCHING or (entry.state == FILLED and entry.delivered > durable) \
            else entry.state
        return [entry.symbol, entry.from_ms, entry.to_ms, state, entry.attempts, entry.reason]
