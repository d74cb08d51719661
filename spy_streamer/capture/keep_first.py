"""Keep the first received row per key: the one rule every copy of a channel's rows obeys.

Each channel declares its dedup key (channels/: (symbol, start) for bars, (symbol, exchange, trf_id,
trade_id) for trades, (symbol, sequence_number) for quotes) and the order of its compacted files. Of rows
sharing a key, the one received first stays (`received_at`; on a tie, the one read first: the earlier
file by name, then the earlier row in it). A null part of a key (a trade's `trf_id` off a TRF) equals
another null.

Who applies it, each from `KeepFirst.of(channel)`:
- the writer and a restart: `seen_keys` remembers the keys stored today (the writer sees rows in arrival
  order, so the first is the one it stores; a restart reads the key columns back from the day's files);
- local compaction: `first_of_each_key` over the day's rows sorted by key, a batch at a time;
- lake compaction: `first_received_per_key` on a day's partition in memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from ..channels.base import one_array

ARRIVAL = "received_at"
READ_ORDER = "__read_order"  # temporary column: ties of arrival go to the row read first


@dataclass(frozen=True)
class KeepFirst:
    """What a channel's rows are deduplicated and sorted by: of rows sharing `dedup_key`, the first by
    `arrival` (then the first read) stays; the kept rows are in `sort_key` order."""
    dedup_key: tuple[str, ...] = ("symbol", "start")
    sort_key: tuple[str, ...] = ("symbol", "start")
    arrival: str = ARRIVAL

    @classmethod
    def of(cls, channel) -> "KeepFirst":
        """The keys of `channel` (a Channel, or its name: "A", "AM", "T", "Q")."""
        if isinstance(channel, str):
            from ..channels import channel_for  # (loads the channel's module)
            channel = channel_for(channel)
        return cls(tuple(channel.dedup_key), tuple(channel.sort_key))

    @property
    def sorted_by_key(self) -> bool:
        """Whether sorting puts the rows of a key next to each other (then one streaming pass dedups)."""
        return set(self.sort_key) <= set(self.dedup_key)

    @property
    def order(self) -> tuple[str, ...]:
        """The full order of kept rows: the sort key, then the rest of the dedup key."""
        return self.sort_key + tuple(column for column in self.dedup_key if column not in self.sort_key)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the rule reads."""
        return tuple(dict.fromkeys(self.order + (self.arrival,)))

    def by_key(self) -> "KeepFirst":
        """The same rule with rows sorted by the dedup key itself (each key's rows side by side)."""
        return KeepFirst(self.dedup_key, self.dedup_key, self.arrival)


BAR_KEYS = KeepFirst()


def first_of_each_key(batches: Iterable[pa.RecordBatch], keys: KeepFirst) -> Iterator[pa.RecordBatch]:
    """Batches sorted by `keys.order`, each key's rows in arrival order -> the first row of each key.
    Streaming: memory is one batch, whatever the day."""
    previous: pa.RecordBatch | None = None  # the last row of the batch before
    for batch in batches:
        if batch.num_rows == 0:
            continue
        yield batch.filter(pc.invert(same_key_as_previous(batch, previous, keys.dedup_key)))
        previous = batch.slice(batch.num_rows - 1)


def same_key_as_previous(batch: pa.RecordBatch | pa.Table, previous: pa.RecordBatch | None,
                         columns: tuple[str, ...]) -> pa.Array:
    """Per row: does the row before it (the previous batch's last for row 0) have the same key? A part
    missing in both counts as equal."""
    same = None
    for column in columns:
        values = one_array(batch.column(column))
        both = values if previous is None else pa.concat_arrays([one_array(previous.column(column)), values])
        current, before = both.slice(1), both.slice(0, len(both) - 1)
        equal = pc.fill_null(pc.equal(current, before), pc.and_(pc.is_null(current), pc.is_null(before)))
        same = equal if same is None else pc.and_(same, equal)
    if previous is None:  # the first row of all
        same = pa.concat_arrays([pa.array([False]), same])
    return same


def first_received_per_key(table: pa.Table, keys: KeepFirst = BAR_KEYS) -> pa.Table:
    """In memory (a day's partition of the lake): the first received row of each key, in `keys.order`."""
    if table.num_rows == 0:
        return table
    missing = [column for column in keys.columns if column not in table.column_names]
    if missing:
        raise KeyError(f"no column {', '.join(missing)} to keep the first row per ({', '.join(keys.dedup_key)})")
    table = table.append_column(READ_ORDER, pa.array(range(table.num_rows), pa.int64()))
    by_key = table.sort_by([(column, "ascending") for column in keys.dedup_key]
                           + [(keys.arrival, "ascending"), (READ_ORDER, "ascending")])
    first = by_key.filter(pc.invert(same_key_as_previous(by_key, None, keys.dedup_key)))
    return first.sort_by([(column, "ascending") for column in keys.order]).drop_columns([READ_ORDER])
