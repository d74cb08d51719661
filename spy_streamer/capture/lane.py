"""One channel's share of the writer for the current day (`Lane`): its rules, the day's stored keys, the
rows pending for the next flush, and the gaps the stream may have left (where each symbol's last row is)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..backfill.gap_backfill import Gap
from ..channels import Channel
from ..channels.rules import ChannelRules
from ..channels.subscriptions import has_wildcard, symbols_of
from .keep_first import KeepFirst
from .seen_keys import seen_rows_for


class Lane:
    """One channel's share of the writer for the current day: rules, stored keys, pending rows, gaps.

    Per symbol it keeps the latest row time (where a gap would begin) and, while one may be open, the
    gap's first time: two dict entries, about 200 bytes a symbol-day, plus the stored keys (seen_bars.py:
    at most 16 MB in memory, the older ones spilled to a scratch file in `spill_dir`). The latest times
    are read only when a gap opens, so the rows accepted live are folded into them lazily: at each flush,
    from the rows it writes (and before a gap opens, from what is pending), not per batch (a group_by and
    a loop over the batch's symbols were a quarter of the writer's time)."""

    def __init__(self, channel: Channel, subscriptions: tuple[str, ...], backfill: bool, spill_dir=None):
        """`spill_dir`: where the stored keys of older parts of the day go (seen_bars.KeySpill)."""
        self.channel = channel
        self.spill_dir = spill_dir
        self.rules = ChannelRules(channel, subscriptions)
        self.named_symbols = symbols_of(channel.name, subscriptions)
        self.wildcard = has_wildcard(channel.name, subscriptions)
        self.backfill = backfill
        self.seen = seen_rows_for(channel, spill_dir)
        self.latest_ms: dict[str, int] = {}      # per symbol: the latest stored row time today...
        self.unfolded: list[pa.Table] = []       # ...but for these pending tables' rows (fold_latest)
        self.gap_from: dict[str, int] = {}       # per symbol: first row time that may be missing
        self.pending: list[pa.Table] = []

    def key_schema(self) -> pa.Schema:
        """The columns a restart reads back from the day's files: the dedup key and the time."""
        names = dict.fromkeys((*KeepFirst.of(self.channel).dedup_key, self.channel.time_column))
        return pa.schema([self.channel.schema.field(name) for name in names])

    def reset(self) -> None:
        self.seen.close()
        self.seen, self.latest_ms, self.gap_from = seen_rows_for(self.channel, self.spill_dir), {}, {}

    def remember(self, table: pa.Table) -> pa.Array:
        """Record `table`'s keys and latest times at once (rows already stored: they never pass through
        `pending`); True for the rows not stored before."""
        new = self.new_rows(table)
        if self.backfill and table.num_rows:  # the latest times only tell where gaps begin
            self._fold([table if pc.all(new).as_py() else table.filter(new)])
        return new

    def new_rows(self, table: pa.Table) -> pa.Array:
        """Record `table`'s keys; True for the rows not stored before (their times: `add_pending`)."""
        return self.seen.add_table(table)

    def add_pending(self, table: pa.Table) -> None:
        """Rows for the next flush; from now on their times count among the symbols' latest."""
        self.pending.append(table)
        if self.backfill:
            self.unfolded.append(table)

    def fold_latest(self) -> None:
        """Fold the pending rows not folded yet into `latest_ms` (at each flush and before a gap opens)."""
        if self.unfolded:
            tables, self.unfolded = self.unfolded, []
            self._fold(tables)

    def _fold(self, tables: list[pa.Table]) -> None:
        """Each symbol's latest time in `tables`, into `latest_ms`: numpy over the rows, Python per symbol."""
        symbols = pa.concat_arrays([chunk for table in tables for chunk in table.column("symbol").chunks])
        times = pa.concat_arrays([chunk for table in tables for chunk in self.channel.time_ms(table).chunks])
        if times.null_count:
            symbols, times = symbols.filter(times.is_valid()), times.drop_null()
        if not len(times):
            return
        encoded = pc.dictionary_encode(symbols)
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        newest = np.full(len(encoded.dictionary), np.iinfo(np.int64).min, np.int64)
        np.maximum.at(newest, codes, times.to_numpy(zero_copy_only=False))
        known = self.latest_ms
        for symbol, time_ms in zip(encoded.dictionary.to_pylist(), newest.tolist()):
            if time_ms > known.get(symbol, time_ms - 1):
                known[symbol] = time_ms

    def symbols_to_backfill(self) -> list[str]:
        """Named symbols, and under a wildcard every symbol seen today."""
        if not self.backfill:
            return []
        self.fold_latest()
        return list(dict.fromkeys([*self.named_symbols, *(self.latest_ms if self.wildcard else ())]))

    def open_gaps(self, opens_ms: int) -> None:
        step = self.channel.gap_step_ms
        for symbol in self.symbols_to_backfill():
            last = self.latest_ms.get(symbol)
            self.gap_from[symbol] = opens_ms if last is None else max(opens_ms, last + step)

    def close_gaps(self, symbols: list[str], times_ms: list[int]) -> list[Gap]:
        """The first live row of a symbol after a possible gap tells where the gap ends."""
        gaps = []
        for symbol, time_ms in zip(symbols, times_ms):
            gap_from = self.gap_from.get(symbol)
            if gap_from is None or time_ms < gap_from:
                continue
            del self.gap_from[symbol]
            if time_ms > gap_from:
                gaps.append(Gap(symbol, gap_from, time_ms - self.channel.gap_step_ms, self.channel.name))
            if not self.gap_from:
                break
        return gaps

    def gaps_left_open(self, closes_ms: int) -> list[Gap]:
        last = closes_ms - max(self.channel.gap_step_ms, 1)
        return [Gap(symbol, gap_from, last, self.channel.name) for symbol, gap_from in self.gap_from.items()
                if gap_from <= last]
