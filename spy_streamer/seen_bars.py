"""Which rows of one channel and trading day are already stored, by their dedup key.

Each key (the channel's `dedup_key` columns: (symbol, start) for bars, (symbol, exchange, trf_id,
trade_id) for trades, (symbol, sequence_number) for quotes) is reduced to a 64-bit hash, and the day's
hashes are kept in sorted numpy arrays: 8 bytes a stored row, nothing per symbol, however many symbols a
wildcard brings (the bitmap this replaces cost 23.4 KB per symbol for `A`, and could not hold trades or
quotes at all). A batch is checked with binary searches (`searchsorted`), never a Python loop per row
(string key columns are hashed once per distinct value, all at once).

New keys go to a small sorted "recent" array that is merged into the main one when it reaches a quarter
of its size (a merge of two sorted runs), so adding costs O(batch log) amortized.

The price of hashing: two different keys sharing a 64-bit hash would drop the second row as a repeat.
The chance is about n^2 / 2^65 for n rows a day: 1 in 3.7 million days at 10 million rows, 1 in 3,700 at
100 million (all trades of `T.*`). Keys are rebuilt from the day's files at start, so the hash need not
be stable across processes (only across a run).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MERGE_AT_LEAST = 65_536
_NULL = np.uint64(0x9E3779B97F4A7C15)   # stands for a null key part (e.g. no trf_id)


class SeenKeys:
    def __init__(self):
        self._sorted = np.empty(0, np.uint64)
        self._recent = np.empty(0, np.uint64)

    def add(self, keys: np.ndarray) -> pa.BooleanArray:
        """Record a batch of key hashes; True where a key was not seen before (earlier in the batch included)."""
        if not len(keys):
            return pa.array([], pa.bool_())
        order = np.argsort(keys, kind="stable")      # stable: of equal keys, the first received leads
        ordered = keys[order]
        new_ordered = np.ones(len(keys), bool)
        new_ordered[1:] = ordered[1:] != ordered[:-1]
        new_ordered &= ~(_contains(self._sorted, ordered) | _contains(self._recent, ordered))
        new = np.empty(len(keys), bool)
        new[order] = new_ordered
        fresh = ordered[new_ordered]
        if len(fresh):
            # Two sorted runs: the stable sort (timsort) merges them in linear time.
            self._recent = np.sort(np.concatenate([self._recent, fresh]), kind="stable")
            if len(self._recent) >= max(MERGE_AT_LEAST, len(self._sorted) // 4):
                self._sorted = np.sort(np.concatenate([self._sorted, self._recent]), kind="stable")
                self._recent = np.empty(0, np.uint64)
        return pa.array(new)

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def memory_bytes(self) -> int:
        return self._sorted.nbytes + self._recent.nbytes


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(keys), bool)
    index = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[index] == keys


def key_hashes(table: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    """One 64-bit hash per row of `table` over `columns` (strings, ints or timestamps; nulls allowed)."""
    combined = np.zeros(table.num_rows, np.uint64)
    for name in columns:
        combined = _mix(combined ^ _column_hash(table.column(name).combine_chunks()))
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
