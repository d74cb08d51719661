"""Gap backfill: REST aggregates fetched page by page through the real RESTClient, retried on errors,
given up with one warning after a bound, and stopped promptly."""
from __future__ import annotations

import threading
import time

import pytest

from conftest import FakeClock, TEST_API_KEY, ny
from fake_polygon import session_timeline
from spy_streamer.backfill.gap_backfill import Gap, GapBackfiller, RequestPacer
from spy_streamer.capture.pipeline_stats import BackfillStats
from spy_streamer.data_sources.polygon_rest import RestAnswerError, fetch_second_aggs, iter_aggs_pages, make_rest_client

START_MS = int(ny(2026, 11, 24, 10, 0).timestamp() * 1000)
AGGS = "/v2/aggs/ticker/SPY/range/1/second/"


@pytest.fixture
def fake(fake):
    fake.add_to_timeline(session_timeline(START_MS, 1000))
    return fake


def rest(fake):
    return make_rest_client(TEST_API_KEY, fake.rest_base_url, timeout_seconds=1)


def test_all_pages_fetched_once_each(fake):
    results = fetch_second_aggs(rest(fake), "SPY", START_MS + 100_000, START_MS + 899_000, page_limit=64)
    assert [bar["t"] for bar in results] == [START_MS + i * 1000 for i in range(100, 900)]
    assert fake.request_count(AGGS) == 13                  # 800 bars in pages of 64
    assert set(results[0]) >= {"t", "o", "h", "l", "c", "v", "vw"}


@pytest.mark.parametrize("mode", ["garbage", "500"])
def test_a_bad_page_is_an_error_not_an_empty_answer(fake, mode):
    fake.set_rest_failure(AGGS, mode)
    with pytest.raises(RestAnswerError):
        fetch_second_aggs(rest(fake), "SPY", START_MS, START_MS + 10_000)


def test_an_empty_range_is_no_bars(fake):
    assert fetch_second_aggs(rest(fake), "SPY", START_MS - 60_000, START_MS - 1000) == []


class ScriptedFetch:
    """Fails `failures` times, then answers."""

    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0

    def __call__(self, gap, pace):
        self.calls += 1
        if self.calls <= self.failures:
            raise RestAnswerError("HTTP 500")
        return [[{"t": gap.from_ms}]]   # one page


def run_backfiller(fetch, attempts=3, retry_seconds=0.01):
    delivered, stats = [], BackfillStats()
    backfiller = GapBackfiller(fetch, delivered.append, stats, FakeClock(ny(2026, 11, 24, 10)),
                               attempts=attempts, retry_seconds=retry_seconds)
    thread = threading.Thread(target=backfiller.run)
    thread.start()
    return backfiller, thread, delivered, stats


def test_retries_then_delivers(caplog):
    fetch = ScriptedFetch(failures=2)
    backfiller, thread, delivered, stats = run_backfiller(fetch)
    backfiller.request(Gap("SPY", START_MS, START_MS + 5000))
    deadline = time.monotonic() + 5
    while not delivered and time.monotonic() < deadline:
        time.sleep(0.01)
    backfiller.stop()
    thread.join(2)
    assert fetch.calls == 3 and delivered[0].symbol == "SPY" and delivered[0].results == [{"t": START_MS}]
    assert stats.backfill_requests == 1 and stats.backfill_failures == 0


def test_gives_up_after_the_bound_with_one_warning(caplog):
    fetch = ScriptedFetch(failures=99)
    backfiller, thread, delivered, stats = run_backfiller(fetch, attempts=3)
    with caplog.at_level("INFO"):
        backfiller.request(Gap("SPY", START_MS, START_MS + 5000))
        deadline = time.monotonic() + 5
        while not stats.backfill_failures and time.monotonic() < deadline:
            time.sleep(0.01)
        backfiller.stop()
        thread.join(2)
    assert fetch.calls == 3 and delivered == [] and stats.backfill_failures == 1
    warnings = [record for record in caplog.records if getattr(record, "event", None) == "backfill_failed"]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"


def test_stop_interrupts_the_retry_wait():
    backfiller, thread, delivered, stats = run_backfiller(ScriptedFetch(failures=99), attempts=5, retry_seconds=30)
    backfiller.request(Gap("SPY", START_MS, START_MS + 5000))
    time.sleep(0.1)
    started = time.monotonic()
    backfiller.stop()
    thread.join(2)
    assert not thread.is_alive() and time.monotonic() - started < 1


def test_requests_are_paced_to_the_configured_rate():
    """A wildcard can open thousands of gaps at once: REST requests are spaced 1/rate apart."""
    clock = FakeClock(ny(2026, 11, 24, 10))
    waits: list[float] = []
    pacer = RequestPacer(20, clock, lambda seconds: waits.append(round(seconds, 6)))
    for _ in range(3):
        pacer()
    assert waits == [0.05, 0.1]           # the first at once, then one every 50 ms
    clock.advance(1)
    waits.clear()
    pacer()
    assert waits == []                    # idle long enough: no wait


def test_each_page_is_delivered_as_it_comes(fake):
    delivered, stats = [], BackfillStats()
    client = rest(fake)
    backfiller = GapBackfiller(lambda gap, pace: iter_aggs_pages(client, gap.symbol, "second", gap.from_ms, gap.to_ms,
                                                                 page_limit=100, pace=pace),
                               delivered.append, stats, FakeClock(ny(2026, 11, 24, 10)))
    backfiller.fill_remaining([Gap("SPY", START_MS, START_MS + 249_000)], delivered.append)
    assert [len(page.results) for page in delivered] == [100, 100, 50]
    assert {page.channel for page in delivered} == {"A"} and stats.backfill_finished == 1
