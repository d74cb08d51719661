"""The README's commands, as written, so they cannot rot: every line of its fenced bash blocks is split into
commands, and each must name a real script, subcommand, flag, extra or shipped file. The cheap ones run
for real (`--help`, `--version`, a set-up that is already done).

Measured before: `spy-streamer demo` was not on PATH after set-up, and `python -m spy_streamer` with the
system's Python failed (`No module named 'pythonjsonlogger'`)."""
from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from spy_streamer import __version__
from spy_streamer.cli import build_parser

README = REPO_ROOT / "README.md"
# Commands of the host, not of this repository: their file arguments are checked, not the tool.
HOST_TOOLS = {"export", "cd", "echo", "useradd", "install", "cp", "git", "systemctl", "supervisorctl"}


def bash_lines() -> list[str]:
    lines, inside = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```bash"
            continue
        if inside and line.strip() and not line.lstrip().startswith("#"):
            lines.append(line)
    return lines


def commands() -> list[list[str]]:
    """Each command of each line (split at &&, || and ;), output redirections dropped; of a comment, only
    the alternative it offers (`# or: COMMAND`)."""
    found = []
    for line in bash_lines():
        code, _, comment = line.partition("  #")
        alternative = comment.partition("or: ")[2]
        for part in re.split(r"&&|\|\||;", code) + ([alternative] if alternative else []):
            argv = shlex.split(part.split(">")[0], comments=True)
            if argv:
                found.append(argv)
    return found


def extras() -> set[str]:
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    return set(setup["options.extras_require"])


def parses(argv: list[str]) -> None:
    """argparse accepts it as a `spy-streamer` command line (SystemExit otherwise)."""
    build_parser().parse_args(argv)


def check_command(argv: list[str]) -> None:
    program, args = argv[0], argv[1:]
    assert program not in ("spy-streamer", "python", "python3"), \
        f"{program} {' '.join(args)}: set-up puts neither on PATH; write .venv/bin/spy-streamer or .venv/bin/python"
    if program == ".venv/bin/spy-streamer":
        parses(args)
    elif program == ".venv/bin/python":
        check_python_script(args[0], [arg for arg in args[1:] if arg.startswith("--")])
    elif program == "scripts/run_streamer.sh":
        parses(["demo", *args[1:]] if args[:1] == ["--demo"] else ["run", *args])
    elif program == "scripts/setup.sh":
        assert set(args) <= extras(), args
    elif program == "scripts/test.sh":
        assert not args
    elif program == "docker":
        check_docker(args)
    else:
        assert program in HOST_TOOLS, f"{program}: not a command of this repository or a known host tool"
        for arg in args:
            if arg.startswith(("config/", "scripts/")):
                assert (REPO_ROOT / arg).exists(), arg


def check_python_script(script: str, flags: list[str]) -> None:
    """The script exists, and its --help (run for real) offers the flags the README gives it."""
    assert (REPO_ROOT / script).is_file(), script
    if flags:
        help_text = run(sys.executable, script, "--help").stdout
        assert all(flag in help_text for flag in flags), (script, flags, help_text)


def check_docker(args: list[str]) -> None:
    if args[:2] == ["compose", "up"]:
        assert (REPO_ROOT / "compose.yaml").is_file()
    elif args[0] == "build":
        assert args[-1] == "." and (REPO_ROOT / "Dockerfile").is_file()
    else:
        assert args[0] == "run" and args[-1] == "spy-streamer", args   # the image's default command: run


def test_the_readme_has_its_commands_in_bash_blocks():
    programs = {argv[0] for argv in commands()}
    assert {"scripts/setup.sh", "scripts/run_streamer.sh", "scripts/test.sh", "docker"} <= programs
    assert ".venv/bin/spy-streamer" in programs


def test_the_text_names_the_venv_python():
    """`python -m spy_streamer` anywhere in the README is the venv's (the system's Python lacks the
    dependencies); a module path after it (`spy_streamer.storage.compaction`) describes a child process."""
    assert not re.findall(r"(?<!\.venv/bin/)\bpython3? -m spy_streamer\b(?!\.)", README.read_text())


@pytest.mark.parametrize("argv", commands(), ids=lambda argv: " ".join(argv)[:60])
def test_each_command_names_real_things(argv):
    for script in [arg for arg in argv if arg.startswith(("scripts/", "benchmarks/"))]:
        assert (REPO_ROOT / script).is_file(), script
    check_command(argv)


def test_the_commands_in_the_commands_table_parse():
    """`| \\`spy-streamer status [--json] [--config PATH]\\` | ...`: the subcommand and every flag exist."""
    rows = re.findall(r"^\| `spy-streamer ([a-z-]+)([^`]*)`", README.read_text(), flags=re.MULTILINE)
    assert len(rows) >= 8
    subcommands = build_parser()._subparsers._group_actions[0].choices
    for name, rest in rows:
        flags = {option for action in subcommands[name]._actions for option in action.option_strings}
        assert set(re.findall(r"--[a-z-]+", rest)) <= flags, (name, rest)


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.integration
def test_the_cheap_commands_run_as_written():
    """The venv is set up (this suite runs in it), so `scripts/setup.sh` is a no-op that says so, and the
    paths the README gives answer."""
    venv = REPO_ROOT / ".venv" / "bin"
    if sys.prefix != str(REPO_ROOT / ".venv"):
        pytest.skip("not running in the repository's .venv")
    setup = run("scripts/setup.sh")
    assert setup.returncode == 0 and __version__ in setup.stderr, setup.stderr
    assert run(str(venv / "spy-streamer"), "--version").stdout.strip().endswith(__version__)
    assert run(str(venv / "python"), "-m", "spy_streamer", "--version").returncode == 0
    for argv, usage in ((["scripts/run_streamer.sh", "--help"], "usage: spy-streamer run"),
                        (["scripts/run_streamer.sh", "--demo", "--help"], "usage: spy-streamer demo")):
        result = run(*argv)
        assert result.returncode == 0 and result.stdout.startswith(usage), result.stdout + result.stderr
