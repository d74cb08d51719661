"""The `/metrics` endpoint: prometheus-client's WSGI app behind a path check, on the configured address.

prometheus-client's own `start_http_server` listens on every interface and answers any path with the
metrics; a daemon that often runs as root should show its figures to this host only unless an operator
says otherwise (`streaming.monitoring.metrics_address`), and only where Prometheus looks for them.
"""
from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

METRICS_PATH = "/metrics"


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True   # a scrape in progress never holds up the process's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:   # noqa: A002 (the stdlib's name): no line per scrape on stderr
        pass


def only_metrics(app: Callable) -> Callable:
    """`app` at METRICS_PATH; 404 anywhere else."""
    def routed(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found; the metrics are at {METRICS_PATH}\n".encode()]
        return app(environ, start_response)
    return routed


def serve_metrics(address: str, port: int, registry: CollectorRegistry) -> WSGIServer:
    """Listening on (address, port) from a daemon thread; OSError when the port is taken."""
    server_class = type("Server", (_Server,), {"address_family": socket.AF_INET6 if ":" in address else socket.AF_INET})
    server = make_server(address, port, only_metrics(make_wsgi_app(registry)), server_class, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
