"""One rule set for every source (issue 16, section 4): a REST row passes the rules a WebSocket row
passes, bounds no real print reaches included, plus a bar on a whole second (minute) and a row within
the range asked for. Each refusal counted under its reason; crossed and locked quotes are kept."""
from __future__ import annotations

import pytest

from fake_polygon import agg_event, quote_event, quote_result, trade_event, trade_result
from spy_streamer.capture.queue_items import RestBars
from spy_streamer.channels.base import MAX_PRICE, MAX_SHARES, MIN_PRICE
from test_batch_writer import Rig, data_dir, ms, ny  # noqa: F401 (fixture data_dir)

T0 = ms(ny(2025, 6, 10, 9, 45))
SUBSCRIPTIONS = ("A.SPY", "AM.SPY", "T.SPY", "Q.SPY")


def second_bar(start_ms: int = T0, **fields) -> dict:
    return {**agg_event(start_ms), **fields}


def minute_bar(start_ms: int = T0, **fields) -> dict:
    return {**agg_event(start_ms), "ev": "AM", "e": start_ms + 60_000, **fields}


def bar_result(event: dict) -> dict:
    """The bar as /v2/aggs answers it."""
    return {"t": event["s"], "o": event["o"], "h": event["h"], "l": event["l"], "c": event["c"], "v": event["v"],
            "vw": event["vw"], "n": 1}


def rest_of(channel: str, event: dict) -> dict:
    return {"A": bar_result, "AM": bar_result, "T": trade_result, "Q": quote_result}[channel](event)


def time_of(channel: str, event: dict) -> int:
    return event["s"] if channel in ("A", "AM") else event["t"]


# (channel, a WebSocket event, the reason it is refused): each measured case of the issue among them.
HOSTILE = [
    ("A", second_bar(v=2 ** 62), "bad_volume"),                                # measured: volume 2^62
    ("A", second_bar(o=1e308, h=1e308), "bad_price"),                          # measured: prices of 1e308
    ("A", second_bar(l=1e-300), "bad_price"),                                  # measured: a low of 1e-300
    ("A", second_bar(T0 + 500), "bad_start"),                     # measured: a bar at .500 s
    ("A", second_bar(v=MAX_SHARES), "bad_volume"),
    ("A", second_bar(vw=MAX_PRICE * 2), "bad_price"),
    ("AM", minute_bar(T0 + 30_000), "bad_start"),               # a minute bar at :30
    ("AM", minute_bar(v=2 ** 62), "bad_volume"),
    ("T", {**trade_event(T0), "s": 1e300}, "bad_volume"),                      # measured: size 1e300
    ("T", {**trade_event(T0), "ds": "99999999999999999999"}, "bad_volume"),    # the exact size as absurd
    ("T", trade_event(T0, sequence=-1), "bad_id"),                             # measured: negative sequence
    ("T", trade_event(T0, price=1e308), "bad_price"),
    ("T", trade_event(T0, price=1e-300), "bad_price"),
    ("Q", {**quote_event(T0), "bs": 1e300}, "bad_volume"),
    ("Q", quote_event(T0, sequence=-7), "bad_id"),
    ("Q", quote_event(T0, bid=1e-300), "bad_price"),
    ("Q", quote_event(T0, ask=1e308), "bad_price"),
]


@pytest.mark.parametrize("channel, event, reason", HOSTILE)
def test_a_hostile_row_is_refused_alike_from_the_stream_and_from_rest(data_dir, channel, event, reason):
    rig = Rig(data_dir, subscriptions=SUBSCRIPTIONS)
    rig.send([event])
    assert rig.stats.rejected_reasons == {reason: 1} and rig.stats.rows_pending == 0
    at = time_of(channel, event)
    rig.writer.accept_items([RestBars("SPY", [rest_of(channel, event)], 0, channel, requested=(at - 1000, at + 1000))])
    assert rig.stats.rejected_reasons == {reason: 2} and rig.stats.rows_pending == 0


# Just inside the bounds: kept from both sources.
PLAUSIBLE = [
    ("A", second_bar(o=MAX_PRICE, h=MAX_PRICE, c=MAX_PRICE, l=MIN_PRICE, vw=1.0, v=MAX_SHARES - 1, av=MAX_SHARES - 1)),
    ("AM", minute_bar(T0 + 60_000)),
    ("T", trade_event(T0, price=MIN_PRICE, size=MAX_SHARES - 1, sequence=0)),
    ("T", trade_event(T0, price=MAX_PRICE)),
    ("Q", quote_event(T0, bid=500.02, ask=500.01)),                            # crossed: a real market state
    ("Q", quote_event(T0, bid=500.01, ask=500.01)),                            # locked: so is this
    ("Q", quote_event(T0, bid=0.0, ask=MAX_PRICE, sequence=0)),                # one-sided
]


@pytest.mark.parametrize("channel, event", PLAUSIBLE)
def test_rows_within_the_bounds_are_kept_from_both_sources(data_dir, channel, event):
    rig = Rig(data_dir, subscriptions=SUBSCRIPTIONS)
    at = time_of(channel, event)
    rig.writer.accept_items([RestBars("SPY", [rest_of(channel, event)], 0, channel, requested=(at, at))])
    assert rig.stats.rows_pending == 1 and rig.stats.rows_backfilled == 1
    live = Rig(data_dir / "ws", subscriptions=SUBSCRIPTIONS)
    live.send([event])
    assert live.stats.rows_pending == 1 and not live.stats.rejected_reasons


@pytest.mark.parametrize("channel, events", [
    ("A", [second_bar(T0 - 1000), second_bar(T0), second_bar(T0 + 9000), second_bar(T0 + 10_000)]),
    ("AM", [minute_bar(T0 - 60_000), minute_bar(T0), minute_bar(T0 + 120_000)]),
    ("T", [trade_event(T0 - 1, trade_id="1"), trade_event(T0, trade_id="2"), trade_event(T0 + 9999, trade_id="3"),
           trade_event(T0 + 10_000, trade_id="4")]),
    ("Q", [quote_event(T0 - 1, sequence=1), quote_event(T0, sequence=2), quote_event(T0 + 9999, sequence=3),
           quote_event(T0 + 10_000, sequence=4)]),
])
def test_rest_rows_outside_the_requested_range_are_refused_and_counted(data_dir, channel, events):
    """Measured: bars of minutes nobody asked for were stored. The range asked is T0 .. T0 + 9999 ms."""
    rig = Rig(data_dir, subscriptions=SUBSCRIPTIONS)
    rig.writer.accept_items([RestBars("SPY", [rest_of(channel, event) for event in events], 0, channel,
                                      requested=(T0, T0 + 9999))])
    inside = sum(T0 <= time_of(channel, event) <= T0 + 9999 for event in events)
    assert rig.stats.rows_pending == inside >= 1
    assert rig.stats.rejected_reasons == {"outside_request": len(events) - inside}


def test_a_rest_bar_of_absurd_transactions_is_refused(data_dir):
    rig = Rig(data_dir, subscriptions=SUBSCRIPTIONS)
    results = [dict(bar_result(second_bar(T0)), n=2 ** 62), dict(bar_result(second_bar(T0 + 1000)), n=-1),
               bar_result(second_bar(T0 + 2000))]
    rig.writer.accept_items([RestBars("SPY", results, 0, "A", requested=(T0, T0 + 2000))])
    assert rig.stats.rows_pending == 1 and rig.stats.rejected_reasons == {"bad_volume": 2}


def test_a_rest_tick_keeps_its_nanoseconds_within_the_last_millisecond_asked(data_dir):
    """The range is in ms, inclusive: a trade at T0 + 9999.999 ms is inside, one at T0 + 10 s is not."""
    rig = Rig(data_dir, subscriptions=SUBSCRIPTIONS)
    inside = dict(trade_result(trade_event(T0 + 9999, trade_id="1")), sip_timestamp=(T0 + 9999) * 10 ** 6 + 999_999)
    outside = dict(trade_result(trade_event(T0, trade_id="2")), sip_timestamp=(T0 + 10_000) * 10 ** 6)
    rig.writer.accept_items([RestBars("SPY", [inside, outside], 0, "T", requested=(T0, T0 + 9999))])
    assert rig.stats.rows_pending == 1 and rig.stats.rejected_reasons == {"outside_request": 1}


def test_the_bounds_are_documented_in_the_readme():
    from conftest import REPO_ROOT
    readme = (REPO_ROOT / "README.md").read_text()
    for text in ("0.000001", "10,000,000", "10^12", "bad_start", "outside_request", "crossed"):
        assert text in readme, text


def test_the_daemon_refuses_a_hostile_backfill_and_counts_it_in_the_heartbeat(start, fake):
    """The daemon's own gap backfill against a REST that adds absurd rows to every answer: the day holds
    exactly the real bars, and the heartbeat counts each refusal under its reason."""
    from daemon_harness import stored_rows, wait_for
    from test_faults import Timeline, assert_complete, live_then_fault_then_live

    run = start()
    timeline = Timeline()
    missed = timeline.during[10]["s"]
    real = bar_result(timeline.during[20])
    fake.extra_aggs[("SPY", "second")] = [dict(real, v=2 ** 62), dict(real, o=1e308, h=1e308), dict(real, l=1e-300),
                                          dict(real, t=missed + 500), dict(real, t=missed + 3_600_000)]
    live_then_fault_then_live(run, fake, timeline, lambda: fake.drop_connections("abrupt"))
    assert_complete(run, timeline)
    heartbeat = wait_for(lambda: (run.heartbeat() or {}).get("rows_backfilled") == len(timeline.during)
                         and run.heartbeat(), what="the backfill counted")
    reasons = heartbeat["rejected_reasons"]
    assert set(reasons) == {"bad_volume", "bad_price", "bad_start", "outside_request"}, reasons
    assert reasons["bad_price"] == 2 * reasons["bad_volume"] and reasons["bad_volume"] >= 1
    assert max(row["volume"] for row in stored_rows(run.data_dir)) < MAX_SHARES
    assert run.daemon.stop()[0] == 0
