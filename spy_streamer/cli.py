"""Command line: parse, build the pieces from the config, dispatch. No logic of its own."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from datetime import date, datetime, timezone
from pathlib import Path

from . import __version__
from .config import Config, ConfigError, load_config, require_api_key, resolve_config_path
from .exit_codes import EX_CONFIG, EX_LOCKED, EX_SOFTWARE
from .monitoring.check_plugin import (DESCRIPTION as CHECK_DESCRIPTION, add_check_arguments, positive_seconds,
                                       run_check)
from .monitoring.health_check import HeartbeatUnreadable, heartbeat_path, heartbeat_written_at, load_heartbeat
from .log_setup import REDACTED, configure_logging, discard_stdout

# Everything heavier (pyarrow, the Polygon client, the holiday rules) is imported by the command that
# needs it: `check` runs as a container probe with a one-second budget and must start fast.

def _operator_calendar(config: Config):
    """For status: the daemon's calendar (exchange rules and Polygon's list as last saved, and when that was
    fetched), built without key or network; warnings go to stderr. The key, when set, lets `status` refresh
    the list."""
    from .market.calendar_store import load_calendar_and_fetch_time
    api_key = os.environ.get(config.polygon.api_key_env, "").strip() or None
    configure_logging(None, secrets=(api_key or "",), level=logging.WARNING)
    return *load_calendar_and_fetch_time(config), api_key


def _calendar_source(config: Config, calendar, fetched: datetime | None, api_key: str | None) -> str:
    """Status refreshes Polygon's list when it can (at most STATUS_TIMEOUT_SECONDS) and says what it used."""
    from .market.calendar_refresh import STATUS_TIMEOUT_SECONDS, polygon_refresher
    rules = config.market_hours.holiday_rules
    rules = "no exchange rules" if rules == "none" else f"{rules} rules"
    if api_key is not None and polygon_refresher(config, calendar, api_key, STATUS_TIMEOUT_SECONDS).refresh():
        return f"calendar: {rules} + Polygon's list (fetched now)"
    saved = f"as fetched {fetched:%Y-%m-%d %H:%M %Z}" if fetched else "never fetched"
    why = f"{config.polygon.api_key_env} is not set" if api_key is None else "refresh failed"
    return f"calendar: {rules} + Polygon's list {saved} ({why})"


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    from .reports.status_report import calendar_lines, heartbeat_lines, market_lines, status_document
    calendar, fetched, api_key = _operator_calendar(config)
    source = _calendar_source(config, calendar, fetched, api_key)
    now = datetime.now(timezone.utc)
    try:
        heartbeat, problem = load_heartbeat(heartbeat_path(config)), None
    except HeartbeatUnreadable as exc:
        heartbeat, problem = None, str(exc)
    written_at = heartbeat_written_at(heartbeat_path(config))
    if args.json:
        print(json.dumps(status_document(calendar, now, source, heartbeat, written_at) | {"heartbeat_problem": problem}))
        return 0
    lines = market_lines(calendar, now) + [source] + calendar_lines(calendar, now)
    try:
        lines += [f"heartbeat: {problem}"] if problem else heartbeat_lines(heartbeat, now, calendar.tz, written_at)
    except ValueError as exc:
        lines.append(f"heartbeat: {exc}")
    print("\n".join(lines))
    return 0


def _keep_pandas_out() -> None:
    """pyarrow imports pandas, when it is installed, at its first conversion (even `pa.scalar(1)`), only to
    recognise pandas objects: 59 MB resident for a daemon that never makes a DataFrame. Marked absent, it
    stays out of this process (compaction and the reading commands run in processes of their own).

    pyarrow looks for pandas once; finding the module marked absent, that look raises AttributeError (not
    the ImportError it expects) and from then on pyarrow knows there is none. It is made here, so that no
    import-time conversion elsewhere (whichever module happens to come first) meets the error."""
    sys.modules.setdefault("pandas", None)
    import pyarrow
    try:
        pyarrow.scalar(0)
    except AttributeError:
        pass


def _arrow_memory_from_malloc() -> None:
    """Arrow's default pool, mimalloc, keeps freed pages per thread: a burst of 1M events peaked 190-203 MB
    with it, 175-181 MB with the system allocator (at the same speed), and an idle daemon held 4 MB more.
    The pool is chosen once, when pyarrow first asks for it, so it is chosen here, before any import of
    pyarrow (`pa.set_memory_pool` reaches only the calls made from Python, not the Parquet writer's).
    An operator's own ARROW_DEFAULT_MEMORY_POOL wins; the compaction child inherits the choice."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    _arrow_memory_from_malloc()
    _keep_pandas_out()
    from .market.calendar_refresh import polygon_refresher
    from .market.calendar_store import load_calendar
    from .orchestrator.streaming_runner import StreamingRunner
    api_key = require_api_key(config)
    configure_logging(config.paths.log_file, secrets=(api_key,))
    calendar = load_calendar(config)
    runner = StreamingRunner(config, calendar, api_key,
                             refresh_calendar=polygon_refresher(config, calendar, api_key).refresh)
    code = runner.run()
    args.exit_reason = getattr(runner, "exit_reason", None)  # main() prints it for supervisord and journald
    return code


def cmd_compact(config: Config, args: argparse.Namespace) -> int:
    """Needs no API key: the calendar (rules and Polygon's list as last saved) knows the day's close."""
    from .market.calendar_store import load_calendar
    from .storage.compaction import CompactionError, Outcome, compact_day, compaction_refusal, describe
    refusal = compaction_refusal(load_calendar(config), args.date, datetime.now(timezone.utc))
    if refusal is not None:
        print(f"spy-streamer: not compacting: {refusal}", file=sys.stderr)
        return 1
    from .channels.subscriptions import channel_names
    configure_logging(config.paths.log_file)  # it deletes files: the daemon's log keeps the record
    failed, outcomes = False, []
    for channel in [args.channel] if args.channel else channel_names(config.polygon.subscriptions):
        try:
            result = compact_day(config.paths.data_dir, args.date, channel)
        except CompactionError as exc:
            print(f"spy-streamer: compaction of {channel} {args.date} failed: {exc}", file=sys.stderr)
            failed = True
            continue
        print(describe(result))  # the path it names shows the channel
        outcomes.append(result.outcome)
    return 1 if failed or all(outcome is Outcome.NO_DATA for outcome in outcomes) else 0


def _channel_names() -> tuple[str, ...]:
    from .channels import NAMES  # names only: no pyarrow on the parser's path
    return NAMES


def cmd_report(config: Config, args: argparse.Namespace) -> int:
    from .market.calendar_store import load_calendar
    from .channels.subscriptions import symbols_of
    from .reports.coverage_report import CoverageError, format_coverage, load_coverage, session_bounds
    from .reports.report_progress import file_progress  # rich: only here, never on the daemon's path
    calendar = load_calendar(config)
    now = datetime.now(timezone.utc)
    day = args.date or calendar.trading_day(now)
    try:
        coverage = load_coverage(config.paths.data_dir, day, session_bounds(calendar, day, now), args.gap_seconds,
                                 symbols_of(args.channel, config.polygon.subscriptions), args.channel,
                                 progress=file_progress)
    except CoverageError as exc:
        print(f"spy-streamer: {exc}", file=sys.stderr)
        return 1
    print(format_coverage(coverage, calendar.tz, calendar.special_day(day)))
    return 0


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    from .storage.flat_files import ExportError, default_output, export_flat_file
    output = Path(args.output) if args.output else default_output(args.channel, args.date)
    try:
        rows = export_flat_file(config.paths.data_dir, args.date, args.channel, output)
    except ExportError as exc:
        print(f"spy-streamer: {exc}", file=sys.stderr)
        return 1
    print(f"{rows} rows of {args.channel} {args.date.isoformat()} written to {output} (Polygon's flat-file layout)")
    return 0


def cmd_import_local(config: Config, args: argparse.Namespace) -> int:
    from .storage.lake_commands import import_local_command
    configure_logging(config.paths.log_file)  # it deletes local files: the daemon's log keeps the record
    return import_local_command(config, keep_local=args.keep)


def cmd_lake_compact(config: Config, args: argparse.Namespace) -> int:
    from .storage.lake_commands import lake_compact_command
    configure_logging(config.paths.log_file)
    return lake_compact_command(config, args.date, args.channel)


def cmd_expire_snapshots(config: Config, args: argparse.Namespace) -> int:
    from .storage.lake_commands import expire_snapshots_command
    configure_logging(config.paths.log_file)
    return expire_snapshots_command(config, args.older_than, args.channel)


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    from .reports.verify import verify_command
    configure_logging(None, secrets=(os.environ.get(config.polygon.api_key_env, ""),), level=logging.WARNING)
    return verify_command(config, args.date, args.channel, args.repair)


def cmd_demo(config: None, args: argparse.Namespace) -> int:
    """Needs neither key nor config: the demo writes its own settings into a fresh folder."""
    from .demo.launch import run_demo  # the replay server (asyncio, websockets) loads for the demo only
    try:
        return run_demo(args.seconds, Path(args.output))
    except KeyboardInterrupt:  # a second Ctrl-C
        return 130


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
        description="Record Polygon.io's real-time stock feed (A.SPY by default) into Parquet during US market hours.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_command(commands, "run", "the daemon: stream during market hours, sleep (no connection) outside them")
    status = _add_command(commands, "status", "market state now (open/closed, next open and close) and the "
                                              "heartbeat summary")
    status.add_argument("--json", action="store_true", help="one JSON document for programs")
    # Listed for --help only: main() hands `check` to the plugin, whose own parser answers UNKNOWN on a usage error.
    add_check_arguments(commands.add_parser("check", help=CHECK_DESCRIPTION, description=CHECK_DESCRIPTION))
    compact = _add_command(commands, "compact", "merge a finished day's micro-batch files into one Parquet file")
    compact.add_argument("--date", required=True, type=_iso_date, metavar="YYYY-MM-DD",
                         help="the trading day (an earlier day, or today once the session is over)")
    compact.add_argument("--channel", choices=_channel_names(),
                         help="one channel (default: every subscribed channel)")
    report = _add_command(commands, "report", "a day's coverage: rows, first and last bar, gaps, files")
    report.add_argument("--date", type=_iso_date, metavar="YYYY-MM-DD", help="the trading day (default: today)")
    report.add_argument("--gap-seconds", type=_seconds, default=1.0, metavar="N",
                        help="list stretches without bars longer than N seconds (default: 1)")
    report.add_argument("--channel", default="A", choices=_channel_names(),
                        help="the channel to report on (default: A, second aggregates)")
    _add_export_command(commands)
    _add_lake_commands(commands)
    verify = _add_command(commands, "verify", "a day's stored second bars against Polygon's REST minute bars, "
                                              "minute by minute; --repair refetches the minutes that disagree")
    verify.add_argument("--date", required=True, type=_iso_date, metavar="YYYY-MM-DD", help="the trading day")
    verify.add_argument("--channel", default="A", choices=["A"], help="the channel to audit (default: A)")
    verify.add_argument("--repair", action="store_true",
                        help="backfill the disagreeing minutes from REST second bars, then verify again")
    demo_help = "the daemon end to end against a local Polygon replay: no key, session open now, fresh folder"
    demo = commands.add_parser("demo", help=demo_help, description=demo_help)
    demo.add_argument("--seconds", type=positive_seconds, default=60.0, metavar="N",
                      help="how long the daemon records (default: 60)")
    demo.add_argument("--output", default="var/demo", metavar="DIR",
                      help="parent of the demo's folder DIR/<UTC time>/, DIR/latest points at it (default: var/demo)")
    return parser


def _add_export_command(commands) -> None:
    export = _add_command(commands, "export", "a day of one channel in Polygon's flat-file layout (gzip CSV), "
                                              "to join a capture with flat-file history")
    export.add_argument("--date", required=True, type=_iso_date, metavar="YYYY-MM-DD", help="the trading day")
    export.add_argument("--channel", required=True, choices=_channel_names(), help="the channel to export")
    export.add_argument("--flat-file", action="store_true", required=True,
                        help="Polygon's flat-file columns and forms (the one format so far)")
    export.add_argument("--output", metavar="PATH", help="the .csv.gz to write (default: <dataset>/YYYY/MM/"
                                                         "YYYY-MM-DD.csv.gz here, as Polygon's bucket lays it out)")


def _add_lake_commands(commands) -> None:
    imports = _add_command(commands, "import-local", "move the local Parquet layout (data_dir) into the lake's "
                                                     "Iceberg tables, each file once")
    imports.add_argument("--keep", action="store_true", help="copy: leave the local files in place")
    compact = _add_command(commands, "lake-compact", "rewrite a day's partition of the lake tables as one "
                                                     "snapshot: sorted, one row per key, large files")
    compact.add_argument("--date", required=True, type=_iso_date, metavar="YYYY-MM-DD", help="the UTC day")
    expire = _add_command(commands, "expire-snapshots", "drop lake snapshots older than DAYS and the files only "
                                                        "they used")
    expire.add_argument("--older-than", required=True, type=_days, metavar="DAYS", help="at least 1")
    for command in (compact, expire):
        command.add_argument("--channel", metavar="C", help="one channel's table (default: every table)")


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 1 <= value <= 36500:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number of days >= 1, got {text!r}")
    return value


def _add_command(commands, name: str, help_text: str) -> argparse.ArgumentParser:
    command = commands.add_parser(name, help=help_text, description=help_text)
    command.add_argument("--config", metavar="PATH",
                         help="config file (default: $SPY_STREAMER_CONFIG, else config/settings.yaml)")
    return command


COMMANDS = {"run": cmd_run, "status": cmd_status, "compact": cmd_compact,
            "report": cmd_report, "verify": cmd_verify, "demo": cmd_demo, "import-local": cmd_import_local,
            "lake-compact": cmd_lake_compact, "expire-snapshots": cmd_expire_snapshots, "export": cmd_export}


# Said on stderr when `run` ends non-zero without a reason of its own (supervisord and journald show it).
EXIT_REASONS = {EX_SOFTWARE: "a thread crashed (see the log)", EX_LOCKED: "another instance holds the data_dir lock",
                EX_CONFIG: "configuration or API key rejected (see the log)"}


# What a shell reports for a command killed by SIGPIPE (`yes | head`): the reader left, nothing is wrong here.
EXIT_READER_GONE = 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Every command; a reader that stops early (`status --json | head`) ends it quietly, no traceback."""
    try:
        try:
            return _main(sys.argv[1:] if argv is None else argv)
        finally:   # --help and --version too (argparse exits): what is buffered fails here, not at exit
            sys.stdout.flush()
    except BrokenPipeError:
        discard_stdout()
        return EXIT_READER_GONE


def _main(argv: list[str]) -> int:
    if _command_of(argv) == "check":   # a monitoring plugin: its own parser, its own exit codes
        return run_check(argv[argv.index("check") + 1:])
    args = build_parser().parse_args(argv)
    config = None
    try:
        config = None if args.command == "demo" else load_config(resolve_config_path(args.config))
        code = COMMANDS[args.command](config, args)
    except ConfigError as exc:
        return _stopped(EX_CONFIG, f"configuration error: {exc}", config)
    if code and args.command == "run":
        reason = getattr(args, "exit_reason", None) or EXIT_REASONS.get(code, f"stopped with exit code {code}")
        return _stopped(code, reason, config)
    return code


def _command_of(argv: list[str]) -> str | None:
    """The command named on the line: the first word that is not an option (the top level takes no values)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _stopped(code: int, reason: str, config: Config | None) -> int:
    """The one place that says why the daemon stops: one line on stderr, never the API key."""
    line = " ".join(f"spy-streamer: {reason}".split())
    key = os.environ.get(config.polygon.api_key_env if config else "POLYGON_API_KEY", "").strip()
    if key:
        line = line.replace(key, REDACTED)
    print(line, file=sys.stderr)
    return code
