"""Both client libraries, polygon-api-client (the default) and its successor massive, installed side by side
with the test extras: the choice, the REST timeouts each is given (polygon-api-client's through a private
attribute, so a new version that moves it fails here), REST answers, pages (the private `_get`) and a
rejected key through each. The whole capture through each: tests/orchestrator/test_daemon_scenarios.py, scenario 2."""
from __future__ import annotations

import ast
import importlib
import threading
import time

import pytest
import urllib3

from conftest import REPO_ROOT, TEST_API_KEY, write_settings
from daemon_harness import Daemon, window_settings
from fake_polygon import holiday_rows, session_timeline, trade_event, trade_result
from spy_streamer.config import ConfigError
from spy_streamer.data_sources.client_library import CHOICE_ENV, DISTRIBUTIONS, LIBRARY, choose, load
from spy_streamer.data_sources.polygon_rest import (RestAnswerError, fetch_upcoming_holidays, iter_aggs_pages,
                                                    iter_tick_pages, make_rest_client)
from spy_streamer.exit_codes import EX_CONFIG
from test_packaging import declared, distribution_name

UPCOMING = "/v1/marketstatus/upcoming"
LIBRARIES = ["polygon", "massive"]


def test_polygon_api_client_is_the_default_and_massive_is_chosen_by_name():
    assert LIBRARY.distribution == "polygon-api-client" and choose({}).module == "polygon"
    assert choose({CHOICE_ENV: "massive"}).module == "massive"
    assert choose({CHOICE_ENV: "polygon"}).module == "polygon"
    with pytest.raises(ConfigError, match=f"{CHOICE_ENV} must be one of polygon, massive, not 'massiv'"):
        choose({CHOICE_ENV: "massiv"})


def test_without_polygon_api_client_massive_is_used(monkeypatch):
    import_module = importlib.import_module

    def without_polygon(name):
        if name.split(".")[0] == "polygon":
            raise ModuleNotFoundError(f"No module named {name!r}", name="polygon")
        return import_module(name)

    monkeypatch.setattr("importlib.import_module", without_polygon)
    assert choose({}).module == "massive"


def test_a_library_that_is_not_installed_is_a_config_error(monkeypatch):
    def not_installed(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])

    monkeypatch.setattr("importlib.import_module", not_installed)
    with pytest.raises(ConfigError, match="polygon-api-client or massive is not installed"):
        choose({})
    with pytest.raises(ConfigError, match="massive is not installed.*scripts/setup.sh massive"):
        choose({CHOICE_ENV: "massive"})


@pytest.mark.parametrize("module", LIBRARIES)
def test_the_rest_timeout_reaches_the_connection_pool(fake, module):
    """A server that never answers costs the timeout, not forever: polygon-api-client gets it through its
    private `client.connection_pool_kw`, massive through its constructor's `connection_pool_kw`. If either
    route stops working, the request hangs and this test fails at its bound."""
    fake.set_rest_failure(UPCOMING, "hang")
    client = make_rest_client(TEST_API_KEY, fake.rest_base_url, timeout_seconds=0.3, library=load(module))
    assert client.client.connection_pool_kw["timeout"].total == 0.3
    outcome: list = []
    started = time.monotonic()
    caller = threading.Thread(target=lambda: outcome.append(_raised(fetch_upcoming_holidays, client)), daemon=True)
    caller.start()
    caller.join(timeout=5)
    assert outcome and isinstance(outcome[0], RestAnswerError), "the request outlived its timeout"
    assert time.monotonic() - started < 2


def _raised(function, *args):
    try:
        function(*args)
    except Exception as exc:  # the outcome is what the test looks at
        return exc
    return None


@pytest.mark.parametrize("module", LIBRARIES)
def test_rest_answers_come_back_as_sent_through_either_library(fake, module):
    fake.holidays = holiday_rows("2026-11-26", "Thanksgiving")
    client = make_rest_client(TEST_API_KEY, fake.rest_base_url, library=load(module))
    assert fetch_upcoming_holidays(client) == fake.holidays
    fake.set_rest_failure(UPCOMING, "garbage")
    with pytest.raises(RestAnswerError):
        fetch_upcoming_holidays(client)
    assert isinstance(client.client, urllib3.PoolManager)


@pytest.mark.parametrize("module", LIBRARIES)
def test_a_rejected_key_is_exit_78_through_either_library(tmp_path, fake, monkeypatch, module):
    """The library's own AuthError is what tells a rejected key from a network failure."""
    monkeypatch.setenv(CHOICE_ENV, module)
    config = write_settings(tmp_path, window_settings(tmp_path, fake))
    daemon = Daemon(config, api_key="not-the-key")
    try:
        assert daemon.wait_exit(timeout=30) == EX_CONFIG
    finally:
        daemon.kill()
    assert "Polygon rejected the API key" in daemon.output()[1]


@pytest.mark.parametrize("module", LIBRARIES)
def test_pages_of_bars_and_trades_through_either_library(fake, module):
    """Paging uses the client's private `_get(path, params, raw=True)` and its `BASE` (the libraries'
    iterators end silently on a body that is not JSON): several pages of second bars and of trades, each
    row once, through each library."""
    start_ms = 1_767_000_000_000
    bars = session_timeline(start_ms, 25)
    fake.add_to_timeline(bars)
    trades = [trade_result(trade_event(start_ms + i * 10, trade_id=str(i))) for i in range(25)]
    fake.add_ticks("trades", "SPY", trades)
    client = make_rest_client(TEST_API_KEY, fake.rest_base_url, library=load(module))
    pages = list(iter_aggs_pages(client, "SPY", "second", start_ms, start_ms + 60_000, page_limit=10))
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [row["t"] for page in pages for row in page] == [bar["s"] for bar in bars]
    pages = list(iter_tick_pages(client, "trades", "SPY", start_ms, start_ms + 1_000, page_limit=10))
    assert [row["id"] for page in pages for row in page] == [str(i) for i in range(25)] and len(pages) == 3


def test_polygon_api_client_comes_with_a_plain_install_and_massive_with_its_extra():
    """client_library imports them by name (tests/deployment/test_packaging.py's scan of import statements cannot see
    them): the default must be a plain requirement, massive the `massive` extra (and in the test extras)."""
    plain = {distribution_name(line) for line in declared("options", "install_requires")}
    assert DISTRIBUTIONS["polygon"] in plain and DISTRIBUTIONS["massive"] not in plain
    for extra in ("massive", "test"):
        assert DISTRIBUTIONS["massive"] in {distribution_name(line) for line in declared("options.extras_require", extra)}


def test_no_other_module_of_the_package_imports_either_library():
    importers = []
    for path in (REPO_ROOT / "spy_streamer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(name.split(".")[0] in DISTRIBUTIONS for name in names):
                importers.append(path.relative_to(REPO_ROOT).as_posix())
    assert importers == []   # client_library imports them by name, through importlib
