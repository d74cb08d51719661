import logging
import os
import subprocess
import sys
from datetime import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, TEST_API_KEY, settings, write_settings
from spy_streamer import cli
from spy_streamer.config import ConfigError, load_config, require_api_key, resolve_config_path
from spy_streamer.log_setup import configure_logging


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
    ({"streaming": {"monitoring": {"heartbeat_interval_seconds": 0}}}, "streaming.monitoring.heartbeat_interval_seconds", "from 0.05 to 3600"),
    ({"streaming": {"monitoring": {"alert_threshold_seconds": -5}}}, "streaming.monitoring.alert_threshold_seconds", "from 1 to 86400"),
    ({"streaming": {"batching": {"write_interval_seconds": "30"}}}, "streaming.batching.write_interval_seconds", "from 0.05 to 3600"),
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


# --- issue #8, defect 6: every config or environment problem is one line and exit 78, never a traceback ---

HEARTBEAT = "streaming.monitoring.heartbeat_interval_seconds"
ALERT = "streaming.monitoring.alert_threshold_seconds"
WRITE = "streaming.batching.write_interval_seconds"


def interval_override(dotted: str, value) -> dict:
    section, group, key = dotted.split(".")
    return {group: {key: value}}


@pytest.mark.parametrize("dotted, value", [
    (WRITE, 1e-6), (WRITE, float("inf")), (WRITE, float("nan")), (WRITE, 3601), (WRITE, True),
    (HEARTBEAT, 0.01), (HEARTBEAT, float("-inf")), (HEARTBEAT, 10 ** 400), (HEARTBEAT, 86400),
    (ALERT, 0.5), (ALERT, 86401), (ALERT, float("inf")), (ALERT, None),
], ids=lambda value: str(value)[:12])
def test_non_finite_or_absurd_intervals_are_refused(config_file, dotted, value):
    with pytest.raises(ConfigError, match=f"{dotted}: expected a number of seconds from"):
        load_config(config_file(streaming=interval_override(dotted, value)))


@pytest.mark.parametrize("dotted, value", [
    (WRITE, 0.05), (WRITE, 0.2), (WRITE, 0.3), (WRITE, 3600), (HEARTBEAT, 0.05), (HEARTBEAT, 0.5),
    (HEARTBEAT, 3600), (ALERT, 1), (ALERT, 1.5), (ALERT, 30), (ALERT, 86400),
])
def test_interval_range_limits_and_values_the_tests_use_are_accepted(config_file, dotted, value):
    config = load_config(config_file(streaming=interval_override(dotted, value)))
    assert {WRITE: config.batching.write_interval_seconds, HEARTBEAT: config.monitoring.heartbeat_interval_seconds,
            ALERT: config.monitoring.alert_threshold_seconds}[dotted] == value


def test_non_utf8_file_is_refused_with_the_offset(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_bytes(b"polygon:\n  ws_feed: caf\xe9.example\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 23, line 2\)"):
        load_config(path)


def bomb_levels() -> list[str]:
    """`&a ["lol", ...]`, `&b [*a, ...]` ... `&i [*h, ...]`: nine levels of nine, 9**9 strings expanded."""
    items = ['"lol"'] + [f"*{name}" for name in "abcdefgh"]
    return [f"&{name} [{', '.join([item] * 9)}]" for name, item in zip("abcdefghi", items)]


BOMBS = {
    "top level": "".join(f"{level[1]}: {level}\n" for level in bomb_levels()),
    # Inside a value the old code quoted in its message: repr() of the expansion ran out of memory.
    "in a value": "polygon:\n  subscriptions: [[" + ", ".join(bomb_levels()) + "]]\n",
}

BOMB_CHILD = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (200 * 2**20, 200 * 2**20))
from pathlib import Path
from spy_streamer.config import ConfigError, load_config
started = time.monotonic()
try:
    load_config(Path(sys.argv[1]))
except ConfigError as exc:
    print(f"{time.monotonic() - started:.3f} {exc}")
"""


@pytest.mark.parametrize("bomb", list(BOMBS), ids=list(BOMBS))
def test_alias_bomb_is_refused_before_it_expands(tmp_path, bomb):
    """In a child limited to 200 MB of address space: the old loader expanded it (MemoryError, or 55 s and
    2.4 GB in `check`); refused at the first anchor it costs nothing."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBS[bomb])
    assert len(BOMBS[bomb]) < 600
    result = subprocess.run([sys.executable, "-c", BOMB_CHILD, str(path)], capture_output=True, text=True,
                            timeout=30, cwd=REPO_ROOT)
    assert result.returncode == 0 and result.stderr == ""
    seconds, message = result.stdout.split(" ", 1)
    assert float(seconds) < 1.0
    assert "YAML anchors and aliases (& and *) are not allowed (line " in message


@pytest.mark.parametrize("text, words", [
    ("polygon: &p {ws_secure: true}\n", "anchors and aliases"),
    ("polygon:\n  ws_secure: true\n  ws_secure: false\n", "ws_secure: duplicate key (line 3, column 3)"),
    ("paths: {}\npolygon: {}\npaths: {}\n", "paths: duplicate key (line 3, column 1)"),
    ("x: [" + "1, " * 10_001 + "]\n", "more than 10,000 YAML values"),
    ("polygon:\n" + "".join(f"{'  ' * depth}k{depth}:\n" for depth in range(1, 40)), "nested more than 32 levels"),
    ("streaming:\n  market_hours:\n    start_time: 2024-13-45\n", "not valid YAML: month must be in 1..12"),
    ("polygon:\n  ws_secure: !!int yes\n", "not valid YAML"),
    ("polygon: {ws_feed: [}\n", "not valid YAML (line 1, column"),
    ("polygon: !!python/object:os.system {}\n", "not valid YAML (line 1, column 10)"),
    ("polygon: {}\n---\npaths: {}\n", "not valid YAML"),
])
def test_yaml_that_is_not_a_plain_config_is_refused(tmp_path, text, words):
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_files_over_one_megabyte_are_refused(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("#" * 999_999 + "\n")  # exactly 1 MB of comment: an empty config, the defaults
    assert load_config(path).batching.write_interval_seconds == 30
    path.write_text("#" * 1_000_000 + "\n")
    with pytest.raises(ConfigError, match="larger than 1,000,000 bytes"):
        load_config(path)


def test_a_directory_or_a_fifo_is_not_read(tmp_path):
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(tmp_path)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    # In a child: the old code blocked for ever opening a FIFO nobody writes to.
    result = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from spy_streamer.config "
                             "import load_config, ConfigError\ntry: load_config(Path(sys.argv[1]))\n"
                             "except ConfigError as exc: print(exc)", str(fifo)],
                            capture_output=True, text=True, timeout=20, cwd=REPO_ROOT)
    assert "not a regular file" in result.stdout


def test_a_huge_value_is_quoted_short(config_file):
    with pytest.raises(ConfigError) as caught:
        load_config(config_file(polygon={"ws_secure": "x" * 100_000}, streaming={"batching": [[["deep"] * 1000]]}))
    assert "polygon.ws_secure: expected true or false, got 'xxx" in str(caught.value)
    assert len(str(caught.value)) < 400


KEY_LIKE = ["Zq7xRecognizableKey0123456789abc", "ABCDEF1234567890XYZ12", "pk_live 123", "my-key", "poly.key"]


@pytest.mark.parametrize("value", KEY_LIKE)
def test_a_key_pasted_into_api_key_env_is_refused_without_echoing_it(config_file, value):
    with pytest.raises(ConfigError) as caught:
        load_config(config_file(polygon={"api_key_env": value}))
    message = str(caught.value)
    assert "polygon.api_key_env" in message and "not the key itself" in message
    assert value not in message


@pytest.mark.parametrize("name", ["POLYGON_API_KEY", "MY_POLY_KEY", "_X", "KEY2", "POLYGON_KEY_2024_PROD_ACCOUNT"])
def test_environment_variable_names_are_accepted(config_file, name):
    assert load_config(config_file(polygon={"api_key_env": name})).polygon.api_key_env == name


@pytest.fixture
def restore_logging():
    """configure_logging replaces the root logger's handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_a_missing_log_directory_is_created(tmp_path, restore_logging):
    log_file = tmp_path / "new" / "deeper" / "spy_streamer.log"
    configure_logging(log_file)
    logging.getLogger("spy_streamer.test").info("hello", extra={"event": "test_line"})
    assert '"event": "test_line"' in log_file.read_text()


@pytest.mark.parametrize("where", ["under a file", "is a directory"])
def test_an_unwritable_log_file_is_a_config_error(tmp_path, restore_logging, where):
    (tmp_path / "plain").write_text("")
    log_file = tmp_path / "plain" / "log" / "x.log" if where == "under a file" else tmp_path
    with pytest.raises(ConfigError, match=f"paths.log_file: cannot write the log file {log_file}"):
        configure_logging(log_file)


def test_run_with_an_unwritable_log_directory_exits_78_with_one_line(tmp_path):
    (tmp_path / "plain").write_text("")
    path = write_settings(tmp_path, settings(tmp_path, paths={"log_file": str(tmp_path / "plain" / "log" / "x.log")}))
    result = run_cli("run", "--config", str(path), env_extra={"POLYGON_API_KEY": TEST_API_KEY})
    assert result.returncode == 78 and "Traceback" not in result.stderr
    assert result.stderr.startswith("spy-streamer: configuration error: paths.log_file: cannot write the log file")
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""


RECOGNIZABLE_KEY = "Zq7xRecognizableKey0123456789abc"


@pytest.mark.parametrize("command, override, text", [
    ("run", {"polygon": {"api_key_env": RECOGNIZABLE_KEY}}, None),
    ("status", {"polygon": {"api_key_env": RECOGNIZABLE_KEY}}, None),
    ("check", {"polygon": {"api_key_env": RECOGNIZABLE_KEY}}, None),
    ("run", {"polygon": {"ws_secure": RECOGNIZABLE_KEY}}, None),
    ("run", {"polygon": {RECOGNIZABLE_KEY: 1}}, None),
    ("run", {"polygon": RECOGNIZABLE_KEY}, None),
    ("run", {"streaming": {"market_hours": {"timezone": RECOGNIZABLE_KEY}}}, None),
    ("check", {"streaming": {"market_hours": {"timezone": RECOGNIZABLE_KEY}}}, None),
    ("run", {"paths": {"log_file": "{tmp}/plain/" + RECOGNIZABLE_KEY + "/x.log"}}, None),
    ("check", None, f"polygon:\n  ws_feed: {RECOGNIZABLE_KEY}\n  ws_feed: {RECOGNIZABLE_KEY}\n"),
    ("run", None, f"polygon: {{ws_feed: [{RECOGNIZABLE_KEY}}}\n"),
], ids=["run-api_key_env", "status-api_key_env", "check-api_key_env", "ws_secure", "key-as-name", "section",
        "timezone", "check-timezone", "log-path", "duplicate", "bad-yaml"])
def test_the_api_key_never_appears_in_any_output(tmp_path, monkeypatch, capsys, request, command, override, text):
    """With the key in the environment, and pasted where it does not belong, no error shows it. In-process
    (each case fails before any logging or network); the first and the last also as the real command."""
    (tmp_path / "plain").write_text("")
    path = tmp_path / "settings.yaml"
    if text is None:
        document = yaml.safe_dump(settings(tmp_path, **override), sort_keys=False)
        path.write_text(document.replace("{tmp}", str(tmp_path)))
    else:
        path.write_text(text)
    monkeypatch.setenv("POLYGON_API_KEY", RECOGNIZABLE_KEY)
    code = cli.main([command, "--config", str(path)])
    captured = capsys.readouterr()
    outputs = [(code, captured.out, captured.err)]
    if request.node.callspec.id in ("run-api_key_env", "bad-yaml"):
        real = run_cli(command, "--config", str(path), env_extra={"POLYGON_API_KEY": RECOGNIZABLE_KEY})
        outputs.append((real.returncode, real.stdout, real.stderr))
    written = "".join(file.read_text(errors="replace") for file in tmp_path.rglob("*.log"))
    for code, out, err in outputs:
        said = out if command == "check" else err   # check, a monitoring plugin: UNKNOWN on stdout
        assert code == (3 if command == "check" else 78) and len(said.splitlines()) == 1 and "Traceback" not in err
        for output in (out, err, written):
            assert RECOGNIZABLE_KEY not in output


class FakeRunner:
    """Stands in for StreamingRunner: ends at once with the given code and reason."""
    code, reason = 0, None

    def __init__(self, *args, **kwargs):
        if self.reason is not None:
            self.exit_reason = self.reason

    def run(self) -> int:
        return self.code


@pytest.mark.parametrize("code, reason, line", [
    (70, "thread parquet-writer crashed: OSError: [Errno 28] No space left on device",
     "spy-streamer: thread parquet-writer crashed: OSError: [Errno 28] No space left on device"),
    (78, f"Polygon rejected the API key\n{TEST_API_KEY} (auth_failed)",
     "spy-streamer: Polygon rejected the API key *** (auth_failed)"),
    (70, None, "spy-streamer: a thread crashed (see the log)"),
    (78, None, "spy-streamer: configuration or API key rejected (see the log)"),
    (75, None, "spy-streamer: another instance holds the data_dir lock"),
    (3, None, "spy-streamer: stopped with exit code 3"),
    (0, "ignored on a clean stop", None),
])
def test_run_says_why_it_stopped_in_one_line_on_stderr(config_file, monkeypatch, capsys, code, reason, line):
    """For supervisord's and journald's logs: the runner's exit_reason, else a line by exit code."""
    monkeypatch.setenv("POLYGON_API_KEY", TEST_API_KEY)
    monkeypatch.setattr("spy_streamer.orchestrator.streaming_runner.StreamingRunner",
                        type("Runner", (FakeRunner,), {"code": code, "reason": reason}))
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    assert cli.main(["run", "--config", str(config_file())]) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("" if line is None else line + "\n")


@pytest.mark.parametrize("url", [
    "ftp://api.polygon.io", "api.polygon.io", "https://user@api.polygon.io", "https://api.polygon.io/v2",
    "https://api.polygon.io?x=1", "https://", "https://api.polygon.io:notaport",
])
def test_rest_base_url_must_be_an_origin(config_file, url):
    """The REST client sends the key to whatever this names: only a plain http(s) origin is accepted
    (a user@ part is refused as a credential first: test_secrets_and_exposure)."""
    with pytest.raises(ConfigError, match="polygon.rest_base_url: (expected an origin|holds credentials)"):
        load_config(config_file(polygon={"rest_base_url": url}))


@pytest.mark.parametrize("port", [0, 65536, -1, "9100", True, 1.5])
def test_metrics_port_must_be_a_port(config_file, port):
    with pytest.raises(ConfigError, match="streaming.monitoring.metrics_port: expected a TCP port"):
        load_config(config_file(streaming={"monitoring": {"metrics_port": port}}))


def test_metrics_port_is_off_by_default(config_file):
    assert load_config(config_file()).monitoring.metrics_port is None
    assert load_config(config_file(streaming={"monitoring": {"metrics_port": 9108}})).monitoring.metrics_port == 9108
