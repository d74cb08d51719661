"""The reader: the client library's WebSocketClient in its own event loop, feeding the bounded queue.

The message callback only counts and enqueues the raw frame (`raw=True`: no per-event objects), because
Polygon disconnects consumers that fall behind. Every end of a connection (the library's `connect()`
simply returns on a clean close) leads to a reconnect with exponential backoff and jitter until the
session is over; a rejected key is fatal.
"""
from __future__ import annotations

import asyncio
import json
import logging
import queue
import random
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

from websockets.exceptions import ConnectionClosed

from ..config import PolygonConfig
from ..monitoring.heartbeat_monitor import HeartbeatMonitor
from ..market.market_hours import MarketCalendar
from ..capture.pipeline_stats import ReaderStats
from ..capture.queue_items import GAP_POSSIBLE
from .client_library import LIBRARY
from ..orchestrator.service import Service

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_SECONDS = 2.0
# How long a full queue may pause reading before frames are dropped: well under the server's keepalive
# timeout (websockets pings every 20 s), so a burst slows the sender instead of costing data.
FULL_QUEUE_PATIENCE_SECONDS = 2.0
FULL_QUEUE_POLL_SECONDS = 0.002
# The largest frame read (websockets' max_size, through the library's connect(**kwargs)). Its default, 1 MiB,
# is about 9,000 trades: a burst under a wildcard went over it, and websockets dropped the connection.
MAX_FRAME_BYTES = 16 * 1024 * 1024
MESSAGE_TOO_BIG = 1009   # the close code websockets sends when a frame is over max_size
TURN_SECONDS = 1.0   # the event loop counts a turn this often (the systemd watchdog's proof that it runs)
# Every data frame Polygon sends starts `[{"ev":"A"`, its first event's name first: such a frame cannot be
# a status message (that needs every element to say `"ev":"status"`), so it is passed on after a look at
# its first few characters (a regex match: 0.15 us), whatever its JSON spacing; searching all of every
# data frame (tens of KB under a wildcard) cost 7% of the GIL. Any other frame has its first element
# parsed alone (`_may_be_status`): JSON keys come in no promised order, so a status message may name
# itself anywhere (`[{"message":"...","ev":"status","status":"success"}]`).
_SPACE = "[ \t\n\r]*"   # JSON's whitespace
DATA_EVENT_HEAD = re.compile(_SPACE + r'\[' + _SPACE + r'\{' + _SPACE + r'"ev"' + _SPACE + ":" + _SPACE +
                             r'"(?!status")[^"\\]{1,16}"')   # a plain name, no escapes, not status
_DATA_EVENT_HEAD_BYTES = re.compile(DATA_EVENT_HEAD.pattern.encode())
_ARRAY_OPENING = re.compile(_SPACE + r"\[" + _SPACE)
# Numbers are never read here: kept as text, so no digit limit or precision applies.
_STATUS_DECODER = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=str)


class AuthRejected(Exception):
    """Polygon refused the API key: retrying cannot help."""


@dataclass(frozen=True)
class Backoff:
    initial_seconds: float = 1.0
    max_seconds: float = 60.0
    healthy_after_seconds: float = 30.0          # a connection this old resets the backoff
    max_connections_seconds: float = 60.0        # another client holds the key: do not fight it

    def delays(self) -> Iterator[float]:
        """Exponential delays with full jitter in [delay/2, delay]."""
        delay = self.initial_seconds
        while True:
            yield random.uniform(delay / 2, delay)
            delay = min(delay * 2, self.max_seconds)


class PolygonStream(Service):
    thread_name = "ws-reader"

    def __init__(self, polygon: PolygonConfig, api_key: str, calendar: MarketCalendar,
                 monitor: HeartbeatMonitor, stats: ReaderStats, frames: queue.Queue, clock,
                 backoff: Backoff = Backoff(), full_queue_patience_seconds: float = FULL_QUEUE_PATIENCE_SECONDS,
                 until: datetime | None = None):
        super().__init__()
        self.until = until   # run(): after this (the session's close), a lost connection is not reopened
        self.polygon = polygon
        self.api_key = api_key
        self.calendar = calendar
        self.monitor = monitor
        self.stats = stats
        self.frames = frames
        self.clock = clock
        self.backoff = backoff
        self.full_queue_patience_seconds = full_queue_patience_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._client: LIBRARY.WebSocketClient | None = None
        self._max_connections_seen = False
        self._dropping = False
        self._gap_unnoted = False   # a GAP_POSSIBLE marker is owed to the writer
        self._forced_reason: str | None = None
        self.turns = 0   # event-loop turns, read by the supervisor (a blocked loop stops counting)

    # --- called from other threads ---

    def _wake(self) -> None:
        """Close the connection and end stream_realtime() promptly (the event loop has its own Event)."""
        self._call_in_loop(lambda: self._stop_event.set())

    def force_reconnect(self, reason: str = "silent too long") -> None:
        """Thread-safe: drop the current connection (e.g. silent for too long); the loop reconnects."""
        def close_in_loop():
            self._forced_reason = reason
            asyncio.ensure_future(self._close_client())
        self._call_in_loop(close_in_loop)

    def _call_in_loop(self, callback) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop has already finished
            pass

    # --- the reader thread ---

    def run(self) -> None:
        self.stream_realtime(self.until)

    def stream_realtime(self, until: datetime) -> None:
        """Stream until stop(); after `until` a lost connection is not reopened.

        Refuses to connect at all while the market is closed. Raises AuthRejected on a bad key.
        """
        if not self.calendar.is_market_open(self.clock.now()):
            log.warning("market is closed; not connecting", extra={"event": "connect_refused_closed"})
            return
        asyncio.run(self._stream(until))

    async def _stream(self, until: datetime) -> None:
        self._stop_event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counting = asyncio.ensure_future(self._count_turns())
        try:
            await self._connect_until(until)
        finally:
            counting.cancel()

    async def _count_turns(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(TURN_SECONDS)

    async def _connect_until(self, until: datetime) -> None:
        delays = self.backoff.delays()
        while not self.stop_requested.is_set():
            started = self.clock.monotonic()
            reason = await self._one_connection()
            self.stats.connected = False
            self._client = None
            await self._note_possible_gap()
            if self.stop_requested.is_set():
                return
            if self.clock.now() >= until:
                log.info("session is over; not reconnecting", extra={"event": "reconnect_skipped_closed"})
                return
            if self.clock.monotonic() - started >= self.backoff.healthy_after_seconds:
                delays = self.backoff.delays()
            wait = next(delays)
            if self._max_connections_seen:
                wait = max(wait, self.backoff.max_connections_seconds)
                self._max_connections_seen = False
            self.stats.reconnects += 1
            self.stats.last_disconnect_reason = reason
            self.stats.state = "reconnecting"
            log.warning("disconnected: %s; reconnecting in %.1f s", reason, wait,
                        extra={"event": "disconnected", "reason": reason, "retry_in_seconds": round(wait, 2)})
            await self._sleep_unless_stopped(wait)

    async def _one_connection(self) -> str:
        """Run one WebSocketClient.connect() to its end; the reason it ended, for the log and heartbeat."""
        self.stats.state = "connecting"
        self._client = LIBRARY.WebSocketClient(
            api_key=self.api_key, feed=self.polygon.ws_feed, market="stocks", raw=True,
            subscriptions=list(self.polygon.subscriptions), secure=self.polygon.ws_secure,
            max_reconnects=0,  # every reconnect goes through our loop, with our backoff
        )
        connection = asyncio.ensure_future(
            self._client.connect(self._on_frame, reconnect_delays=self._handshake_delays, max_size=MAX_FRAME_BYTES))
        stop = asyncio.ensure_future(self._stop_event.wait())
        await asyncio.wait({connection, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not connection.done():
            await self._close_client()  # a clean close frame when there is a connection
            await asyncio.wait({connection}, timeout=CLOSE_TIMEOUT_SECONDS if self._client.websocket else 0)
        if not connection.done():  # e.g. between refused handshakes: nothing to close politely
            connection.cancel()
            await asyncio.wait({connection})
        stop.cancel()
        return self._ending_reason(connection)

    def _ending_reason(self, connection: asyncio.Future) -> str:
        if connection.cancelled():
            return "stopped"
        exc = connection.exception()
        if isinstance(exc, LIBRARY.AuthError):
            log.error("Polygon rejected the API key: %s", exc, extra={"event": "auth_failed"})
            raise AuthRejected(str(exc))
        forced, self._forced_reason = self._forced_reason, None
        if forced is not None:
            return f"reconnect forced: {forced}"
        if exc is None:
            return "closed by the server"
        if isinstance(exc, ConnectionClosed) and exc.sent is not None and exc.sent.code == MESSAGE_TOO_BIG:
            return self._frame_too_large()
        if isinstance(exc, ConnectionClosed):
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            return f"connection closed with code {code}"
        return f"{type(exc).__name__}"

    def _frame_too_large(self) -> str:
        """Counted (check is WARNING for a while), logged; the reconnect that follows opens a gap, so the
        frame's window is asked of REST like any other lost stretch."""
        self.stats.frames_too_large += 1
        self.stats.last_frame_too_large_at = self.clock.now()
        reason = f"a frame over the {MAX_FRAME_BYTES // 2**20} MiB limit (close code {MESSAGE_TOO_BIG})"
        log.error("%s was refused and the connection dropped; its window will be backfilled from REST", reason,
                  extra={"event": "frame_too_large", "frames_too_large": self.stats.frames_too_large})
        return reason

    def _handshake_delays(self) -> Iterator[float]:
        """Backoff for failed handshakes (refused, HTTP error), which the library retries itself."""
        for delay in self.backoff.delays():
            self.stats.state = "reconnecting"
            self.stats.reconnects += 1
            self.stats.last_disconnect_reason = "connection failed"
            yield delay

    async def _close_client(self) -> None:
        client = self._client
        if client is not None and client.websocket is not None:
            try:
                await asyncio.wait_for(client.close(), CLOSE_TIMEOUT_SECONDS)
            except Exception:  # the connection is going away either way
                pass

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    # --- hot path: runs in the event loop for every frame ---

    async def _on_frame(self, frame: str | bytes) -> None:
        # Polygon's status messages are not market data: they neither count as messages nor end a stall,
        # and never reach the writer.
        data_head = DATA_EVENT_HEAD if type(frame) is str else _DATA_EVENT_HEAD_BYTES
        if data_head.match(frame) is None and _may_be_status(frame) and self._handle_status(frame):
            return
        self.monitor.record_message()
        if not self.stats.connected:
            self._mark_streaming()
        if self._gap_unnoted and not await self._note_possible_gap():
            self._count_drop()
        elif await self._enqueue((self.clock.time_ns(), frame)):
            self._dropping = False
        else:
            self._count_drop()

    async def _note_possible_gap(self) -> bool:
        """Tell the writer bars may be missing (it backfills them); retried before the next frame if full."""
        self._gap_unnoted = not await self._enqueue(GAP_POSSIBLE)
        return not self._gap_unnoted

    async def _enqueue(self, item) -> bool:
        """Put on the queue; a burst that fills it pauses reading briefly (TCP pushes back on the sender)
        rather than lose the item, while the loop keeps running. False once the patience is spent."""
        deadline = None
        while True:
            try:
                self.frames.put_nowait(item)
                return True
            except queue.Full:
                deadline = deadline or self.clock.monotonic() + self.full_queue_patience_seconds
                if self.clock.monotonic() >= deadline:
                    return False
            await asyncio.sleep(FULL_QUEUE_POLL_SECONDS)

    def _count_drop(self) -> None:
        """A frame is lost: counted, alerted once per streak, and its bars backfilled once frames flow."""
        self.stats.dropped_queue_full += 1
        self._gap_unnoted = True
        if not self._dropping:  # one alert per overflow streak, never one per frame
            log.error("queue full: the writer is behind, dropping frames", extra={"event": "queue_overflow"})
            self._dropping = True

    def _handle_status(self, frame: str | bytes) -> bool:
        """Act on a frame of Polygon status messages, their keys in any order (an array of them, or one
        alone); False when the frame is not one (the writer parses and counts it)."""
        messages = _status_messages(frame)
        if messages is None:
            return False
        for message in messages:
            status, text = message.get("status"), message.get("message", "")
            if status == "success" and not self.stats.connected:
                self._mark_streaming()
            elif status == "max_connections":
                self._max_connections_seen = True
                log.error("Polygon refused the connection: %s", text,
                          extra={"event": "max_connections", "reason": "max_connections"})
        return True

    def _mark_streaming(self) -> None:
        # Logged first: whoever sees the state `streaming` (the heartbeat, a test) finds the line written.
        log.info("connected to %s, subscribed to %s", self.polygon.ws_feed, ",".join(self.polygon.subscriptions),
                 extra={"event": "connected"})
        self.stats.connected = True
        self.stats.state = "streaming"


def _may_be_status(frame: str | bytes) -> bool:
    """False when the frame cannot be a status frame: an array whose first element, parsed alone, is not a
    status message (a few microseconds whatever the frame's length, spacing or escapes: decoding every
    data frame whole on the reader's loop would cost more than the writer's parse of it)."""
    text = frame if type(frame) is str else frame.decode("utf-8", "replace")
    opening = _ARRAY_OPENING.match(text)
    if opening is None:   # one message alone, or not JSON: only its words can say
        return "status" in text or "\\" in text
    try:
        first, _ = _STATUS_DECODER.raw_decode(text, opening.end())
    except (ValueError, RecursionError):   # not JSON, or nested deeper than the parser goes: not a status
        return False
    return type(first) is dict and first.get("ev") == "status"


def _status_messages(frame: str | bytes) -> list[dict] | None:
    """The frame's status messages when every element is one (`"ev":"status"`, keys in any order), else None."""
    try:
        decoded = _STATUS_DECODER.decode(frame if type(frame) is str else frame.decode("utf-8"))
    except (ValueError, RecursionError):  # not JSON (or not UTF-8), or nested deeper than the parser goes
        return None
    messages = [decoded] if type(decoded) is dict else decoded
    if type(messages) is not list or not messages:
        return None
    if all(type(message) is dict and message.get("ev") == "status" for message in messages):
        return messages
    return None
