"""`spy-streamer demo`: the real daemon, end to end, against the bundled Polygon replay on 127.0.0.1.

No API key, no network, nothing of the user's touched: a fresh folder (`var/demo/<UTC time>/`, with
`var/demo/latest` pointing at it) holds the demo's settings, Parquet, heartbeat and log. The session is
"open now" at any hour: a fixed-offset zone where it is midday, every day, no exchange holidays. The
session opened a couple of minutes ago, so the daemon also backfills those minutes from the replay's REST.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from ..market.exchange_rules import nyse_special_days
from ..monitoring.health_check import load_heartbeat
from .replay_server import FakePolygon
from ..market.special_days import special_day_to_row
from ..storage.layout import heartbeat_path

DEMO_KEY_ENV = "SPY_STREAMER_DEMO_KEY"  # not POLYGON_API_KEY: a real key is never read, let alone sent
DEMO_KEY = "no-key-needed-for-the-replay"  # logs redact the key wherever it appears: not a word of a path
SYMBOLS = ("SPY", "QQQ", "IWM")
DEFAULT_SECONDS = 60.0
DEFAULT_OUTPUT = Path("var/demo")
HISTORY_MINUTES = 2           # the session opened this long ago: bars the daemon backfills over REST
INTERVAL_SECONDS = 2.0        # write and heartbeat cadence, so files appear at once
STOP_TIMEOUT_SECONDS = 30.0
PROGRESS_EVERY_SECONDS = 15.0


@dataclass(frozen=True)
class DemoFolder:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "settings.yaml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def heartbeat(self) -> Path:
        return heartbeat_path(self.root / "heartbeat")

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "spy_streamer.log"


def run_demo(seconds: float = DEFAULT_SECONDS, output: Path = DEFAULT_OUTPUT) -> int:
    """Exit code: the daemon's (0 after the graceful stop), or 1 when it would not stop."""
    signals = _record_signals()
    folder = DemoFolder(new_demo_folder(Path(output).absolute()))
    with FakePolygon(api_key=DEMO_KEY) as replay:
        now = datetime.now(timezone.utc)
        opened = now - timedelta(minutes=HISTORY_MINUTES)
        replay.holidays = upcoming_rows(now.date())
        replay.replay_live(SYMBOLS, since_ms=int(opened.timestamp()) // 60 * 60_000)
        hours = write_demo_config(folder, replay, now, seconds)
        print(f"demo: session open now, {hours['start_time']}-{hours['end_time']} in {hours['timezone']} "
              f"(a zone where it is midday), every day", flush=True)
        code = _record(folder, seconds, signals)
        _print_paths(folder, code)
        for command in ("report", "status"):  # while the replay is up: status refreshes its calendar
            _show(command, folder)
    return code


# --- the demo's world: folder, window, config ---

def new_demo_folder(parent: Path) -> Path:
    """`parent/<UTC time>[-n]/`, never an existing one; `parent/latest` points at it."""
    stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(100):
        root = parent / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            root.mkdir()
        except FileExistsError:
            continue
        link = parent / f".latest-{os.getpid()}"
        link.unlink(missing_ok=True)
        link.symlink_to(root.name)
        os.replace(link, parent / "latest")
        return root
    raise FileExistsError(f"{parent}: no free demo folder name for {stamp}")


def midday_zone(now: datetime) -> ZoneInfo:
    """A fixed-offset zone where it is 12:xx now, so a window around now never crosses midnight."""
    offset = now.astimezone(timezone.utc).hour - 12  # Etc/GMT+N is N hours *behind* UTC
    return ZoneInfo("Etc/GMT" if offset == 0 else f"Etc/GMT{offset:+d}")


def market_hours(now: datetime, seconds: float) -> dict:
    """A session that opened HISTORY_MINUTES ago and lasts past the demo (up to 23:59 local), every day."""
    zone = midday_zone(now)
    local = now.astimezone(zone)
    start = local - timedelta(minutes=HISTORY_MINUTES)
    end = min(local + timedelta(seconds=seconds, minutes=10), local.replace(hour=23, minute=59))
    return {"timezone": zone.key, "active_days": list(range(7)), "start_time": f"{start:%H:%M}",
            "end_time": f"{end:%H:%M}", "holiday_rules": "none"}


def upcoming_rows(today: date) -> list[dict]:
    """What Polygon's /v1/marketstatus/upcoming says: NYSE's next holidays and early closes, one row per
    exchange. From the day after tomorrow on, so the demo's own day stays open."""
    days = {**nyse_special_days(today.year), **nyse_special_days(today.year + 1)}
    rows = []
    for day in sorted(d for d in days if today + timedelta(days=2) <= d <= today + timedelta(days=365)):
        row = special_day_to_row(days[day])
        rows += [dict(row, exchange=exchange) for exchange in ("NYSE", "NASDAQ")]
    return rows


def write_demo_config(folder: DemoFolder, replay: FakePolygon, now: datetime, seconds: float) -> dict:
    """Writes the demo's settings; returns its market hours."""
    hours = market_hours(now, seconds)
    document = {
        "polygon": {"api_key_env": DEMO_KEY_ENV, "ws_feed": replay.ws_feed, "ws_secure": False,
                    "rest_base_url": replay.rest_base_url, "subscriptions": [f"A.{s}" for s in SYMBOLS]},
        "streaming": {"market_hours": hours,
                      "monitoring": {"heartbeat_interval_seconds": INTERVAL_SECONDS, "alert_threshold_seconds": 30},
                      "batching": {"write_interval_seconds": INTERVAL_SECONDS}},
        "paths": {"data_dir": str(folder.data_dir), "heartbeat_dir": str(folder.heartbeat.parent),
                  "log_file": str(folder.log_file)},
    }
    header = "# Written by `spy-streamer demo`: the daemon against the replay on 127.0.0.1, session open now.\n"
    folder.config.write_text(header + yaml.safe_dump(document, sort_keys=False))
    return hours


def demo_environment() -> dict[str, str]:
    env = dict(os.environ, **{DEMO_KEY_ENV: DEMO_KEY}, PYTHONUNBUFFERED="1")
    for name in ("SPY_STREAMER_CONFIG", "POLYGON_API_KEY"):
        env.pop(name, None)
    return env


def _command(name: str, folder: DemoFolder) -> list[str]:
    return [sys.executable, "-m", "spy_streamer", name, "--config", str(folder.config)]


# --- running the daemon ---

def _record_signals() -> queue.SimpleQueue:
    """Ctrl-C, SIGTERM (docker stop) and SIGHUP (the terminal closed) end the recording early, gracefully:
    the daemon runs in its own process group and would outlive a demo killed by them. Handlers only record."""
    signals: queue.SimpleQueue = queue.SimpleQueue()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, frame: signals.put_nowait(number))
    return signals


def _record(folder: DemoFolder, seconds: float, signals: queue.SimpleQueue) -> int:
    # Its own process group: a terminal's Ctrl-C reaches only the demo, which stops the daemon once, gracefully.
    daemon = subprocess.Popen(_command("run", folder), env=demo_environment(), process_group=0)
    print(f"demo: the daemon (pid {daemon.pid}) records {', '.join(SYMBOLS)} from the Polygon replay on "
          f"127.0.0.1 for {seconds:g} s, into {folder.root}  (Ctrl-C stops it early)", flush=True)
    try:
        _wait(daemon, seconds, signals, folder)
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        return daemon.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        print(f"demo: the daemon did not stop within {STOP_TIMEOUT_SECONDS:g} s; killed", file=sys.stderr)
        return 1
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def _wait(daemon: subprocess.Popen, seconds: float, signals: queue.SimpleQueue, folder: DemoFolder) -> None:
    """Until `seconds` have passed, a signal came or the daemon ended, with a progress line now and then."""
    waited = 0.0
    while waited < seconds and daemon.poll() is None:
        step = min(PROGRESS_EVERY_SECONDS, seconds - waited)
        try:
            signals.get(timeout=step)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: out now
            print("demo: stopping early", flush=True)
            return
        except queue.Empty:
            waited += step
        if waited < seconds:
            print(f"demo: {waited:g} s: {_progress(folder)}", flush=True)


def _progress(folder: DemoFolder) -> str:
    try:
        beat = load_heartbeat(folder.heartbeat)   # None before the first: a TypeError below
        return f"{beat['status']}, {beat['messages_total']} messages, {beat['rows_written']} rows written"
    except (OSError, ValueError, KeyError, TypeError):
        return "no heartbeat yet"


# --- what the user sees at the end ---

def _print_paths(folder: DemoFolder, code: int) -> None:
    data = folder.data_dir / "A"
    files = sorted(data.rglob("*.parquet")) if data.exists() else []
    print(f"\ndemo: the daemon stopped with exit code {code}. What it wrote:")
    print(f"  config:    {folder.config}")
    print(f"  parquet:   {data}  ({len(files)} files)")
    print(f"  heartbeat: {folder.heartbeat}")
    print(f"  log:       {folder.log_file}")
    print(f"  read it:   python -c \"import pyarrow.dataset as ds; "
          f"print(ds.dataset('{data}', partitioning='hive').to_table())\"", flush=True)


def _show(command: str, folder: DemoFolder) -> None:
    print(f"\n$ spy-streamer {command} --config {folder.config}", flush=True)
    subprocess.run(_command(command, folder), env=demo_environment(), stdin=subprocess.DEVNULL,
                   timeout=60, check=False)
