"""Polygon REST access through polygon-api-client's RESTClient, with answers validated before use.

RESTClient silently turns a body that is not JSON into `[]` and never applies its own timeouts, so this
module fetches raw responses, sets the timeouts on the connection pool itself and checks the shape.
"""
from __future__ import annotations

import json
from typing import Any

import urllib3
from polygon import RESTClient

REST_TIMEOUT_SECONDS = 5.0
REST_RETRIES = 2


class RestAnswerError(Exception):
    """Polygon's REST API failed or answered something that is not what Polygon sends."""


def make_rest_client(api_key: str, base_url: str, timeout_seconds: float = REST_TIMEOUT_SECONDS) -> RESTClient:
    client = RESTClient(api_key=api_key, base=base_url.rstrip("/"), retries=REST_RETRIES)
    # RESTClient builds a Timeout but never passes it to its PoolManager; without this a hung
    # server would block the caller forever.
    client.client.connection_pool_kw["timeout"] = urllib3.Timeout(connect=timeout_seconds, read=timeout_seconds)
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


def _describe(exc: Exception) -> str:
    # The exception text of a failed request may quote the request; keep only its kind and a short reason.
    reason = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
