"""The isolation schedule: windows on a slow sensor's update grid, references a second apart, the auto budget."""

import math

import pytest
import torch
from torch import nn

from profiler import ProfilerError, measure, profile
from profiler.cli import parse_budget
from profiler.estimate import Estimator
from tests.support.groundtruth import GroundTruthSensor, Timeline, build_model, hold_until

T_SLOW = 0.1


def window_truth(timeline: Timeline, windows) -> float:
    """Exact dynamic joules per call of the calls inside these windows."""
    joules = sum(timeline.dynamic_energy(w.t1) - timeline.dynamic_energy(w.t0) for w in windows)
    return joules / sum(w.calls for w in windows)


def slow_profile(model, timeline, seed: int, **kwargs):
    """Three-update windows (after the sensor's reach) on a noiseless 100 ms sensor."""
    sensor = GroundTruthSensor(timeline, T_SLOW, noise_rel=0.0, noise_abs_w=0.0, seed=seed)
    reach = Estimator("robust", T_SLOW, 0.005).lag_s
    return profile(model, torch.zeros(1), source=sensor, min_window_s=reach + 3 * T_SLOW, seed=seed,
                   progress=lambda *args: None, **kwargs)


def test_a_slow_sensors_windows_lie_on_its_grid_abut_and_hold_their_calls_whole():
    """Each window is whole update periods, the next starts where the last ended, and no call crosses an
    edge: on a noiseless sensor the per-call energy is then exact, with no update lost between windows."""
    torch.set_num_threads(1)
    timeline = Timeline(keep_s=math.inf)
    model = build_model(timeline, [(2.0, 0.004), (0.5, 0.013)]).eval()
    result = slow_profile(model, timeline, seed=3, trials=3, budget_s=None)
    aligned = sorted((w for w in result.windows if w.aligned), key=lambda w: w.t0)
    assert len(aligned) >= 0.8 * len(result.windows)  # all but those before the grid was found
    for w in aligned:
        periods = (w.t1 - w.t0) / T_SLOW
        assert round(periods) >= 3 and periods == pytest.approx(round(periods), abs=1e-6)
        if w.kind == "layer" and w.usable:
            for start, end in timeline.intervals(w.t0, w.t1):
                assert w.t0 <= start and end <= w.t1, (w, start, end)
    abutting = sum(1 for p, q in zip(aligned, aligned[1:]) if abs(q.t0 - p.t1) < 1e-3)
    assert abutting >= 0.5 * (len(aligned) - 1), "%d of %d windows started where the last ended" % (
        abutting, len(aligned) - 1)
    for position, layer in enumerate(result.layers):
        usable = [w for w in result.windows if w.unit == position and w.usable]
        assert layer.dynamic_energy_j == pytest.approx(window_truth(timeline, usable), rel=0.005), layer.label


class Erratic(nn.Module):
    """A layer whose calls alternate between a short and a long one: the next call's end is hard to foresee."""

    def __init__(self, timeline: Timeline, extra_w: float, durations_s):
        super().__init__()
        self.timeline, self.extra_w, self.durations_s, self.n = timeline, extra_w, durations_s, 0

    def forward(self, x):
        start = self.timeline.begin("erratic", self.extra_w)
        hold_until(start + self.durations_s[self.n % len(self.durations_s)], self.timeline.clock)
        self.timeline.end()
        self.n += 1
        return x


def test_a_call_that_runs_past_its_windows_last_update_gets_the_window_measured_again():
    """Its tail would land in the next period, outside the window: that window is dropped, never counted."""
    torch.set_num_threads(1)
    timeline = Timeline(keep_s=math.inf)
    model = nn.Sequential(Erratic(timeline, 1.0, (0.01, 0.09))).eval()
    result = slow_profile(model, timeline, seed=4, trials=4, budget_s=None)
    overran = [w for w in result.windows if w.overran]
    assert overran and all(w.dropped and not w.usable for w in overran)
    layer = result.layers[0]
    usable = [w for w in result.windows if w.unit == 0 and w.usable]
    assert len(usable) >= 4 and layer.trials == len(usable)
    assert layer.dynamic_energy_j == pytest.approx(window_truth(timeline, usable), rel=0.01)


def test_layer_windows_share_references_about_a_second_apart_on_a_fast_sensor():
    torch.set_num_threads(1)
    timeline = Timeline(keep_s=math.inf)
    model = build_model(timeline, [(1.0, 0.001)] * 12).eval()
    sensor = GroundTruthSensor(timeline, 0.0066, seed=6)
    result = profile(model, torch.zeros(1), source=sensor, trials=2, target_ci=1.0, budget_s=None, seed=6,
                     progress=lambda *args: None)
    every = result.meta["layer_windows_per_reference"]
    assert every == int(measure.REF_SPACING_S / result.meta["window_s"]) - 1 > 1
    timeline_of_kinds = [w.kind for w in sorted(result.windows, key=lambda w: w.t0)]
    assert timeline_of_kinds[0] == timeline_of_kinds[-1] == "idle"
    runs = "".join("R" if kind == "idle" else "W" for kind in timeline_of_kinds).split("R")
    assert max(len(run) for run in runs) <= every
    refs = sorted((w for w in result.windows if w.kind == "idle"), key=lambda w: w.t0)
    assert len(refs) < len(result.windows) / 4  # references are a small share of the time
    assert not [w for w in result.windows if w.dirty == "no reference"]
    assert all(layer.trials >= 2 and not layer.flag for layer in result.layers)


def test_the_auto_budget_ends_refining_in_proportion_to_the_planned_rounds(monkeypatch):
    """A target no layer can reach: refinement goes on until 1.5x the planned rounds' time, and not before
    the floors (made small here; the sensor's, 1000 updates, the longer), the widest CI first, then the
    profile is complete, with the budget it used in its meta."""
    monkeypatch.setattr(measure, "AUTO_MIN_S", 3.0)
    monkeypatch.setattr(measure, "AUTO_MIN_UPDATES", 1000)
    torch.set_num_threads(1)
    timeline = Timeline(keep_s=math.inf)
    model = build_model(timeline, [(1.0, 0.001), (0.2, 0.002), (3.0, 0.0005)]).eval()
    sensor = GroundTruthSensor(timeline, 0.0066, seed=7)
    result = profile(model, torch.zeros(1), source=sensor, trials=2, target_ci=1e-6, seed=7,
                     progress=lambda *args: None)
    meta = result.meta
    assert meta["budget_auto"] and meta["budget_hit"] and result.complete
    assert 1000 * 0.0066 <= meta["budget_s"] < meta["wall_s"] + 1.0
    planned = 2 * (len(result.layers) + 1)
    refined = [w for w in result.windows if w.kind != "idle" and w.trial >= 2]
    assert len(refined) >= len(result.layers) and planned < sum(1 for w in result.windows if w.kind != "idle")


def test_budget_words_and_numbers():
    assert parse_budget("auto") == "auto" and parse_budget(" AUTO ") == "auto"
    assert parse_budget("none") is None and parse_budget("42.5") == 42.5
    for bad in ("0", "-3", "soon", "inf", "nan", ""):
        with pytest.raises(ProfilerError) as info:
            parse_budget(bad)
        assert "--budget-s" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ProfilerError):
        profile(nn.Linear(2, 2), torch.zeros(2), source="sim", budget_s="later")
