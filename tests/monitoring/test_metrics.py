"""The heartbeat's figures as Prometheus metrics: parsed back with prometheus-client's own parser, from
the textfile a real HeartbeatMonitor writes and from the optional HTTP endpoint."""
from __future__ import annotations

import shutil
import socket
import subprocess
import urllib.request

import pytest

from prometheus_client.parser import text_string_to_metric_families

from spy_streamer.monitoring.metrics import MetricsPublisher
from test_heartbeat_monitor import TUESDAY_11, Rig, config  # noqa: F401 (fixture)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_textfile_carries_the_heartbeat_figures(config):
    publisher = MetricsPublisher(config.paths.heartbeat_dir)
    rig = Rig(config, TUESDAY_11, metrics=publisher)
    rig.monitor.session_started()
    rig.reader.state, rig.reader.connected, rig.reader.reconnects = "streaming", True, 3
    rig.writer.rows_written, rig.writer.rows_pending, rig.writer.rejected_late = 1200, 40, 2
    rig.writer.rows_written_by_channel = {"A": 1000, "T": 200}
    rig.monitor.record_message()
    rig.monitor.send_heartbeat()
    path = config.paths.heartbeat_dir / "spy_streamer.prom"
    values = samples(path.read_text())
    assert values[("spy_streamer_rows_written_total", ())] == 1200
    assert values[("spy_streamer_channel_rows_written_total", (("channel", "A"),))] == 1000
    assert values[("spy_streamer_channel_rows_written_total", (("channel", "T"),))] == 200
    assert values[("spy_streamer_reconnects_total", ())] == 3
    assert values[("spy_streamer_messages_total", ())] == 1
    assert values[("spy_streamer_rows_pending", ())] == 40
    assert values[("spy_streamer_connected", ())] == 1
    assert values[("spy_streamer_rejected_events_total", (("reason", "late"),))] == 2
    assert values[("spy_streamer_status", (("status", "streaming"),))] == 1
    assert values[("spy_streamer_status", (("status", "stalled"),))] == 0
    assert values[("spy_streamer_heartbeat_timestamp_seconds", ())] == TUESDAY_11.timestamp()
    assert values[("spy_streamer_memory_rss_bytes", ())] > 10_000_000
    assert not [p for p in path.parent.iterdir() if p.name.startswith("spy_streamer.prom.")]  # no temp left


def test_metrics_port_serves_the_same_figures(config):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    publisher = MetricsPublisher(config.paths.heartbeat_dir, port=port)
    publisher.start_server()
    rig = Rig(config, TUESDAY_11, metrics=publisher)
    rig.writer.rows_written = 7
    rig.monitor.send_heartbeat()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert samples(text)[("spy_streamer_rows_written_total", ())] == 7


def test_a_taken_metrics_port_is_a_config_error(tmp_path, config_file):
    from spy_streamer.config import load_config
    from spy_streamer.market.market_hours import MarketCalendar
    from spy_streamer.orchestrator.streaming_runner import EX_CONFIG, StreamingRunner
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        config = load_config(config_file(streaming={"monitoring": {"metrics_port": taken.getsockname()[1]}}))
        runner = StreamingRunner(config, MarketCalendar(config.market_hours), "key")
        assert runner.run() == EX_CONFIG
    assert "metrics_port" in runner.exit_reason


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serving(config) -> tuple[Rig, str]:
    """A monitor whose publisher serves HTTP; (rig, the /metrics URL). No heartbeat sent yet."""
    publisher = MetricsPublisher(config.paths.heartbeat_dir, port=free_port())
    rig = Rig(config, TUESDAY_11, metrics=publisher)
    publisher.start_server()
    return rig, f"http://127.0.0.1:{publisher.port}/metrics"


def scrape(url: str) -> str:
    return urllib.request.urlopen(url, timeout=5).read().decode()


def test_a_scrape_reads_the_live_stats_not_the_last_heartbeat(config):
    """Measured: the endpoint's values changed only at each heartbeat (every 300 s by default)."""
    rig, url = serving(config)
    rig.monitor.send_heartbeat()
    rig.writer.rows_written, rig.reader.reconnects = 1234, 5
    rig.monitor.record_message()
    values = samples(scrape(url))
    assert values[("spy_streamer_rows_written_total", ())] == 1234
    assert values[("spy_streamer_reconnects_total", ())] == 5
    assert values[("spy_streamer_messages_total", ())] == 1
    textfile = samples((config.paths.heartbeat_dir / "spy_streamer.prom").read_text())
    assert textfile[("spy_streamer_rows_written_total", ())] == 0      # the textfile: the heartbeat as written


def test_every_series_is_there_from_the_first_scrape(config):
    """Measured: `clock_skew_seconds` existed only while the skew exceeded 60 s; before the first heartbeat
    the endpoint served nothing of ours. No series may appear later: an alert on `absent()` or `rate()`
    would see a gap."""
    rig, url = serving(config)
    first = samples(scrape(url))
    rig.monitor.session_started()
    rig.reader.state, rig.reader.connected = "streaming", True
    rig.writer.clock_skew_seconds, rig.writer.rows_written_by_channel = 86402.0, {"A": 10}
    rig.writer.rejected_reasons = {"bad_price": 2}
    rig.writer.last_flush_at = rig.clock.now()
    rig.monitor.record_message()
    rig.monitor.send_heartbeat()
    later = samples(scrape(url))
    assert set(later) == set(first)
    assert first[("spy_streamer_clock_skew_seconds", ())] == 0 and later[("spy_streamer_clock_skew_seconds", ())] == 86402
    assert first[("spy_streamer_last_message_timestamp_seconds", ())] == 0
    assert first[("spy_streamer_channel_rows_written_total", (("channel", "A"),))] == 0
    assert later[("spy_streamer_rejected_events_total", (("reason", "invalid_bad_price"),))] == 2


def test_the_endpoint_has_process_metrics_and_build_info_and_the_textfile_no_process_metrics(config):
    from spy_streamer import __version__
    rig, url = serving(config)
    rig.monitor.send_heartbeat()
    families = {family.name: family for family in text_string_to_metric_families(scrape(url))}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "process_start_time_seconds",
            "process_open_fds"} <= set(families)
    (build,) = families["spy_streamer_build_info"].samples
    assert build.value == 1 and build.labels["version"] == __version__
    textfile = {family.name for family in text_string_to_metric_families(
        (config.paths.heartbeat_dir / "spy_streamer.prom").read_text())}
    assert "spy_streamer_build_info" in textfile and not [name for name in textfile if name.startswith("process_")]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) not installed")
def test_promtool_finds_nothing_to_lint(config):
    rig, url = serving(config)
    rig.writer.rejected_reasons = {"bad_price": 2}
    rig.monitor.send_heartbeat()
    for text in (scrape(url), (config.paths.heartbeat_dir / "spy_streamer.prom").read_text()):
        result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result


def test_the_daemons_endpoint_serves_live_figures_from_its_first_scrape(start, fake):
    """The real daemon: every series (process_* and build_info included) from the first scrape, and rows
    written since the last heartbeat visible at once (the heartbeat here is hourly)."""
    from daemon_harness import recent_start_ms, wait_for
    from fake_polygon import session_timeline
    port = free_port()
    run = start(streaming={"monitoring": {"metrics_port": port, "heartbeat_interval_seconds": 3600}})
    url = f"http://127.0.0.1:{port}/metrics"

    def scraped():
        try:
            return scrape(url)
        except OSError:
            return None
    first = samples(wait_for(scraped, timeout=30, what="the metrics endpoint"))
    assert ("process_cpu_seconds_total", ()) in first and ("spy_streamer_clock_skew_seconds", ()) in first
    assert [key for key in first if key[0] == "spy_streamer_build_info"]
    assert fake.wait_for_subscribers(1, timeout=15)
    fake.push(session_timeline(recent_start_ms(300), 100), frame_size=10)
    live = wait_for(lambda: samples(scrape(url))[("spy_streamer_rows_written_total", ())] == 100 or None,
                    timeout=15, what="100 rows in a scrape")
    assert live and set(samples(scrape(url))) >= set(first)
    assert run.heartbeat()["rows_written"] == 0          # no heartbeat since: the scrape read the live stats
    assert run.daemon.stop()[0] == 0
