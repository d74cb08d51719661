"""The Polygon client library: polygon-api-client (the default) or its successor, massive.

Polygon.io became Massive.com on 2025-10-30 (api.polygon.io and socket.polygon.io stay served); the
client was renamed with it: polygon-api-client is frozen at 1.16.3 and `massive` (the `massive` extra)
carries on with the same classes under another package name. This is the one module that imports
either. The installed one is used, polygon-api-client first; $SPY_STREAMER_CLIENT=massive (or polygon)
chooses when both are installed.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
from dataclasses import dataclass
from typing import Any, Mapping

from ..config import ConfigError

CHOICE_ENV = "SPY_STREAMER_CLIENT"
DISTRIBUTIONS = {"polygon": "polygon-api-client", "massive": "massive"}   # import name -> pip name


@dataclass(frozen=True)
class ClientLibrary:
    module: str                 # the import name: polygon or massive
    RESTClient: Any
    WebSocketClient: Any
    AuthError: type
    BadResponse: type

    @property
    def distribution(self) -> str:
        return DISTRIBUTIONS[self.module]

    @property
    def version(self) -> str:
        return importlib.metadata.version(self.distribution)

    @property
    def rest_takes_pool_options(self) -> bool:
        """massive's RESTClient takes urllib3 pool options (the timeout) in its constructor; polygon-api-client
        builds a Timeout but never hands it to its PoolManager."""
        return "connection_pool_kw" in inspect.signature(self.RESTClient.__init__).parameters

    def __str__(self) -> str:
        return f"{self.distribution} {self.version}"


def load(module: str) -> ClientLibrary:
    package = importlib.import_module(module)
    exceptions = importlib.import_module(f"{module}.exceptions")
    return ClientLibrary(module, package.RESTClient, package.WebSocketClient, exceptions.AuthError,
                         exceptions.BadResponse)


def choose(environ: Mapping[str, str] = os.environ) -> ClientLibrary:
    """The library to use; ConfigError (exit 78, one line) for an unknown choice or none installed."""
    wanted = environ.get(CHOICE_ENV, "").strip()
    if wanted and wanted not in DISTRIBUTIONS:
        raise ConfigError(f"{CHOICE_ENV} must be one of {', '.join(DISTRIBUTIONS)}, not {wanted!r}")
    candidates = [wanted] if wanted else list(DISTRIBUTIONS)
    for module in candidates:
        try:
            return load(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    names = " or ".join(DISTRIBUTIONS[module] for module in candidates)
    raise ConfigError(f"no Polygon client library: {names} is not installed (scripts/setup.sh installs "
                      "polygon-api-client; `scripts/setup.sh massive` adds massive)")


LIBRARY = choose()
