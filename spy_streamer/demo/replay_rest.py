"""The replay's REST side: `/v1/marketstatus/upcoming`, `/v2/aggs` (second and minute bars, paged by
cursor), `/v3/trades` and `/v3/quotes`, and the failure modes a test can switch on. A mixin of
FakePolygon: it reads the timeline, ticks and holidays the server holds."""
from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .replay_events import _aggs_result, _parse_bound

REST_FAILURE_MODES = ("500", "garbage", "wrong_shape", "hang")
HANG_SECONDS = 30.0
_AGGS_PATH = re.compile(
    r"^/v2/aggs/ticker/(?P<sym>[^/]+)/range/(?P<mult>\d+)/(?P<span>\w+)/(?P<frm>[^/]+)/(?P<to>[^/]+)$"
)
_TICKS_PATH = re.compile(r"^/v3/(?P<kind>trades|quotes)/(?P<sym>[^/]+)$")


class RestReplay:
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


class _RestHandler(BaseHTTPRequestHandler):
    fake: RestReplay  # set on the per-instance subclass

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
