"""A Polygon.io replay (WebSocket + REST) on 127.0.0.1: the tests' fake Polygon and the demo's feed.

It speaks Polygon's message shapes (connected, auth, subscribe acks, `A` events, `max_connections`) and
answers `GET /v1/marketstatus/upcoming` and `GET /v2/aggs/.../1/second/...`; `replay_live()` streams
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
import re
import threading
import time
from datetime import date, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable, Iterator
from urllib.parse import parse_qs, urlencode, urlsplit
from zoneinfo import ZoneInfo

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

NEW_YORK = ZoneInfo("America/New_York")
MAX_CONNECTIONS_MESSAGE = (
    "Maximum number of websocket connections exceeded. You have reached the "
    "connection limit for your account. Please contact support at "
    "https://polygon.io/contact to increase your limit."
)
REST_FAILURE_MODES = ("500", "garbage", "wrong_shape", "hang")
HANG_SECONDS = 30.0
_AGGS_PATH = re.compile(
    r"^/v2/aggs/ticker/(?P<sym>[^/]+)/range/(?P<mult>\d+)/(?P<span>\w+)/(?P<frm>[^/]+)/(?P<to>[^/]+)$"
)
_TICKS_PATH = re.compile(r"^/v3/(?P<kind>trades|quotes)/(?P<sym>[^/]+)$")


# --------------------------------------------------------------------------
# Data helpers
# --------------------------------------------------------------------------
def agg_event(start_ms: int, symbol: str = "SPY", price: float = 500.0, volume: int = 100,
              accumulated_volume: int | None = None, official_open: float | None = None, otc: bool = False) -> dict:
    """One Polygon per-second aggregate ("A") event with every field the feed sends (`otc` only when true:
    Polygon leaves it off otherwise; `dv`, `dav` are the volumes as decimal strings)."""
    accumulated = int(volume if accumulated_volume is None else accumulated_volume)
    return {
        "ev": "A", "sym": symbol,
        "v": int(volume),
        "av": accumulated,
        "dv": str(int(volume)),
        "dav": str(accumulated),
        "op": round(price if official_open is None else official_open, 4),
        "vw": round(price + 0.01, 4),
        "o": round(price, 4),
        "c": round(price + 0.02, 4),
        "h": round(price + 0.05, 4),
        "l": round(price - 0.03, 4),
        "a": round(price + 0.015, 4),
        "z": max(1, int(volume) // 10),
        "s": int(start_ms),
        "e": int(start_ms) + 1000,
        **({"otc": True} if otc else {}),
    }


def _timeline_iter(start_ms: int, count: int, symbol: str) -> Iterator[dict]:
    base, accumulated = 500.0, 0
    for i in range(count):
        volume = 100 + (i * 37) % 900
        accumulated += volume
        price = round(base + (i % 200) * 0.01, 2)
        yield agg_event(start_ms + i * 1000, symbol, price, volume, accumulated, base)


def session_timeline(start_ms: int, count: int, symbol: str = "SPY") -> list[dict]:
    """`count` consecutive one-second events; values derive from the index only."""
    return list(_timeline_iter(start_ms, count, symbol))


# Where the replay's random walks start (prices of late 2025); another symbol starts at 100.
REFERENCE_PRICES = {"SPY": 600.0, "QQQ": 520.0, "IWM": 225.0, "DIA": 440.0}
# One standard deviation of a one-second return: about 1 % over a 23,400-second day, like SPY.
SECOND_VOLATILITY = 0.00007
REPLAY_HISTORY_KEPT_MS = 2 * 3_600_000  # a long demo keeps two hours for /v2/aggs, not the whole run


class RandomWalk:
    """One symbol's second bars, one after another: the price walks, volume and the day's VWAP add up."""

    def __init__(self, symbol: str, rng: random.Random, price: float | None = None):
        self.symbol = symbol
        self.rng = rng
        self.price = round(price or REFERENCE_PRICES.get(symbol, 100.0), 2)
        self.official_open = self.price
        self.accumulated = 0
        self.turnover = 0.0

    def bar(self, start_ms: int) -> dict:
        rng, open_ = self.rng, self.price
        close = round(open_ * (1 + rng.gauss(0, SECOND_VOLATILITY)), 2)
        wick = round(abs(rng.gauss(0, SECOND_VOLATILITY)) * open_, 2)
        high, low = max(open_, close) + wick, min(open_, close) - wick
        volume = max(1, int(rng.lognormvariate(7.5, 0.8)))  # a median of about 1,800 shares a second
        vwap = rng.uniform(low, high)
        self.price, self.accumulated, self.turnover = close, self.accumulated + volume, self.turnover + vwap * volume
        return {"ev": "A", "sym": self.symbol, "v": volume, "av": self.accumulated, "dv": str(volume),
                "dav": str(self.accumulated), "op": self.official_open,
                "vw": round(vwap, 4), "o": open_, "c": close, "h": round(high, 2), "l": round(low, 2),
                "a": round(self.turnover / self.accumulated, 4), "z": max(1, volume // rng.randint(20, 120)),
                "s": start_ms, "e": start_ms + 1000}


def trade_event(time_ms: int, symbol: str = "SPY", trade_id: str = "1", price: float = 500.0, size: int = 100,
                exchange: int = 4, sequence: int = 1, trf_id: int | None = None) -> dict:
    """One Polygon trade ("T") event as the WebSocket sends it (times in ms, `ds` the size as a decimal
    string); with `trf_id`, an off-exchange print reported through that TRF (`trfi`, `trft`)."""
    event = {"ev": "T", "sym": symbol, "x": exchange, "i": trade_id, "z": 2, "p": price, "s": size, "ds": str(size),
             "c": [12, 37], "t": time_ms, "pt": time_ms - 1, "q": sequence}
    if trf_id is not None:
        event.update(trfi=trf_id, trft=time_ms - 1)
    return event


def trade_result(event: dict) -> dict:
    """The same trade as /v3/trades answers it (nanoseconds, long names)."""
    result = {"sip_timestamp": event["t"] * 1_000_000 + 123, "participant_timestamp": event["t"] * 1_000_000 - 5000,
              "exchange": event["x"], "id": event["i"], "tape": event["z"], "price": event["p"], "size": event["s"],
              "decimal_size": event["ds"], "conditions": event["c"], "sequence_number": event["q"], "correction": 0}
    if "trfi" in event:
        result.update(trf_id=event["trfi"], trf_timestamp=event["trft"] * 1_000_000 + 45)
    return result


def quote_event(time_ms: int, symbol: str = "SPY", sequence: int = 1, bid: float = 499.99, ask: float = 500.01,
                trf_id: int | None = None) -> dict:
    """One Polygon NBBO quote ("Q") event as the WebSocket sends it (one condition, times in ms)."""
    event = {"ev": "Q", "sym": symbol, "bx": 11, "bp": bid, "bs": 2, "ax": 12, "ap": ask, "as": 3, "c": 1,
             "i": [604], "t": time_ms, "pt": time_ms - 1, "q": sequence, "z": 2}
    if trf_id is not None:
        event.update(trfi=trf_id, trft=time_ms - 1)
    return event


def quote_result(event: dict) -> dict:
    """The same quote as /v3/quotes answers it."""
    result = {"sip_timestamp": event["t"] * 1_000_000 + 77, "participant_timestamp": event["t"] * 1_000_000 - 900,
              "bid_exchange": event["bx"], "bid_price": event["bp"], "bid_size": event["bs"],
              "ask_exchange": event["ax"], "ask_price": event["ap"], "ask_size": event["as"],
              "conditions": [event["c"]], "indicators": event["i"], "sequence_number": event["q"], "tape": event["z"]}
    if "trft" in event:
        result["trf_timestamp"] = event["trft"] * 1_000_000 + 45
    return result


def holiday_rows(date_str: str, name: str, status: str = "closed",
                 open_iso: str | None = None, close_iso: str | None = None) -> list[dict]:
    """/v1/marketstatus/upcoming rows for one day: Polygon returns one per exchange."""
    rows = []
    for exchange in ("NYSE", "NASDAQ", "OTC"):
        row = {"date": date_str, "exchange": exchange, "name": name, "status": status}
        if open_iso is not None:
            row["open"] = open_iso
        if close_iso is not None:
            row["close"] = close_iso
        rows.append(row)
    return rows


def _status(status: str, message: str) -> dict:
    return {"ev": "status", "status": status, "message": message}


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _parse_bound(text: str, end: bool) -> int:
    """ms epoch, or YYYY-MM-DD meaning the whole America/New_York day."""
    if text.isdigit():
        return int(text)
    day = date.fromisoformat(text)
    if end:  # last millisecond of the day, DST-aware
        day += timedelta(days=1)
    midnight = _ms(datetime(day.year, day.month, day.day, tzinfo=NEW_YORK))
    return midnight - 1 if end else midnight


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
class FakePolygon:
    def __init__(self, api_key: str = "test-key", host: str = "127.0.0.1", compression: str | None = "deflate"):
        self.api_key = api_key
        self.host = host
        self.compression = compression  # permessage-deflate, as the client offers; None to switch it off
        self.last_blast_started: float | None = None
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
              symbols: tuple[str, ...] = ("SPY",)) -> float:
        """Benchmark: send pre-encoded frames as fast as possible; returns seconds.

        Events go round-robin over `symbols`, one bar per symbol per second from start_ms, so with
        several symbols many events fit in a short session window. The time ends when the last frame
        is handed to the socket, i.e. the client may still have up to the write buffer plus kernel
        buffers left to read. Nothing is recorded in sent_events/timeline.
        """
        per_symbol = -(-total_events // len(symbols))
        timelines = [list(_timeline_iter(start_ms, per_symbol, symbol)) for symbol in symbols]
        events = [timeline[i] for i in range(per_symbol) for timeline in timelines][:total_events]
        frames = [json.dumps(c, separators=(",", ":")) for c in _chunks(events, frame_size)]
        return self._call(self._blast(frames, symbols), timeout=None)

    async def _blast(self, frames: list[str], symbols: tuple[str, ...]) -> float:
        clients = [c for c in self._subscribed() if any(c.wants({"ev": "A", "sym": s}) for s in symbols)]
        self.last_blast_started = time.monotonic()  # after encoding: when the first frame goes out
        started = time.perf_counter()
        for frame in frames:
            for client in list(clients):
                try:
                    await client.ws.send(frame)
                except ConnectionClosed:
                    clients.remove(client)
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
    def set_rest_failure(self, path_prefix: str, mode: str | None) -> None:
        self._set_failure(path_prefix, mode, None)

    def set_rest_failure_count(self, path_prefix: str, mode: str | None, n: int) -> None:
        self._set_failure(path_prefix, mode, n)

    def _set_failure(self, prefix: str, mode: str | None, remaining: int | None) -> None:
        if mode is not None and mode not in REST_FAILURE_MODES:
            raise ValueError(f"unknown REST failure mode {mode!r}")
        with self._lock:
            if mode is None or (remaining is not None and remaining <= 0):
                self._rest_failures.pop(prefix, None)
            else:
                self._rest_failures[prefix] = [mode, remaining]

    def _take_failure(self, path: str) -> str | None:
        with self._lock:
            matches = [p for p in self._rest_failures if path.startswith(p)]
            if not matches:
                return None
            prefix = max(matches, key=len)
            entry = self._rest_failures[prefix]
            if entry[1] is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._rest_failures[prefix]
            return entry[0]

    def request_count(self, path_prefix: str = "/") -> int:
        with self._lock:
            return sum(1 for path, _ in self.rest_requests if path.startswith(path_prefix))

    def _handle_rest(self, path: str, query: dict, authorization: str | None):
        """Returns (status, body) or None to drop the connection without answering."""
        with self._lock:
            self.rest_requests.append((path, query))
        mode = self._take_failure(path)
        if mode == "hang":
            if self._closed.wait(HANG_SECONDS):
                return None
        elif mode == "500":
            return 500, {"status": "ERROR", "request_id": "fake", "error": "Internal Server Error"}
        elif mode == "garbage":
            return 200, b"<html>not json</html>"
        elif mode == "wrong_shape":
            return 200, {"status": "OK"}
        if authorization != f"Bearer {self.api_key}" and query.get("apiKey") != self.api_key:
            return 401, {"status": "ERROR", "request_id": "fake", "error": "Unknown API Key"}
        if path == "/v1/marketstatus/upcoming":
            return 200, list(self.holidays)
        match = _AGGS_PATH.match(path)
        if match:
            return self._aggs(path, query, **match.groupdict())
        match = _TICKS_PATH.match(path)
        if match:
            return self._ticks(path, query, **match.groupdict())
        return 404, {"status": "NOT_FOUND", "request_id": "fake", "message": "Not found"}

    def _aggs(self, path: str, query: dict, sym: str, mult: str, span: str, frm: str, to: str):
        if mult != "1" or span not in ("second", "minute"):
            return 400, {"status": "ERROR", "error": "the replay serves 1/second and 1/minute aggregates"}
        try:
            lo, hi = _parse_bound(frm, end=False), _parse_bound(to, end=True)
            limit = min(max(int(query.get("limit", 5000)), 1), 50000)
            after = int(query["cursor"]) if "cursor" in query else None
        except ValueError as exc:
            return 400, {"status": "ERROR", "error": str(exc)}
        descending = query.get("sort") == "desc"
        with self._lock:
            rows = [e for (s, t), e in self.timeline.items() if s == sym and lo <= t <= hi]
        if span == "minute":
            rows = self._minute_bars(sym, rows)
        rows.sort(key=lambda e: e["s"], reverse=descending)
        if after is not None:  # the cursor is the last timestamp already returned
            rows = [e for e in rows if (e["s"] < after if descending else e["s"] > after)]
        page = rows[:limit]
        adjusted = query.get("adjusted", "true") != "false"
        body: dict[str, Any] = {"ticker": sym, "queryCount": len(page),
                                "resultsCount": len(page), "adjusted": adjusted}
        results = [_aggs_result(e) for e in page] + (self.extra_aggs.get((sym, span), []) if after is None else [])
        if results:  # like Polygon, "results" is absent when nothing matches
            body["results"] = results
        body.update(status="OK", request_id="fake", count=len(page))
        if len(rows) > limit:
            # _paginate_iter keeps only path+query of next_url and prepends its BASE.
            next_query = {"cursor": page[-1]["s"], "adjusted": str(adjusted).lower(),
                          "sort": "desc" if descending else "asc", "limit": limit}
            body["next_url"] = f"{self.rest_base_url}{path}?{urlencode(next_query)}"
        return 200, body


    def _ticks(self, path: str, query: dict, kind: str, sym: str):
        """/v3/trades and /v3/quotes: `timestamp.gte`/`timestamp.lt` in ns, `limit` (max 50,000), oldest
        first, and a `cursor` (the offset already returned) in `next_url`, as Polygon pages them."""
        try:
            lo = int(query.get("timestamp.gte", 0))
            hi = int(query.get("timestamp.lt", 2 ** 63 - 1))
            limit = min(max(int(query.get("limit", 1000)), 1), 50000)
            offset = int(query.get("cursor", 0))
        except ValueError as exc:
            return 400, {"status": "ERROR", "error": str(exc)}
        with self._lock:
            rows = [row for row in self.ticks.get((kind, sym), []) if lo <= row["sip_timestamp"] < hi]
        page = rows[offset:offset + limit]
        body: dict[str, Any] = {"status": "OK", "request_id": "fake", "results": page}
        if offset + limit < len(rows):
            next_query = {**query, "cursor": offset + limit}
            body["next_url"] = f"{self.rest_base_url}{path}?{urlencode(next_query)}"
        return 200, body

    def _minute_bars(self, sym: str, seconds: list[dict]) -> list[dict]:
        """Minute bars as Polygon builds them from the same trades: the sum of the second bars' volumes,
        the first open, the last close, the extremes; `minute_overrides[(sym, minute_ms)]` changes fields
        (a test's disagreeing minute)."""
        minutes: dict[int, list[dict]] = {}
        for event in sorted(seconds, key=lambda e: e["s"]):
            minutes.setdefault(event["s"] - event["s"] % 60_000, []).append(event)
        bars = []
        for start, group in minutes.items():
            volume = sum(e["v"] for e in group)
            bar = {"s": start, "o": group[0]["o"], "c": group[-1]["c"], "h": max(e["h"] for e in group),
                   "l": min(e["l"] for e in group), "v": volume, "n": sum(e.get("n", 1) for e in group),
                   **({"otc": True} if group[0].get("otc") else {}),
                   "vw": round(sum(e["vw"] * e["v"] for e in group) / volume, 4) if volume else group[-1]["c"]}
            bar.update(self.minute_overrides.get((sym, start), {}))
            bars.append(bar)
        return bars


def _aggs_result(bar: dict) -> dict:
    """A bar as /v2/aggs answers it: every field Polygon documents (`n` transactions, `otc` when true)."""
    result = {"v": bar["v"], "vw": bar["vw"], "o": bar["o"], "c": bar["c"], "h": bar["h"], "l": bar["l"],
              "t": bar["s"], "n": bar.get("n", 1)}
    if bar.get("otc"):
        result["otc"] = True
    return result


class _RestHandler(BaseHTTPRequestHandler):
    fake: FakePolygon  # set on the per-instance subclass

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        answer = self.fake._handle_rest(parts.path, query, self.headers.get("Authorization"))
        if answer is None:
            return
        status, body = answer
        if isinstance(body, bytes):
            data, content_type = body, "text/html"
        else:
            data, content_type = json.dumps(body).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its read timeout fired)
