"""The shipped deployment files: config/supervisord.conf under a real supervisord, config/spy-streamer.service
read by systemd's own parser.

supervisord ignores `exitcodes` for a program that exits before `startsecs` (Supervisor/supervisor#260):
it retries it and marks it FATAL. The test runs the shipped [program:spy-streamer] section, with only its
name, paths and command substituted, and checks that an exit 78 is spawned once and stays EXITED while an
unexpected exit is restarted."""
from __future__ import annotations

import configparser
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

import pytest
import yaml
from supervisor.xmlrpc import SupervisorTransport

from conftest import REPO_ROOT, TEST_API_KEY, write_settings
from daemon_harness import wait_for, window_settings
from spy_streamer.config import load_config
from spy_streamer.orchestrator.streaming_runner import SHUTDOWN_DEADLINE_SECONDS

SHIPPED_SUPERVISORD = REPO_ROOT / "config" / "supervisord.conf"
SHIPPED_UNIT = REPO_ROOT / "config" / "spy-streamer.service"
README = REPO_ROOT / "README.md"
SYSTEMD_SETTINGS = REPO_ROOT / "config" / "settings.systemd.yaml"
SUPERVISORD = Path(sys.executable).with_name("supervisord")
RUN_STREAMER = REPO_ROOT / "scripts" / "run_streamer.sh"
# supervisord acts on an EXITED process in the next pass of its loop (about once a second) or never: only
# BACKOFF waits on a timer. So watching a few seconds past the exit shows what 60 s would.
HOLD_SECONDS = 4.0


def shipped_program_section() -> str:
    text = SHIPPED_SUPERVISORD.read_text()
    return text[text.index("[program:spy-streamer]"):]


def substituted(section: str, name: str, command: str, stdout_log: Path | None) -> str:
    """The shipped section with its name, directory, command and log path replaced (the log path kept when
    `stdout_log` is None), and `user=` the user running the test (supervisord refuses a user name that does
    not exist, and only root may switch to another). Each line must be there exactly once."""
    replacements = [
        (r"^\[program:spy-streamer\]$", f"[program:{name}]"),
        (r"^directory=.*$", f"directory={REPO_ROOT}"),
        (r"^command=.*$", f"command={command}"),
        (r"^user=.*$", f"user={pwd.getpwuid(os.getuid()).pw_name}"),
    ]
    if stdout_log is not None:
        replacements.append((r"^stdout_logfile=.*$", f"stdout_logfile={stdout_log}"))
    for pattern, replacement in replacements:
        section, count = re.subn(pattern, replacement, section, flags=re.MULTILINE)
        assert count == 1, f"the shipped section has no single line matching {pattern!r}"
    return section


def supervisord_conf(workdir: Path, programs: dict[str, str], shipped_log: bool = False) -> str:
    head = f"""[supervisord]
nodaemon=true
logfile={workdir}/supervisord.log
pidfile={workdir}/supervisord.pid
childlogdir={workdir}
loglevel=info

[unix_http_server]
file={workdir}/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

"""
    return head + "\n".join(substituted(shipped_program_section(), name, command,
                                        None if shipped_log else workdir / f"{name}.out")
                            for name, command in programs.items())


class Supervisord:
    """A real supervisord in the foreground, asked about its programs over its XML-RPC socket."""

    def __init__(self, workdir: Path, programs: dict[str, str], shipped_log: bool = False):
        self.workdir = workdir
        conf = workdir / "supervisord.conf"
        conf.write_text(supervisord_conf(workdir, programs, shipped_log))
        env = dict(os.environ, POLYGON_API_KEY=TEST_API_KEY)  # programs inherit supervisord's environment
        env.pop("SPY_STREAMER_CONFIG", None)
        self.process = subprocess.Popen([str(SUPERVISORD), "-c", str(conf)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._up, timeout=20, what="supervisord's socket")

    def _rpc(self):
        # A fresh connection per call: the transport cannot reuse one after a failed request.
        transport = SupervisorTransport("", "", f"unix://{self.workdir}/supervisor.sock")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def _up(self) -> bool:
        try:
            return self._rpc().getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def info(self, name: str) -> dict:
        return self._rpc().getProcessInfo(name)

    def spawns(self, name: str) -> int:
        return len(re.findall(rf"spawned: '{re.escape(name)}' with pid", self.log()))

    def log(self) -> str:
        path = self.workdir / "supervisord.log"
        return path.read_text() if path.exists() else ""

    def tail(self, name: str) -> str:
        """What `supervisorctl tail NAME` shows: the program's output, wherever its log file is."""
        return self._rpc().readProcessStdoutLog(name, 0, 4096)

    def program_output(self, name: str) -> str:
        return (self.workdir / f"{name}.out").read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # stops the programs with their stopsignal, then exits
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@pytest.fixture
def short_dir():
    """A short directory: a unix socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="svd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


STAYS_DOWN = ["bad-config", "missing-key", "rejected-key"]


def all_exited_once(supervisord: Supervisord, names: list[str]) -> bool:
    """True when all are EXITED; fails at once when one is being retried (what the old section did)."""
    states = {name: (supervisord.info(name)["statename"], supervisord.spawns(name)) for name in names}
    assert all(state not in ("BACKOFF", "FATAL") and spawns <= 1 for state, spawns in states.values()), states
    return all(state == "EXITED" for state, _ in states.values())


def test_shipped_supervisord_section_does_not_restart_exit_78_but_restarts_a_crash(tmp_path, short_dir, fake):
    """78 (bad config, missing key, key rejected by Polygon) is spawned once and stays EXITED; an exit 70
    and a SIGKILL are restarted. All under one real supervisord, side by side."""
    def config(name: str, open_now: bool, **sections) -> Path:
        return write_settings(tmp_path / name, window_settings(tmp_path / name, fake, open_now=open_now, **sections))

    for name in ("bad-config", "missing-key", "rejected-key", "killed"):
        (tmp_path / name).mkdir()
    crash = "/bin/sh -c 'echo \"spy-streamer: a thread crashed (stand-in)\" >&2; exit 70'"
    flooding = {"batching": {"write_interval_seconds": 1e-6}}
    programs = {
        "bad-config": f"{RUN_STREAMER} --config {config('bad-config', False, streaming=flooding)}",
        "missing-key": f"env -u POLYGON_API_KEY {RUN_STREAMER} --config {config('missing-key', False)}",
        "rejected-key": f"env POLYGON_API_KEY=not-the-key {RUN_STREAMER} --config {config('rejected-key', True)}",
        "killed": f"{RUN_STREAMER} --config {config('killed', False)}",
        "crash-70": crash,
    }
    supervisord = Supervisord(short_dir, programs)
    try:
        wait_for(lambda: all_exited_once(supervisord, STAYS_DOWN), timeout=40, interval=0.2,
                 what="the three exit-78 programs to exit")
        wait_for(lambda: supervisord.info("killed")["statename"] == "RUNNING"
                 and (tmp_path / "killed" / "heartbeat" / "polygon.json").exists(),
                 timeout=30, interval=0.2, what="the daemon to run and write its heartbeat")
        first_pid = supervisord.info("killed")["pid"]
        os.kill(first_pid, signal.SIGKILL)
        wait_for(lambda: supervisord.info("killed")["pid"] not in (0, first_pid), timeout=15, interval=0.2,
                 what="supervisord to restart the killed daemon")
        time.sleep(HOLD_SECONDS)

        for name in STAYS_DOWN:
            info = supervisord.info(name)
            assert (info["statename"], info["exitstatus"], supervisord.spawns(name)) == ("EXITED", 78, 1), name
            assert f"exited: {name} (exit status 78; expected)" in supervisord.log()
            output = supervisord.program_output(name).splitlines()
            assert len(output) == 1 and output[0].startswith("spy-streamer: "), (name, output)
            assert "Traceback" not in supervisord.program_output(name)
        assert "write_interval_seconds" in supervisord.program_output("bad-config")
        assert "POLYGON_API_KEY is not set" in supervisord.program_output("missing-key")
        assert TEST_API_KEY not in "".join(supervisord.program_output(name) for name in programs)

        assert supervisord.spawns("killed") == 2 and supervisord.info("killed")["statename"] == "RUNNING"
        # Restarted again and again within the hold: a restart would have shown up for the 78s too.
        assert supervisord.spawns("crash-70") >= 3
        assert "exited: crash-70 (exit status 70; not expected)" in supervisord.log()
        assert "gave up" not in supervisord.log() and "FATAL" not in supervisord.log()
    finally:
        supervisord.stop()


def test_the_shipped_section_runs_on_a_new_host_as_shipped(tmp_path, short_dir, fake):
    """Measured: supervisord refused its whole configuration until /var/log/spy-streamer existed. Now only
    what the install section sets up is replaced (the checkout's folder and the `spy` user); the program's
    log stays as shipped, and supervisord starts the daemon and shows its output."""
    (tmp_path / "run").mkdir()
    config = write_settings(tmp_path / "run", window_settings(tmp_path / "run", fake, open_now=False))
    supervisord = Supervisord(short_dir, {"spy-streamer": f"{RUN_STREAMER} --config {config}"}, shipped_log=True)
    try:
        wait_for(lambda: supervisord.info("spy-streamer")["statename"] == "RUNNING"
                 and (tmp_path / "run" / "heartbeat" / "polygon.json").exists(),
                 timeout=30, interval=0.2, what="the daemon to run and write its heartbeat")
        assert Path(supervisord.info("spy-streamer")["stdout_logfile"]).parent == short_dir
    finally:
        supervisord.stop()
    assert "stopped: spy-streamer (exit status 0)" in supervisord.log()


def test_shipped_supervisord_settings():
    section = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    section.read_string(shipped_program_section())
    program = section["program:spy-streamer"]
    assert program["startsecs"] == "0"  # any other value brings back Supervisor/supervisor#260
    assert program["autorestart"] == "unexpected" and program["exitcodes"] == "0,78"
    assert program["stopsignal"] == "TERM" and int(program["stopwaitsecs"]) > SHUTDOWN_DEADLINE_SECONDS
    assert program["command"].split()[0].endswith("/scripts/run_streamer.sh")
    assert "ENV_POLYGON_API_KEY" not in program["environment"]  # unset, it breaks supervisord's whole config


def read_unit(text: str) -> configparser.RawConfigParser:
    # Not strict: systemd adds up repeated list settings (SystemCallFilter= allow, then ~deny); the last wins here.
    unit = configparser.RawConfigParser(strict=False, delimiters=("=",), comment_prefixes=("#", ";"))
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string(text)
    return unit


def test_systemd_unit_settings():
    unit = read_unit(SHIPPED_UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == "notify" and 0 < float(service["WatchdogSec"]) <= 300
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"].split() == ["78"]
    assert service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > SHUTDOWN_DEADLINE_SECONDS
    assert service["ExecStart"].split()[0] == "/opt/spy-streamer/scripts/run_streamer.sh"
    assert service["ExecStart"].split()[1:] == ["--config", "/etc/spy-streamer/settings.yaml"]
    assert (service["StateDirectory"], service["LogsDirectory"], service["ConfigurationDirectory"]) == \
        ("spy-streamer",) * 3
    assert "POLYGON_API_KEY" not in SHIPPED_UNIT.read_text().replace("POLYGON_API_KEY=...", "")
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_systemd_settings_write_only_where_systemd_lets_the_service_write():
    """config/settings.systemd.yaml (/etc/spy-streamer/settings.yaml) is config/settings.yaml with its paths
    in StateDirectory= and LogsDirectory=, the only writable places under ProtectSystem=strict."""
    systemd = yaml.safe_load(SYSTEMD_SETTINGS.read_text())
    default = yaml.safe_load((REPO_ROOT / "config" / "settings.yaml").read_text())
    assert {**systemd, "paths": None, "storage": None} == {**default, "paths": None, "storage": None}
    assert {**systemd["storage"], "warehouse": None} == {**default["storage"], "warehouse": None}
    config = load_config(SYSTEMD_SETTINGS)
    assert config.storage.warehouse == "/var/lib/spy-streamer/lake"   # not relative to /etc/spy-streamer
    assert config.paths.data_dir.is_relative_to("/var/lib/spy-streamer")
    assert config.paths.heartbeat_dir.is_relative_to("/var/lib/spy-streamer")
    assert config.paths.log_file.is_relative_to("/var/log/spy-streamer")


def unit_for_this_host(tmp_path: Path) -> Path:
    """The shipped unit with only its checkout pointed at this one (verify checks that ExecStart exists)."""
    path = tmp_path / "spy-streamer.service"
    path.write_text(SHIPPED_UNIT.read_text().replace("/opt/spy-streamer", str(REPO_ROOT)))
    return path


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path):
    """systemd's own parser, on the shipped unit with its paths pointed at this checkout."""
    path = unit_for_this_host(tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or bad values; it names the file in each complaint.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if path.name in line]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_security_scores_the_unit_ok(tmp_path):
    """`systemd-analyze security` on the unit file itself (as shipped, User=spy): at most 3.0 ("OK"); the
    unit of before scored 9.0 UNSAFE."""
    path = tmp_path / SHIPPED_UNIT.name
    path.write_text(SHIPPED_UNIT.read_text())
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(path)],
                            capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found[1]) <= 3.0, result.stdout
    assert f"`systemd-analyze security` scores it {found[1]} OK" in README.read_text()   # what the README says


def test_the_readme_says_what_the_unit_has():
    service = read_unit(SHIPPED_UNIT.read_text())["Service"]
    notes = README.read_text()
    assert f"`WatchdogSec={service['WatchdogSec']}`" in notes
    assert f"WATCHDOG=1 every {int(service['WatchdogSec']) // 2} s" in notes


SHIPPED_LOGROTATE = REPO_ROOT / "config" / "logrotate.conf"


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed")
def test_the_shipped_logrotate_rule_rotates_on_a_host_without_the_spy_user(start, tmp_path):
    """Measured: `create 0640 spy spy` made logrotate skip the log on a host without that user. The shipped
    rule, its paths pointed at a running daemon's log, rotates it, and the daemon writes on in a new file."""
    run = start(streaming={"monitoring": {"heartbeat_interval_seconds": 0.3}})
    wait_for(lambda: run.log_file.exists() and run.events("heartbeat"), timeout=20, what="first lines")
    rules = tmp_path / "logrotate.conf"
    rules.write_text(SHIPPED_LOGROTATE.read_text()
                     .replace("/var/log/spy-streamer/spy_streamer.log", str(run.log_file))
                     .replace("/opt/spy-streamer/var/log/spy_streamer.log", str(tmp_path / "absent.log")))
    result = subprocess.run(["logrotate", "--force", "--state", str(tmp_path / "state"), str(rules)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert run.log_file.with_name(run.log_file.name + ".1").exists()
    wait_for(lambda: run.log_file.exists() and run.events("heartbeat"), timeout=20, what="lines in a new file")
    assert run.daemon.stop()[0] == 0
    assert run.events("stopped")
