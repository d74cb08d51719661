"""storage.kind iceberg end to end: the real daemon stages micro-batches locally and its commit thread moves
them into the Iceberg table (a local warehouse and the default SQLite catalog), the heartbeat shows the
backlog, and a SIGTERM still exits 0."""
from __future__ import annotations

from daemon_harness import recent_start_ms, wait_for
from fake_polygon import session_timeline
from spy_streamer.config import load_config
from spy_streamer.storage.iceberg_maintenance import open_table
from spy_streamer.storage.lake_catalog import location_of, open_catalog


def lake_rows(config) -> int:
    try:
        table = open_table(open_catalog(location_of(config), config.paths.data_dir), "spy_streamer", "A")
    except Exception:  # no table yet
        return 0
    return table.scan().to_arrow().num_rows


def test_the_daemon_commits_its_batches_to_the_lake(start, fake, tmp_path):
    run = start(storage={"kind": "iceberg", "warehouse": str(tmp_path / "lake")})
    config = load_config(run.config_path)
    assert fake.wait_for_subscribers(1, timeout=15)
    bars = session_timeline(recent_start_ms(300), 40)
    fake.push(bars, frame_size=10)
    wait_for(lambda: lake_rows(config) == 40, timeout=30, what="40 rows in the Iceberg table")
    heartbeat = wait_for(lambda: (run.heartbeat() or {}).get("lake", {}).get("rows_committed") == 40
                         and run.heartbeat(), what="the heartbeat's lake figures")
    assert heartbeat["upload_backlog"] == 0
    assert not list(run.data_dir.glob("A/date=*/part-*.parquet"))      # staged files went up and were removed
    assert run.daemon.stop(timeout=30)[0] == 0


def test_a_restart_knows_what_the_lake_already_holds(start, fake, tmp_path):
    """The committer deletes staged files once they are in the table: a writer restarted in mid-session
    must still know those rows, or the start-up backfill from the open would store them all again."""
    import signal
    run = start(storage={"kind": "iceberg", "warehouse": str(tmp_path / "lake")})
    config = load_config(run.config_path)
    assert fake.wait_for_subscribers(1, timeout=15)
    bars = session_timeline(recent_start_ms(300), 60)
    fake.add_to_timeline(bars[:40])
    fake.push(bars[:40], frame_size=10)
    wait_for(lambda: lake_rows(config) == 40 and not list(run.data_dir.glob("A/date=*/part-*.parquet")),
             timeout=30, what="40 rows committed and no staged file left")
    run.daemon.process.send_signal(signal.SIGKILL)
    run.daemon.process.wait(timeout=5)
    fake.add_to_timeline(bars[40:])                 # missed while it was down
    run.restart()
    assert fake.wait_for_subscribers(1, timeout=15)
    fake.push(session_timeline(bars[-1]["s"] + 1000, 1), frame_size=1)   # the next live bar ends the gap
    wait_for(lambda: lake_rows(config) >= 61, timeout=30, what="the gap and the live bar committed")
    table = open_table(open_catalog(location_of(config), config.paths.data_dir), "spy_streamer", "A")
    starts = table.scan(selected_fields=("start",)).to_arrow().column("start").to_pylist()
    assert len(starts) == len(set(starts)) == 61
    assert run.daemon.stop(timeout=30)[0] == 0


def staged_files(run) -> list:
    return [path for path in run.data_dir.glob("*/date=*/*.parquet")]


def test_a_sigterm_commits_what_is_staged_before_exiting(start, fake, tmp_path):
    """Measured: after a graceful SIGTERM, 40 of 121 rows stayed staged and were not in the table while the
    final heartbeat said `upload_backlog: 0`. The commit thread's last pass now takes the final flush."""
    run = start(storage={"kind": "iceberg", "warehouse": str(tmp_path / "lake")})
    config = load_config(run.config_path)
    assert fake.wait_for_subscribers(1, timeout=15)
    fake.push(session_timeline(recent_start_ms(300), 121), frame_size=11)
    wait_for(lambda: (run.heartbeat() or {}).get("messages_total") == 11, what="every frame read")

    assert run.daemon.stop(timeout=30)[0] == 0

    assert lake_rows(config) == 121
    assert staged_files(run) == []
    final = run.heartbeat()
    assert final["status"] == "stopped" and final["upload_backlog"] == 0 and final["lake"]["upload_backlog_rows"] == 0


def test_a_sigterm_with_the_store_down_reports_the_staged_rows(start, fake, tmp_path, monkeypatch):
    """Failing the commit (an S3 endpoint that accepts and never answers), the final heartbeat and `check`
    tell how many rows are only on local disk."""
    from datetime import datetime, timezone

    from spy_streamer.monitoring.health_check import evaluate_health, load_heartbeat, heartbeat_path
    from test_lake_bounds import Silent

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    silent = Silent()
    try:
        run = start(storage={"kind": "iceberg", "warehouse": "s3://bucket/lake",
                             "s3_endpoint": f"http://127.0.0.1:{silent.port}"})
        assert fake.wait_for_subscribers(1, timeout=15)
        fake.push(session_timeline(recent_start_ms(300), 30), frame_size=10)
        wait_for(lambda: (run.heartbeat() or {}).get("rows_written") == 30, what="30 rows staged")

        code, _ = run.daemon.stop(timeout=30)
    finally:
        silent.close()

    assert code == 0
    final = run.heartbeat()
    assert final["status"] == "stopped"
    assert final["upload_backlog"] == len(staged_files(run)) > 0 and final["lake"]["upload_backlog_rows"] == 30
    (abandoned,) = run.events("lake_commit_abandoned")
    assert "30 rows" in abandoned["message"]
    verdict = evaluate_health(load_heartbeat(heartbeat_path(load_config(run.config_path))), datetime.now(timezone.utc))
    assert "30 rows in" in verdict.text and "not in the lake at the stop" in verdict.text


def test_iceberg_without_its_libraries_is_exit_78_naming_the_install_command(tmp_path):
    """Measured: without pyiceberg-core, `storage.kind: iceberg` retried a commit failure forever, with a
    WARNING. Now the start stops at once (exit 78, which supervisord does not restart) with the command."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT, TEST_API_KEY, settings, write_settings

    shadow = tmp_path / "shadow"
    (shadow / "pyiceberg_core").mkdir(parents=True)
    (shadow / "pyiceberg_core" / "__init__.py").write_text("raise ImportError('No module named pyiceberg_core')\n")
    config = write_settings(tmp_path, settings(tmp_path, storage={"kind": "iceberg", "warehouse": str(tmp_path / "lake")}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), str(REPO_ROOT)]), "POLYGON_API_KEY": TEST_API_KEY}

    result = subprocess.run([sys.executable, "-m", "spy_streamer", "run", "--config", str(config)], env=env,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 78
    (line,) = result.stderr.strip().splitlines()
    assert "storage.kind: iceberg needs pyiceberg-core" in line and "pip install 'spy-streamer[lake]'" in line
