"""Counters the reader and the writer keep for the heartbeat.

Each field has exactly one writing thread (the reader's or the writer's); the heartbeat thread only
reads them, so plain attributes are enough under the GIL and the hot path takes no lock.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class ReaderStats:
    state: str = "idle"                      # connecting | streaming | reconnecting | idle
    connected: bool = False
    reconnects: int = 0
    last_disconnect_reason: str | None = None
    dropped_queue_full: int = 0              # frames dropped because the writer fell behind
    frames_too_large: int = 0                # frames over the WebSocket size limit: the connection dropped them
    last_frame_too_large_at: datetime | None = None


@dataclass
class WriterStats:
    events_received: int = 0
    rows_backfilled: int = 0                 # rows stored from REST gap backfill (source "rest")
    rows_written: int = 0
    rows_written_by_channel: dict[str, int] = field(default_factory=dict)   # replaced, never updated in place
    batches_written: int = 0
    rows_pending: int = 0
    pending_since: datetime | None = None    # when the oldest row not yet written was accepted
    rejected_late: int = 0                   # bar started before the current trading day
    rejected_invalid: int = 0                # not a plausible bar of a subscribed symbol (reasons below)
    # rejected_invalid by reason (channels.REASONS): replaced, never updated in place, by the writer
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0                      # a (symbol, start) already stored today
    outside_session: int = 0                 # pre-market / after-hours bars, not stored
    write_errors: int = 0
    last_write_error: str | None = None
    last_flush_at: datetime | None = None
    clock_skew_seconds: float | None = None  # set while the wall clock and the bars disagree (clock_skew)


@dataclass
class BackfillStats:
    backfill_requests: int = 0
    backfill_failures: int = 0
    backfill_finished: int = 0               # requests filled or given up (requests - finished: still to do)
    gap_ledger_set_aside: int = 0            # ledger files set aside at start: unreadable or over the bound
    gaps_over_bound: int = 0                 # requests refused: the channel's ledger held MAX_LEDGER_GAPS
