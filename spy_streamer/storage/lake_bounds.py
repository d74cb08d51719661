"""Every object-store and catalog call of the lake ends within CALL_TIMEOUT_SECONDS (10 s), answered or not.

A store that accepts connections and never answers had held a commit for a 60 s read timeout plus the
AWS SDK's retries, with nothing counted or logged. Now a request that receives nothing for
S3_REQUEST_TIMEOUT_SECONDS (lake_catalog.py) fails, and is tried S3_ATTEMPTS times in all: 2 x 3 s plus the SDK's short
back-off, about 6 s. (The request timeout is a time without bytes, not a total: a large upload that
keeps moving is not cut.) A REST catalog's requests carry the same bound (pyiceberg sets none). The
committer counts each failure and backs off; `check` judges the streak (monitoring/storage_health.py).

Loaded by pyiceberg itself, by name (`s3.retry-strategy-impl`, `py-catalog-impl`: lake_catalog.py).
"""
from __future__ import annotations

import pyarrow.fs
from pyiceberg.catalog.rest import RestCatalog
from requests.adapters import HTTPAdapter

CALL_TIMEOUT_SECONDS = 10.0
S3_ATTEMPTS = 2   # of lake_catalog's S3_REQUEST_TIMEOUT_SECONDS each


class BoundedS3Retries(pyarrow.fs.AwsStandardS3RetryStrategy):
    """The AWS SDK's standard retries, S3_ATTEMPTS attempts in all (its default of 3 outlasts the bound)."""

    def __init__(self):
        super().__init__(max_attempts=S3_ATTEMPTS)


class _BoundedAdapter(HTTPAdapter):
    """Every request through it without a timeout of its own gets CALL_TIMEOUT_SECONDS (connect and read)."""

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = CALL_TIMEOUT_SECONDS
        return super().send(request, **kwargs)


class BoundedRestCatalog(RestCatalog):
    """pyiceberg's REST catalog whose HTTP session bounds each request (its config request at start too)."""

    def _create_session(self):
        session = super()._create_session()
        for prefix in ("http://", "https://"):
            session.mount(prefix, _BoundedAdapter())
        return session
