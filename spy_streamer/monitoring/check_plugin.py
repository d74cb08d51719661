"""`spy-streamer check` as a monitoring plugin on every path, not only the happy one.

Nagios, Icinga and NRPE read the exit code and the first line of stdout, and nothing else: argparse's
exit 2 on a typo reads as CRITICAL, exit 78 with the reason on stderr as a blank CRITICAL. So every failure
of the plugin itself (usage, a missing or bad config, an unreadable file, its own timeout, a bug) is
exit 3 with one `SPY-STREAMER UNKNOWN - <why>` line, the monitoring-plugins guidelines' contract.
`--probe` folds every state into Docker's 0 healthy / 1 not, whatever went wrong.

nagiosplugin (1.4.0, the well-kept library for this) was tried and is not used: its incremental import is
cheap (~10 ms), but on the paths this module exists for it breaks the contract. Measured with a minimal
plugin on its `guarded` + `Check.main(timeout=)`: a usage error still exits 2 with nothing on stdout
(`guarded` catches Exception, not argparse's SystemExit); `-t 0.5` runs with no timeout at all (it calls
`signal.alarm(int(timeout))`); its own timeout prints `SPY-STREAMER UNKNOWN: Timeout: ...` (a colon, not
` - `) followed by a traceback on stdout. And the verdict is a first-match rule list over one heartbeat,
not metrics against thresholds, so its contexts would only wrap `evaluate_health`.
"""
from __future__ import annotations

import argparse
import os
import signal
from dataclasses import replace
from datetime import datetime, timezone

from .. import __version__
from ..config import ConfigError, load_config, resolve_config_path
from ..log_setup import REDACTED, discard_stdout
from .health_check import OK, UNKNOWN, WARNING, HeartbeatUnreadable, Verdict, evaluate_health, heartbeat_path, \
    heartbeat_written_at, load_heartbeat

PROG = "spy-streamer check"
PROBE_FLAGS = ("--probe", "--docker")
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_KEY_ENV = "POLYGON_API_KEY"   # whose value a message must not show when the config is unreadable
DESCRIPTION = "health for monitors (Nagios plugin convention): exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"


class _UsageError(Exception):
    """A command line the plugin cannot run: UNKNOWN, not argparse's exit 2 (which reads as CRITICAL)."""


class _PluginParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(message)


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `check`, shared by its own parser and the entry in `spy-streamer --help`."""
    parser.add_argument("--config", metavar="PATH",
                        help="config file (default: $SPY_STREAMER_CONFIG, else config/settings.yaml)")
    parser.add_argument("-t", "--timeout", type=positive_seconds, default=DEFAULT_TIMEOUT_SECONDS,
                        metavar="SECONDS", help="answer UNKNOWN if no verdict within this time (default: 10)")
    parser.add_argument("--probe", "--docker", action="store_true",
                        help="container health probe: exit 0 when OK or WARNING, 1 otherwise (errors included)")
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")


def positive_seconds(text: str) -> float:
    """An argparse type: seconds, more than 0 and less than a day (`check -t`, `demo --seconds`)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 86400:   # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def run_check(argv: list[str]) -> int:
    """The whole plugin: `argv` is what follows `check`. Prints one line; returns the exit code."""
    probe = any(arg in PROBE_FLAGS for arg in argv)   # known even when the rest does not parse
    parser = _PluginParser(prog=PROG, description=DESCRIPTION)
    add_check_arguments(parser)
    try:
        args = parser.parse_args(argv)                   # --help and --version exit 0 here, as usual
    except _UsageError as exc:
        verdict = Verdict(UNKNOWN, f"usage: {exc} (see {PROG} --help)")
    else:
        verdict = _within_seconds(args.timeout, lambda: _judge(args.config))
    try:
        print(verdict.line(), flush=True)
    except BrokenPipeError:   # the monitor stopped reading; the exit code still tells it (--probe: 0 or 1)
        discard_stdout()
    if probe:  # WARNING still records (say, while reconnecting): not a reason to restart a container
        return 0 if verdict.code in (OK, WARNING) else 1
    return verdict.code


def _judge(config_option: str | None) -> Verdict:
    """The verdict; any failure of the plugin's own is UNKNOWN with its reason, never showing the key."""
    key_env = DEFAULT_KEY_ENV   # until the config names its own
    try:
        config = load_config(resolve_config_path(config_option))
        key_env = config.polygon.api_key_env
        verdict = _health(config)
    except ConfigError as exc:
        verdict = Verdict(UNKNOWN, f"configuration error: {exc}")
    except Exception as exc:   # a bug or an I/O error nobody foresaw: still one UNKNOWN line, never a traceback
        verdict = Verdict(UNKNOWN, f"check failed: {type(exc).__name__}: {exc}")
    key = os.environ.get(key_env, "").strip()
    return replace(verdict, text=verdict.text.replace(key, REDACTED)) if key else verdict


def _health(config) -> Verdict:
    """Reads only the heartbeat (the calendar file when the heartbeat is too old to tell whether the
    market is open): no key, no network."""
    try:
        heartbeat = load_heartbeat(heartbeat_path(config))
    except HeartbeatUnreadable as exc:
        return Verdict(UNKNOWN, str(exc))
    return evaluate_health(heartbeat, datetime.now(timezone.utc), lambda now: _market_open(config, now),
                           heartbeat_written_at(heartbeat_path(config)))


def _market_open(config, now: datetime) -> bool:
    """Only when the heartbeat is too old to say: the calendar (rules and the saved list, no network)."""
    from ..market.calendar_store import load_calendar   # holidays' rules: only on this rare path
    return load_calendar(config).is_market_open(now)


class _TimedOut(BaseException):
    """Raised by the alarm; a BaseException so that `except Exception` in the judging cannot swallow it."""


def _within_seconds(seconds: float, judge) -> Verdict:
    """`judge()`, or UNKNOWN once `seconds` have passed (a hung disk must not hang the monitor)."""
    def expire(signum, frame):
        raise _TimedOut()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return judge()
    except _TimedOut:
        return Verdict(UNKNOWN, f"no answer within {seconds:g} s (--timeout)")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
