"""Drive tests/fake_polygon.py through the real polygon-api-client.

Run with ``pytest -o pythonpath=tests`` (setup.cfg will set ``pythonpath = tests``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time

import pytest
import urllib3
from polygon import RESTClient, WebSocketClient
from polygon.exceptions import AuthError, BadResponse
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from conftest import TEST_API_KEY
from fake_polygon import (
    MAX_CONNECTIONS_MESSAGE,
    FakePolygon,
    agg_event,
    holiday_rows,
    session_timeline,
)

KEY = TEST_API_KEY
T0 = 1_767_277_800_000  # 2026-01-01 14:30:00 UTC
FAST_RECONNECT = {"reconnect_delays": lambda: itertools.repeat(0.05)}


def eventually(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class ClientRun:
    """polygon.WebSocketClient.connect() running on its own loop in a thread.

    Collects every raw frame handed to the processor (raw=True).
    """

    def __init__(self, fake: FakePolygon, api_key: str = KEY, subs=("A.SPY",),
                 max_reconnects: int = 0, **connect_kwargs):
        self.client = WebSocketClient(api_key=api_key, feed=fake.ws_feed, secure=False,
                                      raw=True, max_reconnects=max_reconnects,
                                      subscriptions=list(subs))
        self.connect_kwargs = connect_kwargs
        self.frames: list[str] = []
        self.exc: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            await self.client.connect(self._processor, **self.connect_kwargs)
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            self.exc = exc
        finally:
            self.done.set()

    async def _processor(self, frame: str) -> None:
        self.frames.append(frame)

    def messages(self) -> list[dict]:
        """Every JSON object received (frames that are not JSON arrays are skipped)."""
        out = []
        for frame in list(self.frames):
            try:
                out.extend(json.loads(frame))
            except ValueError:
                pass
        return out

    def aggs(self) -> list[dict]:
        return [m for m in self.messages() if m.get("ev") == "A"]

    def finished(self, timeout: float = 3.0) -> bool:
        return self.done.wait(timeout)

    def __enter__(self) -> "ClientRun":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.done.is_set():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout=3)


@pytest.fixture
def rest(fake):
    return RESTClient(KEY, base=fake.rest_base_url, retries=0, read_timeout=2)


# ---------------------------------------------------------------- WebSocket


def test_connect_auth_subscribe_and_receive(fake):
    events = session_timeline(T0, 450)
    with ClientRun(fake) as run:
        assert fake.wait_for_subscribers(1, timeout=3)
        assert fake.push(events) == 450
        assert fake.push([agg_event(T0, "QQQ")]) == 0  # nobody subscribed to QQQ
        assert eventually(lambda: len(run.aggs()) == 450)

    assert run.aggs() == events
    # raw=True: the processor also sees the subscribe ack (connected/auth are eaten).
    assert run.messages()[0] == {"ev": "status", "status": "success",
                                 "message": "subscribed to: A.SPY"}
    assert [len(json.loads(f)) for f in run.frames[1:]] == [200, 200, 50]
    assert fake.connections_total == 1
    assert fake.auth_attempts == [KEY]
    assert fake.subscriptions == ["A.SPY"]
    assert fake.sent_events == events
    assert ("QQQ", T0) in fake.timeline and len(fake.timeline) == 451


def test_agg_event_and_timeline_shape():
    event = agg_event(T0)
    assert set(event) == {"ev", "sym", "v", "av", "dv", "dav", "op", "vw", "o", "c", "h", "l", "a",
                          "z", "s", "e"}
    assert agg_event(T0, otc=True)["otc"] is True   # Polygon leaves `otc` off unless it is true
    assert event["e"] - event["s"] == 1000
    timeline = session_timeline(T0, 5, "QQQ")
    assert timeline == session_timeline(T0, 5, "QQQ")
    assert [e["s"] for e in timeline] == [T0 + i * 1000 for i in range(5)]
    assert all(e["sym"] == "QQQ" and e["l"] <= e["o"] <= e["h"] for e in timeline)
    assert timeline[-1]["av"] == sum(e["v"] for e in timeline)


def test_protocol_multi_subscribe_unsubscribe_and_wildcard(fake):
    async def scenario():
        async with ws_connect(f"ws://{fake.ws_feed}/stocks") as ws:
            assert json.loads(await ws.recv())[0]["status"] == "connected"
            await ws.send(json.dumps({"action": "subscribe", "params": "A.SPY"}))
            assert json.loads(await ws.recv())[0]["status"] == "error"  # not authed yet
            await ws.send(json.dumps({"action": "auth", "params": KEY}))
            assert json.loads(await ws.recv())[0]["status"] == "auth_success"
            await ws.send(json.dumps({"action": "subscribe", "params": "A.SPY,A.QQQ"}))
            assert [m["message"] for m in json.loads(await ws.recv())] == [
                "subscribed to: A.SPY", "subscribed to: A.QQQ"]
            await ws.send(json.dumps({"action": "unsubscribe", "params": "A.QQQ"}))
            assert json.loads(await ws.recv())[0]["message"] == "unsubscribed to: A.QQQ"

            both = [agg_event(T0, "SPY"), agg_event(T0, "QQQ")]
            assert await asyncio.to_thread(fake.push, both) == 1
            assert [e["sym"] for e in json.loads(await ws.recv())] == ["SPY"]

            await ws.send(json.dumps({"action": "subscribe", "params": "A.*"}))
            await ws.recv()
            assert await asyncio.to_thread(fake.push, both) == 2
            assert [e["sym"] for e in json.loads(await ws.recv())] == ["SPY", "QQQ"]

            assert await asyncio.to_thread(fake.push_raw, "not json") == 1
            assert await ws.recv() == "not json"

    asyncio.run(scenario())
    assert fake.subscriptions == ["A.SPY", "A.SPY,A.QQQ", "A.*"]


def test_bad_key_raises_auth_error(fake):
    with ClientRun(fake, api_key="wrong") as run:
        assert run.finished()
    assert isinstance(run.exc, AuthError)
    assert fake.auth_attempts == ["wrong"]
    assert fake.active_connections() == 0


@pytest.mark.parametrize("mode, expected", [
    ("abrupt", ConnectionClosedError),
    (1000, None),
    (1001, None),
    (1011, ConnectionClosedError),
])
def test_drop_modes_end_connect(fake, mode, expected):
    with ClientRun(fake) as run:
        assert fake.wait_for_subscribers(1, timeout=3)
        assert fake.drop_connections(mode) == 1
        assert run.finished()
    assert fake.active_connections() == 0
    if expected is None:
        assert run.exc is None  # ConnectionClosedOK: connect() simply returns
    else:
        assert isinstance(run.exc, expected)
        if mode == "abrupt":
            assert run.exc.rcvd is None  # no close frame was received
        else:
            assert run.exc.rcvd.code == mode


def test_client_reconnects_and_resubscribes_after_error_close(fake):
    with ClientRun(fake, max_reconnects=1) as run:
        assert fake.wait_for_subscribers(1, timeout=3)
        fake.drop_connections(1011)
        assert eventually(lambda: fake.connections_total == 2 and fake.active_connections())
        assert fake.wait_for_subscribers(1, timeout=3)
        assert fake.push(session_timeline(T0, 3)) == 3
        assert eventually(lambda: len(run.aggs()) == 3)
    assert fake.subscriptions == ["A.SPY", "A.SPY"]


def test_max_connections_status_is_delivered_then_closed(fake):
    fake.set_max_connections_once()
    with ClientRun(fake) as run:
        assert run.finished()
    assert isinstance(run.exc, ConnectionClosedError) and run.exc.rcvd.code == 1008
    assert {"ev": "status", "status": "max_connections",
            "message": MAX_CONNECTIONS_MESSAGE} in run.messages()
    assert fake.subscriptions == []  # the kicked client's subscribe was not honoured

    with ClientRun(fake):  # the flag is one-shot
        assert fake.wait_for_subscribers(1, timeout=3)


def test_refuse_fails_handshake(fake):
    fake.set_refuse(True)

    async def handshake():
        async with ws_connect(f"ws://{fake.ws_feed}/stocks"):
            pass

    with pytest.raises(InvalidStatus) as info:
        asyncio.run(handshake())
    assert info.value.response.status_code == 503

    # polygon-api-client passes process_exception=lambda exc: None, so websockets
    # retries failed handshakes forever, whatever max_reconnects says.
    with ClientRun(fake, **FAST_RECONNECT) as run:
        assert eventually(lambda: fake.refused_handshakes >= 4)
        assert not run.done.is_set()
        fake.set_refuse(False)
        assert fake.wait_for_subscribers(1, timeout=3)
    assert fake.connections_total == 1


def test_blast_reaches_the_client_without_recording(fake):
    with ClientRun(fake) as run:
        assert fake.wait_for_subscribers(1, timeout=3)
        elapsed = fake.blast(5000, frame_size=250)
        assert elapsed > 0
        assert eventually(lambda: len(run.aggs()) == 5000)
    assert len({e["s"] for e in run.aggs()}) == 5000
    assert fake.sent_events == [] and fake.timeline == {}


def test_close_is_prompt_with_connected_client_and_hung_request():
    fake = FakePolygon(api_key=KEY).start()
    fake.set_rest_failure("/v1", "hang")
    slow = RESTClient(KEY, base=fake.rest_base_url, retries=0, read_timeout=20)
    errors = []
    hung = threading.Thread(target=lambda: errors.append(_capture(slow.get_market_holidays)))
    with ClientRun(fake) as run:
        assert fake.wait_for_subscribers(1, timeout=3)
        hung.start()
        assert eventually(lambda: fake.request_count("/v1") == 1)
        started = time.monotonic()
        fake.close()
        assert time.monotonic() - started < 1.0
        assert run.finished()
    hung.join(timeout=2)
    assert run.exc is None  # closed with 1001 going away -> connect() returns
    assert errors and isinstance(errors[0], Exception)


def _capture(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return exc


# --------------------------------------------------------------------- REST


def test_holidays_round_trip(fake, rest):
    fake.holidays = holiday_rows("2026-11-26", "Thanksgiving") + holiday_rows(
        "2026-11-27", "Thanksgiving", "early-close",
        "2026-11-27T14:30:00.000Z", "2026-11-27T18:00:00.000Z")
    resp = rest.get_market_holidays(raw=True)
    assert json.loads(resp.data) == fake.holidays
    parsed = rest.get_market_holidays()
    assert [(h.exchange, h.status) for h in parsed[:3]] == [
        ("NYSE", "closed"), ("NASDAQ", "closed"), ("OTC", "closed")]
    assert parsed[3].close == "2026-11-27T18:00:00.000Z"
    assert fake.rest_requests == [("/v1/marketstatus/upcoming", {})] * 2


def test_wrong_key_is_401(fake):
    with pytest.raises(BadResponse, match="Unknown API Key"):
        RESTClient("nope", base=fake.rest_base_url, retries=0).get_market_holidays()


def test_failure_modes(fake, rest):
    fake.holidays = holiday_rows("2026-12-25", "Christmas")
    path = "/v1/marketstatus"

    fake.set_rest_failure(path, "500")
    # urllib3 retries 500s (status_forcelist) and then raises MaxRetryError, not BadResponse.
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        rest.get_market_holidays()

    fake.set_rest_failure(path, "garbage")
    assert rest.get_market_holidays(raw=True).data == b"<html>not json</html>"
    assert rest.get_market_holidays() == []  # decode errors are swallowed

    fake.set_rest_failure(path, "wrong_shape")
    assert json.loads(rest.get_market_holidays(raw=True).data) == {"status": "OK"}
    assert rest.get_market_holidays().status == "OK"  # a single object, not a list

    fake.set_rest_failure(path, "hang")
    impatient = RESTClient(KEY, base=fake.rest_base_url, retries=0, read_timeout=0.2)
    # RESTClient never passes its Timeout to urllib3: read_timeout alone does nothing.
    impatient.client.connection_pool_kw["timeout"] = impatient.timeout
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.MaxRetryError) as info:
        impatient.get_market_holidays()
    assert isinstance(info.value.reason, urllib3.exceptions.ReadTimeoutError)
    assert time.monotonic() - started < 2

    fake.set_rest_failure(path, None)
    assert len(rest.get_market_holidays()) == 3


def test_rest_client_ignores_its_read_timeout(fake):
    fake.set_rest_failure("/v1", "hang")
    client = RESTClient(KEY, base=fake.rest_base_url, retries=0, read_timeout=0.1)
    outcome = []
    caller = threading.Thread(target=lambda: outcome.append(_capture(client.get_market_holidays)),
                              daemon=True)
    caller.start()
    caller.join(timeout=0.6)
    assert caller.is_alive() and outcome == []  # still waiting, long past read_timeout
    fake.close()  # releases the hung handler, which hangs up without answering
    caller.join(timeout=2)
    assert outcome and isinstance(outcome[0], Exception)


def test_failure_count_is_retried_by_default_client(fake):
    fake.holidays = holiday_rows("2026-12-25", "Christmas")
    fake.set_rest_failure_count("/v1/marketstatus/upcoming", "500", 2)
    default_client = RESTClient(KEY, base=fake.rest_base_url)  # retries=3
    assert len(default_client.get_market_holidays()) == 3
    assert fake.request_count("/v1/marketstatus") == 3


def test_aggs_pagination_returns_every_row_once(fake, rest):
    spy = session_timeline(T0, 1234)
    fake.add_to_timeline(spy + session_timeline(T0, 50, "QQQ"))
    aggs = list(rest.list_aggs("SPY", 1, "second", T0, T0 + 1233 * 1000, limit=500))
    assert [a.timestamp for a in aggs] == [e["s"] for e in spy]
    assert [(a.open, a.high, a.low, a.close, a.volume, a.vwap) for a in aggs] == [
        (e["o"], e["h"], e["l"], e["c"], e["v"], e["vw"]) for e in spy]
    pages = [q for p, q in fake.rest_requests if p.startswith("/v2/aggs")]
    assert len(pages) == 3
    assert pages[0] == {"limit": "500"} and "cursor" in pages[1] and "cursor" in pages[2]

    inner = list(rest.list_aggs("SPY", 1, "second", T0 + 10_000, T0 + 19_000, sort="desc"))
    assert [a.timestamp for a in inner] == [T0 + i * 1000 for i in range(19, 9, -1)]
    assert list(rest.list_aggs("SPY", 1, "second", 0, 1000)) == []


def test_aggs_date_bounds_are_new_york_days(fake, rest):
    ny_midnight = 1_782_878_400_000  # 2026-07-01 00:00 America/New_York (04:00 UTC)
    day_ms = 86_400_000
    stamps = [ny_midnight - 1000, ny_midnight, ny_midnight + day_ms - 1000, ny_midnight + day_ms]
    fake.add_to_timeline(agg_event(s) for s in stamps)
    aggs = list(rest.list_aggs("SPY", 1, "second", "2026-07-01", "2026-07-01"))
    assert [a.timestamp for a in aggs] == stamps[1:3]
