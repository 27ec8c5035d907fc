"""In-situ attribution: the whole model runs, each layer's energy is solved for from the sensor's updates."""

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import profiler
from profiler.insitu import FRAMEWORK, GRIDLESS_FLAG, _bartlett, fit_grid, on_grid
from tests.support.groundtruth import LAYERS, Timeline, binomial_floor, build_model
from tests.support.insitu_harness import run_insitu_harness
from tests.support.profiler_cli import run_cli

PERIOD_S = 0.0066


def test_grid_is_recovered_from_held_values_with_a_skewed_clock():
    """A sensor whose clock runs 0.5 % slow, read on a locked 1/3-period grid with a little jitter."""
    rng = np.random.RandomState(0)
    period, origin = 0.0066 * 1.005, 0.0021
    reads = np.arange(0.0, 6.0, 0.0022) + rng.uniform(0, 0.0002, size=len(np.arange(0.0, 6.0, 0.0022)))
    k = np.floor((reads - origin) / period)
    values = 3.0 + rng.normal(0, 0.03, size=int(k.max()) + 2)[k.astype(int) + 1]
    grid = fit_grid(reads, values, 0.0066)
    assert grid.period == pytest.approx(period, rel=1e-5)
    first, last = grid.centres(period)
    true_centre = origin + period * grid.kc
    assert first - 1e-6 <= true_centre <= last + 1e-6
    assert last - first < 0.0022  # no wider than the reads' spacing
    low, high = grid.periods(true_centre)
    assert low - 1e-9 <= period <= high + 1e-9
    fitted = grid.period
    ends, held = on_grid(reads, values, fitted, grid.origin((first + last) / 2, fitted))
    assert np.all(np.diff(ends) > 0) and len(ends) == len(np.unique(k))
    assert held[5] == values[reads >= ends[5]][0]


def test_no_grid_from_a_source_that_changes_at_random():
    rng = np.random.RandomState(1)
    reads = np.sort(rng.uniform(0, 5, 2000))
    changes = np.sort(rng.uniform(0, 5, 700))
    values = np.searchsorted(changes, reads).astype(float)
    assert fit_grid(reads, values, 0.0066) is None


def test_newey_west_meat_equals_its_sum_over_lags():
    """The running-sum form of the Bartlett-weighted meat is the textbook sum, edges included."""
    rng = np.random.RandomState(3)
    scores = rng.normal(size=(200, 4))
    scores[1:] += 0.6 * scores[:-1]  # serially correlated, as the residuals of a busy board
    for lags in (0, 1, 9, 199, 400):
        top = min(lags, len(scores) - 1)
        expected = scores.T @ scores
        for lag in range(1, top + 1):
            gamma = scores[lag:].T @ scores[:-lag]
            expected += (1 - lag / (top + 1)) * (gamma + gamma.T)
        assert np.allclose(_bartlett(scores, lags), expected, rtol=1e-10, atol=1e-9)


@pytest.fixture(scope="module")
def quiet_run():
    """A run whose sensor grid was found: a sampler starved by the machine's other load may not see the
    updates (the result then says ``update_intervals: reads``), so such a run is repeated, up to three."""
    for seed in (5, 6, 7):
        run = run_insitu_harness(PERIOD_S, seed=seed, insitu_s=8.0)
        if run[0].meta["update_intervals"].startswith("grid"):
            break
    return run


def test_recovers_known_layer_energies_within_its_own_ci(quiet_run):
    result, checks = quiet_run
    assert result.meta["method"] == "in-situ" and result.meta["complete"]
    assert result.meta["update_intervals"].startswith("grid")
    for check in checks:
        ci = check.est_dynamic_ci95_j
        assert ci is not None and ci > 0
        # 2 x the 95 % half-width is ~4 sigma: a biased estimate fails, an honest one passes
        assert abs(check.est_dynamic_j - check.dynamic_j) <= 2 * ci, check
        assert abs(check.est_total_j - check.total_j) <= 2 * check.est_total_ci95_j + 0.02 * check.total_j, check
    big = [c for c in checks if c.share >= 0.05]
    assert len(big) >= 4
    # the CIs are informative, not wide enough to contain anything: the largest layer is pinned to a few %
    largest = max(checks, key=lambda c: c.share)
    assert largest.est_dynamic_ci95_j < 0.05 * largest.dynamic_j


def test_rows_add_up_to_the_whole_model(quiet_run):
    result, checks = quiet_run
    rows = result.layers
    assert [r.label for r in rows[:-1]] == [c.label for c in checks]
    assert rows[-1].label == FRAMEWORK and rows[-1].op == FRAMEWORK
    whole = result.whole_model
    assert math.fsum(r.energy_j for r in rows) == pytest.approx(whole["energy_j"], rel=1e-9)
    assert math.fsum(r.dynamic_energy_j for r in rows) == pytest.approx(whole["dynamic_energy_j"], rel=1e-9)
    assert math.fsum(r.duration_s for r in rows) == pytest.approx(whole["duration_s"], rel=1e-6)
    assert whole["coverage"] == pytest.approx(1.0, rel=1e-9)
    # the whole inference's dynamic energy is known exactly: the Burns' own plus nothing else
    assert whole["dynamic_energy_j"] == pytest.approx(math.fsum(c.dynamic_j for c in checks),
                                                      abs=2 * whole["dynamic_energy_ci95_j"])
    assert result.idle_power_w == pytest.approx(3.0, abs=2 * result.idle["power_ci95_w"] + 0.002)


def test_a_sensor_off_any_grid_flags_every_row():
    """Updates at irregular instants leave no grid to align the reads to: no row is shown as a plain number.

    A sampler starved by the machine's other load reads too seldom to tell a grid from none (its wide change
    brackets fit some grid), so such a run is repeated, up to three."""
    for seed in (3, 4, 5):
        result, _ = run_insitu_harness(PERIOD_S, seed=seed, insitu_s=4.0, jitter_s=0.9 * PERIOD_S)
        if result.meta["update_intervals"] == "reads":
            break
    assert result.meta["update_intervals"] == "reads"
    assert result.layers and all(GRIDLESS_FLAG in layer.flag for layer in result.layers)
    assert result.whole_model["layers_flagged"] == len(result.layers)
    assert result.whole_model["flag"] == GRIDLESS_FLAG == result.inference["flag"], "nor the energy per inference"
    assert "Per inference (batch" in result.console_summary() and "FLAGGED (%s)" % GRIDLESS_FLAG in \
        result.console_summary()


def test_busy_board_cis_hold_the_truth():
    """A drifting idle and 0.8 W bursts of no layer: each layer's 95 % CI of dynamic energy holds the truth.

    Nominal coverage is 95 %; the issue asks for >= 90 %.  Fewer than
    ``binomial_floor(16, 0.9, 0.001)`` of 16 CIs holding would happen less
    than once in a thousand runs if they really covered 90 %.
    """
    torch.set_num_threads(1)
    result, checks = run_insitu_harness(PERIOD_S, seed=7, insitu_s=12.0, busy=True, layers=LAYERS)
    assert result.meta["complete"] and result.meta["update_intervals"].startswith("grid")
    hits = sum(bool(c.ci_contains) for c in checks)
    assert hits >= binomial_floor(len(checks), 0.9, 0.001), [
        "%s %+.1f %% +/- %.1f %%" % (c.label, 100 * c.dynamic_err, 100 * c.est_dynamic_ci95_j / c.dynamic_j)
        for c in checks]
    # informative, not wide enough to contain anything: the biggest layers are pinned to a few %
    assert sorted(c.est_dynamic_ci95_j / c.dynamic_j for c in checks)[len(checks) // 2] < 0.2


def test_both_puts_in_situ_next_to_isolated(tmp_path):
    timeline = Timeline(keep_s=math.inf)
    model = build_model(timeline, [(2.0, 0.004), (0.5, 0.008)]).eval()
    from tests.support.groundtruth import GroundTruthSensor

    sensor = GroundTruthSensor(timeline, PERIOD_S, seed=2)
    result = profiler.profile(model, torch.zeros(1), source=sensor, method="both", insitu_s=4.0, trials=3,
                              min_window_s=0.1, seed=2)
    assert result.meta["method"] == "both"
    assert [row["label"] for row in result.comparison] == ["Burn_0", "Burn_1"]
    for row in result.comparison:
        assert row["insitu_energy_j"] > 0 and row["isolated_energy_j"] > 0
        apart = abs(row["insitu_energy_j"] - row["isolated_energy_j"])
        assert row["disagree"] == (apart > math.hypot(row["insitu_energy_ci95_j"], row["isolated_energy_ci95_j"]))
    paths = result.write_all(str(tmp_path))
    with open(paths["compare_csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["Burn_0", "Burn_1"] and "disagree" in rows[0]
    assert "In-situ vs isolated" in result.console_summary()
    assert json.load(open(paths["json"]))["comparison"][0]["label"] == "Burn_0"


class Alternating(nn.Module):
    """Calls its layers in a different order on every inference: in-situ cannot attribute that."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.ReLU(), nn.Tanh()
        self.flip = False

    def forward(self, x):
        self.flip = not self.flip
        return self.b(self.a(x)) if self.flip else self.a(self.b(x))


def test_a_model_whose_layer_order_changes_is_refused_with_one_line():
    with pytest.raises(profiler.ProfilerError, match="different order"):
        profiler.profile(Alternating(), torch.zeros(4), source="sim", method="in-situ", insitu_s=1.0)


def test_torchscript_is_refused_before_any_measurement():
    scripted = torch.jit.script(nn.Sequential(nn.ReLU()))
    with pytest.raises(profiler.ProfilerError, match="TorchScript"):
        profiler.profile(scripted, torch.zeros(4), source="sim", method="both")


def test_bad_method_and_length_are_refused():
    with pytest.raises(profiler.ProfilerError, match="unknown method"):
        profiler.profile(nn.ReLU(), torch.zeros(4), source="sim", method="replay")
    with pytest.raises(profiler.ProfilerError, match="insitu_s"):
        profiler.profile(nn.ReLU(), torch.zeros(4), source="sim", method="in-situ", insitu_s=0)
    proc = run_cli("--model", "resnet18", "--method", "in-situ", "--insitu-s", "-1", "--out", "/tmp/never")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--insitu-s" in proc.stderr


def test_cli_in_situ_on_a_torchvision_model(tmp_path):
    out = str(tmp_path / "results")
    proc = run_cli("--model", "mobilenet_v3_small", "--weights", "none", "--input-shape", "1,3,64,64",
                   "--source", "sim", "--method", "in-situ", "--insitu-s", "4", "--seed", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    names = sorted(os.listdir(out))
    assert names == sorted(["mobilenet_v3_small_layerwise_" + s for s in
                            ("energy_full.csv", "summary.csv", "summary.json", "energy_plot.png")]
                           + ["mobilenet_v3_small_inference.csv"])
    data = json.load(open(os.path.join(out, "mobilenet_v3_small_layerwise_summary.json")))
    layers = data["layers"]
    assert data["meta"]["method"] == "in-situ" and data["meta"]["inferences"] > 10
    assert layers[-1]["label"] == FRAMEWORK and len(layers) > 100
    assert all(layer["energy_ci95_j"] is not None for layer in layers)
    assert data["whole_model"]["coverage"] == pytest.approx(1.0, rel=1e-9)
    with open(os.path.join(out, "mobilenet_v3_small_layerwise_summary.csv")) as fh:
        assert len(list(csv.DictReader(fh))) == len(layers)
    assert "layers cover 100.0 %" in proc.stdout
    inference = data["inference"]  # the in-situ whole inference, restated per inference
    assert inference["energy_per_inference_j"] == data["whole_model"]["energy_j"] > 0
    assert inference["latency_s"] == data["whole_model"]["duration_s"] > 0
    assert "Per inference (batch 1, power mode unknown): " in proc.stdout  # FLAGGED too where no grid was found
    with open(os.path.join(out, "mobilenet_v3_small_inference.csv")) as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["method"] == "in-situ" and float(row["energy_per_inference_j"]) == inference["energy_per_inference_j"]
