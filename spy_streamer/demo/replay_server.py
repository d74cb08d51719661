"""A Polygon.io replay (WebSocket + REST) on 127.0.0.1: the tests' fake Polygon and the demo's feed.

It speaks Polygon's message shapes (connected, auth, subscribe acks, events, `max_connections`); its REST
side (`replay_rest.py`) answers `upcoming`, `/v2/aggs`, `/v3/trades` and `/v3/quotes`; `replay_live()` streams
random-walk bars around now, one per symbol per second, for `spy-streamer demo`.

Usage::

    with FakePolygon(api_key="test-key") as fake:
        client = WebSocketClient(api_key="test-key", feed=fake.ws_feed,
                                 secure=False, raw=True, ...)
        rest = RESTClient("test-key", base=fake.rest_base_url)
        fake.wait_for_subscribers()
        fake.push(session_timeline(start_ms, 60))

The WebSocket server runs on its own asyncio loop in a daemon thread; every
public method may be called from any *other* thread (never from inside that
loop).  The REST side is a ThreadingHTTPServer in a second daemon thread.
Nothing here ever talks to the real Polygon servers.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any, Iterable

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .replay_events import REPLAY_HISTORY_KEPT_MS, RandomWalk, _chunks, _status, _timeline_iter
from .replay_rest import RestReplay, _RestHandler

MAX_CONNECTIONS_MESSAGE = (
    "Maximum number of websocket connections exceeded. You have reached the "
    "connection limit for your account. Please contact support at "
    "https://polygon.io/contact to increase your limit."
)


class _Client:
    """Server-side state of one WebSocket connection."""

    def __init__(self, ws: ServerConnection):
        self.ws = ws
        self.authed = False
        self.max_conn_pending = False
        self.subs: set[str] = set()

    def wants(self, event: dict) -> bool:
        ev = event.get("ev")
        return f"{ev}.{event.get('sym')}" in self.subs or f"{ev}.*" in self.subs


# --------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------
class FakePolygon(RestReplay):
    def __init__(self, api_key: str = "test-key", host: str = "127.0.0.1", compression: str | None = "deflate"):
        self.api_key = api_key
        self.host = host
        self.compression = compression  # permessage-deflate, as the client offers; None to switch it off
        self.last_blast_started: float | None = None
        self.last_blast_cpu_seconds: float | None = None
        # Recorded state (read by tests; written under self._lock).
        self.connections_total = 0
        self.refused_handshakes = 0
        self.auth_attempts: list[str] = []
        self.subscriptions: list[str] = []
        self.sent_events: list[dict] = []
        self.timeline: dict[tuple[str, int], dict] = {}
        self.minute_overrides: dict[tuple[str, int], dict] = {}   # (symbol, minute start ms) -> fields
        self.ticks: dict[tuple[str, str], list[dict]] = {}         # ("trades" | "quotes", symbol) -> REST rows
        # (symbol, "second" | "minute") -> raw results added to the first page of every /v2/aggs answer,
        # whatever range was asked: a hostile server's rows (a test's).
        self.extra_aggs: dict[tuple[str, str], list] = {}
        self.holidays: list[dict] = []
        self.rest_requests: list[tuple[str, dict]] = []
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # subscriber count changes
        self._clients: set[_Client] = set()
        self._refuse = False
        self._max_conn_once = False
        self._rest_failures: dict[str, list] = {}  # prefix -> [mode, remaining|None]
        self._closed = threading.Event()
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._httpd: ThreadingHTTPServer | None = None

    # ---- lifecycle -------------------------------------------------------
    def start(self) -> "FakePolygon":
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever,
                                             name="fake-polygon-ws", daemon=True)
        self._loop_thread.start()
        self._ws_server = self._call(self._start_ws(), timeout=5)
        self._ws_port = self._ws_server.sockets[0].getsockname()[1]

        handler = type("Handler", (_RestHandler,), {"fake": self})
        self._httpd = ThreadingHTTPServer((self.host, 0), handler)
        self._httpd.daemon_threads = True  # hung handlers must not block close()
        self._http_thread = threading.Thread(target=self._httpd.serve_forever,
                                             kwargs={"poll_interval": 0.05},
                                             name="fake-polygon-rest", daemon=True)
        self._http_thread.start()
        return self

    def close(self) -> None:
        if self._closed.is_set() or self._loop is None:
            return
        self._closed.set()  # releases "hang" handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        try:
            self._call(self._stop_ws(), timeout=2)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=1)
            self._http_thread.join(timeout=1)
            if not self._loop_thread.is_alive():
                self._loop.close()

    def __enter__(self) -> "FakePolygon":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def ws_feed(self) -> str:
        return f"{self.host}:{self._ws_port}"

    @property
    def rest_base_url(self) -> str:
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def _call(self, coro, timeout: float | None = 30):
        """Run a coroutine on the server loop from a test thread and wait for it."""
        assert threading.current_thread() is not getattr(self, "_loop_thread", None), \
            "FakePolygon methods must not be called from its own event loop"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)  # keep a reference until done
        task.add_done_callback(self._tasks.discard)

    # ---- WebSocket server ------------------------------------------------
    async def _start_ws(self):
        # close_timeout bounds how long a close() waits for the peer's close frame.
        return await serve(self._handler, self.host, 0,
                           process_request=self._process_request, close_timeout=0.5,
                           compression=self.compression)

    async def _stop_ws(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._ws_server.close()  # 1001 "going away" to every client
        try:
            await asyncio.wait_for(self._ws_server.wait_closed(), 0.6)
        except asyncio.TimeoutError:
            for client in list(self._clients):
                client.ws.transport.abort()

    def _process_request(self, connection: ServerConnection, request):
        if self._refuse:
            with self._lock:
                self.refused_handshakes += 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
        if request.path.split("?")[0] != "/stocks":
            return connection.respond(HTTPStatus.NOT_FOUND, "only /stocks is served\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        client = _Client(ws)
        with self._lock:
            self.connections_total += 1
            self._clients.add(client)
        try:
            await self._send(client, [_status("connected", "Connected Successfully")])
            async for message in ws:
                await self._on_message(client, message)
        except ConnectionClosed:
            pass
        finally:
            self._forget(client)

    def _forget(self, client: _Client) -> None:
        with self._changed:
            client.authed = False
            self._clients.discard(client)
            self._changed.notify_all()

    async def _send(self, client: _Client, payload: Any) -> None:
        await client.ws.send(payload if isinstance(payload, str) else json.dumps(payload))

    async def _on_message(self, client: _Client, message: str | bytes) -> None:
        try:
            msg = json.loads(message)
            action, params = msg["action"], str(msg.get("params", ""))
        except (ValueError, KeyError, TypeError):
            await self._send(client, [_status("error", "invalid message")])
            return
        if client.max_conn_pending:
            await self._kick_max_connections(client)
        elif action == "auth":
            await self._auth(client, params)
        elif action in ("subscribe", "unsubscribe"):
            await self._subscribe(client, action, params)
        else:
            await self._send(client, [_status("error", f"unknown action: {action}")])

    async def _auth(self, client: _Client, key: str) -> None:
        with self._lock:
            self.auth_attempts.append(key)
            max_conn, self._max_conn_once = self._max_conn_once, False
        if key != self.api_key:
            await self._send(client, [_status("auth_failed", "authentication failed")])
            await client.ws.close(1008, "authentication failed")
            return
        await self._send(client, [_status("auth_success", "authenticated")])
        if max_conn:
            # polygon-api-client only checks the auth reply for "auth_failed" and then
            # sends its subscribe. Closing right now would make that send fail before
            # the status reaches the processor, so kick on the client's next message
            # (or after 1 s if it sends nothing).
            client.max_conn_pending = True
            self._spawn(self._kick_max_connections(client, delay=1.0))
        else:
            with self._changed:
                client.authed = True
                self._changed.notify_all()

    async def _kick_max_connections(self, client: _Client, delay: float = 0.0) -> None:
        await asyncio.sleep(delay)
        if not client.max_conn_pending:
            return
        client.max_conn_pending = False
        try:
            await self._send(client, [_status("max_connections", MAX_CONNECTIONS_MESSAGE)])
            await client.ws.close(1008, "max_connections")
        except ConnectionClosed:
            pass

    async def _subscribe(self, client: _Client, action: str, params: str) -> None:
        topics = [t.strip() for t in params.split(",") if t.strip()]
        if action == "subscribe":
            with self._lock:
                self.subscriptions.append(params)
        if not client.authed:
            await self._send(client, [_status("error", "not authorized")])
            return
        with self._changed:
            if action == "subscribe":
                client.subs.update(topics)
            else:
                client.subs.difference_update(topics)
            self._changed.notify_all()
        verb = "subscribed to" if action == "subscribe" else "unsubscribed to"
        await self._send(client, [_status("success", f"{verb}: {t}") for t in topics])

    def _subscribed(self) -> list[_Client]:
        with self._lock:
            return [c for c in self._clients if c.authed and c.subs]

    # ---- WebSocket control (called from test threads) ---------------------
    def active_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self._clients if c.authed)

    def wait_for_subscribers(self, n: int = 1, timeout: float = 5) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self._subscribed()) >= n, timeout)

    def add_to_timeline(self, events: Iterable[dict]) -> None:
        """Second bars (`A` events) pushed or replayed are what /v2/aggs answers; other events are not bars."""
        with self._lock:
            for event in events:
                if event.get("ev", "A") == "A":
                    self.timeline[(event["sym"], event["s"])] = event

    def add_ticks(self, kind: str, symbol: str, results: Iterable[dict]) -> None:
        """REST-shaped rows ("trades" or "quotes", with a nanosecond `sip_timestamp`) for /v3/{kind}/{symbol}."""
        with self._lock:
            rows = self.ticks.setdefault((kind, symbol), [])
            rows.extend(results)
            rows.sort(key=lambda row: row["sip_timestamp"])

    def push(self, events: Iterable[dict], frame_size: int = 200) -> int:
        """Send events to every subscribed connection; returns how many went out."""
        events = list(events)
        self.add_to_timeline(events)
        return self._call(self._push(events, frame_size))

    async def _push(self, events: list[dict], frame_size: int) -> int:
        delivered: set[int] = set()
        for client in self._subscribed():
            mine = [(i, e) for i, e in enumerate(events) if client.wants(e)]
            for chunk in _chunks(mine, frame_size):
                try:
                    await self._send(client, [e for _, e in chunk])
                except ConnectionClosed:
                    break
                delivered.update(i for i, _ in chunk)
        with self._lock:
            self.sent_events.extend(events[i] for i in sorted(delivered))
        return len(delivered)

    def push_raw(self, text: str) -> int:
        """Send one arbitrary text frame to every subscribed connection."""
        return self._call(self._push_raw(text))

    async def _push_raw(self, text: str) -> int:
        sent = 0
        for client in self._subscribed():
            try:
                await client.ws.send(text)
                sent += 1
            except ConnectionClosed:
                pass
        return sent

    def blast(self, total_events: int, frame_size: int = 200, start_ms: int = 1_767_000_000_000,
              symbols: tuple[str, ...] = ("SPY",), separators: tuple[str, str] = (",", ":")) -> float:
        """Benchmark: send pre-encoded frames as fast as possible; returns seconds.

        Events go round-robin over `symbols`, one bar per symbol per second from start_ms, so with
        several symbols many events fit in a short session window. The time ends when the last frame
        is handed to the socket, i.e. the client may still have up to the write buffer plus kernel
        buffers left to read. Nothing is recorded in sent_events/timeline. `separators`: Polygon's
        compact JSON by default; `(", ", ": ")` is json.dumps's spaced form. The CPU the sending itself
        took is kept in `last_blast_cpu_seconds` (the sender's own ceiling: events / that).
        """
        per_symbol = -(-total_events // len(symbols))
        timelines = [list(_timeline_iter(start_ms, per_symbol, symbol)) for symbol in symbols]
        events = [timeline[i] for i in range(per_symbol) for timeline in timelines][:total_events]
        frames = [json.dumps(c, separators=separators) for c in _chunks(events, frame_size)]
        return self._call(self._blast(frames, symbols), timeout=None)

    async def _blast(self, frames: list[str], symbols: tuple[str, ...]) -> float:
        clients = [c for c in self._subscribed() if any(c.wants({"ev": "A", "sym": s}) for s in symbols)]
        self.last_blast_started = time.monotonic()  # after encoding: when the first frame goes out
        started, cpu_started = time.perf_counter(), time.thread_time()   # the loop's own thread
        for frame in frames:
            for client in list(clients):
                try:
                    await client.ws.send(frame)
                except ConnectionClosed:
                    clients.remove(client)
        self.last_blast_cpu_seconds = time.thread_time() - cpu_started
        return time.perf_counter() - started

    def replay_live(self, symbols: Iterable[str] = ("SPY",), since_ms: int | None = None,
                    delay_seconds: float = 1.0, seed: int | None = None) -> None:
        """Until close(): one random-walk bar per symbol per second, sent `delay_seconds` after its second
        ends (Polygon's come about 2 s late) and kept for /v2/aggs. The bars from `since_ms` to now are
        history only: /v2/aggs answers them, as a daemon that starts late backfills them."""
        rng = random.Random(seed)
        walks = [RandomWalk(symbol, rng) for symbol in symbols]
        now_ms = int(time.time()) * 1000
        first_ms = now_ms if since_ms is None else since_ms // 1000 * 1000
        self.add_to_timeline(walk.bar(start) for start in range(first_ms, now_ms, 1000) for walk in walks)
        self._call(self._start_replay(walks, now_ms, delay_seconds))

    async def _start_replay(self, walks: list[RandomWalk], next_ms: int, delay_seconds: float) -> None:
        self._spawn(self._replay(walks, next_ms, delay_seconds))

    async def _replay(self, walks: list[RandomWalk], next_ms: int, delay_seconds: float) -> None:
        while True:
            await asyncio.sleep(max(0.0, next_ms / 1000 + 1 + delay_seconds - time.time()))
            events = [walk.bar(next_ms) for walk in walks]
            self.add_to_timeline(events)
            await self._push(events, 200)
            next_ms += 1000
            if next_ms % 600_000 == 0:
                self._forget_before(next_ms - REPLAY_HISTORY_KEPT_MS)

    def _forget_before(self, start_ms: int) -> None:
        with self._lock:
            self.timeline = {key: event for key, event in self.timeline.items() if key[1] >= start_ms}
            self.sent_events = [event for event in self.sent_events if event["s"] >= start_ms]

    def drop_connections(self, mode: str | int) -> int:
        """Drop every open connection: "abrupt" (no close frame) or a close code."""
        if mode != "abrupt" and not isinstance(mode, int):
            raise ValueError(f"mode must be 'abrupt' or a close code, not {mode!r}")
        return self._call(self._drop(mode))

    async def _drop(self, mode: str | int) -> int:
        with self._changed:
            victims = list(self._clients)
            for client in victims:
                self._forget(client)
        for client in victims:
            if mode == "abrupt":
                client.ws.transport.abort()
        if mode != "abrupt":
            await asyncio.gather(*(c.ws.close(mode, f"fake drop {mode}") for c in victims))
        if victims:
            await asyncio.wait([asyncio.ensure_future(c.ws.wait_closed()) for c in victims],
                               timeout=1)
        return len(victims)

    def set_refuse(self, refuse: bool) -> None:
        """While True, opening handshakes are answered with HTTP 503."""
        self._refuse = bool(refuse)

    def set_max_connections_once(self) -> None:
        with self._lock:
            self._max_conn_once = True

    # ---- REST ------------------------------------------------------------
