"""Polygon's list learned, merged, kept on disk and published: with an injected fetch, and through the real
RESTClient against the loopback fake Polygon."""
from __future__ import annotations

import json
import logging
import threading
import time as monotonic_time
from datetime import date

import pytest

from conftest import FakeClock, REPO_ROOT, TEST_API_KEY, ny, settings, write_settings
from fake_polygon import FakePolygon, holiday_rows
from spy_streamer.market.calendar_refresh import PolygonCalendarRefresher, polygon_refresher
from spy_streamer.market.calendar_store import (ANSWER_SPAN_DAYS, KnownDays, answer_window, apply_answer,
                                                calendar_path, load_calendar, load_known_days, save_known_days)
from spy_streamer.config import load_config
from spy_streamer.market.market_hours import MarketCalendar
from spy_streamer.data_sources.polygon_rest import fetch_upcoming_holidays, make_rest_client
from spy_streamer.market.special_days import SpecialDay

HOURS = load_config(REPO_ROOT / "config" / "settings.yaml").market_hours
UPCOMING = "/v1/marketstatus/upcoming"
MOURNING = holiday_rows("2026-11-24", "National Day of Mourning")          # a Tuesday the rules call open
HALF_DAY = holiday_rows("2026-11-25", "Half Day", "early-close", "2026-11-25T14:30:00.000Z",
                        "2026-11-25T17:00:00.000Z")


class Fetch:
    """An injected fetch: the rows it is given, or the error; counts its calls."""

    def __init__(self, rows=(), error=None):
        self.rows, self.error, self.calls = list(rows), error, 0

    def __call__(self):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.rows


@pytest.fixture
def store(tmp_path):
    return tmp_path / "heartbeat" / "calendar.json"


def refresher_for(store, fetch, calendar=None):
    calendar = calendar or MarketCalendar(HOURS)
    return PolygonCalendarRefresher(calendar, fetch, store, FakeClock(ny(2026, 11, 23, 8)))


def test_a_refresh_publishes_at_once_and_persists_with_its_fetch_time(store):
    refresher = refresher_for(store, Fetch(MOURNING + HALF_DAY))
    calendar = refresher.calendar
    assert calendar.is_market_open(ny(2026, 11, 24, 12))
    assert refresher.refresh() is True
    assert not calendar.is_market_open(ny(2026, 11, 24, 12))
    assert calendar.session_on(date(2026, 11, 25)).close == ny(2026, 11, 25, 12)
    document = json.loads(store.read_text())
    assert document["fetched_at"] == "2026-11-23T13:00:00Z"
    assert [row["date"] for row in document["days"]] == ["2026-11-24", "2026-11-25"]
    assert [path.name for path in store.parent.iterdir()] == ["calendar.json"]   # no temporary left


def test_the_cache_is_loaded_at_start_without_network(tmp_path):
    config = load_config(write_settings(tmp_path, settings(tmp_path)))
    assert load_calendar(config).is_market_open(ny(2026, 11, 24, 12))       # nothing learned yet
    refresher_for(calendar_path(config), Fetch(MOURNING)).refresh()
    restarted = load_calendar(config)
    assert not restarted.is_market_open(ny(2026, 11, 24, 12))
    assert restarted.closed_reason(ny(2026, 11, 24, 12)) == "holiday: National Day of Mourning"
    assert not restarted.is_market_open(ny(2025, 12, 25, 12))               # the rules still apply


def test_a_later_answer_that_leaves_a_day_out_retracts_it(store):
    """Seen: one answer closed a regular Tuesday; the truth (`[]`) came next, and the closure stayed in
    calendar.json for good ("never shrinks"): a restart still stored nothing that day."""
    fetch = Fetch(MOURNING + HALF_DAY)
    refresher = refresher_for(store, fetch)
    refresher.refresh()
    fetch.rows = holiday_rows("2026-12-31", "Late")                         # the two days left out
    assert refresher.refresh() is True
    for calendar in (refresher.calendar, MarketCalendar(HOURS, load_known_days(store).days)):
        assert calendar.session_on(date(2026, 11, 24)).close == ny(2026, 11, 24, 16)
        assert calendar.session_on(date(2026, 11, 25)).close == ny(2026, 11, 25, 16)
        assert calendar.session_on(date(2026, 12, 31)) is None
    fetch.rows = []                                                         # an empty answer retracts too
    refresher.refresh()
    assert load_known_days(store).days == {}


def test_days_past_the_answers_window_are_kept():
    far = date(2027, 6, 1)
    known = {far: SpecialDay(far, "Far"), date(2026, 11, 2): SpecialDay(date(2026, 11, 2), "Past"),
             date(2026, 11, 24): SpecialDay(date(2026, 11, 24), "Retracted")}
    learned = {date(2026, 12, 24): SpecialDay(date(2026, 12, 24), "Listed")}
    assert answer_window(learned, date(2026, 11, 23)) == (date(2026, 11, 23), date(2027, 2, 21))
    assert set(apply_answer(known, learned, date(2026, 11, 23))) == {far, date(2026, 11, 2), date(2026, 12, 24)}
    later = {date(2027, 7, 3): SpecialDay(date(2027, 7, 3), "Listed far")}     # reaches past `far`: retracts it
    assert set(apply_answer(known, later, date(2026, 11, 23))) == {date(2026, 11, 2), date(2027, 7, 3)}
    assert ANSWER_SPAN_DAYS == 90


def test_a_later_answer_wins_for_the_days_it_lists(store):
    fetch = Fetch(HALF_DAY)
    refresher = refresher_for(store, fetch)
    refresher.refresh()
    fetch.rows = holiday_rows("2026-11-25", "Closed after all")
    refresher.refresh()
    assert refresher.calendar.closed_reason(ny(2026, 11, 25, 10)) == "holiday: Closed after all"


def test_failures_warn_once_per_streak_and_recovery_is_said_once(store, caplog):
    fetch = Fetch(error=RuntimeError("down"))
    refresher = refresher_for(store, fetch)
    with caplog.at_level(logging.INFO, logger="spy_streamer"):
        assert [refresher.refresh() for _ in range(3)] == [False, False, False]
        fetch.error, fetch.rows = None, MOURNING
        assert refresher.refresh() and refresher.refresh()
        fetch.error = RuntimeError("down again")
        assert not refresher.refresh()
    events = [record.event for record in caplog.records if hasattr(record, "event")]
    assert events == ["holidays_unavailable", "holidays_available", "holidays_unavailable"]
    assert fetch.calls == 6                                  # one request per refresh, whatever the year
    assert refresher.calendar.session_on(date(2026, 11, 24)) is None   # a failure forgets nothing


def test_queries_never_fetch(store):
    fetch = Fetch(MOURNING)
    calendar = refresher_for(store, fetch).calendar
    for year in range(2024, 2029):                           # year ends, holidays, the next open
        calendar.current_or_next_session(ny(year, 12, 31, 16))
        calendar.closed_reason(ny(year, 1, 1, 12))
    assert fetch.calls == 0 and not store.exists()


def test_an_unreadable_cache_is_reported_and_the_rules_still_apply(store, caplog):
    store.parent.mkdir(parents=True)
    store.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        calendar = MarketCalendar(HOURS, load_known_days(store).days)
    assert [record.event for record in caplog.records] == ["calendar_cache_unreadable"]
    assert not calendar.is_market_open(ny(2025, 12, 25, 12))
    assert refresher_for(store, Fetch(MOURNING), calendar).refresh()   # the next refresh rewrites it
    assert date(2026, 11, 24) in load_known_days(store).days


def test_an_unwritable_cache_keeps_the_days_in_memory(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    refresher = refresher_for(blocker / "calendar.json", Fetch(MOURNING))
    with caplog.at_level(logging.WARNING):
        assert refresher.refresh() is True
    assert [record.event for record in caplog.records] == ["calendar_cache_unwritable"]
    assert refresher.calendar.session_on(date(2026, 11, 24)) is None


def test_concurrent_refreshes_apply_whole_answers(store):
    answers = [MOURNING, HALF_DAY] * 5
    refresher = refresher_for(store, answers.pop)                       # (list.pop is atomic)
    threads = [threading.Thread(target=refresher.refresh) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    days = refresher.calendar.polygon_days
    assert set(days) in ({date(2026, 11, 24)}, {date(2026, 11, 25)})   # one answer, not a mix
    assert load_known_days(store).days == days                          # the file says what the memory does


def test_save_and_load_round_trip(store):
    known = KnownDays({date(2026, 11, 24): SpecialDay(date(2026, 11, 24), "x")}, ny(2026, 11, 23, 8))
    save_known_days(store, known)
    assert load_known_days(store) == known


# --- through the real REST client ---

@pytest.fixture
def fake(fake):
    fake.holidays = MOURNING + HALF_DAY + holiday_rows("2027-01-01", "New Years Day")
    return fake


def rest_refresher(fake, store, timeout=5.0):
    client = make_rest_client(TEST_API_KEY, fake.rest_base_url, timeout_seconds=timeout)
    return refresher_for(store, lambda: fetch_upcoming_holidays(client))


def test_learned_from_rest_with_the_key_in_the_header(fake, store):
    refresher = rest_refresher(fake, store)
    assert refresher.refresh()
    calendar = refresher.calendar
    assert calendar.closed_reason(ny(2026, 11, 24, 12)) == "holiday: National Day of Mourning"
    assert calendar.session_on(date(2026, 11, 25)).close == ny(2026, 11, 25, 12)
    (path, query), = fake.rest_requests
    assert path == UPCOMING and TEST_API_KEY not in str(query)


@pytest.mark.parametrize("mode", ["500", "garbage", "wrong_shape", "hang"])
def test_rest_failure_warns_once_within_the_timeout(fake, store, mode, caplog):
    fake.set_rest_failure(UPCOMING, mode)
    refresher = rest_refresher(fake, store, timeout=0.3)
    started = monotonic_time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert refresher.refresh() is False
        assert refresher.refresh() is False
    assert monotonic_time.monotonic() - started < 3
    warnings = [record for record in caplog.records if getattr(record, "event", None) == "holidays_unavailable"]
    assert len(warnings) == 1 and TEST_API_KEY not in warnings[0].getMessage()
    assert not refresher.calendar.is_market_open(ny(2025, 12, 25, 12))     # the rules still apply
    assert not store.exists()


def test_connection_refused_is_a_failed_refresh(tmp_path, caplog):
    with FakePolygon(api_key=TEST_API_KEY) as server:
        base_url = server.rest_base_url
    config = load_config(write_settings(tmp_path, settings(tmp_path, polygon={"rest_base_url": base_url})))
    calendar = load_calendar(config)
    with caplog.at_level(logging.WARNING):
        assert polygon_refresher(config, calendar, TEST_API_KEY, timeout_seconds=0.3).refresh() is False
    ours = [record for record in caplog.records if record.name.startswith("spy_streamer")]
    assert [record.event for record in ours] == ["holidays_unavailable"]
