"""Set-up is a separate step: scripts/setup.sh installs, scripts/run_streamer.sh (what supervisord and systemd
start) never does. A missing or stale .venv is exit 78 naming the one command to run, without pip.

Each test runs the real scripts from a copy of scripts/ in a scratch checkout whose .venv holds stand-ins
that record how they were called, so nothing is installed and the real .venv is untouched."""
from __future__ import annotations

import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from daemon_harness import wait_for
from test_deployment import HOLD_SECONDS, Supervisord, short_dir  # noqa: F401 (a fixture)
from spy_streamer.exit_codes import EX_CONFIG

RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "{calls}"
"""


PARSER_SOURCES = [str(path.relative_to(REPO_ROOT)) for path in (REPO_ROOT / "spy_streamer" / "channels").glob("*.c")]


@pytest.fixture
def checkout(tmp_path) -> Path:
    """scripts/ and the packaging files of this repo, and a .venv of stand-ins (python, spy-streamer)."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT / "scripts", root / "scripts")
    for name in ("setup.cfg", "pyproject.toml", "setup.py", *PARSER_SOURCES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, root / name)
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "spy-streamer"):
        recorder = bin_dir / name
        recorder.write_text(RECORDER.format(calls=tmp_path / "calls"))
        recorder.chmod(recorder.stat().st_mode | stat.S_IXUSR)
    return root


def calls(checkout: Path) -> list[str]:
    path = checkout.parent / "calls"
    return path.read_text().splitlines() if path.exists() else []


def run(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(checkout / "scripts" / "run_streamer.sh"), *args], capture_output=True,
                          text=True, timeout=30)


def stamp(checkout: Path, extras: str = "base") -> Path:
    result = subprocess.run(["bash", "-c", f'ROOT="{checkout}"; source "$ROOT/scripts/ensure_venv.sh"; '
                             f'venv_stamp "{extras}"'], capture_output=True, text=True, check=True)
    return Path(result.stdout.strip())


def assert_refused_with_the_setup_command(result: subprocess.CompletedProcess, checkout: Path,
                                          calls_before: int = 0) -> None:
    assert result.returncode == EX_CONFIG
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]          # one line, for supervisord
    assert result.stderr.startswith("spy-streamer: ") and f"run: {checkout}/scripts/setup.sh" in result.stderr
    assert calls(checkout)[calls_before:] == []                                      # no pip, no daemon


def test_a_stale_environment_exits_78_with_the_command_and_runs_no_pip(checkout):
    """Measured: after an update that changed setup.cfg, the start ran pip (and, without the package index,
    exited 1 within a second: supervisord respawned it about once a second)."""
    (checkout / ".venv" / ".installed-0123456789abcdef-base").touch()   # made from other packaging files
    assert_refused_with_the_setup_command(run(checkout, "--config", "x.yaml"), checkout)


def test_a_missing_environment_exits_78_with_the_command(checkout):
    shutil.rmtree(checkout / ".venv")
    assert_refused_with_the_setup_command(run(checkout), checkout)


@pytest.mark.parametrize("extras", ["base", "test"])
def test_an_up_to_date_environment_execs_the_daemon(checkout, extras):
    stamp(checkout, extras).touch()   # set up by setup.sh (base) or by test.sh (test extras)
    assert run(checkout, "--config", "x.yaml").returncode == 0
    assert run(checkout, "--demo", "--seconds", "5").returncode == 0
    assert calls(checkout) == ["spy-streamer run --config x.yaml", "spy-streamer demo --seconds 5"]


def test_setup_installs_into_the_venv_and_stamps_it(checkout):
    """setup.sh is the step that installs (here the stand-in python records the pip call)."""
    result = subprocess.run(["bash", str(checkout / "scripts" / "setup.sh")], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert calls(checkout)[0] == f"python -m pip install --quiet --disable-pip-version-check -e {checkout}"
    assert stamp(checkout).exists()
    assert run(checkout).returncode == 0


def test_a_change_to_pytest_settings_is_no_reason_to_set_up_again(checkout):
    stamp(checkout).touch()
    setup_cfg = checkout / "setup.cfg"
    setup_cfg.write_text(setup_cfg.read_text().replace("[tool:pytest]\n", "[tool:pytest]\nmarkers =\n    slow: x\n"))
    assert run(checkout).returncode == 0
    setup_cfg.write_text(setup_cfg.read_text().replace("install_requires =\n", "install_requires =\n    six\n"))
    assert_refused_with_the_setup_command(run(checkout), checkout, calls_before=1)


def test_a_changed_c_source_needs_a_new_set_up(checkout):
    """The compiled frame parser is built at set-up: an update to its C source is stale until set up again."""
    stamp(checkout).touch()
    assert run(checkout).returncode == 0
    source = checkout / PARSER_SOURCES[0]
    source.write_text(source.read_text() + "\n/* changed */\n")
    assert_refused_with_the_setup_command(run(checkout), checkout, calls_before=1)


@pytest.mark.integration
def test_under_a_real_supervisord_a_stale_environment_is_spawned_once_and_stays_down(checkout, short_dir):
    """What supervisord makes of it with the shipped section: exit 78 is expected, so one spawn and EXITED,
    not a respawn about once a second."""
    (checkout / ".venv" / ".installed-0123456789abcdef-base").touch()
    supervisord = Supervisord(short_dir, {"stale": f"{checkout}/scripts/run_streamer.sh"}, shipped_log=True)
    try:
        wait_for(lambda: supervisord.info("stale")["statename"] == "EXITED", timeout=30, interval=0.2,
                 what="the program to exit")
        time.sleep(HOLD_SECONDS)
        info = supervisord.info("stale")
        assert (info["statename"], info["exitstatus"], supervisord.spawns("stale")) == ("EXITED", 78, 1)
        assert f"run: {checkout}/scripts/setup.sh" in supervisord.tail("stale")   # `supervisorctl tail`
    finally:
        supervisord.stop()
    assert calls(checkout) == []
