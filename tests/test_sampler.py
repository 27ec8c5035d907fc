"""The sampler and its ring buffer: exact window energy, gaps, counters, rate cap."""

import math
import threading
import time

import pytest

from exporter.ringbuffer import RingBuffer
from exporter.sampler import HANG_SLACK_S, Sampler, WindowError
from exporter.sources import open_source
from exporter.sources.base import PowerSource, Reading, SensorReadError
from exporter.sources.replay import trace_energy_joules
from tests.support.daemon import write_trace


def test_ringbuffer_interpolates_cumulative_energy_and_wraps():
    buf = RingBuffer(4, ["A"])
    energy, covered = 0.0, 0.0
    # samples at t=1..6, power 10*t on total and t on rail A, each over (t-1, t]
    cum_a = 0.0
    for t in range(1, 7):
        start = t - 1 if t > 1 else t
        energy += 10.0 * t * (t - start)
        cum_a += 1.0 * t * (t - start)
        covered += t - start
        buf.append(float(t), float(start), [10.0 * t, 1.0 * t], [energy, cum_a], covered)
    assert buf.size == 4 and buf.oldest_time() == 3.0 and buf.newest_time() == 6.0
    e, c = buf.cumulative_at(4.5)  # inside sample 5's interval (4, 5]: power 50
    e4, c4 = buf.cumulative_at(4.0)
    assert e[0] - e4[0] == pytest.approx(50 * 0.5)
    assert e[1] - e4[1] == pytest.approx(5 * 0.5)
    assert c - c4 == pytest.approx(0.5)
    assert buf.first_after(4.0) == 2 and buf.first_at_or_after(4.0) == 1
    assert [t for t, _ in buf.rows(2)] == [5.0, 6.0]


class ScriptedSource(PowerSource):
    """A sensor whose power is a known function of time; it can be told to fail."""

    name = "scripted"
    board = "test bench"

    def __init__(self, power, counter=None, update_interval_s=None):
        self.power = power
        self.counter = counter
        self.update_interval_s = update_interval_s
        self.failing = threading.Event()
        self.reads = 0

    def read(self) -> Reading:
        self.reads += 1
        if self.failing.is_set():
            raise SensorReadError("injected fault: Input/output error")
        t = time.monotonic()
        p = self.power(t)
        return Reading(t, p, {"VDD_IN": p}, energy_joules=None if self.counter is None else self.counter(t))


def test_counters_match_a_replayed_trace_exactly(tmp_path):
    rows = [(0.0, 2.0), (0.4, 6.5), (0.9, 3.25), (1.3, 9.0), (1.7, 1.5), (2.2, 4.0), (2.5, 0.0)]
    path = write_trace(str(tmp_path / "t.csv"), rows, rails={"VDD_GPU": [1.0, 3.0, 1.0, 5.0, 0.5, 2.0, 0.0]})
    exact_total, exact_rails = trace_energy_joules(path)
    sampler = Sampler(open_source("replay:" + path), sample_hz=100).start()
    try:
        assert sampler.wait_ready(2)
        time.sleep(2.5 + 0.3)
        snap = sampler.snapshot()
        assert not snap.up, "the sensor is down once the trace has ended"
        assert snap.energy_joules == pytest.approx(exact_total, rel=0.005)
        assert snap.rail_energy_joules["VDD_GPU"] == pytest.approx(exact_rails["VDD_GPU"], rel=0.005)
        first = sampler.samples(0.0)[0].timestamp
        window = sampler.energy(first, first + 1.3)
        # [0, 1.3] of the trace: 2*0.4 + 6.5*0.5 + 3.25*0.4
        assert window.total_joules == pytest.approx(0.8 + 3.25 + 1.3, rel=0.01)
        assert window.covered_s == pytest.approx(1.3, abs=1e-6)
        assert window.mean_watts == pytest.approx(window.total_joules / 1.3)
        stopped = snap.energy_joules
        time.sleep(0.2)
        assert sampler.snapshot().energy_joules == stopped, "counters stop with the trace"
    finally:
        sampler.stop()


def test_window_outside_buffer_is_refused():
    source = ScriptedSource(lambda t: 5.0)
    sampler = Sampler(source, sample_hz=200, buffer_s=0.2).start()
    try:
        assert sampler.wait_ready(2)
        time.sleep(0.5)
        now = time.monotonic()
        with pytest.raises(WindowError, match="before the oldest"):
            sampler.energy(now - 5, now - 4.9)
        with pytest.raises(WindowError, match="after the newest"):
            sampler.energy(now, now + 60, wait_s=0.05)
        with pytest.raises(WindowError, match="start <= end"):
            sampler.energy(now, now - 1)
        window = sampler.energy(now - 0.1, now, wait_s=1)
        assert window.total_joules == pytest.approx(0.5, rel=1e-6)
    finally:
        sampler.stop()


def test_sensor_fault_marks_down_counts_gap_and_never_integrates_across_it():
    source = ScriptedSource(lambda t: 4.0)
    sampler = Sampler(source, sample_hz=100).start()
    try:
        assert sampler.wait_ready(2)
        time.sleep(0.2)
        source.failing.set()
        time.sleep(0.03)  # two sample periods and change
        down = sampler.snapshot()
        assert not down.up and down.errors_total >= 1
        assert "Input/output error" in down.last_error
        time.sleep(0.6)
        before = sampler.snapshot().energy_joules
        source.failing.clear()
        deadline = time.monotonic() + 5
        while not sampler.snapshot().up and time.monotonic() < deadline:
            time.sleep(0.01)
        back = sampler.snapshot()
        assert back.up, "the sensor comes back within 5 s"
        assert back.gap_seconds >= 0.6
        assert back.energy_joules >= before
        # energy == power x covered time: nothing was charged for the gap
        first = sampler.samples(0.0)[0].timestamp
        window = sampler.energy(first, sampler.samples(0.0)[-1].timestamp)
        assert window.total_joules == pytest.approx(4.0 * window.covered_s, rel=1e-9)
        assert window.covered_s < window.duration_s - 0.5
    finally:
        sampler.stop()


def test_a_late_sampler_is_not_a_down_sensor_but_a_hung_read_is():
    release = threading.Event()
    hanging = threading.Event()

    def power(t):
        if hanging.is_set():
            release.wait(5)  # a stuck I2C transfer: the read neither returns nor raises
        return 4.0

    sampler = Sampler(ScriptedSource(power), sample_hz=100).start()
    try:
        assert sampler.wait_ready(2)
        time.sleep(0.1)
        # Starved of CPU (here: of its lock) for 8 periods, under the 0.1 s gap limit: late, not down.
        with sampler._lock:
            time.sleep(0.08)
            assert not sampler._stale(time.monotonic())
        time.sleep(0.05)
        assert sampler.snapshot().up
        hung_at = time.monotonic()
        hanging.set()
        while sampler.snapshot().up and time.monotonic() - hung_at < 1:
            time.sleep(0.002)
        down_after = time.monotonic() - hung_at
        assert down_after <= 2 * sampler.period_s + HANG_SLACK_S + 0.01, down_after
        assert sampler.snapshot().errors_total == 0, "a hung read is stale, not an error"
        hanging.clear()
        release.set()
        deadline = time.monotonic() + 2
        while not sampler.snapshot().up and time.monotonic() < deadline:
            time.sleep(0.005)
        assert sampler.snapshot().up
    finally:
        release.set()
        sampler.stop()


def test_hardware_counter_is_integrated_from_deltas():
    t0 = time.monotonic()
    # the counter says 7 W while the instantaneous power reading says 3 W
    source = ScriptedSource(lambda t: 3.0, counter=lambda t: 1000.0 + 7.0 * (t - t0))
    sampler = Sampler(source, sample_hz=100).start()
    try:
        assert sampler.wait_ready(2)
        time.sleep(0.5)
        snap = sampler.snapshot()
        samples = sampler.samples(0.0)
        span = samples[-1].timestamp - samples[0].timestamp
        assert snap.energy_joules == pytest.approx(7.0 * span, rel=1e-6)
        assert snap.reading.total_watts == 3.0
    finally:
        sampler.stop()


def test_sample_rate_is_capped_at_the_sensor_update_rate():
    source = ScriptedSource(lambda t: 1.0, update_interval_s=0.05)
    sampler = Sampler(source, sample_hz=100)
    assert sampler.period_s == pytest.approx(0.05)
    sampler.start()
    try:
        time.sleep(0.55)
    finally:
        sampler.stop()
    assert 8 <= source.reads <= 13


def test_default_rate_is_the_sensor_update_rate_up_to_200_hz_else_100_hz():
    assert Sampler(ScriptedSource(lambda t: 1.0, update_interval_s=0.0066)).period_s == pytest.approx(0.0066)
    assert Sampler(ScriptedSource(lambda t: 1.0, update_interval_s=0.001)).period_s == pytest.approx(1 / 200.0)
    assert Sampler(ScriptedSource(lambda t: 1.0)).period_s == pytest.approx(1 / 100.0)


def test_listener_gets_every_integrated_interval():
    seen = []
    source = ScriptedSource(lambda t: 2.0)
    sampler = Sampler(source, sample_hz=100)
    sampler.add_listener(lambda start, end, joules: seen.append((start, end, joules)))
    sampler.start()
    try:
        time.sleep(0.3)
    finally:
        sampler.stop()
    assert len(seen) > 10
    assert all(j == pytest.approx(2.0 * (e - s)) for s, e, j in seen)
    assert math.fsum(j for _, _, j in seen) == pytest.approx(sampler.snapshot().energy_joules)


def test_bad_rates_are_rejected():
    with pytest.raises(ValueError, match="sample_hz"):
        Sampler(ScriptedSource(lambda t: 1.0), sample_hz=0)
    with pytest.raises(ValueError, match="buffer_s"):
        Sampler(ScriptedSource(lambda t: 1.0), buffer_s=float("nan"))
