"""Raw WebSocket frames and REST results -> Arrow tables in each channel's schema.

The fast path parses many frames of one channel at once with pyarrow's JSON reader (C++, columnar, off
the GIL): each frame, a JSON array, becomes one NDJSON line `{"f": [...]}`; no Python object is made per
event. Any valid JSON takes it, whatever its spacing, key order or escapes: frames are routed by what a
parse finds, never by their exact bytes (a frame spelled `"ev": "A"` once fell to the per-event path,
13x slower). With one channel subscribed every frame is tried on its fast path; with several, a frame
goes to the channel its `ev` names (seen in its text when it is plain, else by parsing the `ev` keys
alone). A part of a batch the fast path refuses (not JSON, wrong types, odd shapes, or an event of
another subscribed channel) is halved until the frames at fault are found; those go to the per-event
path, which decodes each event, finds its channel by `ev` and counts each bad one.
Parsing only decides whether an event *is* a row (JSON, shape, field types); `rules.ChannelRules` then
decides whether its values are plausible. Nothing here raises on any input.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from . import frame_columns
from .base import DECIMAL_PATTERN, NS_SUFFIX, Channel, InvalidEvent, all_of, empty_table, keep_passing, map_event, \
    us_from_ns

# The JSON reader parses blocks in parallel on its own threads (off the GIL): a batch of several blocks
# uses every core. A block must hold whole lines (frames), so it is at least twice the longest.
_BLOCK_BYTES = 256 << 10
# What the fast path raises for input it cannot take (the slower paths then decide, event by event).
_FAST_PATH_REFUSALS = (ValueError, pa.ArrowException)

Frames = list[tuple[int, "str | bytes"]]


def parse_frames(channels: Mapping[str, Channel], frames: Frames) -> tuple[dict[str, list[pa.Table]], Counter]:
    """({channel name: tables of its events}, refused events by reason) for `(received_ns, frame)` items.

    The values are not checked yet: that is `ChannelRules.apply`."""
    tables: dict[str, list[pa.Table]] = {}
    rejected = Counter()
    for name, group in _routed(channels, frames).items():
        if name is None:
            _add(tables, rejected, _per_event(channels, group))
        else:
            _add(tables, rejected, _fast_or_slower(channels, channels[name], group))
    return tables, rejected


def _routed(channels: Mapping[str, Channel], frames: Frames) -> dict[str | None, Frames]:
    """Frames grouped by the one channel whose events they hold (None: none, or several)."""
    if len(channels) == 1:   # the fast path itself tells each event's channel: no look at the text
        return {next(iter(channels)): frames}
    groups: dict[str | None, Frames] = {}
    unsure: Frames = []
    for item in frames:
        name = _named_channel(channels, item[1])
        if name is _UNSURE:
            unsure.append(item)
        else:
            groups.setdefault(name, []).append(item)
    for item, name in zip(unsure, _channels_by_parsing(channels, unsure)):
        groups.setdefault(name, []).append(item)
    return groups


_UNSURE = object()   # a frame with escapes: only a parse tells which channel its events name


def _named_channel(channels: Mapping[str, Channel], frame: str | bytes):
    """The first channel whose `ev` the frame's text holds (any spacing), None when it holds none, or
    _UNSURE when escapes may hide one. A frame holding events of two channels is still sent to one: its
    fast path refuses it (`_parse_fast`), and the per-event path sorts it out."""
    text = frame if type(frame) is str else frame.decode("utf-8", "replace")
    for name, channel in channels.items():
        if channel.marker() in text:   # Polygon's compact form: a search that stops at the first event
            return name
    for name, channel in channels.items():
        if channel.spaced_marker().search(text):
            return name
    return _UNSURE if "\\" in text else None


_EV_ONLY = pa_json.ParseOptions(explicit_schema=pa.schema([("f", pa.list_(pa.struct([("ev", pa.string())])))]),
                                unexpected_field_behavior="ignore")


def _channels_by_parsing(channels: Mapping[str, Channel], frames: Frames) -> list[str | None]:
    """For each frame, the channel its first event of a subscribed channel names (None: none, or the
    frames cannot be parsed together), from a parse of the `ev` keys alone."""
    if not frames:
        return []
    try:
        lists = _read_lines(_texts(frames), _EV_ONLY).column("f").combine_chunks()
    except _FAST_PATH_REFUSALS:
        return [None] * len(frames)
    names = lists.flatten().field("ev")
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    routed: list[str | None] = [None] * len(frames)
    for name in reversed(list(channels)):   # the first subscribed channel named wins, as in _named_channel
        for index in np.unique(parents[pc.equal(names, name).fill_null(False).to_numpy(zero_copy_only=False)]):
            routed[index] = name
    return routed


def _add(tables: dict[str, list[pa.Table]], rejected: Counter, parsed) -> None:
    more, refused = parsed
    for name, items in more.items():
        tables.setdefault(name, []).extend(items)
    rejected.update(refused)


def _fast_or_slower(channels: Mapping[str, Channel], channel: Channel, frames: Frames):
    """The fast path for `frames`; when it refuses them, for each half, down to the frames at fault (per
    event): a bad frame among thousands costs a few parses, not one per frame."""
    try:
        table, rejected = _parse_fast(channel, frames, others=channels.keys() - {channel.name})
        return {channel.name: [table]}, rejected
    except _FAST_PATH_REFUSALS:
        pass
    if len(frames) == 1:
        return _per_event(channels, frames)
    tables: dict[str, list[pa.Table]] = {}
    rejected = Counter()
    half = len(frames) // 2
    for part in (frames[:half], frames[half:]):   # in order: the first received row of a key is kept
        _add(tables, rejected, _fast_or_slower(channels, channel, part))
    return tables, rejected


# --- fast path: frames of one channel -> one table ---

# The events' keys in the order the server sends them (learnt from a frame): the compiled parser tries the
# next key's column first, and pyarrow's JSON reader finds each key's field at the next place instead of by
# hashing its name (10% of its parse). Any other order parses alike, only slower. At most _ORDERS_KEPT
# orders are kept.
_ORDERS: dict[tuple[str, tuple[str, ...]], dict[str, pa.DataType]] = {}
_READER_OPTIONS: dict[tuple[str, tuple[str, ...]], pa_json.ParseOptions] = {}
_ORDERS_KEPT = 64
_FIELDS: dict[str, dict[str, pa.DataType]] = {}   # per channel: its events' keys and their JSON types
_KEY = re.compile(r'"([^"\\]{1,32})"\s*:')


def _event_fields(channel: Channel, sample: str = "") -> dict[str, pa.DataType]:
    """The keys of `channel`'s events and their JSON types, ordered as in `sample` (a frame)."""
    known = _FIELDS.get(channel.name)
    if known is None:
        columns = {**channel.ws_required, **channel.ws_optional}
        known = _FIELDS[channel.name] = {"ev": pa.string(), **{key: _json_type(channel, column)
                                                               for column, key in columns.items()}}
    first_event_ends = max(0, min(sample.find("}"), 2000))
    sent = tuple(dict.fromkeys(key for key in _KEY.findall(sample, 0, first_event_ends) if key in known))
    fields = _ORDERS.get((channel.name, sent))
    if fields is None:
        fields = {key: known[key] for key in [*sent, *(key for key in known if key not in sent)]}
        if len(_ORDERS) < _ORDERS_KEPT:
            _ORDERS[(channel.name, sent)] = fields
    return fields


def _reader_options(channel: Channel, fields: dict[str, pa.DataType]) -> pa_json.ParseOptions:
    """pyarrow's JSON reader options for frames of events with `fields` (as `{"f": frame}` lines)."""
    order = (channel.name, tuple(fields))
    options = _READER_OPTIONS.get(order)
    if options is None:
        struct = pa.struct([(key, pa.string() if pa.types.is_decimal(kind) else kind)   # cast by to_schema
                            for key, kind in fields.items()])
        options = pa_json.ParseOptions(explicit_schema=pa.schema([("f", pa.list_(struct))]),
                                       unexpected_field_behavior="ignore")
        if len(_READER_OPTIONS) < _ORDERS_KEPT:
            _READER_OPTIONS[order] = options
    return options


def _json_type(channel: Channel, column: str) -> pa.DataType:
    """A decimal stays a decimal: Polygon sends it as a string, which each parser turns into the decimal."""
    if column in channel.ws_types:
        return channel.ws_types[column]
    kind = channel.schema.field(column).type
    return pa.int64() if pa.types.is_timestamp(kind) else kind  # timestamps: plain ints, cast afterwards


def _texts(frames: Frames) -> list[str]:
    return [frame if type(frame) is str else frame.decode("utf-8") for _, frame in frames]


def _read_lines(texts: list[str], options: pa_json.ParseOptions) -> pa.Table:
    """Each frame as one NDJSON line `{"f": frame}`, read with `options` (one row a frame)."""
    if any("\n" in text or "\r" in text for text in texts):
        raise ValueError("a frame spans lines; NDJSON needs one line per frame")
    pieces = ['{"f":'] * (2 * len(texts))   # '{"f":' frame '}\n{"f":' frame ... '}': one copy, not two
    pieces[1::2] = texts
    pieces[2::2] = ['}\n{"f":'] * (len(texts) - 1)
    pieces.append("}")
    lines = "".join(pieces).encode("utf-8")
    block = max(_BLOCK_BYTES, 2 * max(map(len, texts)) + 16)  # a line may not straddle two blocks
    read_options = pa_json.ReadOptions(block_size=block, use_threads=len(lines) > block)
    parsed = pa_json.read_json(pa.py_buffer(lines), read_options=read_options, parse_options=options)
    if parsed.num_rows != len(texts):
        raise ValueError("frame count changed in parsing")
    return parsed


def _parse_fast(channel: Channel, frames: Frames, others=()) -> tuple[pa.Table, Counter]:
    """`frames` as one table of `channel`; refused (ValueError) when an event names another subscribed
    channel of `others`: that frame is for the per-event path, which keeps both channels' rows.
    The compiled parser takes the frames when they are plainly well-formed; pyarrow's reader otherwise
    (it also takes a `null` frame or event, counted as bad_shape, and refuses what is not JSON)."""
    texts = _texts(frames)
    fields = _event_fields(channel, texts[0])
    rejected = Counter()
    parsed = frame_columns.parse(texts, fields) if frame_columns.supports(fields) else None
    if parsed is not None:
        columns, per_frame = parsed
        valid = None
    else:
        lists = _read_lines(texts, _reader_options(channel, fields)).column("f").combine_chunks()
        if lists.null_count:  # a frame `null`: not an array
            rejected["bad_shape"] += lists.null_count
        events = lists.flatten()
        columns = dict(zip([field.name for field in events.type], events.flatten()))  # parent nulls included
        per_frame, valid = np.diff(lists.offsets.to_numpy(zero_copy_only=False)), events.is_valid()
    if others and pc.any(pc.is_in(columns["ev"], pa.array(sorted(others)))).as_py():
        raise ValueError("a frame holds events of several subscribed channels")
    received_us = np.repeat(np.fromiter((received_ns // 1000 for received_ns, _ in frames), np.int64, len(frames)),
                            per_frame)
    return _events_to_table(channel, columns, valid, pa.array(received_us), rejected), rejected


def _events_to_table(channel: Channel, fields: dict[str, pa.Array], valid: pa.Array | None, received_us: pa.Array,
                     rejected: Counter) -> pa.Table:
    """`valid`: False for an event that is not an object (`null`); None when every one is."""
    checks = [("wrong_event", pc.equal(fields["ev"], pa.scalar(channel.name))),
              ("missing_field", all_of([fields[key].is_valid() for key in channel.ws_required.values()
                                        if fields[key].null_count]))]
    if valid is not None:
        checks.insert(0, ("bad_shape", valid))
    columns = {**channel.ws_required, **channel.ws_optional}
    table = pa.Table.from_arrays([fields[key] for key in columns.values()] + [received_us],
                                 names=list(columns) + ["received_at"])
    table = keep_passing(table, checks, rejected)
    if channel.ws_adapt_columns is not None:
        table = channel.ws_adapt_columns(table)
    return to_schema(channel, table, "ws", channel.ws_scale)


def to_schema(channel: Channel, table: pa.Table, source: str, scale: Mapping[str, int]) -> pa.Table:
    """Columns of `table` in `channel.schema` order and types: absent columns as nulls (or what their
    absence means, `absent_as`), scaled ints multiplied, each exact time's timestamp derived from its
    `_ns` column. An overflow or a decimal string that does not fit raises, so the fast path hands the
    batch to the checked per-event path."""
    columns, present = {}, set(table.column_names)
    for field in channel.schema:
        if field.name == "source":
            columns[field.name] = pa.repeat(pa.scalar(source, pa.string()), table.num_rows)
        elif field.name in channel.exact_times:
            continue  # derived below, from its `_ns` column
        elif field.name not in present:
            columns[field.name] = pa.nulls(table.num_rows, field.type)
        else:
            columns[field.name] = _typed(table.column(field.name), field, scale.get(field.name))
    for name, value in channel.absent_as.items():
        if columns[name].null_count:
            columns[name] = pc.fill_null(columns[name], pa.scalar(value, channel.schema.field(name).type))
    for name in channel.exact_times:
        columns[name] = us_from_ns(columns[name + NS_SUFFIX])
    return pa.Table.from_arrays([columns[name] for name in channel.schema.names], schema=channel.schema)


def _typed(column, field: pa.Field, factor: int | None):
    if factor is not None:
        column = pc.multiply_checked(column, factor)
    if pa.types.is_decimal(field.type) and pa.types.is_string(column.type):
        # pyarrow's cast wraps a number too large for the type into a wrong one: only exact forms pass.
        if pc.any(pc.invert(pc.match_substring_regex(column, DECIMAL_PATTERN))).as_py():
            raise ValueError(f"{field.name}: not a decimal of at most 20 + 18 digits")
    return column if column.type == field.type else column.cast(field.type)


# --- per-event path: frames the fast path refused or that mix channels ---

def ws_row(channel: Channel, event) -> dict:
    """One WebSocket event of `channel` as a row dict; InvalidEvent when it is not one."""
    return map_event(channel, event, channel.ws_required, channel.ws_optional, channel.ws_scale, channel.ws_adapt)


def rest_row(channel: Channel, result, symbol: str) -> dict:
    """One REST result of `channel` for `symbol` as a row dict; InvalidEvent when it is not one."""
    row = map_event(channel, result, channel.rest_required, channel.rest_optional, channel.rest_scale)
    row["symbol"] = map_event(channel, {"sym": symbol}, {"symbol": "sym"}, {}, {})["symbol"]
    if channel.rest_complete is not None:
        channel.rest_complete(row)
    return row


def rest_results_with_reasons(channel: Channel, symbol: str, results, received_ns: int) -> tuple[pa.Table, Counter]:
    if type(results) is not list:
        return empty_table(channel), Counter(bad_shape=1)
    return rows_with_reasons(channel, results, lambda result: rest_row(channel, result, symbol), received_ns, "rest")


def rows_with_reasons(channel: Channel, items: list, to_row, received_ns: int, source: str) -> tuple[pa.Table, Counter]:
    """Map each item with `to_row`; (table of the good ones, the bad ones counted by reason)."""
    names = channel.data_columns
    columns: dict[str, list] = {name: [] for name in names}
    rejected = Counter()
    for item in items:
        if type(item) is _Unparsed:
            rejected[item.reason] += 1
            continue
        try:
            row = to_row(item)
        except InvalidEvent as invalid:
            rejected[invalid.reason] += 1
            continue
        for name in names:
            columns[name].append(row.get(name))
    rows = len(columns[names[0]])
    arrays = [pa.array(columns[name], type=channel.schema.field(name).type) for name in names]
    arrays.append(pa.repeat(pa.scalar(received_ns // 1000, channel.schema.field("received_at").type), rows))
    return to_schema(channel, pa.Table.from_arrays(arrays, names=[*names, "received_at"]), source, {}), rejected


def _per_event(channels: Mapping[str, Channel], frames: Frames):
    tables: dict[str, list[pa.Table]] = {}
    rejected = Counter()
    for received_ns, frame in frames:
        by_channel, refused = _frame_events(channels, frame)
        rejected.update(refused)
        for name, events in by_channel.items():
            channel = channels[name]
            table, bad = rows_with_reasons(channel, events, lambda event, c=channel: ws_row(c, event), received_ns, "ws")
            tables.setdefault(name, []).append(table)
            rejected.update(bad)
    return tables, rejected


def _frame_events(channels: Mapping[str, Channel], frame: str | bytes) -> tuple[dict[str, list], Counter]:
    """The frame's events grouped by channel name; what is no event of a subscribed channel, counted."""
    # Bytes that are not UTF-8 may sit in a field nobody reads; replaced, a bad one fails a rule instead.
    text = frame if type(frame) is str else frame.decode("utf-8", "replace")
    try:
        events = _loads(text)
    except RecursionError:  # nested deeper than Python's parser goes: parse element by element
        events = _array_elements(text)
    except ValueError:
        return {}, Counter(not_json=1)
    if type(events) is not list:
        return {}, Counter(bad_shape=1)
    grouped: dict[str, list] = {}
    rejected = Counter()
    for event in events:
        if type(event) is _Unparsed:
            rejected[event.reason] += 1
        elif type(event) is not dict:
            rejected["bad_shape"] += 1
        elif type(event.get("ev")) is str and event["ev"] in channels:
            grouped.setdefault(event["ev"], []).append(event)
        else:
            rejected["wrong_event"] += 1
    return grouped, rejected


def _parse_int(digits: str):
    # Python refuses ints of over 4300 digits (a ValueError that would lose the whole frame). Beyond 20
    # digits no int64 holds it anyway; as a float (infinite if need be) it is what pyarrow's reader makes of it.
    return int(digits) if len(digits) <= 20 else float(digits)


def _loads(text: str):
    return json.loads(text, parse_int=_parse_int)


class _Unparsed:
    """An element of an array that json.loads cannot read: counted under `reason`."""

    def __init__(self, reason: str):
        self.reason = reason


# A JSON string (escapes included) or one of the characters that shape an array; everything else is skipped.
# Possessive, and an unterminated string runs to the end: each quote is scanned once, so any text is linear.
_ARRAY_TOKENS = re.compile(r'(?s)"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)|[\[\]{},]')


def _array_elements(text: str):
    """The elements of the JSON array `text`, each parsed on its own (those too deep to parse, as _Unparsed)."""
    body = text.strip()
    if not body.startswith("["):
        return None  # not an array: counted as bad_shape
    pieces, depth, begin = [], 0, 1
    for token in _ARRAY_TOKENS.finditer(body):
        mark = token.group()[0]
        if mark in "[{":
            depth += 1
        elif mark in "]}":
            depth -= 1
        if depth == 0 or (mark == "," and depth == 1):
            pieces.append(body[begin:token.start()])
            begin = token.end()
        if depth == 0:
            break
    if depth or body[begin:].strip():
        pieces.append(body[begin:])  # unbalanced or trailing text: not JSON, counted as such
    if pieces == [""] or (len(pieces) == 1 and not pieces[0].strip()):
        return []
    return [_element(piece) for piece in pieces]


def _element(piece: str):
    try:
        return _loads(piece)
    except RecursionError:
        return _Unparsed("bad_shape")
    except ValueError:
        return _Unparsed("not_json")
