"""The work after a close, on its own service thread (the supervisor must stay free for signals): the
gaps no live row will end now, then the day's compaction (local files) or partition rewrite (the lake)."""
from __future__ import annotations

import logging
from datetime import date
from typing import Callable

from ..channels.subscriptions import channel_names
from ..storage.compaction import CompactionStats, compact_after_close
from .capture_session import CaptureSession
from .service import Service

log = logging.getLogger(__name__)


class AfterClose(Service):
    thread_name = "after-close"

    def __init__(self, session: CaptureSession, day: date, config, lake=None,
                 compaction_stats: CompactionStats | None = None, on_done: Callable[[], object] = lambda: None):
        """`compaction_stats` keeps each channel's failed compaction for the heartbeat and `check`;
        `on_done()` (a heartbeat) tells them once the work is over."""
        super().__init__()
        self.session, self.day, self.config, self.lake = session, day, config, lake
        self.compaction_stats = compaction_stats or CompactionStats()
        self.on_done = on_done
        self.backfiller = session.backfiller.for_close()
        self.holds_rows = True   # until the gap bars are written: abandoning it then loses rows

    def run(self) -> None:
        self._fill_gaps_left_at_close()
        self.holds_rows = False
        self._compact()

    def _wake(self) -> None:
        self.backfiller.stop()   # ends a paced wait of the gap fill at once

    def _fill_gaps_left_at_close(self) -> None:
        """Fetch what is missing up to the close: the gaps no live row ended and those the backfill had not
        reached. The session's threads have stopped: its writer and ledger are used from this thread alone.
        What could not be filled stays in the ledger, marked so, for `report`."""
        writer, backfiller = self.session.writer, self.backfiller
        backfiller.fill_remaining(writer.gaps_left_open(), lambda rows: writer.accept_items([rows]))
        writer.flush()
        backfiller.save_ledger()   # after the flush: the filled gaps' rows are on disk

    def _compact(self) -> None:
        """The day is over: one sorted file per channel and day instead of hundreds of micro-batches (with
        the lake: a rewrite of the day's partitions, as the staged files move into the table). A stop
        cancels it (the merge runs in a child process; nothing changes until its result is verified). Each
        channel's failure is logged and kept for the heartbeat and `check`; the others still run."""
        market_session = self.session.market_session
        try:
            if self.lake is not None:
                self.lake.compact_session(market_session.open, market_session.close)
            else:
                compact_after_close(self.config.paths.data_dir, self.day,
                                    channel_names(self.config.polygon.subscriptions), self.compaction_stats,
                                    cancel=self.stop_requested)
        except Exception:  # a bug in it must not stop the next day's capture; every row stays where it was
            log.exception("compaction of %s crashed; every row stays where it was (micro-batches, or the lake's "
                          "appended files)", self.day, extra={"event": "compaction_failed"})
        self.on_done()
