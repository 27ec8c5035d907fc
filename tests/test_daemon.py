"""The real daemon as a subprocess: metrics, negotiation, window API, write API, lifecycle, bad input."""

import signal
import socket
import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from exporter.sources.replay import trace_energy_joules
from tests.support.daemon import Daemon, assert_one_line_error, free_port, run_cli, write_trace
from tests.support.prom import ALARM_METRICS, contract_metrics, promtool_check

OPENMETRICS = "application/openmetrics-text;version=1.0.0"


@pytest.mark.system
def test_metrics_are_clean_in_both_formats_and_label_the_simulation():
    with Daemon("--source", "sim") as daemon:
        time.sleep(0.3)
        daemon.post("/api/v1/layer", {"model": "vgg11", "index": 3, "layer": "Conv2d_3", "op": "Conv2d",
                                      "state": "begin"})
        daemon.post("/api/v1/results", {"model": "vgg11", "layers": [
            {"index": 3, "layer": "Conv2d_3", "op": "Conv2d", "energy_j": 0.01, "dynamic_energy_j": 0.004,
             "duration_s": 0.002, "power_w": 5.0}]})
        assert daemon.post("/api/v1/inference", {"model": "vgg11", "power_mode": "MAXN", "batch_size": 1,
                                                 "latency_s": 0.05, "energy_j": 0.4, "dynamic_energy_j": 0.1,
                                                 "power_w": 8.0})[0] == 200
        time.sleep(0.1)
        text = daemon.metrics()
        assert promtool_check(text) == ""
        families = list(text_string_to_metric_families(text))
        names = {s.name for f in families for s in f.samples}
        documented = contract_metrics()  # the README's table
        assert documented - names == ALARM_METRICS, "documented but not exported"  # the sim has no alarm files
        assert {n for n in names if n.startswith("jetson_")} - documented == set(), "exported but not documented"
        # prometheus_client's standard collectors
        assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds",
                "python_info"} <= names
        counters = {f.name for f in families if f.type == "counter"}
        assert not counters & {f.name for f in families if f.type != "counter"}, "a family shares a counter's name"
        assert "_created" not in text
        assert daemon.value("jetson_power_source_info", source="sim", simulated="true") == 1.0
        assert daemon.value("jetson_profiler_active_layer", model="vgg11", index="0003", layer="Conv2d_3") == 1.0

        status, headers, om = daemon.get("/metrics", {"Accept": OPENMETRICS})
        assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
        assert om.rstrip().endswith("# EOF") and "_created" not in om
        # promtool lints only the text format; Prometheus itself scrapes OpenMetrics (test_deploy_prometheus)
        om_families = {f.name: f for f in parse_openmetrics(om)}
        assert {name: f.type for name, f in om_families.items()} == {f.name: f.type for f in families}
        for family in ("jetson_energy_joules", "jetson_layer_energy_joules", "process_cpu_seconds"):
            assert om_families[family].type == "counter"
            assert [s.name for s in om_families[family].samples] == [family + "_total"]
        assert om_families["jetson_layer_call_energy_joules"].type == "gauge"

        status, _, page = daemon.get("/")
        assert status == 200 and "SIMULATED" in page and "/metrics" in page and "/landing.js" in page


def test_energy_counter_and_window_api_match_a_replayed_trace(tmp_path):
    rows = [(0.0, 3.0), (0.35, 7.5), (0.8, 1.25), (1.1, 5.0), (1.6, 9.5), (1.9, 2.0), (2.4, 0.0)]
    path = write_trace(str(tmp_path / "trace.csv"), rows, rails={"VDD_GPU": [1, 4, 0.5, 2, 6, 1, 0]})
    exact, exact_rails = trace_energy_joules(path)
    with Daemon("--source", "replay:" + path, "--sample-hz", "100") as daemon:
        started = time.monotonic()
        time.sleep(0.25)
        first = daemon.get("/api/v1/samples?since=0")[2]
        import json

        t0 = json.loads(first)["samples"][0]["t"]
        time.sleep(max(0.0, 2.4 + 0.5 - (time.monotonic() - started)))
        assert daemon.value("jetson_power_up") == 0.0
        assert daemon.get("/healthz")[0] == 503
        assert daemon.value("jetson_energy_joules_total") == pytest.approx(exact, rel=0.005)
        assert daemon.value("jetson_energy_rail_joules_total", rail="VDD_GPU") == pytest.approx(
            exact_rails["VDD_GPU"], rel=0.005)
        assert daemon.value("jetson_power_total_watts") is None, "no stale watts while the sensor is down"
        # trace seconds [0.35, 1.6]: 7.5*0.45 + 1.25*0.3 + 5*0.5; t0 is within a few ms of trace time 0
        status, _, body = daemon.get("/api/v1/energy?start=%r&end=%r" % (t0 + 0.35, t0 + 1.6))
        window = json.loads(body)
        assert status == 200, body
        assert window["total_joules"] == pytest.approx(7.5 * 0.45 + 1.25 * 0.3 + 5 * 0.5, rel=0.02)
        assert window["covered_seconds"] == pytest.approx(1.25, abs=1e-6)
        assert window["samples"] >= 100
        status, _, body = daemon.get("/api/v1/energy?start=%r&end=%r" % (t0 - 100, t0))
        assert status == 422 and "before the oldest" in json.loads(body)["error"]
        assert daemon.get("/api/v1/energy?start=abc&end=1")[0] == 400
        assert daemon.get("/api/v1/energy")[0] == 400


@pytest.mark.system
def test_write_api_validates_and_integrates_layer_energy():
    with Daemon("--source", "sim") as daemon:
        ok = {"model": "resnet18", "index": 7, "layer": "ReLU_7", "op": "ReLU", "state": "begin"}
        sent = time.monotonic()
        assert daemon.post("/api/v1/layer", ok)[0] == 200
        begun = time.monotonic()
        time.sleep(0.5)
        ending = time.monotonic()
        assert daemon.post("/api/v1/layer", dict(ok, state="end"))[0] == 200
        ended = time.monotonic()
        time.sleep(0.1)
        joules = daemon.value("jetson_layer_energy_joules_total", model="resnet18", layer="ReLU_7")
        seconds = daemon.value("jetson_layer_active_seconds_total", model="resnet18", layer="ReLU_7")
        # the daemon stamps each event while its request is in flight
        assert ending - begun <= seconds <= ended - sent
        assert 1.0 * seconds < joules < 8.0 * seconds  # the simulated Nano draws 1.3-7 W
        assert daemon.values("jetson_profiler_active_layer") == []

        for bad, reason in [
            (dict(ok, state="middle"), "state"),
            (dict(ok, index=-1), "index"),
            (dict(ok, index=True), "index"),
            (dict(ok, layer="x" * 129), "longer than 128"),
            (dict(ok, model='a"b'), "may only use"),
            (dict(ok, extra=1), "unknown field"),
            ([1, 2], "JSON object"),
        ]:
            status, body = daemon.post("/api/v1/layer", bad)
            assert status == 400 and reason in body["error"], (bad, body)
        status, body = daemon.post("/api/v1/layer", b"[" * 100 + b"]" * 100)
        assert status == 400 and "nested" in body["error"]
        status, body = daemon.post("/api/v1/results", b"{" + b" " * 70000 + b"}")
        assert status == 413
        status, body = daemon.post("/api/v1/results", {"model": "m", "layers": [
            {"index": 0, "layer": "L", "op": "Conv2d", "energy_j": float("inf"), "dynamic_energy_j": 0,
             "duration_s": 0, "power_w": 0}]})
        assert status == 400 and "finite" in body["error"]
        assert promtool_check(daemon.metrics()) == ""


def test_sigterm_exits_cleanly_within_two_seconds():
    daemon = Daemon("--source", "sim").__enter__()
    started = time.monotonic()
    code, stderr = daemon.stop(signal.SIGTERM)
    assert code == 0 and time.monotonic() - started < 2.0
    assert "Traceback" not in stderr


def test_bad_config_unknown_key_port_in_use_and_missing_source(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("source: sim\nsampel_hz: 50\n")
    assert_one_line_error(run_cli("--config", str(bad)), 2, "unknown key 'sampel_hz'")
    bad.write_text("sample_hz: -5\n")
    assert_one_line_error(run_cli("--config", str(bad)), 2, "sample_hz", "positive")
    bad.write_text("source: [sim\n")
    assert_one_line_error(run_cli("--config", str(bad)), 2, "not valid YAML")
    assert_one_line_error(run_cli("--config", str(tmp_path / "nope.yaml")), 2, "cannot read config file")
    assert_one_line_error(run_cli("--listen", "nonsense"), 2, "HOST:PORT")
    assert_one_line_error(run_cli("--source", "hwmon", "--sysfs-root", str(tmp_path)), 1, "cannot open source")
    assert_one_line_error(run_cli("--source", "bogus"), 1, "unknown source")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_error(run_cli("--source", "sim", "--listen", "127.0.0.1:%d" % port), 1, "cannot listen")


def test_environment_overrides_the_file_and_flags_override_both(tmp_path):
    config = tmp_path / "config.yaml"
    port = free_port()
    config.write_text("source: hwmon\nsysfs_root: %s\nlisten: 127.0.0.1:%d\n" % (tmp_path, port))
    with Daemon("--config", str(config), env={"JETSON_POWER_SOURCE": "sim"}, port=port) as daemon:
        assert daemon.value("jetson_power_source_info", source="sim") == 1.0
    env = dict(__import__("os").environ, JETSON_POWER_SAMPLE_HZ="fast")
    assert_one_line_error(run_cli("--source", "sim", env=env), 2, "JETSON_POWER_SAMPLE_HZ")


def test_hwmon_values_changed_while_running_show_up_in_metrics(tmp_path):
    from tests.support.sysfs_boards import build_board

    board = build_board(str(tmp_path), "agx_orin")
    with Daemon("--source", "hwmon", "--sysfs-root", str(tmp_path)) as daemon:
        assert daemon.value("jetson_power_total_watts") == pytest.approx(board.expected_total_w, rel=1e-6)
        assert daemon.value("jetson_power_source_info", source="hwmon", simulated="false") == 1.0
        watts = board.set_rail("VDD_GPU_SOC", watts=12.5)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if daemon.value("jetson_power_rail_watts", rail="VDD_GPU_SOC") == pytest.approx(watts, rel=1e-6):
                break
            time.sleep(0.05)
        assert daemon.value("jetson_power_rail_watts", rail="VDD_GPU_SOC") == pytest.approx(watts, rel=1e-6)
        assert daemon.value("jetson_power_total_watts") == pytest.approx(board.expected_total_w, rel=1e-6)
        assert daemon.value("jetson_power_rail_volts", rail="VDD_GPU_SOC") == pytest.approx(
            board.volts["VDD_GPU_SOC"])


def test_auto_prefers_the_monitors_and_falls_back_to_the_labelled_simulation(tmp_path):
    from tests.support.sysfs_boards import build_board

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"PATH": "/usr/bin:/bin"}  # no tegrastats
    with Daemon("--source", "auto", "--sysfs-root", str(empty), "--log-level", "info", env=env) as daemon:
        assert daemon.value("jetson_power_source_info", source="sim", simulated="true") == 1.0
        _, log = daemon.stop()
    assert "auto: skipped hwmon" in log and "auto: using sim" in log
    build_board(str(tmp_path / "orin"), "orin_nano")
    with Daemon("--source", "auto", "--sysfs-root", str(tmp_path / "orin"), env=env) as daemon:
        assert daemon.value("jetson_power_source_info", source="hwmon", simulated="false") == 1.0
