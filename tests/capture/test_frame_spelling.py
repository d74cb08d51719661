"""The same events spelt as any valid JSON (spacing, key order, escapes) store the same rows, on the fast path.

Polygon sends compact JSON (`"ev":"A"`); `json.dumps` by default writes `"ev": "A"`. The writer once routed
frames by the exact bytes `"ev":"A"`, so any other spelling fell to the per-event path, 13x slower: a
server changing its whitespace would have cost three quarters of the daemon's speed. Here every spelling
goes through the real writer to real Parquet files, and the per-event path must not be needed.
"""
from __future__ import annotations

import json
import queue
from itertools import zip_longest
from datetime import time as clock_time
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow.dataset as ds
import pytest

from conftest import FakeClock, ny
from fake_polygon import agg_event, quote_event, trade_event
from spy_streamer.capture.batch_writer import BatchWriter
from spy_streamer.capture.pipeline_stats import WriterStats
from spy_streamer.channels import parsing
from spy_streamer.config import MarketHoursConfig
from spy_streamer.market.market_hours import MarketCalendar
from spy_streamer.storage.parquet_sink import ParquetSink

NEW_YORK = ZoneInfo("America/New_York")
HOURS = MarketHoursConfig(timezone=NEW_YORK, active_days=frozenset(range(5)),
                          start_time=clock_time(9, 30), end_time=clock_time(16, 0))
SESSION_NOW = ny(2025, 6, 10, 10, 0)   # a Tuesday inside the session
FIRST_MS = int(ny(2025, 6, 10, 9, 45).timestamp() * 1000)
SYMBOLS = ("SPY", "QQQ", "BRK.B", "I:SPX")


def bars(count: int = 40) -> list[dict]:
    return [agg_event(FIRST_MS + second * 1000, symbol, 500.0 + second / 100, 100 + second)
            for second in range(count) for symbol in SYMBOLS]


def trades(count: int = 40) -> list[dict]:
    return [trade_event(FIRST_MS + index * 7, SYMBOLS[index % 4], f"t/{index}\"x", sequence=index)
            for index in range(count)]


def quotes(count: int = 40) -> list[dict]:
    return [quote_event(FIRST_MS + index * 5, SYMBOLS[index % 4], sequence=index) for index in range(count)]


def compact(events: list[dict]) -> str:
    return json.dumps(events, separators=(",", ":"))


def spaced(events: list[dict]) -> str:
    return json.dumps(events)   # json.dumps's default: `"ev": "A", "sym": ...`


def roomy(events: list[dict]) -> str:
    """Spaces everywhere JSON allows them (but no newline: a frame is one WebSocket message either way)."""
    return " [ " + " , ".join("{ " + " , ".join(f"{json.dumps(key)} :  {json.dumps(value)}"
                                                  for key, value in event.items()) + " }" for event in events) + " ] "


def reordered(events: list[dict]) -> str:
    return json.dumps([dict(reversed(list(event.items()))) for event in events], separators=(",", ":"))


def escaped(events: list[dict]) -> str:
    """Every letter of every key and string value written as a \\u escape (`"\\u0065\\u0076":"\\u0041"`)."""
    def escape(text: str) -> str:
        return '"' + "".join(f"\\u{ord(char):04x}" for char in text) + '"'

    def value(item) -> str:
        return escape(item) if type(item) is str else json.dumps(item)
    return "[" + ",".join("{" + ",".join(f"{escape(key)}:{value(item)}" for key, item in event.items()) + "}"
                          for event in events) + "]"


SPELLINGS = {"spaced": spaced, "roomy": roomy, "reordered": reordered, "escaped": escaped}


def frames_of(events: list[dict], spell, size: int = 10) -> list[str]:
    return [spell(events[start:start + size]) for start in range(0, len(events), size)]


def store(data_dir: Path, subscriptions: tuple[str, ...], frames: list[str]) -> tuple[dict, WriterStats]:
    """The rows of each channel the writer stores for `frames` (all accepted as one batch, then flushed)."""
    stats = WriterStats()
    writer = BatchWriter(queue.Queue(), ParquetSink(data_dir), MarketCalendar(HOURS), stats, 30.0,
                         FakeClock(SESSION_NOW), subscriptions=subscriptions)
    writer.start_day()
    writer.accept_items([(1_749_564_000_000_000_000 + index, frame) for index, frame in enumerate(frames)])
    assert writer.flush() is True
    rows = {}
    for channel in writer.lanes:
        table = ds.dataset(data_dir / channel, format="parquet", partitioning="hive").to_table()
        rows[channel] = sorted(map(repr, table.to_pylist()))
    return rows, stats


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_bars_in_any_spelling_store_the_rows_of_compact_frames_without_the_per_event_path(
        tmp_path, monkeypatch, spelling):
    events = bars()
    expected, _ = store(tmp_path / "compact", ("A.*",), frames_of(events, compact))
    monkeypatch.setattr(parsing, "_per_event", _refuse)
    got, stats = store(tmp_path / spelling, ("A.*",), frames_of(events, SPELLINGS[spelling]))
    assert got == expected
    assert len(expected["A"]) == len(events)
    assert stats.rejected_invalid == 0 and stats.duplicates == 0


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_three_channels_in_any_spelling_store_the_rows_of_compact_frames(tmp_path, monkeypatch, spelling):
    """Frames of A, T and Q, interleaved, under three subscriptions: each frame goes to its channel's
    fast path whatever its spelling (escaped ones after a parse of their `ev` keys)."""
    subscriptions = ("A.*", "T.*", "Q.*")
    frames = [frame for group in zip_longest(frames_of(bars(), compact), frames_of(trades(), compact),
                                             frames_of(quotes(), compact)) for frame in group if frame]
    expected, _ = store(tmp_path / "compact", subscriptions, frames)
    monkeypatch.setattr(parsing, "_per_event", _refuse)
    spell = SPELLINGS[spelling]
    respelt = [spell(json.loads(frame)) for frame in frames]
    got, stats = store(tmp_path / spelling, subscriptions, respelt)
    assert got == expected
    assert [len(expected[name]) for name in ("A", "T", "Q")] == [len(bars()), len(trades()), len(quotes())]
    assert stats.rejected_invalid == 0


@pytest.mark.parametrize("spelling", ["compact", *sorted(SPELLINGS)])
def test_a_frame_mixing_channels_keeps_every_channels_rows(tmp_path, spelling):
    """A frame of A and T events together, routed to one channel's fast path, is refused there and parsed
    event by event: no T row is counted as a wrong A event."""
    spell = SPELLINGS.get(spelling, compact)
    mixed = [event for pair in zip(bars(8), trades(8)) for event in pair]
    got, stats = store(tmp_path, ("A.*", "T.*"), [spell(mixed), spell(bars(20)[8:])])
    assert len(got["A"]) == len(bars(20)) and len(got["T"]) == 8
    assert stats.rejected_invalid == 0


def test_one_bad_frame_among_many_costs_a_few_parses_not_one_per_frame(tmp_path, monkeypatch):
    """A refused batch is halved down to the bad frame: the good ones keep the fast path."""
    calls = []
    parse_fast = parsing._parse_fast
    monkeypatch.setattr(parsing, "_parse_fast", lambda *args, **kw: calls.append(len(args[1])) or parse_fast(*args, **kw))
    frames = frames_of(bars(64), compact, size=1)
    frames[100] = '[{"ev":"A","sym":"SPY","s":"not a number"}]'
    got, stats = store(tmp_path, ("A.*",), frames)
    assert len(got["A"]) == len(frames) - 1
    assert stats.rejected_reasons == {"bad_type": 1}
    assert len(calls) <= 2 * 9 + 1   # 256 frames: the whole, then two halves at each of 8 levels


def _refuse(channels, frames):
    raise AssertionError(f"{len(frames)} frame(s) fell to the per-event path: {frames[0][1][:80]}")
