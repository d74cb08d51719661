"""Secrets and exposure (issue 16, section 7): no credential inside a configured URL, no message that
echoes a URL's user:password@ part or query, and a `/metrics` endpoint on loopback that serves only
`/metrics`."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import psutil
import pytest

from conftest import REPO_ROOT, settings, write_settings
from spy_streamer.config import ConfigError, load_config
from spy_streamer.monitoring.metrics import MetricsPublisher

SECRET = "Zq8xW3vR7tY2pL9kM4nB"

# (section, key, URL holding the secret, what the message names)
CREDENTIALS = [
    ("polygon", "rest_base_url", f"https://api.polygon.io/?apiKey={SECRET}", "apiKey"),   # measured
    ("polygon", "rest_base_url", f"https://me:{SECRET}@api.polygon.io", "user:password@"),  # measured
    ("polygon", "ws_feed", f"me:{SECRET}@socket.polygon.io", "user:password@"),
    ("polygon", "ws_feed", f"socket.polygon.io/stocks?token={SECRET}", "token"),
    ("storage", "s3_endpoint", f"http://minio:{SECRET}@minio:9000", "user:password@"),     # measured
    ("storage", "s3_endpoint", f"http://minio:9000/?X-Amz-Signature={SECRET}", "X-Amz-Signature"),
    ("storage", "catalog", f"postgresql://lake:{SECRET}@db.internal/lake", "user:password@"),  # measured
    ("storage", "catalog", f"https://catalog.internal:8181/?credential={SECRET}", "credential"),
    ("storage", "catalog", f"https://catalog.internal:8181/#client_secret={SECRET}", "client_secret"),
    ("storage", "warehouse", f"s3://AKIAEXAMPLE:{SECRET}@bucket/prefix", "user:password@"),
    ("storage", "warehouse", f"s3://bucket/prefix?password={SECRET}", "password"),
]


def document(tmp_path, section, key, value):
    return settings(tmp_path, **{section: {key: value}})


def no_piece_of_the_secret(text: str) -> bool:
    """Not even part of it: the old message showed 18 of a 19-character key."""
    return not any(SECRET[i:i + 4] in text for i in range(len(SECRET) - 3))


@pytest.mark.parametrize("section, key, url, named", CREDENTIALS)
def test_a_credential_in_any_configured_url_is_refused_naming_the_key_not_the_value(tmp_path, section, key, url,
                                                                                    named):
    path = write_settings(tmp_path, document(tmp_path, section, key, url))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert f"{section}.{key}" in message and named in message and "environment" in message
    assert no_piece_of_the_secret(message), message


@pytest.mark.parametrize("section, key, url, named", [CREDENTIALS[0], CREDENTIALS[4]])
def test_the_cli_refuses_with_exit_78_and_one_line_without_the_secret(tmp_path, section, key, url, named):
    path = write_settings(tmp_path, document(tmp_path, section, key, url))
    env = {k: v for k, v in os.environ.items() if k not in ("POLYGON_API_KEY", "SPY_STREAMER_CONFIG")}
    result = subprocess.run([sys.executable, "-m", "spy_streamer", "status", "--config", str(path)],
                            capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 78 and len(result.stderr.strip().splitlines()) == 1
    assert no_piece_of_the_secret(result.stdout + result.stderr), result.stderr


@pytest.mark.parametrize("section, key, url", [
    ("polygon", "rest_base_url", f"https://api.polygon.io/v2?q={SECRET}"),
    ("polygon", "rest_base_url", f"ftp://api.polygon.io/#{SECRET}"),
    ("storage", "s3_endpoint", f"minio:9000?x={SECRET}"),
    ("storage", "catalog", f"thrift://metastore/?x={SECRET}"),
    ("storage", "warehouse", f"gs://bucket?x={SECRET}"),
])
def test_no_message_echoes_a_urls_query(tmp_path, section, key, url):
    with pytest.raises(ConfigError) as caught:
        load_config(write_settings(tmp_path, document(tmp_path, section, key, url)))
    assert f"{section}.{key}" in str(caught.value) and no_piece_of_the_secret(str(caught.value)), caught.value


@pytest.mark.parametrize("section, key, url", [
    ("polygon", "rest_base_url", "https://api.polygon.io"),
    ("polygon", "ws_feed", "socket.polygon.io"),
    ("storage", "s3_endpoint", "http://minio:9000"),
    ("storage", "catalog", "postgresql+psycopg2://db.internal/lake"),
    ("storage", "catalog", "https://catalog.internal:8181"),
    ("storage", "warehouse", "s3://bucket/prefix"),
])
def test_urls_without_credentials_still_load(tmp_path, section, key, url):
    load_config(write_settings(tmp_path, document(tmp_path, section, key, url)))


# --- /metrics: loopback unless configured, and only /metrics ---

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    return {connection.laddr.ip for connection in psutil.Process().net_connections("inet")
            if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port}


def test_metrics_address_defaults_to_loopback_and_is_validated(tmp_path):
    assert load_config(write_settings(tmp_path, settings(tmp_path))).monitoring.metrics_address == "127.0.0.1"
    wide = settings(tmp_path, streaming={"monitoring": {"metrics_address": "0.0.0.0"}})
    assert load_config(write_settings(tmp_path, wide)).monitoring.metrics_address == "0.0.0.0"
    bad = settings(tmp_path, streaming={"monitoring": {"metrics_address": "everywhere"}})
    with pytest.raises(ConfigError, match="streaming.monitoring.metrics_address: expected an IP address"):
        load_config(write_settings(tmp_path, bad))


def test_the_metrics_endpoint_listens_on_loopback_and_serves_only_metrics(tmp_path):
    """Measured: it listened on 0.0.0.0 and answered any path."""
    port = free_port()
    publisher = MetricsPublisher(tmp_path, port=port)
    publisher.start_server()
    publisher.publish({"status": "streaming", "messages_total": 5})
    assert listening_addresses(port) == {"127.0.0.1"}
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "spy_streamer_messages_total 5.0" in text
    for path in ("/", "/anything", "/metrics/x", "/favicon.ico"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
        assert caught.value.code == 404


def test_the_configured_metrics_address_is_used(tmp_path):
    port = free_port()
    MetricsPublisher(tmp_path, port=port, address="0.0.0.0").start_server()
    assert listening_addresses(port) == {"0.0.0.0"}
