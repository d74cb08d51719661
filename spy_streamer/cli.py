"""Command line: parse, build the pieces from the config, dispatch. No logic of its own."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import date, datetime, timezone

from .compaction import CompactionError, Outcome, compact_day, compaction_refusal, describe
from .config import Config, ConfigError, load_config, require_api_key, resolve_config_path
from .aggregate_bars import subscribed_symbols
from .coverage_report import CoverageError, format_coverage, load_coverage, session_bounds
from .heartbeat_monitor import heartbeat_path, read_heartbeat
from .log_setup import REDACTED, configure_logging
from .market_hours import HolidaySource, MarketCalendar
from .polygon_rest import fetch_upcoming_holidays, make_rest_client
from .streaming_runner import EX_CONFIG, StreamingRunner
from .status_report import CHECK_UNKNOWN, evaluate_health, heartbeat_lines, market_lines


def build_calendar(config: Config, api_key: str | None) -> MarketCalendar:
    """The calendar with Polygon's holidays, or the plain weekly calendar when no key is available."""
    if api_key is None:
        return MarketCalendar(config.market_hours)
    client = make_rest_client(api_key, config.polygon.rest_base_url)
    holidays = HolidaySource(lambda: fetch_upcoming_holidays(client))
    return MarketCalendar(config.market_hours, holidays.for_year)


def _operator_calendar(config: Config) -> tuple[MarketCalendar, str | None]:
    """For status and check: holidays when a key is set; a failed holiday fetch warns on stderr."""
    api_key = os.environ.get(config.polygon.api_key_env, "").strip() or None
    configure_logging(None, secrets=(api_key or "",), level=logging.WARNING)
    return build_calendar(config, api_key), api_key


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    calendar, api_key = _operator_calendar(config)
    now = datetime.now(timezone.utc)
    lines = market_lines(calendar, now)
    if api_key is None:
        lines.append(f"(holidays not checked: {config.polygon.api_key_env} is not set)")
    try:
        lines += heartbeat_lines(*read_heartbeat(heartbeat_path(config), now))
    except ValueError as exc:
        lines.append(f"heartbeat: {exc}")
    print("\n".join(lines))
    return 0


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    api_key = require_api_key(config)
    configure_logging(config.paths.log_file, secrets=(api_key,))
    runner = StreamingRunner(config, build_calendar(config, api_key), api_key)
    code = runner.run()
    args.exit_reason = getattr(runner, "exit_reason", None)  # main() prints it for supervisord and journald
    return code


def cmd_check(config: Config, args: argparse.Namespace) -> int:
    calendar, _ = _operator_calendar(config)
    now = datetime.now(timezone.utc)
    try:
        heartbeat, age = read_heartbeat(heartbeat_path(config), now)
    except ValueError as exc:
        code, line = CHECK_UNKNOWN, f"UNKNOWN: {exc}"
    else:
        code, line = evaluate_health(heartbeat, age, calendar.is_market_open(now))
    print(line)
    return code


def cmd_compact(config: Config, args: argparse.Namespace) -> int:
    """Needs no API key: the plain weekly calendar is enough to tell whether the day's session is over."""
    refusal = compaction_refusal(MarketCalendar(config.market_hours), args.date, datetime.now(timezone.utc))
    if refusal is not None:
        print(f"spy-streamer: not compacting: {refusal}", file=sys.stderr)
        return 1
    configure_logging(config.paths.log_file)  # it deletes files: the daemon's log keeps the record
    try:
        result = compact_day(config.paths.data_dir, args.date)
    except CompactionError as exc:
        print(f"spy-streamer: compaction of {args.date} failed: {exc}", file=sys.stderr)
        return 1
    print(describe(result))
    return 1 if result.outcome is Outcome.NO_DATA else 0


def cmd_report(config: Config, args: argparse.Namespace) -> int:
    calendar = MarketCalendar(config.market_hours)
    now = datetime.now(timezone.utc)
    day = args.date or calendar.trading_day(now)
    try:
        coverage = load_coverage(config.paths.data_dir, day, session_bounds(calendar, day, now), args.gap_seconds,
                                 subscribed_symbols(config.polygon.subscriptions))
    except CoverageError as exc:
        print(f"spy-streamer: {exc}", file=sys.stderr)
        return 1
    print(format_coverage(coverage, calendar.tz))
    return 0


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spy-streamer",
        description="Capture Polygon.io A.SPY per-second aggregates into Parquet during US market hours.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("run", "the daemon: stream during market hours, sleep (no connection) outside them"),
        ("status", "market state now (open/closed, next open and close) and the heartbeat summary"),
        ("check", "health probe for monitors: exit 0 healthy or idle, 2 stalled or stale, 3 unknown"),
    ):
        _add_command(commands, name, help_text)
    compact = _add_command(commands, "compact", "merge a finished day's micro-batch files into one Parquet file")
    compact.add_argument("--date", required=True, type=_iso_date, metavar="YYYY-MM-DD",
                         help="the trading day (an earlier day, or today once the session is over)")
    report = _add_command(commands, "report", "a day's coverage: rows, first and last bar, gaps, files")
    report.add_argument("--date", type=_iso_date, metavar="YYYY-MM-DD", help="the trading day (default: today)")
    report.add_argument("--gap-seconds", type=_seconds, default=1.0, metavar="N",
                        help="list stretches without bars longer than N seconds (default: 1)")
    return parser


def _add_command(commands, name: str, help_text: str) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=help_text, description=help_text)
    command.add_argument("--config", metavar="PATH",
                         help="config file (default: $SPY_STREAMER_CONFIG, else config/settings.yaml)")
    return command


COMMANDS = {"run": cmd_run, "status": cmd_status, "check": cmd_check, "compact": cmd_compact,
            "report": cmd_report}


# Said on stderr when `run` ends non-zero without a reason of its own (supervisord and journald show it).
EXIT_REASONS = {70: "a thread crashed (see the log)", 75: "another instance holds the data_dir lock",
                78: "configuration or API key rejected (see the log)"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = None
    try:
        config = load_config(resolve_config_path(args.config))
        code = COMMANDS[args.command](config, args)
    except ConfigError as exc:
        return _stopped(EX_CONFIG, f"configuration error: {exc}", config)
    if code and args.command == "run":
        reason = getattr(args, "exit_reason", None) or EXIT_REASONS.get(code, f"stopped with exit code {code}")
        return _stopped(code, reason, config)
    return code


def _stopped(code: int, reason: str, config: Config | None) -> int:
    """The one place that says why the daemon stops: one line on stderr, never the API key."""
    line = " ".join(f"spy-streamer: {reason}".split())
    key = os.environ.get(config.polygon.api_key_env if config else "POLYGON_API_KEY", "").strip()
    if key:
        line = line.replace(key, REDACTED)
    print(line, file=sys.stderr)
    return code
