"""What `check` says about storage (monitoring/storage_health.py): heartbeats written by a real
HeartbeatMonitor on a FakeClock from the committer's and the compaction's stats, judged at chosen instants."""
from __future__ import annotations

from datetime import timedelta, timezone

import pytest

from spy_streamer.monitoring.health_check import CRITICAL, OK, WARNING, evaluate_health, load_heartbeat
from spy_streamer.reports.status_report import heartbeat_lines
from spy_streamer.storage.compaction import CompactionStats
from spy_streamer.storage.iceberg_committer import LakeStats
from test_health_check import streaming
from test_heartbeat_monitor import FRIDAY_EVENING, TUESDAY_11, Rig, config  # noqa: F401 (fixture)


def rig_with(config, start=TUESDAY_11) -> Rig:
    lake, compaction = LakeStats(), CompactionStats()
    rig = Rig(config, start, lake=lake, compaction=compaction)
    rig.lake, rig.compaction = lake, compaction
    return rig


def iso(rig: Rig, seconds_ago: float) -> str:
    return (rig.clock.now() - timedelta(seconds=seconds_ago)).astimezone(timezone.utc).isoformat()


def verdict(rig: Rig, after: float = 1.0):
    return evaluate_health(load_heartbeat(rig.path), rig.clock.now() + timedelta(seconds=after))


def beat(rig: Rig, status: str | None = None):
    rig.monitor.send_heartbeat(status=status)
    return verdict(rig)


def test_a_healthy_lake_is_ok(config):
    rig = streaming(rig_with(config))
    rig.lake.last_commit_at = iso(rig, 2)
    assert beat(rig).code == OK


@pytest.mark.parametrize("seconds, code", [(29, OK), (31, WARNING)])
def test_a_commit_in_flight_past_30_s_warns(config, seconds, code):
    rig = streaming(rig_with(config))
    rig.lake.commit_started_at = iso(rig, seconds)
    result = beat(rig)
    assert result.code == code
    if code == WARNING:
        assert "lake commit has been running for 31 s" in result.text


@pytest.mark.parametrize("minutes, code", [(29, OK), (31, CRITICAL)])
def test_rows_staged_for_30_minutes_are_critical(config, minutes, code):
    rig = streaming(rig_with(config))
    rig.lake.upload_backlog, rig.lake.upload_backlog_rows = 5, 150
    rig.lake.oldest_staged_at = rig.lake.failing_since = iso(rig, minutes * 60)
    rig.lake.last_error = "OSError: store down"
    result = beat(rig)
    assert result.code == code
    if code == CRITICAL:
        assert "150 rows in 5 staged file(s) not in the lake for 31 min" in result.text


def test_rows_staged_at_a_stop_are_reported_truthfully(config):
    """The measured case: 40 rows left staged by a SIGTERM while the final heartbeat said a backlog of 0."""
    rig = rig_with(config, FRIDAY_EVENING)   # the market closed: a stop is no problem in itself
    rig.lake.upload_backlog, rig.lake.upload_backlog_rows, rig.lake.oldest_staged_at = 2, 40, iso(rig, 5)
    result = beat(rig, status="stopped")
    assert result.code == WARNING and "40 rows in 2 staged file(s) not in the lake at the stop" in result.text
    assert evaluate_health(load_heartbeat(rig.path), rig.clock.now() + timedelta(hours=1)).code == CRITICAL
    assert any("40 rows" in line for line in heartbeat_lines(load_heartbeat(rig.path), rig.clock.now()))


def test_a_failed_after_close_compaction_warns_naming_the_file(config):
    rig = rig_with(config, FRIDAY_EVENING)
    rig.compaction.compaction_failed = {"A": "2026-11-24: cannot read /data/A/date=2026-11-24/part-1-2-000003.parquet"}
    result = beat(rig)
    assert result.code == WARNING and "part-1-2-000003.parquet" in result.text
    lines = heartbeat_lines(load_heartbeat(rig.path), rig.clock.now())
    assert any("compaction failed: A" in line and "part-1-2-000003.parquet" in line for line in lines)
    rig.compaction.compaction_failed = {}
    assert beat(rig).code == OK


def test_a_failed_compaction_under_a_deep_data_dir_still_names_the_file(config):
    """Seen under pytest-xdist (a longer tmp_path): the 160 characters of the reason ended in the folders."""
    rig = rig_with(config, FRIDAY_EVENING)
    deep = "/srv/" + "/".join(["market-data-archive"] * 5) + "/A/date=2026-11-24/part-1-2-000003.parquet"
    rig.compaction.compaction_failed = {"A": f"2026-11-24: cannot read {deep}: Couldn't deserialize thrift: "
                                             "don't know what type: \nDeserializing page header failed.\n"
                                             "; nothing changed"}
    result = beat(rig)
    assert result.code == WARNING and "part-1-2-000003.parquet: Couldn't deserialize thrift" in result.text
    assert any(deep in line for line in heartbeat_lines(load_heartbeat(rig.path), rig.clock.now()))
