"""Dockerfile, compose.yaml and .dockerignore, read for the settings that matter (no Docker engine here):
the commands they run are parsed by the real CLI parser, and the files they copy are really sent."""
from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from fnmatch import fnmatch

import yaml
from packaging.requirements import Requirement

from conftest import REPO_ROOT
from spy_streamer.cli import build_parser
from spy_streamer.demo.launch import DEFAULT_OUTPUT


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    instructions, logical = [], ""
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        keyword, _, arguments = (logical + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        logical = ""
    return instructions


def arguments(keyword: str) -> list[str]:
    return [args for name, args in dockerfile() if name == keyword]


def exec_form(text: str) -> list[str]:
    argv = json.loads(text)
    assert isinstance(argv, list) and all(isinstance(arg, str) for arg in argv), text
    return argv


INIT = ["/usr/bin/tini", "--"]


def entrypoint() -> list[str]:
    """The ENTRYPOINT after its init (tini)."""
    argv = exec_form(arguments("ENTRYPOINT")[-1])
    assert argv[:len(INIT)] == INIT, argv
    return argv[len(INIT):]


def spy_streamer_args(argv: list[str]):
    assert argv[0] == "spy-streamer", argv
    return build_parser().parse_args(argv[1:])


def test_image_is_python_311_slim_pinned_to_a_full_version_and_runs_the_daemon():
    """Measured: `python:3.11-slim` floated (a rebuild could bring another Python and Debian)."""
    (base,) = arguments("FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    argv = entrypoint() + exec_form(arguments("CMD")[-1])
    assert spy_streamer_args(argv).command == "run"  # exec form: tini runs the daemon and passes it signals


def test_tini_is_pid_1_and_installed_by_the_image():
    """An init for `docker run` without `--init`: it reaps the compaction child and forwards SIGTERM."""
    installs = [args for args in arguments("RUN") if "apt-get install" in args]
    assert any(re.search(r"\btini\b", args) for args in installs)
    assert "init" not in compose_service()   # compose's own init would put a second one in front


def test_dependencies_are_installed_in_a_layer_before_the_source():
    """Measured: one `pip install` ran after the whole source was copied, so any code change reinstalled
    pyarrow, DuckDB and the rest. Now only setup.cfg comes before the dependencies' layer."""
    instructions = dockerfile()
    deps = next(i for i, (name, args) in enumerate(instructions) if name == "RUN" and "pip install -r" in args)
    source = next(i for i, (name, args) in enumerate(instructions) if name == "COPY" and "spy_streamer" in args)
    copied_before = [args.split()[:-1] for name, args in instructions[:deps] if name == "COPY"]
    assert deps < source and copied_before == [["setup.cfg"]]
    package = next(args for name, args in instructions[source:] if name == "RUN" and "pip install" in args)
    assert "--no-deps" in package


def test_the_dependency_layer_installs_what_the_package_requires(tmp_path):
    """The layer's own command, run here on this setup.cfg, lists the package's requirements."""
    command = next(args for name, args in dockerfile() if name == "RUN" and "pip install -r" in args)
    script = re.search(r'python -c "(.*?)" >', command)[1].replace("/src/setup.cfg", str(REPO_ROOT / "setup.cfg"))
    listed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    required = [r for r in importlib.metadata.requires("spy-streamer") if "extra ==" not in r]
    assert sorted(Requirement(line).name for line in listed.splitlines() if line.strip()) == \
        sorted(Requirement(line).name for line in required)


def test_runs_as_a_non_root_user():
    user = arguments("USER")[-1].split(":")[0]
    assert user not in ("root", "0")


def test_var_is_a_volume_the_user_owns():
    instructions = dockerfile()
    assert arguments("WORKDIR")[-1] == "/app"
    volume = next(i for i, (name, _) in enumerate(instructions) if name == "VOLUME")
    assert "/app/var" in exec_form(instructions[volume][1])
    chown = next(i for i, (name, args) in enumerate(instructions) if name == "RUN" and "chown" in args)
    assert chown < volume  # what a build step changes in a volume path after VOLUME is thrown away


def test_healthcheck_is_check_probe_and_stop_signal_is_sigterm():
    (healthcheck,) = arguments("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    args = spy_streamer_args(exec_form(command))
    assert args.command == "check" and args.probe
    assert "--timeout=" in options and "--interval=" in options
    assert arguments("STOPSIGNAL") == ["SIGTERM"]


def compose_service() -> dict:
    (service,) = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())["services"].values()
    return service


def test_compose_runs_the_demo_offline_with_var_as_a_volume():
    service = compose_service()
    assert service["build"] in (".", {"context": "."})
    assert spy_streamer_args(entrypoint() + service["command"]).command == "demo"
    assert any(volume.endswith(":/app/var") for volume in service["volumes"])
    assert service["network_mode"] == "none"  # the replay is on loopback: the demo needs no network
    assert service["stop_signal"] == "SIGTERM"


def test_compose_healthcheck_probes_the_latest_demo():
    test = compose_service()["healthcheck"]["test"]
    assert test[0] == "CMD"
    args = spy_streamer_args(test[1:])
    assert args.command == "check" and args.probe
    assert args.config == str(DEFAULT_OUTPUT / "latest" / "settings.yaml")


def ignored(path: str) -> bool:
    """.dockerignore's rule: the last pattern that matches the path or a folder above it decides."""
    verdict = False
    for pattern in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated, pattern = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        if any(fnmatch("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)):
            verdict = not negated
    return verdict


def test_the_build_context_holds_what_copy_needs_and_nothing_private():
    tracked = subprocess.run(["git", "ls-files", "spy_streamer", "setup.cfg", "pyproject.toml", "README.md",
                              "config/settings.yaml"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    sources = [source for args in arguments("COPY") for source in args.split()[:-1]]
    for source in sources:
        assert (REPO_ROOT / source).exists() and not ignored(source), source
    assert [path for path in tracked if path.endswith(".py") and ignored(path)] == []
    for private in (".git/config", ".venv/bin/python", "var/data/A/x.parquet", ".env", "tests/conftest.py",
                    "spy_streamer/__pycache__/cli.cpython-311.pyc"):
        assert ignored(private), private

