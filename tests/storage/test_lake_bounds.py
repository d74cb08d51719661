"""Every object-store and catalog call ends within 10 s (storage/lake_bounds.py). Measured before: an S3
endpoint that accepts connections and never answers, for 100 s, left `check` at OK, the backlog frozen,
no failure counted and no log line (one request sat in a 60 s timeout plus retries)."""
from __future__ import annotations

import logging
import socket
import threading
import time

import pytest

pytest.importorskip("pyiceberg")

from spy_streamer.monitoring.health_check import WARNING, evaluate_health, load_heartbeat  # noqa: E402
from spy_streamer.storage.iceberg_committer import IcebergCommitter  # noqa: E402
from spy_streamer.storage.lake_catalog import LakeLocation, open_catalog  # noqa: E402
from test_health_check import streaming  # noqa: E402
from test_heartbeat_monitor import TUESDAY_11, Rig, config  # noqa: E402,F401 (fixture)
from test_iceberg_lake import NAMESPACE, bars, stage  # noqa: E402

BOUND_SECONDS = 10.0
SLACK_SECONDS = 2.0   # a loaded CI machine


class Silent:
    """A TCP server on loopback that accepts every connection and never sends a byte."""

    def __init__(self):
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self._held.append(connection)

    def close(self) -> None:
        self._listener.close()
        for connection in self._held:
            connection.close()


@pytest.fixture
def silent(monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    server = Silent()
    yield server
    server.close()


def test_a_store_that_never_answers_fails_the_commit_within_the_bound_counted_and_logged(silent, tmp_path,
                                                                                       caplog, config):
    data_dir = tmp_path / "data"
    location = LakeLocation("sql", "s3://bucket/warehouse", f"http://127.0.0.1:{silent.port}")
    committer = IcebergCommitter(lambda: open_catalog(location, data_dir), data_dir, NAMESPACE)
    stage(data_dir, bars(0, 10), bars(10, 10))
    open_catalog(location, data_dir)   # (the libraries' first import is not the call's time)
    caplog.set_level(logging.INFO, logger="spy_streamer")

    started = time.monotonic()
    committer.tick(0.5)
    elapsed = time.monotonic() - started

    assert elapsed < BOUND_SECONDS + SLACK_SECONDS       # the first call that hung failed within its bound
    stats = committer.stats
    assert (stats.commit_failures, stats.upload_backlog, stats.upload_backlog_rows) == (1, 2, 20)
    assert stats.commit_started_at is None and stats.oldest_staged_at is not None
    assert [r.event for r in caplog.records if getattr(r, "event", "").startswith("lake_commit")] == ["lake_commit_failed"]
    rig = streaming(Rig(config, TUESDAY_11, lake=stats))
    verdict = evaluate_health(load_heartbeat(rig.path), rig.clock.now())
    assert verdict.code == WARNING and "lake_commit failing" in verdict.text


def test_a_rest_catalog_that_never_answers_fails_within_the_bound(silent, tmp_path):
    location = LakeLocation(f"http://127.0.0.1:{silent.port}", str(tmp_path / "lake"))
    outcome: list = []

    def open_it():
        started = time.monotonic()
        try:
            open_catalog(location, tmp_path / "data")
        except Exception as exc:  # the catalog's config request timed out
            outcome.append((time.monotonic() - started, exc))

    thread = threading.Thread(target=open_it, daemon=True)
    thread.start()
    thread.join(BOUND_SECONDS * 2 + SLACK_SECONDS)
    assert outcome, "the catalog request did not end"
    assert outcome[0][0] < BOUND_SECONDS * 2 + SLACK_SECONDS   # (requests' bound is per connect and per read)
