import os
import subprocess
import sys
from datetime import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, settings, write_settings
from spy_streamer.config import ConfigError, load_config, require_api_key, resolve_config_path


def test_shipped_defaults_load():
    config = load_config(REPO_ROOT / "config" / "settings.yaml")
    assert config.polygon.subscriptions == ("A.SPY",)
    assert config.polygon.api_key_env == "POLYGON_API_KEY"
    assert str(config.market_hours.timezone) == "America/New_York"
    assert config.market_hours.active_days == frozenset({0, 1, 2, 3, 4})
    assert (config.market_hours.start_time, config.market_hours.end_time) == (time(9, 30), time(16, 0))
    assert config.monitoring.heartbeat_interval_seconds == 300
    assert config.monitoring.alert_threshold_seconds == 900
    assert config.batching.write_interval_seconds == 30
    assert config.paths.data_dir.is_absolute()


def test_config_is_frozen(config_file):
    config = load_config(config_file())
    with pytest.raises(AttributeError):
        config.batching.write_interval_seconds = 1


def test_fractional_intervals_are_allowed(config_file):
    config = load_config(config_file(streaming={"batching": {"write_interval_seconds": 0.2}}))
    assert config.batching.write_interval_seconds == 0.2


def test_null_log_file_means_stderr(config_file):
    assert load_config(config_file(paths={"log_file": None})).paths.log_file is None


BAD_VALUES = [
    ({"polygon": {"api_keyy": "X"}}, "polygon.api_keyy", "unknown key"),
    ({"extra_section": {}}, "extra_section", "unknown key"),
    ({"polygon": {"ws_secure": "yes"}}, "polygon.ws_secure", "true or false"),
    ({"polygon": {"subscriptions": "A.SPY"}}, "polygon.subscriptions", "list"),
    ({"streaming": {"market_hours": {"start_time": "9:30am"}}}, "streaming.market_hours.start_time", "HH:MM"),
    ({"streaming": {"market_hours": {"end_time": "25:00"}}}, "streaming.market_hours.end_time", "not a time"),
    ({"streaming": {"market_hours": {"end_time": "09:00"}}}, "streaming.market_hours.end_time", "later than"),
    ({"streaming": {"market_hours": {"end_time": "09:30"}}}, "streaming.market_hours.end_time", "later than"),
    ({"streaming": {"market_hours": {"timezone": "Mars/Olympus"}}}, "streaming.market_hours.timezone", "unknown timezone"),
    ({"streaming": {"market_hours": {"active_days": [0, 7]}}}, "streaming.market_hours.active_days", "0-6"),
    ({"streaming": {"monitoring": {"heartbeat_interval_seconds": 0}}}, "streaming.monitoring.heartbeat_interval_seconds", "positive"),
    ({"streaming": {"monitoring": {"alert_threshold_seconds": -5}}}, "streaming.monitoring.alert_threshold_seconds", "positive"),
    ({"streaming": {"batching": {"write_interval_seconds": "30"}}}, "streaming.batching.write_interval_seconds", "positive"),
    ({"streaming": {"batching": "fast"}}, "streaming.batching", "mapping"),
]


@pytest.mark.parametrize("override, key, words", BAD_VALUES, ids=[case[1] for case in BAD_VALUES])
def test_bad_value_names_file_and_key(tmp_path, override, key, words):
    path = write_settings(tmp_path, settings(tmp_path, **override))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and key in message and words in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_config_path_precedence(monkeypatch):
    monkeypatch.setenv("SPY_STREAMER_CONFIG", "/etc/from-env.yaml")
    assert resolve_config_path("/cli.yaml") == Path("/cli.yaml")
    assert resolve_config_path(None) == Path("/etc/from-env.yaml")
    monkeypatch.delenv("SPY_STREAMER_CONFIG")
    assert resolve_config_path(None) == Path("config/settings.yaml")


def test_api_key_comes_from_the_named_variable(config_file, monkeypatch):
    config = load_config(config_file(polygon={"api_key_env": "MY_POLY_KEY"}))
    monkeypatch.delenv("MY_POLY_KEY", raising=False)
    with pytest.raises(ConfigError, match="MY_POLY_KEY is not set"):
        require_api_key(config)
    monkeypatch.setenv("MY_POLY_KEY", "k-123")
    assert require_api_key(config) == "k-123"


def run_cli(*args, env_extra=None, cwd=REPO_ROOT):
    env = {key: value for key, value in os.environ.items() if key not in ("POLYGON_API_KEY", "SPY_STREAMER_CONFIG")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "spy_streamer", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=60)


@pytest.mark.parametrize("override, key", [
    ({"streaming": {"market_hours": {"end_time": "08:00"}}}, "streaming.market_hours.end_time"),
    ({"paths": {"log_dir": "x"}}, "paths.log_dir"),
])
def test_cli_exits_78_with_one_line_and_no_traceback(tmp_path, override, key):
    path = write_settings(tmp_path, settings(tmp_path, **override))
    result = run_cli("status", "--config", str(path))
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    assert key in result.stderr and str(path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_reads_config_from_environment_variable(tmp_path):
    path = write_settings(tmp_path, settings(tmp_path, bogus=1))
    result = run_cli("status", env_extra={"SPY_STREAMER_CONFIG": str(path)})
    assert result.returncode == 78 and "bogus" in result.stderr


def test_cli_missing_config_file(tmp_path):
    result = run_cli("status", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 78 and "missing.yaml" in result.stderr and "Traceback" not in result.stderr
