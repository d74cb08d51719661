"""The API key never leaves for another origin: Polygon's `next_url` is server text, and the client sends
`Authorization: Bearer <key>` with every request it makes."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import TEST_API_KEY
from spy_streamer.data_sources.polygon_rest import RestAnswerError, fetch_second_aggs, make_rest_client, next_page_path

BASE = "https://api.polygon.io"


@pytest.mark.parametrize("next_url", [
    "@evil.example/v2/aggs/ticker/SPY/range/1/second/1/2?cursor=x",   # base + this = a userinfo, another host
    ".evil.example/v2/aggs/ticker/SPY/range/1/second/1/2",            # base + this = another host name
    "https://evil.example/v2/aggs/ticker/SPY/range/1/second/1/2",
    "http://api.polygon.io/v2/aggs/ticker/SPY/range/1/second/1/2",    # another scheme
    "https://api.polygon.io:8443/v2/aggs/ticker/SPY/range/1/second/1/2",
    "https://user@api.polygon.io/v2/aggs",
    "https://api.polygon.io.evil.example/v2/aggs",
    "//evil.example/v2/aggs",
    "https://api.polygon.io:notaport/v2/aggs",
    "v2/aggs/ticker/SPY",
])
def test_next_url_of_another_origin_is_refused(next_url):
    with pytest.raises(RestAnswerError, match="next_url leaves"):
        next_page_path(BASE, next_url)


@pytest.mark.parametrize("next_url, path", [
    ("https://api.polygon.io/v2/aggs/ticker/SPY/range/1/second/1/2?cursor=abc",
     "/v2/aggs/ticker/SPY/range/1/second/1/2?cursor=abc"),
    ("https://API.polygon.io:443/v2/aggs?cursor=abc", "/v2/aggs?cursor=abc"),
])
def test_next_url_of_the_same_origin_is_followed(next_url, path):
    assert next_page_path(BASE, next_url) == path


class _Recorder(BaseHTTPRequestHandler):
    """Answers one aggregates page whose next_url is set by the test; records who asked what."""
    pages: dict = {}
    requests: list = []

    def do_GET(self):
        type(self).requests.append((self.server.server_port, self.path, self.headers.get("Authorization")))
        body = json.dumps(type(self).pages.get(self.server.server_port, {"results": []})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    started = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
    _Recorder.requests = []
    yield [server.server_port for server in started]
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("template", [
    "@127.0.0.1:{evil}/v2/aggs/ticker/SPY/range/1/second/1/2?cursor=x",
    "http://127.0.0.1:{evil}/v2/aggs/ticker/SPY/range/1/second/1/2?cursor=x",
])
def test_the_key_never_reaches_the_host_a_next_url_names(servers, template):
    polygon, evil = servers
    _Recorder.pages = {polygon: {"results": [{"t": 1}], "next_url": template.format(evil=evil)}}
    client = make_rest_client(TEST_API_KEY, f"http://127.0.0.1:{polygon}", timeout_seconds=2)
    with pytest.raises(RestAnswerError, match="next_url leaves"):
        fetch_second_aggs(client, "SPY", 0, 1000)
    assert [port for port, _, _ in _Recorder.requests] == [polygon]
    assert all(TEST_API_KEY not in path for _, path, _ in _Recorder.requests)
