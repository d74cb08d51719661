"""Polygon REST access through the client library's RESTClient, with answers validated before use.

RESTClient silently turns a body that is not JSON into `[]`, and polygon-api-client never applies its own
timeouts, so this module fetches raw responses, gives the connection pool its timeouts and checks the shape.
Private parts of the clients it relies on (`_get`, `BASE`, polygon-api-client's pool options) are tested
through both libraries in tests/data_sources/test_client_library.py, so a release that changes them fails there.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlsplit

import urllib3

from .client_library import LIBRARY, ClientLibrary

RESTClient = LIBRARY.RESTClient

# Hard bounds on one request: a hung server costs at most REST_TOTAL_SECONDS, so the thread that asked
# (the backfill) stops within the shutdown deadline. No retries inside the client: callers retry on
# their own terms, where a stop request can cut the retrying short.
REST_CONNECT_SECONDS = 2.0
REST_READ_SECONDS = 5.0
REST_TOTAL_SECONDS = 6.0
REST_RETRIES = 0
AGGS_PAGE_LIMIT = 50_000   # Polygon's maximum; a whole session of one-second bars is 23,400
MAX_AGGS_PAGES = 100


class RestAnswerError(Exception):
    """Polygon's REST API failed or answered something that is not what Polygon sends."""


def make_rest_client(api_key: str, base_url: str, timeout_seconds: float = REST_TOTAL_SECONDS,
                     library: ClientLibrary = LIBRARY) -> RESTClient:
    timeout = urllib3.Timeout(connect=min(REST_CONNECT_SECONDS, timeout_seconds),
                              read=min(REST_READ_SECONDS, timeout_seconds), total=timeout_seconds)
    arguments = {"api_key": api_key, "base": base_url.rstrip("/"), "retries": REST_RETRIES}
    if library.rest_takes_pool_options:   # massive: a public constructor argument
        return library.RESTClient(**arguments, connection_pool_kw={"timeout": timeout})
    client = library.RESTClient(**arguments)
    # polygon-api-client builds a Timeout but never passes it to its PoolManager; without this a hung server
    # would block the caller forever. A private attribute: tests/data_sources/test_client_library.py fails if it goes.
    client.client.connection_pool_kw["timeout"] = timeout
    return client


def fetch_upcoming_holidays(client: RESTClient) -> list[dict[str, Any]]:
    """Rows of GET /v1/marketstatus/upcoming (one per exchange and day), or RestAnswerError."""
    try:
        response = client.get_market_holidays(raw=True)
        rows = json.loads(response.data)
    except Exception as exc:  # urllib3, BadResponse, JSON: all mean "no usable answer"
        raise RestAnswerError(_describe(exc)) from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise RestAnswerError("marketstatus/upcoming did not answer a JSON list of objects")
    return rows


def fetch_aggs(client: RESTClient, symbol: str, timespan: str, from_ms: int, to_ms: int,
               page_limit: int = AGGS_PAGE_LIMIT, pace: Callable[[], None] | None = None) -> list:
    """The raw `results` of GET /v2/aggs/ticker/{symbol}/range/1/{timespan}/{from}/{to}, all pages.

    The items are returned unchecked (the writer validates and counts each); an answer that is not a
    Polygon aggregates page raises RestAnswerError. Pages are fetched raw because the client's own
    iterator ends silently on a body that is not JSON, which would look like "no bars". `pace()` is
    called before each request (the backfill's rate cap).
    """
    return [row for page in iter_aggs_pages(client, symbol, timespan, from_ms, to_ms, page_limit, pace) for row in page]


def iter_aggs_pages(client: RESTClient, symbol: str, timespan: str, from_ms: int, to_ms: int,
                    page_limit: int = AGGS_PAGE_LIMIT, pace: Callable[[], None] | None = None) -> Iterator[list]:
    """fetch_aggs one page of `results` at a time (a backfill holds one page, not a whole day)."""
    return _pages(client, f"aggregates for {symbol}", pace, lambda: client.list_aggs(
        symbol, 1, timespan, from_ms, to_ms, adjusted=True, sort="asc", limit=page_limit, raw=True))


def fetch_second_aggs(client: RESTClient, symbol: str, from_ms: int, to_ms: int,
                      page_limit: int = AGGS_PAGE_LIMIT) -> list:
    """One-second bars (the `A` channel's REST source)."""
    return fetch_aggs(client, symbol, "second", from_ms, to_ms, page_limit)


def fetch_minute_aggs(client: RESTClient, symbol: str, from_ms: int, to_ms: int,
                      page_limit: int = AGGS_PAGE_LIMIT) -> list:
    """One-minute bars (the `AM` channel's REST source, and what `verify` checks second bars against)."""
    return fetch_aggs(client, symbol, "minute", from_ms, to_ms, page_limit)


def iter_tick_pages(client: RESTClient, kind: str, symbol: str, from_ms: int, to_ms: int,
                    page_limit: int = AGGS_PAGE_LIMIT, pace: Callable[[], None] | None = None) -> Iterator[list]:
    """The raw `results` of GET /v3/{kind}/{symbol} (kind "trades" or "quotes") with SIP timestamps from
    `from_ms` to `to_ms` inclusive (`timestamp.gte`/`timestamp.lt` in nanoseconds), oldest first, one
    page (up to 50,000 rows) at a time."""
    params = {"timestamp.gte": from_ms * 1_000_000, "timestamp.lt": (to_ms + 1) * 1_000_000,
              "order": "asc", "sort": "timestamp", "limit": page_limit}
    path = f"/v3/{kind}/{quote(symbol, safe='')}"
    return _pages(client, f"{kind} for {symbol}", pace, lambda: client._get(path=path, params=params, raw=True))


def _pages(client: RESTClient, what: str, pace: Callable[[], None] | None, first_request) -> Iterator[list]:
    """Each page's `results`, following `next_url` on the configured origin only."""
    pace = pace or (lambda: None)
    pace()
    page = _results_page(first_request)
    for _ in range(MAX_AGGS_PAGES):
        yield page.get("results", [])
        next_url = page.get("next_url")
        if not next_url:
            return
        path = next_page_path(client.BASE, next_url)
        pace()
        page = _results_page(lambda: client._get(path=path, raw=True))
    raise RestAnswerError(f"{what} ran past {MAX_AGGS_PAGES} pages")


def next_page_path(base_url: str, next_url: str) -> str:
    """The path and query of Polygon's `next_url`, to put after the configured base (as the client's own
    paginator does). Refused unless it names the configured origin: the client sends the key with
    every request, so server text must never choose where the next one goes."""
    base, target = urlsplit(base_url), urlsplit(next_url)
    if _origin(target) != _origin(base) or target.username is not None or not target.path.startswith("/"):
        raise RestAnswerError(f"next_url leaves {_origin_text(base)}: refused")
    path = f"{target.path}?{target.query}" if target.query else target.path
    if _origin(urlsplit(base_url + path)) != _origin(base):   # the path itself must not move the host
        raise RestAnswerError(f"next_url leaves {_origin_text(base)}: refused")
    return path


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(parts) -> tuple[str, str | None, int | None]:
    try:
        port = parts.port
    except ValueError:  # a port that is not a number
        return ("", None, None)
    scheme = parts.scheme.lower()
    return scheme, parts.hostname, port or DEFAULT_PORTS.get(scheme)


def _origin_text(parts) -> str:
    scheme, host, port = _origin(parts)
    return f"{scheme}://{host}:{port}"


def _results_page(request) -> dict[str, Any]:
    try:
        page = json.loads(request().data)
    except Exception as exc:
        raise RestAnswerError(_describe(exc)) from None
    if not isinstance(page, dict) or not isinstance(page.get("results", []), list) \
            or not isinstance(page.get("next_url", ""), str):
        raise RestAnswerError("answer is not a Polygon results page")
    return page


def _describe(exc: Exception) -> str:
    # The exception text of a failed request may quote the request; keep only its kind and a short reason.
    reason = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
