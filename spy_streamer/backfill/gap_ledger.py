"""The gap ledger: every range asked of the REST backfill, kept on disk per channel and trading day, so a
restart resumes what was not filled and `report` lists what never was.

Where: `<data_dir>/<channel>/date=YYYY-MM-DD/.gaps.json`, beside the rows it describes. A day's folder
then carries its own to-do list wherever it is copied or backed up, the `data_dir` lock guards both, and
`report` finds it from the same (channel, day) it reads. The heartbeat folder may be a tmpfs that a
reboot empties, which would lose exactly what this file is for. The leading dot hides it from pyarrow's
dataset reader, and DuckDB's `*.parquet` globs do not match it.

Who writes: only the backfill thread (after the close, the one-shot thread that replaced it), in whole
files replaced atomically, at most every few seconds: never a write per frame, nor one per gap.

Bounded: one entry per (channel, symbol, range); a new range that overlaps or touches an unfinished one
of the same symbol is merged into it (a wildcard reconnect asks for thousands of gaps, and a second
reconnect before they are filled asks again), and only the latest MAX_FILLED_KEPT filled entries of a
channel are listed, the older ones counted.
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
from ..storage.layout import gap_ledger_path, set_aside_name

log = logging.getLogger(__name__)

VERSION = 1
PENDING, FILLED, FAILED = "pending", "filled", "failed"
STATES = (PENDING, FILLED, FAILED)      # on disk; in memory also FETCHING (written as pending) and MERGED
FETCHING, MERGED = "fetching", "merged"
COLUMNS = ("symbol", "from_ms", "to_ms", "state", "attempts", "reason")
MAX_FILLED_KEPT = 1000     # per channel file: a filled gap needs nothing more, its rows say `source: rest`
MAX_LEDGER_BYTES = 16 << 20   # about 60 bytes an entry: a pending gap for every US symbol fits 20 times over


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
    """A ledger file that is not one this module wrote."""


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
    channel = document.get("channel")
    return [_entry_from_row(path, channel, row) for row in document["gaps"]]


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
        self._save_streak = FailureStreak("gap_ledger_write", log, "gap_ledger_write_failed",
                                          "gap_ledger_write_recovered")

    # --- start: what an earlier process left ---

    def load(self) -> list[GapEntry]:
        """Read the day's files; the unfinished entries (failed ones included: REST may be back) become
        pending again and are returned in their work order. A damaged file is set aside, once, with a warning."""
        self.loaded = True
        if self.data_dir is None:
            return []
        for channel in self.channels:
            for entry in self._read_or_set_aside(gap_ledger_path(self.data_dir, channel, self.day)):
                self._insert(entry)
                if entry.state != FILLED:
                    entry.state = PENDING
                    self._todo.append(entry)
        return list(self._todo)

    def _read_or_set_aside(self, path: Path) -> list[GapEntry]:
        try:
            return read_entries(path)
        except LedgerUnreadable as exc:
            hidden = set_aside_name(path)
            try:
                path.replace(hidden)
            except OSError:
                pass  # the next save replaces it anyway
            log.warning("unreadable gap ledger moved aside to %s; its gaps are forgotten (the gap since the "
                        "last stored row is still asked for): %s", hidden.name, exc,
                        extra={"event": "gap_ledger_set_aside"})
            return []

    def _insert(self, entry: GapEntry) -> None:
        self._entries.setdefault((entry.channel, entry.symbol), []).append(entry)
        if entry.state == FILLED:
            self._filled.setdefault(entry.channel, deque()).append(entry)

    # --- requests ---

    def add(self, gap: Gap) -> int:
        """Record a requested gap, merged with the unfinished entries of its symbol it overlaps or touches;
        returns how many pending entries the merge absorbed (each was a request of its own)."""
        entries = self._entries.setdefault((gap.channel, gap.symbol), [])
        step = max(self.step_of(gap.channel), 1)
        # Not into the entry being fetched: its outcome is about to be recorded (an overlap is fetched twice).
        touching = [entry for entry in entries if entry.state in (PENDING, FAILED)
                    and entry.from_ms <= gap.to_ms + step and gap.from_ms <= entry.to_ms + step]
        merged = GapEntry(gap.channel, gap.symbol, min([gap.from_ms, *(entry.from_ms for entry in touching)]),
                          max([gap.to_ms, *(entry.to_ms for entry in touching)]),
                          attempts=max([0, *(entry.attempts for entry in touching)]))
        absorbed = sum(entry.state == PENDING for entry in touching)
        for entry in touching:
            entries.remove(entry)
            entry.state = MERGED     # its place in the work order is skipped
        entries.append(merged)
        self._todo.append(merged)
        self._dirty.add(gap.channel)
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
