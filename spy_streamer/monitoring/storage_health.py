"""What `check` says about storage, from the heartbeat: the after-close compaction and the lake.

The rules (README, *check states*), most severe first:
- CRITICAL: rows staged for the lake for more than STAGED_CRITICAL_SECONDS (30 min): the table is missing
  them, and a data_dir lost now would lose them;
- WARNING: a lake commit in flight for more than IN_FLIGHT_WARNING_SECONDS (30 s): a store or catalog
  that hangs rather than fails;
- WARNING: rows staged and not in the lake when the daemon stopped (committed at its next start);
- WARNING: the after-close compaction of a channel failed (the file named), until a later one succeeds.
Failing lake commits and a failed close-time rewrite of a table are failure streaks (`lake_commit`,
`lake_rewrite_<channel>`: monitoring/failure_streak.py), WARNING by the one rule for every streak.
A stopped or failed daemon's figures are judged at `now` (nobody will commit its staged rows meanwhile);
a running one's as of its heartbeat.
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any

CRITICAL, WARNING = 2, 1
REASON_CHARACTERS = 160   # of a failed compaction's reason in `check`'s one line (status shows it whole)
# An absolute path's folders (what follows the last slash, the file's name, is kept).
_FOLDERS = re.compile(r"(?<!\S)/\S*/")
STAGED_CRITICAL_SECONDS = 1800.0
IN_FLIGHT_WARNING_SECONDS = 30.0


def storage_problem(hb: dict[str, Any], now: datetime) -> tuple[int, str] | None:
    """(state, what is wrong) for the most severe storage rule that applies, or None."""
    lake = hb.get("lake") if isinstance(hb.get("lake"), dict) else {}
    at = now if hb.get("status") in ("stopped", "failed") else datetime.fromisoformat(hb["updated_at"])
    for rule in (_staged_too_long, _commit_hanging, _staged_at_stop):
        problem = rule(hb, lake, at)
        if problem is not None:
            return problem
    return _compaction_failed(hb)


def _seconds_since(instant: Any, at: datetime) -> float | None:
    if not isinstance(instant, str):
        return None
    try:
        return (at - datetime.fromisoformat(instant)).total_seconds()
    except ValueError:
        return None


def _staged(hb: dict[str, Any], lake: dict[str, Any]) -> str:
    rows = lake.get("upload_backlog_rows")
    return f"{rows} rows in {hb.get('upload_backlog')} staged file(s)" if rows is not None \
        else f"{hb.get('upload_backlog')} staged file(s)"


def _staged_too_long(hb, lake, at) -> tuple[int, str] | None:
    age = _seconds_since(lake.get("oldest_staged_at"), at)
    if hb.get("upload_backlog") and age is not None and age > STAGED_CRITICAL_SECONDS:
        return CRITICAL, (f"{_staged(hb, lake)} not in the lake for {age / 60:.0f} min "
                          f"({lake.get('last_error') or 'not committed'})")
    return None


def _commit_hanging(hb, lake, at) -> tuple[int, str] | None:
    running = _seconds_since(lake.get("commit_started_at"), at)
    if running is not None and running > IN_FLIGHT_WARNING_SECONDS and hb.get("status") not in ("stopped", "failed"):
        return WARNING, f"a lake commit has been running for {running:.0f} s (object store or catalog not answering)"
    return None


def _staged_at_stop(hb, lake, at) -> tuple[int, str] | None:
    if hb.get("status") in ("stopped", "failed") and hb.get("upload_backlog"):
        return WARNING, f"{_staged(hb, lake)} not in the lake at the stop (committed at the next start)"
    return None


def _compaction_failed(hb) -> tuple[int, str] | None:
    failed = hb.get("compaction_failed")
    if isinstance(failed, dict) and failed:
        channel, why = sorted(failed.items())[0]
        return WARNING, (f"the after-close compaction failed for {', '.join(sorted(failed))} "
                         f"({channel} {_clipped(str(why))}); its micro-batches stay")
    return None


def _clipped(why: str) -> str:
    """`why` within REASON_CHARACTERS, the unreadable file's name kept however deep data_dir is (seen: a
    data_dir of 75 characters cut the name off, and `check` no longer named the file)."""
    if len(why) > REASON_CHARACTERS:
        why = _FOLDERS.sub(".../", why)
    return why[:REASON_CHARACTERS]
