"""The accuracy benchmark's harness must itself be right: exact truth, and a sensor that behaves as specified."""

import copy
import math
import statistics

import pytest
import torch

from bench.original_method import capture, profile_original
from tests.support.groundtruth import Burn, GroundTruthSensor, Timeline, build_model, busy_background


class Clock:
    """A hand-driven clock, so the sensor's grid and the intervals are exact."""

    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def run(timeline: Timeline, clock: Clock, key: str, extra_w: float, start: float, end: float) -> None:
    clock.t = start
    timeline.begin(key, extra_w)
    clock.t = end
    timeline.end()


def test_truth_is_exact_per_module_and_over_time():
    clock = Clock()
    tl = Timeline(clock=clock)
    run(tl, clock, "a", 2.0, 1.0, 1.5)
    run(tl, clock, "b", 0.5, 2.0, 4.0)
    run(tl, clock, "a", 2.0, 5.0, 5.25)
    a = tl.truth("a", idle_w=3.0)
    assert (a.calls, a.active_s, a.dynamic_j, a.total_j) == (2, 0.75, 1.5, 3.75)
    assert a.dynamic_per_call_j == 0.75 and a.total_per_call_j == 1.875 and a.duration_s == 0.375
    b = tl.truth("b", idle_w=3.0)
    assert (b.calls, b.dynamic_j, b.total_j) == (1, 1.0, 7.0)
    assert tl.truth("never", idle_w=3.0).calls == 0
    assert tl.dynamic_energy(0.5) == 0.0
    assert tl.dynamic_energy(1.25) == 0.5  # inside an interval: only the part before t
    assert tl.dynamic_energy(3.0) == 1.5
    assert tl.dynamic_energy(10.0) == 2.5 == a.dynamic_j + b.dynamic_j


def test_open_interval_counts_up_to_the_query():
    clock = Clock()
    tl = Timeline(clock=clock)
    run(tl, clock, "a", 2.0, 0.0, 1.0)
    clock.t = 3.0
    tl.begin("b", 4.0)
    clock.t = 5.0
    assert tl.dynamic_energy(4.5) == 2.0 + 4.0 * 1.5
    assert tl.dynamic_energy(2.5) == 2.0
    with pytest.raises(RuntimeError):
        tl.begin("c", 1.0)  # one module at a time


def test_old_history_is_dropped_but_cumulative_energy_survives():
    clock = Clock()
    tl = Timeline(keep_s=1.0, clock=clock)
    for n in range(20000):
        run(tl, clock, "a", 1.0, n * 0.001, n * 0.001 + 0.0005)
    assert len(tl._ends) < 20000  # pruned
    assert tl.dynamic_energy(clock.t) == pytest.approx(20000 * 0.0005, rel=1e-9)
    assert tl.dynamic_energy(19.9993) == pytest.approx(19999 * 0.0005 + 0.0003, rel=1e-9)
    with pytest.raises(ValueError):
        tl.dynamic_energy(1.0)
    assert tl.truth("a", 0.0).calls == 20000


def quiet_sensor(tl: Timeline, period: float, **kw) -> GroundTruthSensor:
    options = dict(idle_w=3.0, noise_rel=0.0, noise_abs_w=0.0, quantum_w=0.0, phase_s=0.0)
    options.update(kw)
    return GroundTruthSensor(tl, period, **options)


def test_sensor_reports_mean_of_last_period_and_holds_it():
    clock = Clock(0.0)
    tl = Timeline(clock=clock)
    sensor = quiet_sensor(tl, 1.0)  # updates at 0, 1, 2, ...
    run(tl, clock, "a", 2.0, 0.25, 0.75)  # mean over [0, 1]: 1 W extra
    run(tl, clock, "a", 8.0, 1.5, 1.625)  # mean over [1, 2]: 1 W extra
    run(tl, clock, "a", 4.0, 2.9, 3.1)  # straddles the update at 3
    expected = [(0.5, 3.0), (0.999, 3.0), (1.0, 4.0), (1.2, 4.0), (1.99, 4.0), (2.0, 4.0),
                (3.0, 3.4), (3.5, 3.4), (4.0, 3.4), (5.0, 3.0)]
    for t, watts in expected:
        clock.t = t
        reading = sensor.read()
        assert reading.timestamp == t
        assert reading.total_watts == pytest.approx(watts, abs=1e-12), t
        assert reading.rails == {"VDD_IN": reading.total_watts}
    assert sensor.update_interval_s == 1.0 and sensor.simulated
    assert sensor.update_time(3.7) == 3.0


def test_sensor_sees_a_module_that_is_still_running():
    clock = Clock(0.0)
    tl = Timeline(clock=clock)
    sensor = quiet_sensor(tl, 0.1)
    clock.t = 0.05
    tl.begin("a", 5.0)
    clock.t = 0.21  # update at 0.2 covers [0.1, 0.2]: fully active
    assert sensor.read().total_watts == pytest.approx(8.0)


def test_grid_phase_sets_when_updates_appear():
    clock = Clock(10.0)
    tl = Timeline(clock=clock)
    sensor = quiet_sensor(tl, 1.0, phase_s=0.25)  # updates at 9.75, 10.75, ...
    assert sensor.update_time(10.7) == pytest.approx(9.75)
    assert sensor.update_time(10.75) == pytest.approx(10.75)


def test_jittered_updates_hold_the_mean_since_the_previous_update():
    clock = Clock(0.0)
    tl = Timeline(clock=clock)
    run(tl, clock, "a", 2.0, 0.0, 2.3)
    clock.t = 0.0
    sensor = quiet_sensor(tl, 1.0, jitter_s=0.5)  # update k at k + [0, 0.5)
    delays = [sensor.published(k) - k for k in range(1, 6)]
    assert all(0.0 <= d < 0.5 for d in delays) and len(set(delays)) == 5  # off the grid, each its own way
    for k in range(1, 5):
        a, b = sensor.published(k - 1), sensor.published(k)
        clock.t = b - 1e-9
        held_before = sensor.read().total_watts
        clock.t = b
        overlap = max(0.0, min(b, 2.3) - max(a, 0.0))
        assert sensor.read().total_watts == pytest.approx(3.0 + 2.0 * overlap / (b - a), abs=1e-9), k
        assert sensor.update_time(b + 1e-9) == b
        if k > 1:
            a0 = sensor.published(k - 2)
            assert held_before == pytest.approx(3.0 + 2.0 * max(0.0, min(a, 2.3) - max(a0, 0.0)) / (a - a0))
    with pytest.raises(ValueError):
        quiet_sensor(tl, 1.0, jitter_s=1.0)


def test_noise_is_one_percent_plus_ten_milliwatts_and_quantised():
    clock = Clock(0.0)
    tl = Timeline(clock=clock)
    sensor = GroundTruthSensor(tl, 0.01, idle_w=3.0, seed=7, phase_s=0.0)
    values = []
    for k in range(1, 4001):
        clock.t = k * 0.01 + 0.002
        first = sensor.read().total_watts
        clock.t += 0.005
        assert sensor.read().total_watts == first  # held, noise included
        values.append(first)
    sigma = 0.01 * 3.0 + 0.010
    assert statistics.fmean(values) == pytest.approx(3.0, abs=4 * sigma / math.sqrt(len(values)))
    assert statistics.stdev(values) == pytest.approx(sigma, rel=0.06)
    assert all(abs(v * 1000 - round(v * 1000)) < 1e-6 for v in values)
    assert len(set(values)) > 50
    again = GroundTruthSensor(tl, 0.01, idle_w=3.0, seed=7, phase_s=0.0)
    assert [again.measure(3.0, k) for k in range(5)] == [sensor.measure(3.0, k) for k in range(5)]


def test_quantisation_rounds_to_the_nearest_milliwatt():
    clock = Clock(0.0)
    sensor = quiet_sensor(Timeline(clock=clock), 1.0, quantum_w=0.001)
    assert sensor.measure(3.0004, 1) == pytest.approx(3.000)
    assert sensor.measure(3.0006, 1) == pytest.approx(3.001)


def test_burn_records_its_real_activity():
    tl = Timeline()
    model = build_model(tl, [(2.0, 0.002), (0.5, 0.0005)])
    x = torch.ones(3)
    with torch.no_grad():
        for _ in range(10):
            assert model(x) is x
    first, second = tl.truth("burn0", 3.0), tl.truth("burn1", 3.0)
    assert first.calls == second.calls == 10
    assert 0.002 <= first.duration_s < 0.01 and 0.0005 <= second.duration_s < 0.01
    assert first.dynamic_j == pytest.approx(2.0 * first.active_s)
    assert tl.dynamic_energy(tl.clock()) == pytest.approx(first.dynamic_j + second.dynamic_j, rel=1e-12)
    twin = copy.deepcopy(model)
    assert twin[0].timeline is tl  # copies run on the same board
    assert isinstance(twin[1], Burn)


def test_original_method_is_sum_of_polled_samples_times_20_ms():
    tl = Timeline()
    # Both layers draw nothing extra: a poll's sensor value averages the 6.6 ms before it, which may
    # reach back into the capture pass's call of the next layer.
    model = build_model(tl, [(0.0, 0.001), (0.0, 0.0005)])
    sensor = GroundTruthSensor(tl, 0.0066, idle_w=3.0, noise_rel=0.0, noise_abs_w=0.0)
    assert [label for label, *_ in capture(model, torch.zeros(1))] == ["Burn_0", "Burn_1"]
    layers = profile_original(model, torch.zeros(1), sensor, repeats=100)
    first = layers[0]
    assert first.samples >= 1
    assert first.energy_j == pytest.approx(first.samples * 0.02 * 3.0 / 100)  # constant 3 W, idle charged
    assert tl.truth("burn0", 3.0).calls == 102  # two capture passes + 100 repeats


def test_background_drifts_and_bursts_with_an_exact_integral():
    clock = Clock(100.0)
    bg = busy_background(seed=3, clock=clock)
    bursts = bg.bursts(100.0, 200.0)
    assert 30 <= len(bursts) <= 100  # one every 1-3 s
    for (s, e), (s2, _) in zip(bursts, bursts[1:]):
        assert 0.2 <= e - s <= 0.6 and 1.0 <= s2 - s <= 3.0
    # the integral matches a fine Riemann sum of the power
    a, b, n = 110.0, 127.0, 170000
    step = (b - a) / n
    riemann = math.fsum(bg.power(a + (k + 0.5) * step) for k in range(n)) * step
    assert bg.energy(a, b) == pytest.approx(riemann, abs=2 * 0.8 * step * len(bg.bursts(a, b)) + 1e-6)
    drift = [bg.power(a + k * 0.01) for k in range(1700) if not any(s <= a + k * 0.01 < e for s, e in bursts)]
    assert max(drift) == pytest.approx(0.4, abs=0.01) and min(drift) == pytest.approx(-0.4, abs=0.01)
    # the sensor adds it to the board; the layers' truth does not see it
    tl = Timeline(clock=clock)
    sensor = quiet_sensor(tl, 1.0, background=bg)
    clock.t = 131.0
    assert sensor.read().total_watts == pytest.approx(3.0 + bg.energy(130.0, 131.0), abs=1e-12)
    assert tl.truth("a", 3.0).dynamic_j == 0.0
