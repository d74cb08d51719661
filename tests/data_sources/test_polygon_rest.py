"""GET /v1/marketstatus/upcoming through the real RESTClient from a loopback server that answers like Polygon.
(What the calendar does with the rows: tests/market/test_calendar_refresh.py.)"""
import pytest

from conftest import TEST_API_KEY
from fake_polygon import FakePolygon, holiday_rows
from spy_streamer.data_sources.polygon_rest import RestAnswerError, fetch_upcoming_holidays, make_rest_client

UPCOMING = "/v1/marketstatus/upcoming"


@pytest.fixture
def fake(fake):
    fake.holidays = holiday_rows("2026-11-26", "Thanksgiving")
    return fake


def test_rows_come_back_as_sent_with_the_key_in_the_header(fake):
    rows = fetch_upcoming_holidays(make_rest_client(TEST_API_KEY, fake.rest_base_url))
    assert rows == fake.holidays
    (path, query), = fake.rest_requests
    assert path == UPCOMING and TEST_API_KEY not in str(query)


@pytest.mark.parametrize("mode", ["500", "garbage", "wrong_shape", "hang"])
def test_a_failed_answer_raises(fake, mode):
    fake.set_rest_failure(UPCOMING, mode)
    with pytest.raises(RestAnswerError) as caught:
        fetch_upcoming_holidays(make_rest_client(TEST_API_KEY, fake.rest_base_url, timeout_seconds=0.3))
    assert TEST_API_KEY not in str(caught.value)


def test_connection_refused_raises():
    with FakePolygon(api_key=TEST_API_KEY) as server:
        base_url = server.rest_base_url
    with pytest.raises(RestAnswerError):
        fetch_upcoming_holidays(make_rest_client(TEST_API_KEY, base_url, timeout_seconds=0.3))


def test_bad_key_is_a_failed_fetch(fake):
    client = make_rest_client("wrong-key", fake.rest_base_url, timeout_seconds=1)
    with pytest.raises(RestAnswerError):
        fetch_upcoming_holidays(client)
