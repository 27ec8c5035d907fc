"""The window-energy estimators against an exact model of an averaging sensor read by a sampler."""

import math
import random

import pytest

from profiler.estimate import Estimator, ratio_ci95, t_quantile_975


def sampled_step_integral(pulse, idle, extra, T, delta, phase, read_phase, a, b):
    """Integral over [a, b] of what the sampler records for a power pulse.

    True power: ``idle`` everywhere, plus ``extra`` on [pulse[0], pulse[1]).
    The sensor publishes, at u_j = phase + j*T, the mean true power over
    (u_j - T, u_j]; the sampler reads at t_k = read_phase + k*delta and
    charges the latest published value over (t_{k-1}, t_k].
    """
    p0, p1 = pulse

    def true_energy(lo, hi):
        return idle * (hi - lo) + extra * max(0.0, min(hi, p1) - max(lo, p0))

    def published(t):
        j = math.floor((t - phase) / T)
        u = phase + j * T
        return true_energy(u - T, u) / T

    total = 0.0
    k = math.floor((a - read_phase) / delta)
    while True:
        lo, hi = read_phase + k * delta, read_phase + (k + 1) * delta
        if lo >= b:
            return total
        overlap = min(hi, b) - max(lo, a)
        if overlap > 0:
            total += published(hi) * overlap
        k += 1


@pytest.mark.parametrize("T,delta", [(0.0066, 0.0066), (0.1, 0.01), (1.0, 1.0), (1.0, 0.25)])
def test_settled_is_exact_for_any_sensor_phase(T, delta):
    rng = random.Random(1)
    idle, extra = 3.0, 2.0
    est = Estimator("settled", T, delta)
    for _ in range(20):
        t0 = 100.0 + rng.random()
        t1 = t0 + rng.uniform(0.3 * T, 4 * T)
        phase, read_phase = rng.random() * T, rng.random() * delta
        a, b = est.span(t0, t1)
        integral = sampled_step_integral((t0, t1), idle, extra, T, delta, phase, read_phase, a, b)
        total, dynamic = est.window_energy(integral, t0, t1, idle)
        assert dynamic == pytest.approx(extra * (t1 - t0), rel=1e-9, abs=1e-12)
        assert total == pytest.approx((idle + extra) * (t1 - t0), rel=1e-9)


def test_naive_window_errs_by_about_one_update_and_shifted_does_better():
    rng = random.Random(2)
    T, delta, idle, extra = 0.1, 0.01, 3.0, 2.0
    errors = {"window": [], "shifted": [], "settled": []}
    for _ in range(200):
        t0 = 50.0 + rng.random()
        t1 = t0 + 1.0
        phase, read_phase = rng.random() * T, rng.random() * delta
        for method in errors:
            est = Estimator(method, T, delta)
            a, b = est.span(t0, t1)
            integral = sampled_step_integral((t0, t1), idle, extra, T, delta, phase, read_phase, a, b)
            _, dynamic = est.window_energy(integral, t0, t1, idle)
            errors[method].append(abs(dynamic / (extra * (t1 - t0)) - 1))
    mean = {m: sum(e) / len(e) for m, e in errors.items()}
    assert mean["window"] == pytest.approx(T / 1.0, rel=0.25)  # ~one update interval of a 1 s window
    assert mean["shifted"] < mean["window"] / 2
    assert mean["settled"] < 1e-9


def test_default_windows_follow_the_sensor():
    assert Estimator("settled", 0.0066, 0.0066).default_min_window_s() == pytest.approx(0.3)
    assert Estimator("settled", 0.1, 0.01).default_min_window_s() == pytest.approx(2.0)  # 20 updates: noise
    assert 3.0 <= Estimator("settled", 1.0, 1.0).default_min_window_s() <= 10.0
    assert Estimator("window", 0.1, 0.01).default_min_window_s() == pytest.approx(5.0)
    # the idle guard between windows covers the settled span's reach on both sides
    est = Estimator("settled", 0.1, 0.01)
    a, b = est.span(10.0, 11.0)
    assert est.cooldown_s >= max(10.0 - a + 2 * 0.1, b - 11.0 + 0.01)


def test_bad_estimator_settings():
    with pytest.raises(ValueError):
        Estimator("magic", 0.1, 0.01)
    with pytest.raises(ValueError):
        Estimator("settled", 0.0, 0.01)


def test_student_t_and_confidence_interval():
    assert t_quantile_975(1) == pytest.approx(12.706)
    assert t_quantile_975(4) == pytest.approx(2.776)
    assert t_quantile_975(40) == pytest.approx(2.021, abs=1e-3)
    assert t_quantile_975(120) == pytest.approx(1.980, abs=1e-3)
    mean, half = ratio_ci95([1.0, 2.0, 3.0, 4.0, 5.0], [1] * 5)  # equal counts: the mean and its t interval
    assert mean == 3.0
    assert half == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5), rel=1e-4)
    assert ratio_ci95([2.0], [1]) == (2.0, None)
    assert math.isnan(ratio_ci95([], [])[0])
    assert ratio_ci95([1.0, float("nan"), 3.0], [1, 1, 1])[0] == 2.0
    # windows of 1 and 3 calls at exactly 2 J a call: sum over sum, no spread (a mean of ratios would agree
    # here, but weighs a slow window's few calls as much as a fast one's many)
    assert ratio_ci95([2.0, 6.0], [1, 3]) == (2.0, 0.0)
    assert ratio_ci95([2.0, 9.0], [1, 3])[0] == pytest.approx(11.0 / 4)
