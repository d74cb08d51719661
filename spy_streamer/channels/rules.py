"""The rules every stored row passes, vectorized over a channel's table: a plausible ticker of a symbol
subscribed on that channel, then the channel's own checks (`Channel.checks`). One definition for every
path (fast, per-event, REST); each refusal is counted under its first broken rule. A REST page passes one
more: each row lies within the range that was asked for (a server's extra rows are not a backfill)."""
from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from .base import TICKER_PATTERN, Channel, keep_passing, one_array, within
from .subscriptions import symbols_of


class ChannelRules:
    def __init__(self, channel: Channel, subscriptions: tuple[str, ...]):
        self.channel = channel
        self.any_symbol = f"{channel.name}.*" in subscriptions
        self.symbols = pa.array(symbols_of(channel.name, subscriptions), pa.string())

    def apply(self, table: pa.Table, rejected: Counter, requested: tuple[int, int] | None = None) -> pa.Table:
        """The rows of `table` that break no rule; each other row counted in `rejected` under its first broken
        rule. `requested`: a REST page's (first, last) row time asked for, in ms, both inclusive."""
        if not table.num_rows:
            return table
        columns = {name: one_array(table.column(name)) for name in self.channel.data_columns}
        plausible, subscribed = self._symbol_checks(columns["symbol"])
        checks = [("bad_symbol", plausible), ("unsubscribed", subscribed)] + self.channel.checks(columns)
        if requested is not None:
            checks.append(("outside_request", within(self.channel.time_ms(table), *requested)))
        return keep_passing(table, checks, rejected)

    def _symbol_checks(self, symbols: pa.Array) -> tuple[pa.Array | bool, pa.Array | bool]:
        # Checked once per distinct symbol (a batch has few), and spread over the rows only when one fails.
        encoded = pc.dictionary_encode(symbols)
        names = encoded.dictionary
        plausible = pc.match_substring_regex(names, TICKER_PATTERN)
        subscribed = plausible if self.any_symbol else pc.is_in(names, value_set=self.symbols)
        return tuple(True if pc.all(check).as_py() else check.take(encoded.indices)
                     for check in (plausible, subscribed))
