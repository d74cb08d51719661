#!/usr/bin/env python3
"""Generate docs/TASK_COMPLETION_REPORT.md from what this run measures.

Runs the whole test suite (the task's six scenarios among it, recording the figures they check) and the
throughput benchmark, then writes the report: each requirement of the task with where it lives and the
tests that prove it (passed or not in this run), the six scenarios with their figures, the benchmark table.
Nothing in the report is typed by hand except the names of files and tests.

    .venv/bin/python scripts/completion_report.py [--benchmark-runs 3] [--events 300000] [--output PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (requirement of the task, where it is implemented, tests that prove it)
REQUIREMENTS = [
    ("Market hours: 09:30-16:00 America/New_York, Mon-Fri; NYSE holidays and early closes from built-in rules, "
     "Polygon `/v1/marketstatus/upcoming` authoritative for what it lists, kept on disk; pre-market and "
     "after-hours off; API failure warns, never crashes",
     "`spy_streamer/market/market_hours.py` (`MarketCalendar.is_market_open`, `seconds_until_market_open`, "
     "`seconds_until_market_close`), `spy_streamer/market/exchange_rules.py`, `spy_streamer/market/calendar_store.py`, "
     "`spy_streamer/market/calendar_refresh.py`",
     ["tests/market/test_market_hours.py", "tests/market/test_calendar_xnys.py", "tests/market/test_calendar_refresh.py",
      "tests/reports/test_status_command.py"]),
    ("Heartbeat: file every 5 min (atomic), alert when no message for 15 min while open, once per stall",
     "`spy_streamer/monitoring/heartbeat_monitor.py` (`HeartbeatMonitor.record_message`, `send_heartbeat`, "
     "`check_stalled_stream`), `spy_streamer/monitoring/health_check.py` (`check`)",
     ["tests/monitoring/test_heartbeat_monitor.py", "tests/monitoring/test_health_check.py",
      "tests/orchestrator/test_daemon_scenarios.py::test_heartbeat_updates_every_interval",
      "tests/orchestrator/test_daemon_scenarios.py::test_stall_alerts_once_and_recovers"]),
    ("Stream: polygon-api-client `WebSocketClient` subscribed to `A.SPY`, refuses when closed, reconnects with "
     "backoff and jitter, rejected key is fatal, gaps refilled from REST aggregates",
     "`spy_streamer/data_sources/polygon_client.py` (`PolygonStream.stream_realtime`), `spy_streamer/backfill/gap_backfill.py`",
     ["tests/data_sources/test_polygon_client.py", "tests/orchestrator/test_faults.py"]),
    ("Parquet: micro-batch every 30 s on its own timer, atomic files, one row per (symbol, start), late and "
     "out-of-session bars dropped and counted, nothing lost on disk errors",
     "`spy_streamer/capture/batch_writer.py`, `spy_streamer/storage/parquet_sink.py`, `spy_streamer/channels/`, "
     "`spy_streamer/capture/seen_keys.py`",
     ["tests/capture/test_batch_writer.py", "tests/orchestrator/test_daemon_scenarios.py::test_in_market_hours_stores_every_row_once"]),
    ("Runner: supervisor thread with `schedule`, session at open, graceful stop at close (early closes "
     "included), SIGTERM/SIGINT flush and exit 0",
     "`spy_streamer/orchestrator/streaming_runner.py` (`StreamingRunner.run`, `reconcile`, `CaptureSession`)",
     ["tests/orchestrator/test_streaming_runner.py", "tests/orchestrator/test_daemon_scenarios.py"]),
    ("Config: `config/settings.yaml`, validated at start-up, one message and exit 78 on a bad value",
     "`spy_streamer/config.py` (`load_config`, `require_api_key`)",
     ["tests/cli_and_config/test_config.py"]),
    ("Logging rules: JSON lines, only start/stop, connection changes, open/close, heartbeat summaries, "
     "errors and alerts; never a message, a tick or the key; survives logrotate",
     "`spy_streamer/log_setup.py` (`configure_logging`)",
     ["tests/orchestrator/test_daemon_scenarios.py::test_log_stays_small_and_clean",
      "tests/orchestrator/test_faults.py::test_log_reopened_after_logrotate",
      "tests/orchestrator/test_faults.py::test_malformed_frames_are_counted_not_fatal"]),
]

# The task's six scenarios: the subprocess test (its figures) and the injected-clock tests beside it.
SCENARIOS = [
    ("1. Started outside market hours: no connection; SIGTERM exits 0",
     ["tests/orchestrator/test_daemon_scenarios.py::test_outside_market_hours_opens_no_connection",
      "tests/orchestrator/test_streaming_runner.py::test_outside_hours_no_connection_and_a_wake_up_at_the_open"]),
    ("2. Started in market hours: connects, subscribes A.SPY, every bar stored once",
     ["tests/orchestrator/test_daemon_scenarios.py::test_in_market_hours_stores_every_row_once"]),
    ("3. Heartbeat file updates every interval (5 min with an injected clock)",
     ["tests/orchestrator/test_daemon_scenarios.py::test_heartbeat_updates_every_interval",
      "tests/monitoring/test_heartbeat_monitor.py::test_run_beats_at_start_and_every_300_seconds"]),
    ("4. A stall alerts once, heartbeat `stalled`, `check` exits 2, recovery (20 min with an injected clock)",
     ["tests/orchestrator/test_daemon_scenarios.py::test_stall_alerts_once_and_recovers",
      "tests/monitoring/test_heartbeat_monitor.py::test_stall_after_twenty_silent_minutes_alerts_exactly_once"]),
    ("5. Auto-shutdown at close: early close from the fake REST; 16:00 ET with an injected clock",
     ["tests/orchestrator/test_daemon_scenarios.py::test_early_close_ends_session_and_sleeps",
      "tests/orchestrator/test_streaming_runner.py::test_starts_at_once_mid_session_and_stops_after_the_1600_close"]),
    ("6. Log size after thousands of messages; no message, tick or key in any line",
     ["tests/orchestrator/test_daemon_scenarios.py::test_log_stays_small_and_clean"]),
]


def run_tests(workdir: Path) -> tuple[dict[str, str], dict[str, list[tuple[str, object]]], dict]:
    """Whole suite; (outcome per test id, figures per test id, totals)."""
    junit, figures_file = workdir / "junit.xml", workdir / "figures.jsonl"
    env = dict(os.environ, SPY_STREAMER_FIGURES=str(figures_file))
    started = datetime.now(timezone.utc)
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"],
                   cwd=ROOT, env=env, check=False)
    seconds = (datetime.now(timezone.utc) - started).total_seconds()
    outcomes = parse_junit(junit)
    figures: dict[str, list[tuple[str, object]]] = defaultdict(list)
    if figures_file.exists():
        for line in figures_file.read_text().splitlines():
            entry = json.loads(line)
            figures[entry["test"]].append((entry["name"], entry["value"]))
    totals = {state: sum(1 for outcome in outcomes.values() if outcome == state)
              for state in ("passed", "failed", "skipped")}
    totals["seconds"] = round(seconds, 1)
    return outcomes, figures, totals


def parse_junit(path: Path) -> dict[str, str]:
    outcomes = {}
    for case in ElementTree.parse(path).iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        test_id = f"{module}.py::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes[test_id] = "failed"
        elif case.find("skipped") is not None:
            outcomes[test_id] = "skipped"
        else:
            outcomes[test_id] = "passed"
    return outcomes


def matching(outcomes: dict[str, str], selector: str) -> dict[str, str]:
    """Tests a selector names: a file, or file::test (all its parameter sets)."""
    return {test_id: outcome for test_id, outcome in outcomes.items()
            if test_id == selector or test_id.startswith(selector + "::") or test_id.startswith(selector + "[")}


def verdict(outcomes: dict[str, str], selectors: list[str]) -> tuple[str, int]:
    selected: dict[str, str] = {}
    for selector in selectors:
        found = matching(outcomes, selector)
        if not found:
            return "FAIL (test not found)", 0
        selected.update(found)
    failed = [test for test, outcome in selected.items() if outcome == "failed"]
    return ("FAIL" if failed else "PASS"), len(selected)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def run_benchmark(workdir: Path, runs: int, events: int) -> dict:
    output = workdir / "benchmark.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--rounds", str(runs),
                    "--events", str(events), "--json", str(output)], cwd=ROOT, check=True)
    return json.loads(output.read_text())


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def render(outcomes, figures, totals, bench) -> str:
    lines = ["# Task Completion Report", "",
             f"Generated by `scripts/completion_report.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC "
             f"at commit `{git_commit()}`; Python {platform.python_version()}, {os.cpu_count()} CPUs, "
             f"{platform.machine()}. Every figure below was measured in that run.", "",
             f"Test suite: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped "
             f"in {totals['seconds']} s.", "", "## Requirements", "",
             "| requirement | implemented in | tests | result |", "|---|---|---|---|"]
    for requirement, where, selectors in REQUIREMENTS:
        result, count = verdict(outcomes, selectors)
        tests = "<br>".join(f"`{selector}`" for selector in selectors)
        lines.append(f"| {requirement} | {where} | {tests} | {result} ({plural(count, 'test')}) |")
    lines += ["", "## The six scenarios", "", "| scenario | tests | result | figures seen |", "|---|---|---|---|"]
    for scenario, selectors in SCENARIOS:
        result, count = verdict(outcomes, selectors)
        seen = [f"{name}: {value}" for selector in selectors for test in matching(outcomes, selector)
                for name, value in figures.get(test, [])]
        tests = "<br>".join(f"`{selector}`" for selector in selectors)
        lines.append(f"| {scenario} | {tests} | {result} ({plural(count, 'test')}) | {'<br>'.join(seen) or '-'} |")
    lines += ["", "## Benchmark", "", render_benchmark(bench)]
    return "\n".join(lines) + "\n"


MEASURE_TITLES = {"bare_parsed": "bare client, no-op (parsed)", "bare_raw": "bare client, no-op (raw)",
                  "daemon": "whole daemon, to durable Parquet", "daemon_spaced": "whole daemon, spaced JSON frames",
                  "baseline": "baseline daemon, to durable Parquet"}


def render_benchmark(b: dict) -> str:
    rss = b["rss_after_each_session_bytes"]
    measures = [m for m in MEASURE_TITLES if f"{m}_events_per_second" in b]

    def spread(figure: dict, scale: float = 1.0, form: str = ",.0f") -> str:
        return " / ".join(f"{figure[key] * scale:{form}}" for key in ("min", "median", "max"))

    rows = [
        f"`benchmarks/throughput.py --rounds {b['rounds']} --events {b['events']}`: the fake Polygon on loopback "
        f"sends frames of {b['frame_events']} `A` events over {b['symbols']:,} symbols as fast as it can; "
        f"{b['rounds']} interleaved rounds, each figure min / median / max (daemon write interval "
        f"{b['bench_write_interval_seconds']} s for the timing).", "",
        "| measured | " + " | ".join(MEASURE_TITLES[m] for m in measures) + " |",
        "|---" * (len(measures) + 1) + "|",
        "| events/s | " + " | ".join(spread(b[f"{m}_events_per_second"]) for m in measures) + " |",
        "| CPU s per 100k events | " + " | ".join(spread(b[f"{m}_cpu_seconds_per_100k"], form=".2f")
                                               for m in measures) + " |",
        "| peak RSS (MB, own VmHWM) | " + " | ".join(spread(b[f"{m}_peak_rss_bytes"], 1e-6, ".1f")
                                                  for m in measures) + " |",
        "", "| figure | value |", "|---|---|",
        *([f"| ratio daemon / baseline daemon ({b['compared_with']}) | {spread(b['ratio_vs_compared'], form='.2f')} |"]
          if "ratio_vs_compared" in b else []),
        f"| ratio spaced JSON / compact frames | {spread(b['ratio_spaced_vs_compact'], form='.2f')} |",
        f"| ratio daemon / bare client (parsed) | {spread(b['ratio_vs_parsed'], form='.2f')} |",
        f"| ratio daemon / bare client (raw frames) | {spread(b['ratio_vs_raw'], form='.2f')} |",
        f"| daemon rows missing, frames dropped (max over rounds) | {b['daemon_missing_rows']['max']}, "
        f"{b['daemon_dropped_frames']['max']} |",
        f"| log bytes for {b['events']:,} events | {b['daemon_log_bytes']:,.0f} |",
        f"| CPU s per minute, market closed | {b['closed_cpu_seconds_per_minute']:.4f} |",
        f"| connections opened, market closed | {b['closed_connections']} |",
        f"| RSS after each replayed session of 23,400 bars (MB) | {', '.join(f'{v / 1e6:.0f}' for v in rss)} |",
        f"| RSS growth from the 2nd to the 11th session | {(rss[-1] - rss[1]) / 1e6:+.1f} MB |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark-runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "TASK_COMPLETION_REPORT.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        outcomes, figures, totals = run_tests(Path(temp))
        bench = run_benchmark(Path(temp), args.benchmark_runs, args.events)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(outcomes, figures, totals, bench))
    print(f"wrote {args.output}: {totals['passed']} passed, {totals['failed']} failed")


if __name__ == "__main__":
    main()
