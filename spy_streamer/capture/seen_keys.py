"""Which rows of one channel and trading day are already stored, by their dedup key: how the writer and a
restart apply keep_first.py's rule (the first received row of a key is the one stored; a later one is a
repeat).

Each key (`KeepFirst.of(channel).dedup_key`: (symbol, start) for bars, (symbol, exchange, trf_id,
trade_id) for trades, (symbol, sequence_number) for quotes) is reduced to a 64-bit hash, kept in sorted
numpy arrays (SeenKeys). A batch is checked with binary searches (`searchsorted`), never a Python loop
per row (string key columns are hashed once per distinct value, all at once). New keys go to a small
sorted "recent" array that is merged into the main one when it reaches a quarter of its size (a merge of
two sorted runs), so adding costs O(batch log) amortized.

Trades and quotes (SeenTicks) keep their hashes by 10-second bucket of the row's time: the buckets used
last stay in memory (2M keys, 16 MB), older ones are spilled to a temporary file and mapped back only
when a row of their time comes again. Memory stays flat however long the day (`T.*` at 20,000 trades a
second had grown by 96 MB of keys in 10 minutes, and kept growing).

Bar channels (`A`, `AM`: a key is (symbol, time) with times on a grid of one bar length) use SeenSlots
instead: a bit per (symbol, step) in 64-bit words, so memory follows the symbols' active stretches, not
the rows (`A.*` at 11,000 symbols a second: 5 MB for 30 minutes rather than 160 MB of hashes), and
words are kept by bucket of their place in the day like trades' keys, 1M words (16 MB) in memory: a
whole-market day had held 64 MB of words by the close.

The price of hashing: two different keys sharing a 64-bit hash would drop the second row as a repeat.
The chance is about n^2 / 2^65 for n rows compared (a bar channel's day, a tick bucket): 1 in 3.7
million days at 10 million rows. Keys are rebuilt from the day's files at start, so the hash need not be
stable across processes (only across a run).
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import tempfile
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..channels.base import one_array
from ..monitoring.failure_streak import FailureStreak
from .keep_first import KeepFirst

log = logging.getLogger(__name__)

MERGE_AT_LEAST = 65_536
BUCKET_MS = 10_000            # SeenTicks: rows are looked up among the keys of their own 10 s of the day...
RESIDENT_KEYS = 2_000_000     # ...of which this many stay in memory (16 MB; `T.*` at 20k/s: 100 s of trades)
RESIDENT_WORDS = 1_000_000    # SeenSlots: words (16 B) in memory (`A.*`: 90 minutes of 11,000 symbols)
MAX_RUNS = 4                  # a bucket's spilled runs, merged into one past this
_NULL = np.uint64(0x9E3779B97F4A7C15)   # stands for a null key part (e.g. no trf_id)


class SeenKeys:
    def __init__(self, columns: tuple[str, ...] = ()):
        self.columns = tuple(columns)    # the key columns, for add_table
        self._sorted = np.empty(0, np.uint64)
        self._recent = np.empty(0, np.uint64)

    def add_table(self, table: pa.Table) -> pa.BooleanArray:
        return self.add(key_hashes(table, self.columns))

    def add(self, keys: np.ndarray) -> pa.BooleanArray:
        """Record a batch of key hashes; True where a key was not seen before (earlier in the batch included)."""
        return pa.array(self.add_keys(keys))

    def add_keys(self, keys: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
        """As `add`, as a numpy mask; `known` marks keys seen elsewhere (not new, not recorded)."""
        if not len(keys):
            return np.zeros(0, bool)
        order = np.argsort(keys, kind="stable")      # stable: of equal keys, the first received leads
        ordered = keys[order]
        new_ordered = np.ones(len(keys), bool)
        new_ordered[1:] = ordered[1:] != ordered[:-1]
        new_ordered &= ~(_contains(self._sorted, ordered) | _contains(self._recent, ordered))
        if known is not None:
            new_ordered &= ~known[order]
        new = np.empty(len(keys), bool)
        new[order] = new_ordered
        fresh = ordered[new_ordered]
        if len(fresh):
            # Two sorted runs: the stable sort (timsort) merges them in linear time.
            self._recent = np.sort(np.concatenate([self._recent, fresh]), kind="stable")
            if len(self._recent) >= max(MERGE_AT_LEAST, len(self._sorted) // 4):
                self._merge()
        return new

    def arrays(self) -> tuple[np.ndarray]:
        """Every key, in one sorted array."""
        if len(self._recent):
            self._merge()
        return (self._sorted,)

    @staticmethod
    def merged(runs: list) -> tuple[np.ndarray]:
        return (np.sort(np.concatenate([run[0] for run in runs])),)

    def _merge(self) -> None:
        """The recent run into the sorted one, sorted in place once the old runs are let go: at most twice
        the keys' bytes at the peak (np.sort of a concatenation held three times: 480 MB for 20M keys)."""
        merged = np.concatenate([self._sorted, self._recent])
        self._sorted = self._recent = np.empty(0, np.uint64)
        merged.sort(kind="stable")
        self._sorted = merged

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def memory_bytes(self) -> int:
        return self._sorted.nbytes + self._recent.nbytes


class SlotWords:
    """One bucket of a bar channel's stored keys: 64-bit words of bits (a symbol's 64 consecutive steps)
    under a hash of (symbol, the words' place), in two sorted runs like SeenKeys'."""

    def __init__(self):
        self._keys = [np.empty(0, np.uint64), np.empty(0, np.uint64)]   # the main and recent runs, sorted
        self._bits = [np.empty(0, np.uint64), np.empty(0, np.uint64)]

    def stored_bits(self, words: np.ndarray) -> np.ndarray:
        return _bits_in_runs(zip(self._keys, self._bits), words)

    def record(self, words: np.ndarray, bits: np.ndarray) -> None:
        """OR new bits into their words (`words` sorted): a word kept already in place, new ones to the
        recent run, merged into the main one when it reaches a quarter of it (as SeenKeys)."""
        if not len(words):
            return
        words, bits = _or_equal_words(words, bits)
        for run in (0, 1):
            keys = self._keys[run]
            if len(keys):
                index = np.minimum(np.searchsorted(keys, words), len(keys) - 1)
                found = keys[index] == words
                self._bits[run][index[found]] |= bits[found]
                words, bits = words[~found], bits[~found]
        if len(words):
            self._keys[1], self._bits[1] = SlotWords.merged([(self._keys[1], self._bits[1]), (words, bits)])
            if len(self._keys[1]) >= max(MERGE_AT_LEAST, len(self._keys[0]) // 4):
                self._merge_recent()

    def _merge_recent(self) -> None:
        self._keys[0], self._bits[0] = SlotWords.merged([(self._keys[0], self._bits[0]),
                                                         (self._keys[1], self._bits[1])])
        self._keys[1], self._bits[1] = np.empty(0, np.uint64), np.empty(0, np.uint64)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The words and their bits, in one sorted run."""
        if len(self._keys[1]):
            self._merge_recent()
        return self._keys[0], self._bits[0]

    @staticmethod
    def merged(runs: list) -> tuple[np.ndarray, np.ndarray]:
        """Runs of (words, bits) as one sorted run, a word's bits ORed together."""
        keys = np.concatenate([run[0] for run in runs])
        order = np.argsort(keys, kind="stable")
        return _or_equal_words(keys[order], np.concatenate([run[1] for run in runs])[order])

    def __len__(self) -> int:
        return len(self._keys[0]) + len(self._keys[1])

    def memory_bytes(self) -> int:
        return sum(array.nbytes for array in self._keys + self._bits)


class _TimeBuckets:
    """Stored keys grouped by bucket of their time: the buckets used last in memory, up to `resident`
    entries (keys or words); older ones spilled to an unlinked temporary file in `spill_dir` and looked
    at there, through a memory map, only when a row of their time comes again (a REST backfill, a late
    row). A repeat has its original's time, so it is looked for in its own bucket only. A disk that
    refuses the spill costs memory, never a row: the buckets stay in memory (one WARNING)."""

    def __init__(self, make_bucket, spill_dir, resident: int):
        self.resident = resident
        self._make_bucket = make_bucket
        self._hot: OrderedDict = OrderedDict()   # bucket -> its keys in memory, least recently used first
        self._hot_entries = 0
        self._spill = KeySpill(spill_dir)

    def _bucket(self, bucket: int):
        keys = self._hot.get(bucket)
        if keys is None:
            keys = self._hot[bucket] = self._make_bucket()
        self._hot.move_to_end(bucket)
        return keys

    def _grew(self, entries: int) -> None:
        self._hot_entries += entries

    def _evict(self) -> None:
        """Spill the least recently used buckets until the resident entries fit (the last used stays)."""
        while self._hot_entries > self.resident and len(self._hot) > 1 and self._spill.usable:
            bucket, keys = next(iter(self._hot.items()))
            if len(keys) and not self._spill.write(bucket, keys.arrays(), self._make_bucket.merged):
                return
            del self._hot[bucket]
            self._hot_entries -= len(keys)

    def memory_bytes(self) -> int:
        return sum(keys.memory_bytes() for keys in self._hot.values())

    def close(self) -> None:
        self._spill.close()


class SeenTicks(_TimeBuckets):
    """The stored keys of a tick channel (trades, quotes): SeenKeys by BUCKET_MS of the row's time, at
    most RESIDENT_KEYS of them in memory (16 MB): `T.*` at 20,000 trades a second had held 96 MB more
    after 10 minutes, growing all day."""

    def __init__(self, channel, spill_dir=None, resident: int = RESIDENT_KEYS):
        super().__init__(SeenKeys, spill_dir, resident)
        self.channel = channel
        self.key = KeepFirst.of(channel).dedup_key
        self._rows = 0

    def add_table(self, table: pa.Table) -> pa.BooleanArray:
        """Record `table`'s keys; True for the rows whose key was not seen before (earlier in it included)."""
        hashes = key_hashes(table, self.key)
        times = pc.fill_null(self.channel.time_ms(table), pa.scalar(-BUCKET_MS, pa.int64()))
        new = np.empty(table.num_rows, bool)
        for bucket, rows in _groups(times.to_numpy(zero_copy_only=False) // BUCKET_MS):
            keys = self._bucket(bucket)
            before = len(keys)
            new[rows] = keys.add_keys(hashes[rows], self._spill.contains(bucket, hashes[rows]))
            self._grew(len(keys) - before)
        self._rows += int(new.sum())
        self._evict()
        return pa.array(new)

    def __len__(self) -> int:
        return self._rows


class SeenSlots(_TimeBuckets):
    """The stored keys of a bar channel, (symbol, time) with times on a grid (a second for `A`, a minute for
    `AM`), as bits: a symbol's 64 consecutive steps share one 64-bit word, whose key (a hash of the symbol
    and the word's place) is kept beside its bits, by bucket of the words' place (SlotWords), at most
    RESIDENT_WORDS words in memory (16 MB). 16 bytes per word holding a row: 0.25 B a row for a symbol
    with a bar every step, 16 B for a lone bar. A time off the grid (not a whole step; only a malformed
    bar) is kept exactly, in a SeenKeys of its own (in memory)."""

    def __init__(self, channel, spill_dir=None, resident: int = RESIDENT_WORDS):
        super().__init__(SlotWords, spill_dir, resident)
        self.channel = channel
        self._off_grid = SeenKeys(KeepFirst.of(channel).dedup_key)
        self._on_grid_rows = 0

    def add_table(self, table: pa.Table) -> pa.BooleanArray:
        """Record `table`'s keys; True for the rows whose key was not seen before (earlier in it included)."""
        step = self.channel.gap_step_ms
        times = pc.fill_null(self.channel.time_ms(table), pa.scalar(-1, pa.int64())).to_numpy(zero_copy_only=False)
        on_grid = (times >= 0) & (times % step == 0)
        new = np.zeros(table.num_rows, bool)
        if not on_grid.all():
            off = self._off_grid.add_table(table.filter(pa.array(~on_grid))).to_numpy(zero_copy_only=False)
            new[~on_grid] = off
        if on_grid.any():
            symbols = _column_hash(one_array(table.column("symbol")))[on_grid]
            new[on_grid] = self._add_slots(symbols, times[on_grid] // step)
        self._evict()
        return pa.array(new)

    def _add_slots(self, symbols: np.ndarray, slots: np.ndarray) -> np.ndarray:
        places = slots >> 6
        words = _mix(symbols ^ _mix(places.astype(np.uint64)))
        bits = np.left_shift(np.uint64(1), (slots & 63).astype(np.uint64))
        new = np.empty(len(words), bool)
        for place, rows in _groups(places):
            new[rows] = self._add_words(place, words[rows], bits[rows])
        return new

    def _add_words(self, place: int, words: np.ndarray, bits: np.ndarray) -> np.ndarray:
        order = np.lexsort((np.arange(len(words)), bits, words))   # of equal keys, the first received leads
        words, bits = words[order], bits[order]
        fresh = np.ones(len(words), bool)
        fresh[1:] = (words[1:] != words[:-1]) | (bits[1:] != bits[:-1])
        stored = self._bucket(place)
        fresh &= ((stored.stored_bits(words) | _bits_in_runs(self._spill.runs(place), words)) & bits) == 0
        new = np.empty(len(words), bool)
        new[order] = fresh
        before = len(stored)
        stored.record(words[fresh], bits[fresh])
        self._grew(len(stored) - before)
        self._on_grid_rows += int(fresh.sum())
        return new

    def __len__(self) -> int:
        return self._on_grid_rows + len(self._off_grid)

    def memory_bytes(self) -> int:
        return super().memory_bytes() + self._off_grid.memory_bytes()


class KeySpill:
    """Sorted runs of a bucket's arrays (keys; or words and their bits) in an unlinked temporary file,
    found again by their bucket. A bucket spilled several times has several runs; past MAX_RUNS they are
    merged into one (the old bytes stay in the file: it is the day's scratch, and goes with the day)."""

    def __init__(self, directory=None):
        self.directory = directory
        self.usable = True
        # No recovery: once refused, the spill stays off for the day, and the heartbeat says so until then.
        self._streak = FailureStreak("key_spill", log, "key_spill_failed", "key_spill_recovered")
        self._file = None
        self._end = 0
        self._runs: dict[int, list[tuple[int, int, int]]] = {}   # bucket -> [(byte offset, length, arrays)]

    def runs(self, bucket: int) -> list[tuple[np.ndarray, ...]]:
        return [self._mapped(run) for run in self._runs.get(bucket, ())]

    def contains(self, bucket: int, keys: np.ndarray) -> np.ndarray | None:
        """Which of `keys` a spilled run of `bucket` holds (None: the bucket has none)."""
        runs = self.runs(bucket)
        if not runs:
            return None
        found = np.zeros(len(keys), bool)
        for (run_keys,) in runs:
            found |= _contains(run_keys, keys)
        return found

    def write(self, bucket: int, arrays: tuple[np.ndarray, ...], merged) -> bool:
        """Append `arrays` (of one length, sorted by the first) as a run of `bucket` (`merged` makes one of
        many runs); False, and no more spilling, when the disk refuses."""
        runs = self._runs.get(bucket, [])
        if len(runs) >= MAX_RUNS:
            arrays, runs = merged([*self.runs(bucket), arrays]), []
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix=".seen-keys-", dir=self.directory)
            data = b"".join(array.tobytes() for array in arrays)
            if os.pwrite(self._file.fileno(), data, self._end) != len(data):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            self.usable = False
            self._streak.failed(exc, "cannot spill stored keys to disk: they stay in memory for the rest of the day")
            return False
        self._runs[bucket] = [*runs, (self._end, len(arrays[0]), len(arrays))]
        self._end += len(data)
        return True

    def _mapped(self, run: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
        # A map, not a read: a lookup touches only the pages its binary searches visit.
        offset, length, arrays = run
        whole = np.memmap(self._file, np.uint64, "r", offset, (arrays * length,))
        return tuple(whole[index * length:(index + 1) * length] for index in range(arrays))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._runs, self._end = None, {}, 0


def seen_rows_for(channel, spill_dir=None):
    """SeenSlots for a channel whose key is (symbol, its time) on a grid of `gap_step_ms` (the bars),
    else SeenTicks of its key columns (trades, quotes), spilling to `spill_dir`."""
    if channel.gap_step_ms > 0 and KeepFirst.of(channel).dedup_key == ("symbol", channel.time_column):
        return SeenSlots(channel, spill_dir)
    return SeenTicks(channel, spill_dir)


def _groups(buckets: np.ndarray):
    """(bucket, the indices of its rows, in order) for each distinct value of `buckets`."""
    if len(buckets) and buckets[0] == buckets[-1] and (buckets == buckets[0]).all():
        yield int(buckets[0]), np.arange(len(buckets))   # the usual batch: one bucket
        return
    order = np.argsort(buckets, kind="stable")
    ordered = buckets[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(ordered) else []
    for start, end in zip(starts, [*starts[1:], len(ordered)]):
        yield int(ordered[start]), order[start:end]


def _bits_in_runs(runs, words: np.ndarray) -> np.ndarray:
    """The bits sorted runs of (keys, bits) hold for each of `words`, ORed (0 where none has the word)."""
    stored = np.zeros(len(words), np.uint64)
    for keys, bits in runs:
        if len(keys):
            index = np.minimum(np.searchsorted(keys, words), len(keys) - 1)
            stored |= np.where(keys[index] == words, bits[index], np.uint64(0))
    return stored


def _or_equal_words(words: np.ndarray, bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted `words` made distinct, the bits of equal ones ORed together."""
    if not len(words):
        return words, bits
    starts = np.flatnonzero(np.r_[True, words[1:] != words[:-1]])
    return words[starts], np.bitwise_or.reduceat(bits, starts)


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(keys), bool)
    index = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[index] == keys


def key_hashes(table: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    """One 64-bit hash per row of `table` over `columns` (strings, ints or timestamps; nulls allowed)."""
    combined = np.zeros(table.num_rows, np.uint64)
    for name in columns:
        combined = _mix(combined ^ _column_hash(one_array(table.column(name))))
    return combined


def _column_hash(column: pa.Array) -> np.ndarray:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        encoded = pc.dictionary_encode(column)
        distinct = _strings_hash(encoded.dictionary)
        values = distinct[pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False)] if len(distinct) \
            else np.zeros(len(column), np.uint64)
    else:
        values = _mix(pc.fill_null(pc.cast(column, pa.int64()), 0).to_numpy(zero_copy_only=False).view(np.uint64))
    if column.null_count:
        values = np.where(column.is_null().to_numpy(zero_copy_only=False), _NULL, values)
    return values


_MAX_VECTOR_WIDTH = 64   # longer strings (no ticker; a fuzzed trade id) are hashed one by one
_SEED = np.uint64(0x2545F4914F6CDD1D)


def _strings_hash(strings: pa.Array) -> np.ndarray:
    """One hash per string of `strings` (a dictionary: no nulls), vectorized: a string's UTF-8 bytes,
    zero-padded to whole 8-byte words, mixed word by word into its length. A Python call per distinct
    string cost 0.3 us an event under `A.*`, whose batches hold thousands of symbols. Which way a string
    is hashed depends on its length alone, so a key hashes alike in every batch."""
    strings = strings.cast(pa.large_string())
    offsets = np.frombuffer(strings.buffers()[1], np.int64)[strings.offset:strings.offset + len(strings) + 1]
    data = strings.buffers()[2]
    data = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
    lengths = np.diff(offsets)
    hashes = np.empty(len(strings), np.uint64)
    short = lengths <= _MAX_VECTOR_WIDTH
    hashes[short] = _short_strings_hash(data, offsets[:-1][short], lengths[short])
    for index in np.flatnonzero(~short):
        hashes[index] = _text_hash(strings[int(index)].as_py())
    return hashes


def _short_strings_hash(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    words = max(1, -(-int(lengths.max(initial=0)) // 8))
    padded = np.zeros((len(lengths), words * 8), np.uint8)
    ends = np.cumsum(lengths)
    position = np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - lengths, lengths)
    padded[np.repeat(np.arange(len(lengths)), lengths), position] = data[np.repeat(starts, lengths) + position]
    hashes = _mix(lengths.astype(np.uint64) ^ _SEED)
    for index, word in enumerate(padded.view(np.uint64).T):   # only a string's own words: not the batch's width
        hashes = np.where(lengths > 8 * index, _mix(hashes ^ word), hashes) if index else _mix(hashes ^ word)
    return hashes


def _text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit moves every output bit (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))
