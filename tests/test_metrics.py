"""The heartbeat's figures as Prometheus metrics: parsed back with prometheus-client's own parser, from
the textfile a real HeartbeatMonitor writes and from the optional HTTP endpoint."""
from __future__ import annotations

import socket
import urllib.request

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
