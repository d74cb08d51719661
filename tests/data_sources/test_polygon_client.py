"""PolygonStream against the loopback FakePolygon: a real WebSocket, the real polygon-api-client.

The stream runs in a thread, as in the daemon. Its clock says "Tuesday 11:00 New York" (inside the regular
session whatever the real date) while monotonic time and receive stamps are real, so the backoff waits
really happen; they are kept tiny with a short Backoff.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from datetime import datetime, time as clock_time, timedelta
from zoneinfo import ZoneInfo

import pytest

from channel_parsing import frames_to_table
from conftest import TEST_API_KEY, ny
from conftest import logged_events as events_named
from spy_streamer.demo import replay_server
from spy_streamer.clock import FrozenClock
from fake_polygon import FakePolygon, session_timeline
from spy_streamer.config import MarketHoursConfig, PolygonConfig
from spy_streamer.monitoring.heartbeat_monitor import HeartbeatMonitor
from spy_streamer.market.market_hours import MarketCalendar
from spy_streamer.capture.pipeline_stats import ReaderStats, WriterStats
from spy_streamer.data_sources.polygon_client import AuthRejected, Backoff, PolygonStream
from spy_streamer.capture.queue_items import GAP_POSSIBLE

pytestmark = pytest.mark.usefixtures("info_logs")  # the INFO records matter here

HOURS = MarketHoursConfig(timezone=ZoneInfo("America/New_York"), active_days=frozenset(range(5)),
                          start_time=clock_time(9, 30), end_time=clock_time(16, 0))
OPEN_NOW = ny(2025, 6, 10, 11, 0)          # a Tuesday, mid-session
SESSION_CLOSE = ny(2025, 6, 10, 16, 0)
FAST = Backoff(initial_seconds=0.05, max_seconds=0.2, healthy_after_seconds=5, max_connections_seconds=0.5)
BAR_START_MS = int(ny(2025, 6, 10, 10, 0).timestamp() * 1000)


def wait_until(predicate, timeout: float = 5.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")



def reorder_status_keys(monkeypatch) -> None:
    """The fake Polygon sends its status messages with `message` first, longer than the first 64
    characters of the frame, and `ev`/`status` after it: valid JSON, whose key order nothing promises."""
    def status(status: str, message: str) -> dict:
        return {"message": f"{message} (and more words from the server, {'.' * 64})", "ev": "status",
                "status": status}
    monkeypatch.setattr(replay_server, "_status", status)




class StreamRig:
    """One PolygonStream with its stats, monitor and queue; runs stream_realtime in a thread."""

    def __init__(self, fake: FakePolygon, tmp_path, *, now: datetime = OPEN_NOW, api_key: str = TEST_API_KEY,
                 backoff: Backoff = FAST, maxsize: int = 0, until: datetime = SESSION_CLOSE,
                 patience: float = 2.0, alert_threshold_seconds: float = 900):
        self.fake = fake
        self.clock = FrozenClock(now)
        self.calendar = MarketCalendar(HOURS)
        self.stats = ReaderStats()
        self.monitor = HeartbeatMonitor(
            tmp_path / "heartbeat" / "polygon.json", self.calendar, interval_seconds=300,
            alert_threshold_seconds=alert_threshold_seconds, subscriptions=("A.SPY",), reader=self.stats, writer=WriterStats(),
            clock=self.clock)
        self.frames: queue.Queue = queue.Queue(maxsize=maxsize)
        polygon = PolygonConfig(api_key_env="POLYGON_API_KEY", ws_feed=fake.ws_feed, ws_secure=False,
                                rest_base_url=fake.rest_base_url, subscriptions=("A.SPY",))
        self.stream = PolygonStream(polygon, api_key, self.calendar, self.monitor, self.stats, self.frames,
                                    self.clock, backoff, full_queue_patience_seconds=patience)
        self.until = until
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> "StreamRig":
        self.thread = threading.Thread(target=self._run, name="test-ws-reader", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.stream.stream_realtime(until=self.until)
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            self.error = exc

    def streaming(self, timeout: float = 5.0) -> None:
        wait_until(lambda: self.stats.state == "streaming" and self.stats.connected, timeout, "streaming")
        assert self.fake.wait_for_subscribers(1, timeout=timeout)

    def stop(self, timeout: float = 5.0) -> float:
        """stop() from this thread; seconds until stream_realtime returned."""
        started = time.monotonic()
        self.stream.stop()
        self.thread.join(timeout)
        return time.monotonic() - started

    def drain(self, frames_only: bool = True) -> list:
        """Everything on the queue now; by default only the (received_ns, raw) frames, not the control
        markers (such as the reader's "disconnected" note for the writer) that may travel with them."""
        items = []
        while True:
            try:
                item = self.frames.get_nowait()
            except queue.Empty:
                return items
            if not frames_only or type(item) is tuple:
                items.append(item)

    def received_events(self, count: int, timeout: float = 5.0) -> list[dict]:
        """Wait for frames holding `count` events in total; the events, in order."""
        got: list[dict] = []

        def enough():
            for _, raw in self.drain():
                got.extend(json.loads(raw))
            return len(got) >= count

        wait_until(enough, timeout, f"{count} events on the queue")
        return got


@pytest.fixture
def rigs():
    """Every rig a test starts is stopped and joined, even when the test fails."""
    started: list[StreamRig] = []
    yield started
    for rig in started:
        if rig.thread is not None and rig.thread.is_alive():
            rig.stream.stop()
            rig.thread.join(5)


@pytest.fixture
def make_rig(fake, tmp_path, rigs):
    def make(**options) -> StreamRig:
        rig = StreamRig(fake, tmp_path, **options)
        rigs.append(rig)
        return rig
    return make


# --------------------------------------------------------------------------------------------------
# Market closed
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("closed_at", [ny(2025, 6, 14, 11, 0), ny(2025, 6, 10, 17, 0), ny(2025, 6, 10, 9, 0)],
                         ids=["saturday", "after_close", "pre_market"])
def test_refuses_to_connect_while_the_market_is_closed(make_rig, fake, caplog, closed_at):
    rig = make_rig(now=closed_at)
    started = time.monotonic()
    rig.stream.stream_realtime(until=closed_at + timedelta(hours=1))
    assert time.monotonic() - started < 0.5
    assert fake.connections_total == 0 and fake.refused_handshakes == 0
    assert rig.stats.connected is False and rig.frames.empty()
    assert len(events_named(caplog, "connect_refused_closed")) == 1


# --------------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------------

def test_connects_subscribes_and_queues_raw_frames(make_rig, fake, caplog):
    rig = make_rig().start()
    rig.streaming()
    assert fake.subscriptions == ["A.SPY"]
    assert fake.auth_attempts == [TEST_API_KEY]
    assert fake.connections_total == 1
    assert len(events_named(caplog, "connected")) == 1

    before = time.time_ns()
    sent = session_timeline(BAR_START_MS, 10)
    assert fake.push(sent, frame_size=3) == 10   # four frames: 3 + 3 + 3 + 1
    items = wait_until(lambda: rig.frames.qsize() >= 4 and rig.drain(frames_only=False), what="four frames")
    after = time.time_ns()

    assert len(items) == 4
    received = []
    for item in items:
        assert isinstance(item, tuple) and len(item) == 2
        received_ns, raw = item
        assert isinstance(received_ns, int) and before <= received_ns <= after
        assert isinstance(raw, str)
        received.extend(json.loads(raw))
    assert received == sent
    # Polygon's control messages are not data: none reached the queue.
    assert all(event["ev"] == "A" for event in received)

    assert rig.monitor.messages_total >= 4
    assert rig.monitor.send_heartbeat()["last_message_at"] is not None
    assert rig.stats.connected is True and rig.stats.state == "streaming"
    assert rig.stats.reconnects == 0 and rig.stats.dropped_queue_full == 0
    assert rig.error is None


def test_status_frames_are_told_from_data_by_what_they_say_not_where(make_rig):
    """A status frame is one whose every element says `"ev":"status"`, whatever its keys' order, spacing,
    escapes or type (text or binary); a frame that opens like a data event is data without a closer look,
    and no frame, however odd, raises in the reader."""
    import asyncio
    rig = make_rig()
    long = "Maximum number of websocket connections exceeded, said at a length past the frame's head"
    statuses = [
        '[{"ev":"status","status":"success","message":"subscribed to: A.SPY"}]',
        '[{"ev": "status", "status": "auth_success", "message": "authenticated"}]',
        json.dumps([{"message": long, "ev": "status", "status": "success"}]),
        json.dumps([{"message": long, "ev": "status", "status": "success"}]).encode(),
        '[{"ev":"st\\u0061tus","status":"success","message":"%s"}]' % long,
        ' \n[{"status":"success","ev":"status"}, {"message":"%s","status":"success","ev":"status"}]' % long,
        '{"message":"%s","ev":"status","status":"success"}' % long,
        '[{"message":"%s","ev":"status","status":"success","n":%s}]' % (long, "9" * 5000),
    ]
    data = json.dumps(session_timeline(BAR_START_MS, 3) + [{"ev": "A", "note": "status"}])
    reordered = json.dumps([{"sym": "SPY", "ev": "A", "note": "status"}])
    deep = "[" * 100_000 + '"status"' + "]" * 100_000
    mixed = json.dumps([{"message": long, "ev": "status", "status": "success"}, {"ev": "A", "sym": "SPY"}])
    not_utf8 = b'[{"message":"\xff","ev":"status","status":"success"}]'
    named_alike = '[{"ev":"status_report","status":"success"}]'
    # Not status frames: a mix (Polygon sends none; its data goes to the writer), bytes that are not UTF-8.
    datas = [data, data.encode(), reordered, deep, mixed, not_utf8, named_alike, "[]", "null"]
    for frame in statuses + datas:
        asyncio.run(rig.stream._on_frame(frame))
    assert [raw for _, raw in rig.drain()] == datas
    assert rig.monitor.messages_total == len(datas)
    assert rig.stats.connected is True


def test_data_frames_in_any_json_spelling_pass_without_being_decoded_whole(make_rig, monkeypatch):
    """Spaced, reordered or escaped data frames are told from status frames by their first element alone:
    a frame with an escape was once decoded whole on the reader's loop (json.loads of every frame)."""
    import asyncio
    from spy_streamer.data_sources import polygon_client
    decoded_whole = []
    status_messages = polygon_client._status_messages
    monkeypatch.setattr(polygon_client, "_status_messages",
                        lambda frame: decoded_whole.append(frame) or status_messages(frame))
    rig = make_rig()
    events = session_timeline(BAR_START_MS, 50)
    spellings = [
        json.dumps(events),                                                   # "ev": "A"
        json.dumps([dict(reversed(list(event.items()))) for event in events]),  # "ev" last
        json.dumps(events, separators=(",", ":")).replace('"SPY"', '"\\u0053PY"'),  # an escape inside
        json.dumps([{**event, "note": "status"} for event in events]),       # the word, not the key
        ' [ { "ev" : "\\u0041" , "sym" : "SPY" } ]',                            # escaped name
    ]
    for frame in spellings:
        asyncio.run(rig.stream._on_frame(frame))
    assert [raw for _, raw in rig.drain()] == spellings
    assert decoded_whole == []


def test_a_status_frame_naming_itself_late_is_neither_a_message_nor_a_rejected_row(make_rig, fake, monkeypatch):
    reorder_status_keys(monkeypatch)
    rig = make_rig().start()
    rig.streaming()                        # the subscription's `success`, message first, was understood
    sent = session_timeline(BAR_START_MS, 3)
    fake.push(sent, frame_size=3)
    frames = []
    wait_until(lambda: frames.extend(rig.drain()) or frames and json.loads(frames[-1][1])[-1]["ev"] == "A",
               what="the data frame")
    table, rejected = frames_to_table(frames)           # what the writer makes of the queue
    assert not rejected and table.num_rows == 3
    assert rig.monitor.messages_total == 1
    assert [json.loads(raw) for _, raw in frames] == [sent]


def test_a_status_frame_naming_itself_late_does_not_end_a_stall(make_rig, fake, monkeypatch, caplog):
    reorder_status_keys(monkeypatch)
    rig = make_rig(alert_threshold_seconds=0.2).start()
    rig.monitor.session_started()
    rig.streaming()
    wait_until(rig.monitor.check_stalled_stream, what="the stall alert")
    rig.stream.force_reconnect()           # what the daemon does about a stall
    wait_until(lambda: fake.connections_total == 2, what="a second connection")
    rig.streaming()                        # its subscription's `success` has been read
    assert rig.monitor.check_stalled_stream() is True and rig.monitor.status() == "stalled"
    assert rig.monitor.messages_total == 0 and not events_named(caplog, "stream_recovered")

    fake.push(session_timeline(BAR_START_MS, 1))
    rig.received_events(1)
    assert rig.monitor.check_stalled_stream() is False  # data ends it
    assert len(events_named(caplog, "stream_recovered")) == 1


def test_stop_ends_the_stream_within_a_second(make_rig, fake, caplog):
    rig = make_rig().start()
    rig.streaming()
    elapsed = rig.stop()
    assert not rig.thread.is_alive()
    assert elapsed < 1.0
    assert rig.error is None
    assert rig.stats.connected is False
    wait_until(lambda: fake.active_connections() == 0, 2, "the server to see the close")
    assert fake.connections_total == 1  # a stop is not followed by a reconnect
    assert events_named(caplog, "disconnected") == []


def test_stop_during_the_backoff_wait(make_rig, fake):
    rig = make_rig(backoff=Backoff(initial_seconds=30, max_seconds=30, healthy_after_seconds=60,
                                   max_connections_seconds=30)).start()
    rig.streaming()
    fake.drop_connections(1011)
    wait_until(lambda: rig.stats.state == "reconnecting", 3, "the backoff wait")
    assert rig.stop() < 1.0
    assert not rig.thread.is_alive() and rig.error is None
    assert fake.connections_total == 1


def test_stop_before_the_thread_runs_never_connects(make_rig, fake):
    rig = make_rig()
    rig.stream.stop()
    rig.stream.stream_realtime(until=SESSION_CLOSE)
    assert fake.connections_total == 0


def test_stop_while_handshakes_are_refused(make_rig, fake):
    """Regression: a stop during an outage used to wait CLOSE_TIMEOUT_SECONDS and then call
    connection.exception() on a task only being cancelled: InvalidStateError escaped stream_realtime."""
    fake.set_refuse(True)
    rig = make_rig().start()
    wait_until(lambda: fake.refused_handshakes >= 2, 3, "refused handshakes")
    elapsed = rig.stop()
    assert not rig.thread.is_alive()
    assert rig.error is None, f"stream_realtime raised {rig.error!r}"
    assert elapsed < 1.0


# --------------------------------------------------------------------------------------------------
# Reconnects
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, reason", [
    ("abrupt", "connection closed with code 1006"),
    (1000, "closed by the server"),
    (1001, "closed by the server"),
    (1011, "connection closed with code 1011"),
])
def test_every_kind_of_drop_reconnects_and_resubscribes(make_rig, fake, caplog, mode, reason):
    rig = make_rig().start()
    rig.streaming()
    fake.push(session_timeline(BAR_START_MS, 2))
    rig.received_events(2)

    assert fake.drop_connections(mode) == 1
    wait_until(lambda: fake.connections_total == 2, 3, "a second connection")
    rig.streaming()
    assert fake.subscriptions == ["A.SPY", "A.SPY"]
    assert rig.stats.reconnects == 1
    assert rig.stats.last_disconnect_reason == reason
    disconnects = events_named(caplog, "disconnected")
    assert len(disconnects) == 1 and disconnects[0].reason == reason

    after = session_timeline(BAR_START_MS + 60_000, 5)
    assert fake.push(after) == 5
    assert rig.received_events(5) == after
    assert rig.error is None


def test_repeated_drops_keep_reconnecting(make_rig, fake):
    rig = make_rig().start()
    rig.streaming()
    for round_number in range(1, 4):
        fake.drop_connections(1011 if round_number % 2 else "abrupt")
        wait_until(lambda: fake.connections_total == round_number + 1, 3, f"connection {round_number + 1}")
        rig.streaming()
    assert rig.stats.reconnects == 3
    fake.push(session_timeline(BAR_START_MS, 1))
    assert len(rig.received_events(1)) == 1


def test_no_reconnect_once_the_session_is_over(make_rig, fake, caplog):
    # The wall clock is past `until` (the close plus grace): a lost connection is not reopened.
    rig = make_rig(until=OPEN_NOW - timedelta(seconds=1)).start()
    rig.streaming()
    fake.drop_connections(1001)
    rig.thread.join(2)
    assert not rig.thread.is_alive() and rig.error is None
    assert fake.connections_total == 1
    assert len(events_named(caplog, "reconnect_skipped_closed")) == 1


def test_force_reconnect_drops_and_reconnects(make_rig, fake):
    rig = make_rig().start()
    rig.streaming()
    rig.stream.force_reconnect()
    wait_until(lambda: fake.connections_total == 2, 3, "a second connection")
    rig.streaming()
    assert rig.stats.reconnects == 1
    assert fake.subscriptions == ["A.SPY", "A.SPY"]
    sent = session_timeline(BAR_START_MS, 3)
    fake.push(sent)
    assert rig.received_events(3) == sent


def test_force_reconnect_before_start_is_harmless(make_rig):
    rig = make_rig()
    rig.stream.force_reconnect()  # no loop yet: nothing to drop, nothing raised


def test_refused_handshakes_are_retried_until_allowed(make_rig, fake):
    fake.set_refuse(True)
    rig = make_rig().start()
    wait_until(lambda: fake.refused_handshakes >= 3, 3, "three refused handshakes")
    assert fake.connections_total == 0
    assert rig.stats.connected is False
    assert rig.stats.state == "reconnecting"
    assert rig.stats.reconnects >= 2
    assert rig.stats.last_disconnect_reason == "connection failed"

    fake.set_refuse(False)
    rig.streaming()
    assert fake.connections_total == 1
    sent = session_timeline(BAR_START_MS, 4)
    fake.push(sent)
    assert rig.received_events(4) == sent
    assert rig.error is None


def test_a_rejected_key_is_fatal_after_one_attempt(make_rig, fake, caplog):
    rig = make_rig(api_key="wrong-key-fedcba9876543210")
    started = time.monotonic()
    with pytest.raises(AuthRejected):
        rig.stream.stream_realtime(until=SESSION_CLOSE)
    assert time.monotonic() - started < 2.0
    time.sleep(0.1)  # a retry, if there were one, would have started by now
    assert fake.connections_total == 1
    assert fake.auth_attempts == ["wrong-key-fedcba9876543210"]
    assert rig.stats.connected is False
    failures = events_named(caplog, "auth_failed")
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR
    for record in caplog.records:
        assert "wrong-key-fedcba9876543210" not in record.getMessage()


@pytest.mark.parametrize("message_first", [False, True], ids=["ev_first", "message_first"])
def test_max_connections_alerts_once_and_backs_off_longer(make_rig, fake, caplog, monkeypatch, message_first):
    if message_first:
        reorder_status_keys(monkeypatch)
    fake.set_max_connections_once()
    rig = make_rig().start()

    wait_until(lambda: events_named(caplog, "disconnected"), 3, "the kick")
    kicked_at = time.monotonic()
    alerts = events_named(caplog, "max_connections")
    assert len(alerts) == 1 and alerts[0].levelno == logging.ERROR
    (disconnect,) = events_named(caplog, "disconnected")
    assert disconnect.retry_in_seconds >= FAST.max_connections_seconds  # not the 0.05-0.2 s of FAST

    wait_until(lambda: fake.connections_total == 2, 3, "the reconnect")
    assert time.monotonic() - kicked_at >= FAST.max_connections_seconds - 0.1
    rig.streaming()
    assert len(events_named(caplog, "max_connections")) == 1
    assert rig.stats.reconnects == 1
    sent = session_timeline(BAR_START_MS, 2)
    fake.push(sent)
    assert rig.received_events(2) == sent


def test_backoff_delays_double_with_jitter_up_to_the_cap():
    delays = Backoff(initial_seconds=1, max_seconds=8).delays()
    bounds = [(0.5, 1), (1, 2), (2, 4), (4, 8), (4, 8), (4, 8)]
    for low, high in bounds:
        assert low <= next(delays) <= high


def drop_and_reconnect(rig: StreamRig, fake: FakePolygon, times: int) -> None:
    for round_number in range(1, times + 1):
        fake.drop_connections(1011)
        wait_until(lambda: fake.connections_total == round_number + 1, 3, f"connection {round_number + 1}")
        rig.streaming()


def test_quick_drops_grow_the_backoff(make_rig, fake, caplog):
    rig = make_rig(backoff=Backoff(initial_seconds=0.05, max_seconds=0.2, healthy_after_seconds=60,
                                   max_connections_seconds=1)).start()
    rig.streaming()
    drop_and_reconnect(rig, fake, 3)
    waits = [record.retry_in_seconds for record in events_named(caplog, "disconnected")]
    assert len(waits) == 3
    assert 0.02 <= waits[0] <= 0.05 and 0.05 <= waits[1] <= 0.1 and 0.1 <= waits[2] <= 0.2, waits


def test_a_healthy_connection_resets_the_backoff(make_rig, fake, caplog):
    rig = make_rig(backoff=Backoff(initial_seconds=0.05, max_seconds=0.2, healthy_after_seconds=0,
                                   max_connections_seconds=1)).start()
    rig.streaming()
    drop_and_reconnect(rig, fake, 3)
    waits = [record.retry_in_seconds for record in events_named(caplog, "disconnected")]
    assert len(waits) == 3 and all(0.02 <= wait <= 0.05 for wait in waits), waits


# --------------------------------------------------------------------------------------------------
# A full queue
# --------------------------------------------------------------------------------------------------

def test_a_full_queue_pauses_reading_instead_of_dropping(make_rig, fake, caplog):
    rig = make_rig(maxsize=1, patience=2.0).start()
    rig.streaming()
    sent = session_timeline(BAR_START_MS, 5)
    fake.push(sent, frame_size=1)                      # five frames; room for one at a time
    assert rig.received_events(5) == sent              # the writer catching up gets every one, in order
    assert rig.stats.dropped_queue_full == 0 and not events_named(caplog, "queue_overflow")
    assert rig.stop() < 1.0


def test_a_full_queue_drops_after_its_patience_alerts_once_per_streak_and_flags_the_gap(make_rig, fake, caplog):
    rig = make_rig(maxsize=2, patience=0.05).start()
    rig.streaming()

    first = session_timeline(BAR_START_MS, 5)
    fake.push(first, frame_size=1)                     # five frames; room for two
    wait_until(lambda: rig.stats.dropped_queue_full == 3, 3, "three drops")
    assert len(events_named(caplog, "queue_overflow")) == 1
    assert events_named(caplog, "queue_overflow")[0].levelno == logging.ERROR
    # The loop is not blocked: it still reads (and counts) every message.
    assert rig.monitor.messages_total >= 5
    assert [json.loads(raw) for _, raw in rig.drain()] == [[first[0]], [first[1]]]

    second = session_timeline(BAR_START_MS + 10_000, 3)
    fake.push(second, frame_size=1)
    wait_until(lambda: rig.stats.dropped_queue_full == 5, 3, "five drops")
    # Before the next frame that fits, the writer is told bars were lost, so it backfills them.
    items = rig.drain(frames_only=False)
    assert items[0] == GAP_POSSIBLE and json.loads(items[1][1]) == [second[0]] and len(items) == 2
    assert len(events_named(caplog, "queue_overflow")) == 2   # a new streak after a frame got through

    assert rig.stats.connected is True and fake.connections_total == 1
    assert rig.stop() < 1.0
