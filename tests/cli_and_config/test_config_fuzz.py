"""Fuzzing the config reader: whatever the file holds, the result is a Config or one ConfigError line, and
the CLI exits 78 with exactly one line on stderr, never a traceback.

The loop calls cli.main in-process for speed; a few cases run the real command as a subprocess."""
from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, strategies as st

from conftest import REPO_ROOT, settings
from spy_streamer import cli
from spy_streamer.config import SCHEMA, Config, ConfigError, load_config

MAX_MESSAGE_CHARS = 600  # the path, the dotted key, a reason and a value quoted short


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def leaf_paths(schema: dict, prefix: tuple = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, spec in schema.items():
        paths += leaf_paths(spec, prefix + (key,)) if isinstance(spec, dict) else [prefix + (key,)]
    return paths


LEAVES = leaf_paths(SCHEMA)
SECTIONS = sorted({path[:depth] for path in LEAVES for depth in range(1, len(path))})

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-10 ** 60, max_value=10 ** 60),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), st.binary(max_size=20),
    st.sampled_from(["09:30", "16:00", "24:00", "America/New_York", "Mars/Base", "A.SPY", "POLYGON_API_KEY",
                     "0.3", ".inf", "~", "", " ", "\x00", "../../etc/passwd", "America"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.one_of(st.text(max_size=12), st.integers(), st.booleans()), inner, max_size=4), max_leaves=12)


@st.composite
def schema_shaped(draw) -> dict:
    """The test settings with a few leaves or sections replaced, removed or joined by unknown keys."""
    document = settings(Path("/tmp/spy-streamer-fuzz"))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(LEAVES + SECTIONS))
        parent = document
        for key in path[:-1]:
            parent = parent.setdefault(key, {}) if isinstance(parent, dict) else {}
        if not isinstance(parent, dict):
            continue
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "remove":
            parent.pop(path[-1], None)
        else:
            parent[draw(st.text(min_size=1, max_size=12))] = draw(values)
    return document


def dumped(document) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


YAML_PIECES = ["polygon:", "streaming:", "paths:", "  market_hours:", "    start_time: ", "&a ", "*a", "&b [*a, *a]",
               "<<: ", "!!python/object:os.system ", "!!binary ", "!!timestamp ", "!!int ", "!!float ", "!!set ",
               "---\n", "...\n", "%YAML 1.1\n", "{", "}", "[", "]", ": ", "- ", "? ", "\t", "\n", "  ", "'", '"',
               "#", "|\n", ">\n", "2024-13-45", "1e400", "0x1F", "0o17", "1:30", ".nan", "-.inf", "\ufeff", "\u2028",
               "é", "\U0001F600", "\x85", "\x07"]

texts = st.one_of(
    schema_shaped().map(dumped),
    values.map(dumped),
    st.lists(st.sampled_from(YAML_PIECES) | st.text(max_size=8), max_size=30).map("".join),
    st.text(max_size=200),
)
raw_files = st.one_of(texts.map(lambda text: text.encode("utf-8", "surrogatepass")), st.binary(max_size=200),
                      texts.map(lambda text: text.encode("utf-16")))


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def check_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        config = load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message and len(message) < MAX_MESSAGE_CHARS, message
        assert message.startswith(f"{path}: ")
        code, out, err = run_main(["check", "--config", str(path)])   # a monitoring plugin: UNKNOWN, stdout
        assert (code, err) == (3, "")
        assert out.startswith("SPY-STREAMER UNKNOWN - configuration error: ") and out.count("\n") == 1, out
    else:
        assert isinstance(config, Config)
        intervals = (config.monitoring.heartbeat_interval_seconds, config.monitoring.alert_threshold_seconds,
                     config.batching.write_interval_seconds)
        assert all(math.isfinite(value) and value >= 0.05 for value in intervals)


@given(data=raw_files)
def test_any_file_gives_a_config_or_one_line(workdir, data):
    check_file(workdir / "settings.yaml", data)


@given(document=schema_shaped())
def test_any_schema_shaped_document_gives_a_config_or_one_line(workdir, document):
    check_file(workdir / "shaped.yaml", dumped(document).encode())


@given(document=schema_shaped(), where=st.integers(min_value=0, max_value=10 ** 6),
       token=st.sampled_from(["&x ", "*x", "&x [1] ", "<<: *x\n"]))
def test_an_anchor_or_alias_anywhere_is_refused(workdir, document, where, token):
    text = dumped(document)
    lines = text.splitlines(keepends=True)
    index = where % len(lines)
    head, colon, tail = lines[index].partition(": ")
    lines[index] = f"{head}{colon}{token}{tail}" if colon else lines[index]
    path = workdir / "anchored.yaml"
    path.write_text("".join(lines))
    if colon:
        with pytest.raises(ConfigError):
            load_config(path)


@given(value=st.text(min_size=1, max_size=60))
def test_api_key_env_is_a_variable_name_or_refused_without_echo(workdir, value):
    path = workdir / "key.yaml"
    path.write_text(dumped(settings(workdir, polygon={"api_key_env": value})))
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert str(exc) == (f"{path}: polygon.api_key_env: expected the name of an environment variable such as "
                            "POLYGON_API_KEY (capitals, digits, _), not the key itself; the value is not shown")
    else:
        assert config.polygon.api_key_env == value.strip()


# --- the real command, a few cases ---

REAL_CASES = {
    # Six levels of nine inside a value: once expanded, the old message quoted 531,441 strings.
    "alias bomb": ("polygon:\n  subscriptions: [[&a [x, x, x, x, x, x, x, x, x], " + ", ".join(
        f"&{name} [{', '.join([f'*{prev}'] * 9)}]" for prev, name in zip("abcde", "bcdef")) + "]]\n").encode(),
    "not utf-8": b"polygon:\n  ws_feed: \xff\xfe\n",
    "duplicate": b"paths: {}\npaths: {}\n",
    "infinite interval": b"streaming:\n  batching:\n    write_interval_seconds: .inf\n",
    "bad date": b"streaming:\n  market_hours:\n    start_time: 2024-13-45\n",
}


# `run` shares the path to load_config with `check`: two cases are enough for it.
@pytest.mark.parametrize("case, command", [(case, "check") for case in REAL_CASES]
                         + [("alias bomb", "run"), ("infinite interval", "run")])
def test_the_real_command_refuses_it_in_one_line(tmp_path, case, command):
    path = tmp_path / "settings.yaml"
    path.write_bytes(REAL_CASES[case])
    env = {key: value for key, value in os.environ.items() if key != "SPY_STREAMER_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "spy_streamer", command, "--config", str(path)],
                            capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    # `check` is a monitoring plugin: exit 3 and its one line on stdout; `run` says it on stderr, exit 78
    code, said, quiet, prefix = (3, result.stdout, result.stderr, "SPY-STREAMER UNKNOWN - ") if command == "check" \
        else (78, result.stderr, result.stdout, "spy-streamer: ")
    assert result.returncode == code and quiet == ""
    assert said.startswith(f"{prefix}configuration error: {path}: ")
    assert said.count("\n") == 1 and "Traceback" not in said
    assert len(said) < MAX_MESSAGE_CHARS + len(prefix)
