"""systemd's notify protocol, as a Type=notify unit with WatchdogSec= sees it: a real AF_UNIX datagram socket
stands in for $NOTIFY_SOCKET and the real daemon runs as a subprocess. READY=1 once started, WATCHDOG=1 every
WatchdogSec/2 from the supervisor loop (closed market included, and no more often), none while the writer
is hung, again once it moves; STOPPING=1 at a stop."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO_ROOT, TEST_API_KEY, write_settings
from daemon_harness import events_named, read_heartbeat, wait_for, window_settings
from spy_streamer.monitoring.systemd_notify import Watchdog, notify, start_watchdog, watchdog_seconds

RUN_STREAMER = REPO_ROOT / "scripts" / "run_streamer.sh"
WATCHDOG_SECONDS = 1.0          # WATCHDOG_USEC as systemd would set it for WatchdogSec=1
# The daemon with ParquetSink.write blocking while the file named by argv[1] exists: a disk that hangs.
HANGING_SINK = """
import sys, time, pathlib
from spy_streamer.storage.parquet_sink import ParquetSink
from spy_streamer import cli
hang, write = pathlib.Path(sys.argv[1]), ParquetSink.write
def hanging_write(self, *args, **kwargs):
    while hang.exists():
        time.sleep(0.05)
    return write(self, *args, **kwargs)
ParquetSink.write = hanging_write
sys.exit(cli.main(sys.argv[2:]))
"""


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; the messages received, with when."""

    def __init__(self, address: str):
        self.name = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.received: list[tuple[float, str]] = []

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            self.received.append((time.monotonic(), data.decode()))

    def wait_for(self, message: str, timeout: float = 30) -> float:
        """When `message` (a prefix) arrived, reading until it does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, text in self.received:
                if text.startswith(message):
                    return at
            self.read(0.1)
        raise AssertionError(f"no {message!r} within {timeout} s; got {[text for _, text in self.received]}")

    def times_of(self, message: str, after: float = 0.0) -> list[float]:
        return [at for at, text in self.received if text == message and at > after]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket():
    sock = NotifySocket(f"@spy-streamer-test-{uuid.uuid4().hex}")   # abstract: no path length limit
    yield sock
    sock.close()


def systemd_env(notify_socket: NotifySocket) -> dict:
    env = dict(os.environ, POLYGON_API_KEY=TEST_API_KEY, NOTIFY_SOCKET=notify_socket.name,
               WATCHDOG_USEC=str(int(WATCHDOG_SECONDS * 1_000_000)))
    env.pop("SPY_STREAMER_CONFIG", None)
    return env


def start_daemon(argv: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()


def test_ready_then_watchdog_every_half_watchdogsec_while_closed_then_stopping(tmp_path, fake, notify_socket):
    """The market is closed: the supervisor loop still pets at WatchdogSec/2, and no more often."""
    config = write_settings(tmp_path, window_settings(tmp_path, fake, open_now=False))
    daemon = start_daemon([str(RUN_STREAMER), "--config", str(config)], systemd_env(notify_socket))
    try:
        ready = notify_socket.wait_for("READY=1")
        notify_socket.read(3.2)
        pets = notify_socket.times_of("WATCHDOG=1", after=ready - 1)
        gaps = [later - earlier for earlier, later in zip(pets, pets[1:])]
        assert 5 <= len(pets) <= 8, pets
        assert min(gaps) > WATCHDOG_SECONDS / 2 * 0.8, gaps        # half of WatchdogSec, not a 0.1 s poll
        assert max(gaps) < WATCHDOG_SECONDS * 0.9, gaps             # and in time for systemd

        # Measured before: a daemon frozen with SIGSTOP was CRITICAL in `check` and never restarted.
        daemon.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        notify_socket.read(2 * WATCHDOG_SECONDS)                    # systemd kills it after WatchdogSec
        assert notify_socket.times_of("WATCHDOG=1", after=frozen + 0.1) == []
        daemon.send_signal(signal.SIGCONT)
        notify_socket.read(1.2)
        assert notify_socket.times_of("WATCHDOG=1", after=frozen + 2 * WATCHDOG_SECONDS)
    finally:
        code = stop(daemon)
    notify_socket.wait_for("STOPPING=1", timeout=5)
    assert code == 0, daemon.stderr.read()


def test_a_hung_writer_stops_the_watchdog_until_it_moves_again(tmp_path, fake, notify_socket):
    document = window_settings(tmp_path, fake)
    config = write_settings(tmp_path, document)
    hang = tmp_path / "hang"
    log_file = Path(document["paths"]["log_file"])
    daemon = start_daemon([str(REPO_ROOT / ".venv" / "bin" / "python"), "-c", HANGING_SINK, str(hang),
                           "run", "--config", str(config)], systemd_env(notify_socket))
    try:
        assert fake.wait_for_subscribers(1, timeout=20)
        fake.replay_live(("SPY",))
        notify_socket.wait_for("READY=1")
        notify_socket.read(1.5)
        assert len(notify_socket.times_of("WATCHDOG=1")) >= 2        # capturing: pets go out

        hang.touch()                                                  # the next flush never returns
        wait_for(lambda: events_named(log_file, "watchdog_withheld"), timeout=20, what="the pets to stop")
        withheld = notify_socket.wait_for("STATUS=stalled: parquet-writer")
        notify_socket.read(3 * WATCHDOG_SECONDS)                      # systemd would have killed it by now
        assert notify_socket.times_of("WATCHDOG=1", after=withheld) == []
        heartbeat = read_heartbeat(Path(document["paths"]["heartbeat_dir"]))
        assert "parquet-writer" in heartbeat["failing"]["systemd_watchdog"]["last_error"]   # `check` sees it

        hang.unlink()                                                 # the disk answers again
        resumed = notify_socket.wait_for("STATUS=capturing", timeout=20)
        notify_socket.read(1.5)
        assert len(notify_socket.times_of("WATCHDOG=1", after=resumed)) >= 2
    finally:
        hang.unlink(missing_ok=True)
        code = stop(daemon)
    assert code == 0, daemon.stderr.read()


def test_notify_speaks_to_a_socket_path_and_an_abstract_name(tmp_path):
    short = Path(f"/tmp/sd-{uuid.uuid4().hex[:8]}")
    for address in (str(short), f"@spy-streamer-test-{uuid.uuid4().hex}"):
        receiver = NotifySocket(address)
        try:
            assert notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": address})
            receiver.read(0.2)
            assert [text for _, text in receiver.received] == ["READY=1\nSTATUS=up"]
        finally:
            receiver.close()
            short.unlink(missing_ok=True)


def test_notify_outside_systemd_does_nothing_and_a_gone_socket_is_one_warning(caplog, notify_socket):
    caplog.set_level(logging.INFO)
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}) is False
    assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}) is False
    assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": notify_socket.name}) is True
    assert [record.event for record in caplog.records] == ["systemd_notify_failed", "systemd_notify_recovered"]


def test_watchdog_seconds_follows_systemd_and_its_pid():
    assert watchdog_seconds({}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "60000000"}) == 60.0
    assert watchdog_seconds({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) == 60.0
    assert watchdog_seconds({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, pid=2) is None  # a wrapper's
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "soon"}) is None


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_standing_counter_withholds_the_pets_and_a_moving_one_resumes_them():
    clock, sent, turns = Clock(), [], {"parquet-writer": 0}
    watchdog = Watchdog(10, lambda: turns, monotonic=clock, send=lambda state: sent.append(state) or True)
    for _ in range(3):                         # moving
        turns["parquet-writer"] += 1
        clock.now += 5
        watchdog.pet()
    clock.now += 10.5                          # standing for longer than 10 s
    watchdog.pet()
    watchdog.pet()
    assert sent == ["WATCHDOG=1"] * 3 + ["STATUS=stalled: parquet-writer made no progress for over 10 s"]
    turns["parquet-writer"] += 1
    watchdog.pet()
    assert sent[-2:] == ["STATUS=capturing", "WATCHDOG=1"]
    turns.clear()                              # the session ended: nothing to wait for
    clock.now += 100
    watchdog.pet()
    assert sent[-1] == "WATCHDOG=1"


def test_without_watchdog_usec_nothing_is_scheduled():
    assert start_watchdog(None, dict, 1, environ={"NOTIFY_SOCKET": "@x"}) is None   # `None`: never touched


def unit_environment() -> dict:
    """The shipped unit's Environment= assignments."""
    lines = (REPO_ROOT / "config" / "spy-streamer.service").read_text().splitlines()
    return dict(word.split("=", 1) for line in lines if line.startswith("Environment=")
                for word in line.removeprefix("Environment=").split())


def test_the_watchdogs_kill_prints_where_each_thread_was(tmp_path, fake, notify_socket):
    """systemd's watchdog kills with SIGABRT; with the unit's environment the daemon's last words in the
    journal are every thread's stack (the hung writer's included)."""
    config = write_settings(tmp_path, window_settings(tmp_path, fake, open_now=False))
    daemon = start_daemon([str(RUN_STREAMER), "--config", str(config)],
                          {**systemd_env(notify_socket), **unit_environment()})
    try:
        notify_socket.wait_for("READY=1")
        daemon.send_signal(signal.SIGABRT)
        stderr = daemon.communicate(timeout=20)[1]
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == -signal.SIGABRT
    assert "Fatal Python error: Aborted" in stderr and "Thread 0x" in stderr
    assert "streaming_runner.py" in stderr and "heartbeat_monitor.py" in stderr   # the main and the heartbeat
