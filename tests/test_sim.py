"""Simulated Jetson Nano: follows this machine's real CPU load, INA3221-like readings."""

import os
import random
import statistics
import subprocess
import sys
import time

import pytest

from exporter.sources import open_source
from exporter.sources.sim import CPU_RAIL, GPU_RAIL, REST, SimulatedNano, cpu_times, measure

BUSY = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end:\n    pass\n"


def mean_power(source, seconds):
    values = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        values.append(source.read().total_watts)
        time.sleep(0.01)
    return statistics.mean(values)


def test_labelled_simulated_nano():
    source = open_source("sim")
    assert source.simulated is True
    assert source.board == "jetson-nano (simulated)"
    assert source.update_interval_s == pytest.approx(0.0066)
    assert source.describe()["simulated"] == "true"
    reading = source.read()
    assert set(reading.rails) == {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}
    assert reading.energy_joules is None


def test_real_cpu_load_raises_power():
    source = open_source("sim", interval_s=0.01)
    busy0, total0 = cpu_times()
    idle = mean_power(source, 0.6)
    busy1, total1 = cpu_times()
    host_load = (busy1 - busy0) / max(1, total1 - total0)
    cpus = os.cpu_count() or 1
    workers = min(cpus, 4)
    # The host may already be busy (other jobs): the rise can only use what is left.
    headroom = min(workers / cpus, 1.0 - host_load)
    if headroom < 0.15:
        pytest.skip(f"host CPU already {host_load:.0%} busy: no headroom to show a rise")
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(workers)]
    try:
        time.sleep(0.4)  # let the 0.25 s load window fill with busy time
        loaded = mean_power(source, 0.8)
    finally:
        for proc in busy:
            proc.wait(timeout=10)
    full_scale = CPU_RAIL[1] + GPU_RAIL[1] + REST[1]
    assert loaded - idle > 0.4 * headroom * full_scale, (idle, loaded, host_load, headroom)


def test_values_within_bounds_and_consistent():
    source = SimulatedNano(interval_s=0.001, seed=3)
    for _ in range(300):
        r = source.read()
        assert 1.1 <= r.total_watts <= 7.5
        assert r.total_watts == r.rails["POM_5V_IN"]
        assert r.rails["POM_5V_GPU"] + r.rails["POM_5V_CPU"] < r.rails["POM_5V_IN"]
        for rail, watts in r.rails.items():
            assert 4.9 <= r.volts[rail] <= 5.2
            assert watts == pytest.approx(r.volts[rail] * r.amperes[rail], abs=0.0006)
            # INA3221-style resolution: mV, mA, mW.
            for value in (watts, r.volts[rail], r.amperes[rail]):
                assert round(value * 1000) == pytest.approx(value * 1000, abs=1e-6)
        time.sleep(0.001)


def test_noise_is_plausible():
    rng = random.Random(1)
    watts = [measure(rng, 3.0, 5.05)[0] for _ in range(2000)]
    assert statistics.mean(watts) == pytest.approx(3.0, rel=0.002)
    assert 0.005 < statistics.pstdev(watts) / 3.0 < 0.02  # about 1 %, like a real shunt monitor


def test_sample_and_hold():
    source = SimulatedNano(interval_s=0.5, seed=7)
    a = source.read()
    b = source.read()
    assert b.timestamp > a.timestamp
    assert (a.total_watts, a.rails, a.volts, a.amperes) == (b.total_watts, b.rails, b.volts, b.amperes)
    time.sleep(0.55)
    c = source.read()
    assert (c.rails, c.volts, c.amperes) != (a.rails, a.volts, a.amperes)


def test_cpu_times_reads_proc_stat():
    busy, total = cpu_times()
    assert 0 <= busy <= total


def test_bad_interval():
    with pytest.raises(ValueError, match="interval_s must be positive"):
        open_source("sim", interval_s=0)


def test_unknown_options_are_ignored():
    assert open_source("sim", sysfs_root="/nonexistent", whatever=1).read().total_watts > 0
