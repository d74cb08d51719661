"""The holiday calendar fetched through the real RESTClient from a loopback server that answers like Polygon."""
from datetime import date

import pytest

from conftest import REPO_ROOT, TEST_API_KEY, ny
from fake_polygon import FakePolygon, holiday_rows
from spy_streamer.config import load_config
from spy_streamer.market_hours import HolidaySource, MarketCalendar
from spy_streamer.polygon_rest import RestAnswerError, fetch_upcoming_holidays, make_rest_client

HOURS = load_config(REPO_ROOT / "config" / "settings.yaml").market_hours
UPCOMING = "/v1/marketstatus/upcoming"


@pytest.fixture
def fake():
    with FakePolygon(api_key=TEST_API_KEY) as server:
        server.holidays = (
            holiday_rows("2026-11-26", "Thanksgiving")
            + holiday_rows("2026-11-27", "Thanksgiving", "early-close",
                           "2026-11-27T14:30:00.000Z", "2026-11-27T18:00:00.000Z")
            + holiday_rows("2026-12-25", "Christmas")
            + holiday_rows("2027-01-01", "New Years Day")
        )
        yield server


def calendar_for(fake, timeout=5.0):
    client = make_rest_client(TEST_API_KEY, fake.rest_base_url, timeout_seconds=timeout)
    source = HolidaySource(lambda: fetch_upcoming_holidays(client))
    return MarketCalendar(HOURS, source.for_year)


def test_holidays_and_early_close_parsed_from_rest(fake):
    calendar = calendar_for(fake)
    assert not calendar.is_market_open(ny(2026, 11, 26, 12))
    assert calendar.closed_reason(ny(2026, 11, 26, 12)) == "holiday: Thanksgiving"
    assert calendar.is_market_open(ny(2026, 11, 27, 12, 59))
    assert not calendar.is_market_open(ny(2026, 11, 27, 13, 0))
    assert calendar.session_on(date(2026, 11, 27)).close == ny(2026, 11, 27, 13, 0)
    assert calendar.session_on(date(2027, 1, 1)) is None
    assert calendar.is_market_open(ny(2026, 11, 25, 12))


def test_fetched_once_per_year(fake):
    calendar = calendar_for(fake)
    for hour in range(9, 17):
        calendar.is_market_open(ny(2026, 11, 24, hour))
        calendar.seconds_until_market_open(ny(2026, 11, 25, hour))
    assert fake.request_count(UPCOMING) == 1
    calendar.is_market_open(ny(2027, 1, 1, 12))
    assert fake.request_count(UPCOMING) == 2


def test_request_carries_key_in_header_not_url(fake):
    calendar_for(fake).is_market_open(ny(2026, 11, 24, 12))
    (path, query), = fake.rest_requests
    assert TEST_API_KEY not in path and TEST_API_KEY not in str(query)


@pytest.mark.parametrize("mode", ["500", "garbage", "wrong_shape", "hang"])
def test_rest_failure_warns_once_and_falls_back(fake, mode, caplog):
    fake.set_rest_failure(UPCOMING, mode)
    calendar = calendar_for(fake, timeout=0.3)
    with caplog.at_level("WARNING"):
        # Thanksgiving is unknown now: the plain weekly calendar says open. No exception.
        assert calendar.is_market_open(ny(2026, 11, 26, 12))
        assert calendar.is_market_open(ny(2026, 11, 26, 13))
    warnings = [record for record in caplog.records if getattr(record, "event", None) == "holidays_unavailable"]
    assert len(warnings) == 1
    assert TEST_API_KEY not in warnings[0].getMessage()


def test_connection_refused_falls_back(caplog):
    with FakePolygon(api_key=TEST_API_KEY) as server:
        base_url = server.rest_base_url
    client = make_rest_client(TEST_API_KEY, base_url, timeout_seconds=0.3)
    with pytest.raises(RestAnswerError):
        fetch_upcoming_holidays(client)
    calendar = MarketCalendar(HOURS, HolidaySource(lambda: fetch_upcoming_holidays(client)).for_year)
    with caplog.at_level("WARNING"):
        assert calendar.is_market_open(ny(2026, 11, 24, 12))
    ours = [r for r in caplog.records if r.name.startswith("spy_streamer")]
    assert [r.event for r in ours] == ["holidays_unavailable"]


def test_bad_key_is_a_failed_fetch(fake):
    client = make_rest_client("wrong-key", fake.rest_base_url, timeout_seconds=1)
    with pytest.raises(RestAnswerError):
        fetch_upcoming_holidays(client)
