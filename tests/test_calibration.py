"""Calibration against a reference meter: the file, the daemon applying it, and jetson-power-calibrate.

The end-to-end test distorts a trace made with the simulated Nano's INA3221
model (``exporter.sources.sim.measure``) by a known gain and offset, logs an
averaging meter on the true power, fits it back with the real command, and
starts the real daemon on the trace with the file it wrote.
"""

import json
import random
import subprocess
import sys
import time

import pytest
import torch

from exporter import calibration
from exporter.sources import Reading, sim
from exporter.sources.replay import load_trace
from profiler import ProfilerError, profile
from tests.support.daemon import ROOT, Daemon, assert_one_line_error, run_cli, write_trace
from tests.support.prom import promtool_check

GAIN, OFFSET = 1.25, 0.30  # the monitor reads (true - OFFSET) / GAIN: well below the meter, as published
METER_PERIOD_S = 0.25
TRACE_S = 8.0
LOADS = (0.0, 0.6, 1.0, 0.3, 0.8, 0.1, 0.5, 0.9)  # host-load steps the trace walks through


def run_calibrate(*args):
    return subprocess.run([sys.executable, "-m", "exporter.calibrate"] + list(args), cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def write_calibration(path, rails, meter="Test meter", date="2026-12-02"):
    path.write_text(calibration.dump(meter, date, rails))
    return str(path)


def distorted_trace(directory):
    """(trace path, meter log path, meter rows): the sim's INA3221 on an under-reading input channel."""
    rng = random.Random(13)
    step = sim.DEFAULT_INTERVAL_S
    times, true_in, rails = [], [], {name: [] for name in sim.RAILS}
    t = 0.0
    while t <= TRACE_S:
        load = LOADS[int(t / (TRACE_S / len(LOADS))) % len(LOADS)]
        cpu = sim.CPU_RAIL[0] + sim.CPU_RAIL[1] * load
        gpu = sim.GPU_RAIL[0] + sim.GPU_RAIL[1] * load
        watts = cpu + gpu + sim.REST[0] + sim.REST[1] * load
        volts = sim.VOLTS_IDLE - sim.VOLTS_SAG * load
        times.append(t)
        true_in.append(watts)
        rails["POM_5V_IN"].append(sim.measure(rng, (watts - OFFSET) / GAIN, volts)[0])
        rails["POM_5V_GPU"].append(sim.measure(rng, gpu, volts)[0])
        rails["POM_5V_CPU"].append(sim.measure(rng, cpu, volts)[0])
        t = round(t + step, 9)
    trace = write_trace(str(directory / "trace.csv"), list(zip(times, rails["POM_5V_IN"])), rails)
    # The meter: the true mean power of each period (the trace's rows hold their power until the next
    # row), 0.1 % noise, 1 mW resolution.  Its clock is 1000 s ahead of the trace's.
    meter_rows = []
    edges = [n * METER_PERIOD_S for n in range(int(times[-1] / METER_PERIOD_S) + 1)]
    for t0, t1 in zip(edges, edges[1:]):
        energy = sum(w * (min(b, t1) - max(a, t0)) for a, b, w in zip(times, times[1:], true_in) if b > t0 and a < t1)
        meter_rows.append((t1, round(energy / (t1 - t0) * (1 + rng.gauss(0, 0.001)), 3)))
    log = directory / "meter.csv"
    log.write_text("timestamp,watts\n" + "".join("%r,%r\n" % (t + 1000.0, w) for t, w in [(0.0, 0.0)] + meter_rows))
    return trace, str(log), meter_rows


def test_apply_keeps_the_total_consistent_with_its_rails():
    """The total moves by the corrections of the rails that make it, whatever the board's topology."""
    nano = calibration.Calibration("f", "m", "2026-12-02", {"POM_5V_IN": (2.0, 0.5), "POM_5V_GPU": (3.0, 0.0)})
    raw = Reading(1.0, 4.0, {"POM_5V_IN": 4.0, "POM_5V_GPU": 1.0, "POM_5V_CPU": 2.0}, {"POM_5V_IN": 5.0}, {},
                  energy_joules=None)
    out = nano.apply(raw)
    assert out.rails == {"POM_5V_IN": 8.5, "POM_5V_GPU": 3.0, "POM_5V_CPU": 2.0}
    assert out.total_watts == pytest.approx(8.5, abs=1e-12), "the total is the calibrated input rail"
    assert out.volts == raw.volts and raw.rails["POM_5V_IN"] == 4.0, "volts as read; the raw reading untouched"
    # AGX Orin: parallel rails make the total; VDDQ_VDD2_1V8AO is fed from VIN_SYS_5V0 and is not in it.
    orin = calibration.Calibration("f", "m", "2026-12-02", {"VDD_GPU_SOC": (1.1, 0.2), "VDDQ_VDD2_1V8AO": (2.0, 0)})
    rails = {"VDD_GPU_SOC": 3.0, "VDD_CPU_CV": 1.0, "VIN_SYS_5V0": 2.0, "VDDQ_VDD2_1V8AO": 0.5}
    out = orin.apply(Reading(1.0, 6.0, rails, energy_joules=10.0))
    assert out.total_watts == pytest.approx(1.1 * 3.0 + 0.2 + 1.0 + 2.0, abs=1e-12)
    assert out.rails["VDDQ_VDD2_1V8AO"] == 1.0
    assert out.energy_joules is None, "a hardware counter is not calibrated: calibrated power is integrated"


@pytest.mark.parametrize("text, fragment", [
    ("meter: m\ndate: 2026-12-02\nrails: {POM_5V_IN: {gain: 0, offset_w: 0}}\n",
     "rails.POM_5V_IN.gain must be positive"),
    ("meter: m\ndate: 2026-12-02\nrails: {POM_5V_IN: {gain: -1.2, offset_w: 0}}\n", "gain must be positive"),
    ("meter: m\ndate: 2026-12-02\nrails: {POM_5V_IN: {gain: 1}}\n", "must be {gain: G, offset_w: W}"),
    ("meter: m\ndate: 2026-12-02\nrails: {POM_5V_IN: {gain: 1, offset_w: .nan}}\n", "offset_w must be a finite"),
    ("meter: m\ndate: 2/12/2026\nrails: {POM_5V_IN: {gain: 1, offset_w: 0}}\n", "date must be YYYY-MM-DD"),
    ("date: 2026-12-02\nrails: {POM_5V_IN: {gain: 1, offset_w: 0}}\n", "missing key meter"),
    ("meter: m\ndate: 2026-12-02\nrails: {POM_5V_IN: {gain: 1, offset_w: 0}}\nunit: W\n", "unknown key unit"),
    ("meter: m\ndate: 2026-12-02\nrails: [POM_5V_IN\n", "not valid YAML at line"),
    ("meter: m\ndate: 2026-12-02\nrails: {POM_5V_SOC: {gain: 1, offset_w: 0}}\n",
     "rail POM_5V_SOC is not among the source's rails (POM_5V_CPU, POM_5V_GPU, POM_5V_IN)"),
])
def test_a_bad_calibration_file_is_one_line_and_exit_2(tmp_path, text, fragment):
    path = tmp_path / "cal.yaml"
    path.write_text(text)
    assert_one_line_error(run_cli("--source", "sim", "--listen", "127.0.0.1:0", "--calibration", str(path)), 2,
                          "calibration file %s" % path, fragment)


def test_the_config_file_key_and_a_missing_file(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("source: sim\ncalibration: %s\n" % (tmp_path / "nowhere.yaml"))
    assert_one_line_error(run_cli("--config", str(config)), 2, "nowhere.yaml", "cannot read it")


def test_the_daemon_applies_the_file_to_power_energy_and_says_so(tmp_path):
    """Calibrated gauges and counters, the raw reading beside them, the info metric, both APIs."""
    cal = write_calibration(tmp_path / "cal.yaml", {"POM_5V_IN": (2.0, 0.5), "POM_5V_CPU": (1.5, -0.1)})
    with Daemon("--source", "sim", "--calibration", cal) as daemon:
        text = daemon.metrics()
        status, _, body = daemon.get("/api/v1/source")
        info = json.loads(body)
    assert promtool_check(text) == "", "promtool-clean with the calibration series"
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    raw_in = samples[("jetson_power_raw_rail_watts", (("rail", "POM_5V_IN"),))]
    raw_cpu = samples[("jetson_power_raw_rail_watts", (("rail", "POM_5V_CPU"),))]
    assert samples[("jetson_power_rail_watts", (("rail", "POM_5V_IN"),))] == pytest.approx(2.0 * raw_in + 0.5)
    assert samples[("jetson_power_rail_watts", (("rail", "POM_5V_CPU"),))] == pytest.approx(1.5 * raw_cpu - 0.1)
    assert samples[("jetson_power_total_watts", ())] == pytest.approx(2.0 * raw_in + 0.5), "total = its input rail"
    assert samples[("jetson_power_raw_total_watts", ())] == raw_in
    assert samples[("jetson_power_calibration_info", (("date", "2026-12-02"), ("gain", "2"), ("meter", "Test meter"),
                                                      ("offset_w", "0.5"), ("rail", "POM_5V_IN")))] == 1.0
    assert ("jetson_power_raw_rail_watts", (("rail", "POM_5V_GPU"),)) in samples, "every rail's raw reading"
    # The counters integrate calibrated power: the input rail's energy is the total's (same rail).
    total_j = samples[("jetson_energy_joules_total", ())]
    assert total_j == pytest.approx(samples[("jetson_energy_rail_joules_total", (("rail", "POM_5V_IN"),))], rel=1e-9)
    assert status == 200 and info["calibration"]["meter"] == "Test meter"
    assert info["calibration"]["rails"]["POM_5V_IN"] == {"gain": 2.0, "offset_w": 0.5}


def test_without_a_calibration_nothing_changes(tmp_path):
    with Daemon("--source", "sim") as daemon:
        text = daemon.metrics()
        status, _, body = daemon.get("/api/v1/source")
    assert "jetson_power_raw" not in text and "jetson_power_calibration_info" not in text
    assert status == 200 and '"calibration":null' in body


@pytest.mark.parametrize("rows, fragment", [
    ("rail,sensor_w,meter_w\nPOM_5V_IN,1,1.2\nPOM_5V_IN,2,2.4\n",
     "rail POM_5V_IN has 2 pair(s); a fit needs at least 3"),
    ("rail,sensor_w,meter_w\nA,2,1.2\nA,2,2.4\nA,2,3\n", "measure at two or more different loads"),
    ("rail,sensor_w,meter_w\nA,1,3\nA,2,2\nA,3,1\n", "the fitted gain is -1"),
    ("rail,sensor_w,meter_w\nA,1,x\n", "line 2: meter_w 'x' is not a number"),
    ("rail,sensor,meter\nA,1,1\n", "header must name rail,sensor_w,meter_w"),
])
def test_calibrate_bad_pairs_are_one_line_and_exit_2(tmp_path, rows, fragment):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(rows)
    out = tmp_path / "cal.yaml"
    assert_one_line_error(run_calibrate("--pairs", str(pairs), "--meter", "m", "--out", str(out)), 2, fragment)
    assert not out.exists(), "nothing written on bad input"


def test_calibrate_bad_trace_input_is_one_line_and_exit_2(tmp_path):
    trace = write_trace(str(tmp_path / "t.csv"), [(0.0, 1.0), (1.0, 2.0), (2.0, 2.0)], {"VDD_IN": [1.0, 2.0, 2.0]})
    log = tmp_path / "meter.csv"
    log.write_text("timestamp,watts\n0,1\n1,1\n2,2\n")
    out = str(tmp_path / "cal.yaml")
    assert_one_line_error(run_calibrate("--trace", trace, "--meter-log", "VDD_GPU=%s" % log, "--meter", "m",
                                        "--out", out), 2, "has no rail VDD_GPU (its rails: VDD_IN)")
    assert_one_line_error(run_calibrate("--trace", trace, "--meter-log", "VDD_IN=%s" % log, "--offset-s", "50",
                                        "--meter", "m", "--out", out), 2, "no meter interval lies inside", "--offset-s")
    assert_one_line_error(run_calibrate("--trace", trace, "--meter", "m", "--out", out), 2, "needs at least one")


def test_calibrate_fits_pairs_and_writes_a_file_the_daemon_loads(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("rail,sensor_w,meter_w\n" + "".join(
        "POM_5V_IN,%r,%r\nPOM_5V_CPU,%r,%r\n" % (x, 1.1 * x + 0.2, x / 2, 0.9 * x / 2) for x in (1.0, 2.5, 4.0, 6.0)))
    out = tmp_path / "cal.yaml"
    result = run_calibrate("--pairs", str(pairs), "--meter", "Fluke 289", "--date", "2026-11-30", "--out", str(out))
    assert result.returncode == 0, result.stderr
    loaded = calibration.load(str(out))
    assert loaded.meter == "Fluke 289" and loaded.date == "2026-11-30"
    assert loaded.rails["POM_5V_IN"] == pytest.approx((1.1, 0.2))
    assert loaded.rails["POM_5V_CPU"] == pytest.approx((0.9, 0.0), abs=1e-9)
    assert "POM_5V_IN" in result.stdout and "R^2" in result.stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no temporary file left"


@pytest.mark.slow
@pytest.mark.system
def test_a_distorted_trace_fits_back_and_the_calibrated_daemon_matches_the_meter(tmp_path):
    trace_path, meter_log, meter_rows = distorted_trace(tmp_path)
    out = tmp_path / "cal.yaml"
    result = run_calibrate("--trace", trace_path, "--meter-log", "POM_5V_IN=" + meter_log, "--offset-s", "-1000",
                           "--meter", "sim meter", "--out", str(out))
    assert result.returncode == 0, result.stderr
    fitted = calibration.load(str(out))
    gain, offset = fitted.rails["POM_5V_IN"]
    print(result.stdout)
    assert gain == pytest.approx(GAIN, rel=0.01) and offset == pytest.approx(OFFSET, abs=0.05), result.stdout

    trace = load_trace(trace_path)
    with Daemon("--source", "replay:" + trace_path, "--calibration", str(out)) as daemon:
        deadline = time.monotonic() + 60
        while daemon.value("jetson_power_up") != 0.0:  # the trace ends: the sensor goes down
            assert time.monotonic() < deadline, "the replay did not end"
            time.sleep(0.2)
        status, _, body = daemon.get("/api/v1/samples?since=0")
        samples = json.loads(body)["samples"]
        # The read that crosses the trace's end is stamped at the end: it ties the daemon's clock to the trace's.
        origin = samples[-1]["t"] - trace.times[-1]
        a, b = 1.0, 7.5  # on the meter's grid
        status, _, body = daemon.get("/api/v1/energy?start=%r&end=%r" % (origin + a, origin + b))
    window = json.loads(body)
    assert status == 200 and window["calibration"]["rails"]["POM_5V_IN"]["gain"] == gain
    meter_j = sum(w * METER_PERIOD_S for t, w in meter_rows if a < t <= b)
    raw_j = trace.energy_at(b)[0] - trace.energy_at(a)[0]
    # A sampler starved on a loaded machine may leave a gap it does not integrate: allow for it at peak power.
    uncovered_j = (b - a - window["covered_seconds"]) * max(w for _, w in meter_rows)
    print("meter %.3f J, calibrated daemon %.3f J, raw sensor %.3f J, uncovered %.3f J"
          % (meter_j, window["total_joules"], raw_j, uncovered_j))
    assert abs(window["total_joules"] - meter_j) <= 0.01 * meter_j + uncovered_j
    assert raw_j < 0.9 * meter_j, "the sensor read well below the meter before calibration"


def test_profiler_results_record_the_calibration(tmp_path):
    """In-process (the profiler's own sampler applies the file) and from a calibrated daemon."""
    cal = write_calibration(tmp_path / "cal.yaml", {"POM_5V_IN": (1.5, 0.0)}, meter="Bench meter")
    model, example = torch.nn.Linear(8, 8), torch.randn(1, 8)
    result = profile(model, example, source="sim", calibration=cal, min_window_s=0.05, trials=1, target_ci=10.0,
                     warn=lambda line: None)
    assert result.meta["calibration"]["meter"] == "Bench meter"
    assert result.meta["calibration"]["rails"] == {"POM_5V_IN": {"gain": 1.5, "offset_w": 0.0}}
    bad = write_calibration(tmp_path / "bad.yaml", {"VDD_IN": (1.5, 0.0)})
    with pytest.raises(ProfilerError, match="rail VDD_IN is not among the source's rails"):
        profile(model, example, source="sim", calibration=bad, warn=lambda line: None)
    with Daemon("--source", "sim", "--calibration", cal) as daemon:
        remote = profile(model, example, exporter_url=daemon.url, min_window_s=0.05, trials=1, target_ci=10.0,
                         warn=lambda line: None)
    assert remote.meta["measured_via"] == "exporter " + daemon.url
    assert remote.meta["calibration"]["rails"] == {"POM_5V_IN": {"gain": 1.5, "offset_w": 0.0}}
