"""Energy per inference: the profile's figures, the files, and the gauges the daemon exports per power mode."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from exporter import contract
from profiler import ProfilerError, profile
from profiler.batch import rebatch
from profiler.result import ProfileResult, inference_figures
from tests.support import prom
from tests.support.daemon import ROOT, Daemon
from tests.support.groundtruth import Burn, GroundTruthSensor, Timeline, hold_until
from tests.support.jetson_root import make_jetson_root, tool_env
from tests.support.profiler_cli import env, run_cli

GAUGES = ("jetson_inference_energy_joules", "jetson_inference_dynamic_energy_joules",
          "jetson_inference_latency_seconds", "jetson_inference_power_watts", "jetson_inference_per_joule",
          "jetson_inference_batch_size")


def _by_mode(daemon, metric, model):
    return {labels["power_mode"]: value for labels, value in daemon.values(metric) if labels["model"] == model}


def _body(**changes):
    body = {"model": "net", "power_mode": "MAXN", "batch_size": 4, "latency_s": 0.01, "energy_j": 0.05,
            "dynamic_energy_j": 0.02, "power_w": 5.0}
    body.update(changes)
    return body


@pytest.mark.slow
def test_a_real_profile_pushes_its_energy_per_inference_labelled_by_power_mode(tmp_path):
    """CLI on mobilenet_v3_small (batch 2) on a stand-in Nano in power mode 5W, against the real daemon."""
    out = tmp_path / "o"
    board = make_jetson_root(tmp_path / "board", 4, mode=1)
    with Daemon("--source", "sim") as daemon:
        # an earlier profile of the same model in another mode stays beside the new one
        assert daemon.post(contract.INFERENCE_PATH, _body(model="mobilenet_v3_small"))[0] == 200
        proc = subprocess.run(
            [sys.executable, "-m", "profiler", "--model", "mobilenet_v3_small", "--weights", "none",
             "--input-shape", "2,3,32,32", "--granularity", "children", "--source", "sim", "--min-window-s", "0.05",
             "--trials", "2", "--seed", "1", "--exporter", daemon.url, "--out", str(out)],
            cwd=ROOT, env=tool_env(board, PYTHONPATH=env()["PYTHONPATH"]),
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "warning" not in proc.stderr.lower(), proc.stderr
        data = json.load(open(out / "mobilenet_v3_small_layerwise_summary.json"))
        inference, whole = data["inference"], data["whole_model"]
        assert data["meta"]["nvpmodel"] == "5W" and data["meta"]["batch_size"] == 2
        assert inference["batch_size"] == 2 and inference["latency_s"] == whole["duration_s"] > 0
        assert inference["energy_per_inference_j"] == whole["energy_j"] > 0
        assert inference["energy_per_inference_ci95_j"] == whole["energy_ci95_j"]
        assert inference["dynamic_energy_per_inference_j"] == whole["dynamic_energy_j"]
        assert inference["energy_per_sample_j"] == pytest.approx(whole["energy_j"] / 2)
        assert inference["inferences_per_joule"] == pytest.approx(1 / whole["energy_j"])
        assert inference["mean_power_w"] == whole["power_w"]
        assert "Per inference (batch 2, power mode 5W): " in proc.stdout

        with open(out / "mobilenet_v3_small_inference.csv") as fh:
            (row,) = list(csv.DictReader(fh))
        assert row["power_mode"] == "5W" and row["method"] == "isolate" and row["simulated"] == "True"
        assert float(row["energy_per_inference_j"]) == inference["energy_per_inference_j"]
        assert int(row["batch_size"]) == 2

        text = daemon.metrics()
        assert prom.promtool_check(text) == ""
        for name in GAUGES:
            assert "# TYPE %s gauge" % name in text
        model = "mobilenet_v3_small"
        if inference["flag"]:  # the simulated board follows this machine's load, which can spoil the figure:
            # a flagged figure is printed as such and never pushed
            assert "FLAGGED (%s)" % inference["flag"] in proc.stdout
            assert _by_mode(daemon, "jetson_inference_energy_joules", model) == {"MAXN": 0.05}
            return
        assert _by_mode(daemon, "jetson_inference_energy_joules", model) == {
            "MAXN": 0.05, "5W": pytest.approx(inference["energy_per_inference_j"])}
        expected = {
            "jetson_inference_dynamic_energy_joules": inference["dynamic_energy_per_inference_j"],
            "jetson_inference_latency_seconds": inference["latency_s"],
            "jetson_inference_power_watts": inference["mean_power_w"],
            "jetson_inference_per_joule": inference["inferences_per_joule"],
            "jetson_inference_batch_size": 2,
        }
        for metric, value in expected.items():
            assert _by_mode(daemon, metric, model)["5W"] == pytest.approx(value), metric


def test_the_daemon_bounds_power_modes_and_refuses_what_the_contract_refuses():
    with Daemon("--source", "sim", "--max-power-modes", "2", "--max-models", "1") as daemon:
        for mode in ("MAXN", "MODE_10W", "5W"):
            assert daemon.post(contract.INFERENCE_PATH, _body(power_mode=mode)) == (200, {"ok": True})
        # the least recently updated mode goes, counted with the other evicted series
        assert set(_by_mode(daemon, "jetson_inference_energy_joules", "net")) == {"MODE_10W", "5W"}
        assert daemon.value("jetson_exporter_layer_series_evicted_total") == 6
        assert _by_mode(daemon, "jetson_inference_per_joule", "net") == {"MODE_10W": 20.0, "5W": 20.0}
        # zero energy has no inferences per joule: that gauge is left out, not infinite
        assert daemon.post(contract.INFERENCE_PATH, _body(power_mode="MODE_10W", energy_j=0.0))[0] == 200
        assert _by_mode(daemon, "jetson_inference_per_joule", "net") == {"5W": 20.0}
        # a second model evicts the first (max_models 1) with its inference series
        assert daemon.post(contract.INFERENCE_PATH, _body(model="other"))[0] == 200
        assert set(m for labels, _ in daemon.values("jetson_inference_energy_joules")
                   for m in [labels["model"]]) == {"other"}
        assert daemon.value("jetson_exporter_layer_series_evicted_total") == 6 + 2 * 6
        assert prom.promtool_check(daemon.metrics()) == ""

        refused = [
            (_body(batch_size=0), "'batch_size' must be a positive integer"),
            (_body(batch_size=True), "'batch_size' must be a positive integer"),
            (_body(energy_j=-0.1), "'energy_j' must not be negative"),
            (_body(latency_s="fast"), "'latency_s' must be a finite number"),
            (_body(power_mode="MAXN\n"), "'power_mode' may only use"),
            (_body(power_mode="m" * 129), "'power_mode' is longer than 128"),
            (dict(_body(), inferences_per_joule=20.0), "unknown field 'inferences_per_joule'"),
            ({k: v for k, v in _body().items() if k != "power_w"}, "'power_w' must be a finite number"),
        ]
        for body, reason in refused:
            with pytest.raises(contract.ContractError, match=reason.replace("(", r"\(")):
                contract.inference_body(body)
            status, answer = daemon.post(contract.INFERENCE_PATH, body)
            assert status == 400 and reason in answer["error"], (body, answer)
        status, answer = daemon.post(contract.INFERENCE_PATH, json.dumps(_body(energy_j=1.0)).replace(
            "1.0", "NaN").encode())
        assert status == 400 and "'energy_j' must be a finite number" in answer["error"], answer
        assert set(_by_mode(daemon, "jetson_inference_energy_joules", "other")) == {"MAXN"}, "nothing refused landed"


def test_without_a_whole_model_figure_there_is_no_inference_and_the_csv_has_only_its_header(tmp_path):
    assert inference_figures(None, 1) is None
    assert inference_figures({"trials": 0, "energy_j": math.nan}, 1) is None  # interrupted before it
    result = ProfileResult(model="m", layers=[], whole_model=None, idle_power_w=math.nan, idle={},
                           meta={"complete": False, "batch_size": 8}, samples=[], windows=[])
    assert result.inference is None and result.to_dict()["inference"] is None
    assert "Per inference: not measured" in result.console_summary()
    path = result.write_inference_csv(str(tmp_path / "m_inference.csv"))
    with open(path) as fh:
        assert [line.split(",")[:4] for line in fh.read().splitlines()] == [
            ["model", "method", "power_mode", "batch_size"]]


class BatchBurn(Burn):
    """A layer whose work grows with the batch: ``overhead_s + per_sample_s x batch`` at ``extra_w`` above idle,
    recorded under the key ``b<batch>`` so each batch size has its own exact truth."""

    def __init__(self, extra_w, overhead_s, per_sample_s, timeline):
        super().__init__(extra_w, overhead_s, timeline, "b")
        self.per_sample_s = per_sample_s

    def forward(self, x):
        start = self.timeline.begin("b%d" % x.shape[0], self.extra_w)
        hold_until(start + self.duration_s + self.per_sample_s * x.shape[0], self.timeline.clock)
        self.timeline.end()
        return x


@pytest.mark.slow
def test_the_batch_size_sweep_recovers_the_true_energy_per_inference_and_per_sample(tmp_path):
    timeline = Timeline()
    sensor = GroundTruthSensor(timeline, 0.0066, idle_w=3.0, seed=3)
    model = nn.Sequential(BatchBurn(2.0, 0.002, 0.001, timeline)).eval()
    try:
        result = profile(model, torch.zeros(1, 4), source=sensor, trials=3, model_name="batchburn", seed=1,
                         batch_sizes=[1, 2, 8], warn=pytest.fail)
    finally:
        sensor.close()
    assert result.complete and result.meta["batch_sizes"] == [1, 2, 8]
    rows = result.batch_sizes
    assert [row["batch_size"] for row in rows] == [1, 2, 8]
    for row in rows:
        truth = timeline.truth("b%d" % row["batch_size"], idle_w=3.0)  # every call of that size, exactly
        assert not row["flag"], row
        error = abs(row["dynamic_energy_per_inference_j"] - truth.dynamic_per_call_j)
        # within 3 % of the truth, or within the run's own CI where the loaded machine widened it
        assert error <= max(0.03 * truth.dynamic_per_call_j, row["dynamic_energy_per_inference_ci95_j"]), (row, truth)
        assert row["energy_per_sample_j"] == pytest.approx(row["energy_per_inference_j"] / row["batch_size"])
        assert row["dynamic_energy_per_sample_j"] == pytest.approx(
            row["dynamic_energy_per_inference_j"] / row["batch_size"])
    # the fixed overhead is shared by the batch: a sample costs less at batch 8 than at batch 1
    assert rows[2]["dynamic_energy_per_sample_j"] < 0.5 * rows[0]["dynamic_energy_per_sample_j"]

    paths = result.write_all(str(tmp_path))
    data = json.load(open(paths["json"]))
    assert [row["batch_size"] for row in data["batch_sizes"]] == [1, 2, 8]
    with open(paths["batch_sizes_csv"]) as fh:
        table = list(csv.DictReader(fh))
    assert os.path.basename(paths["batch_sizes_csv"]) == "batchburn_batch_sizes.csv"
    assert [int(r["batch_size"]) for r in table] == [1, 2, 8] and {r["method"] for r in table} == {"isolate"}
    assert [float(r["energy_per_sample_j"]) for r in table] == [row["energy_per_sample_j"] for row in rows]
    summary = result.console_summary()
    assert "Batch sizes (whole model, energy per inference and per sample):" in summary
    assert "  batch 8: Latency=" in summary and "not measured" not in summary


def test_batch_sizes_are_checked_before_anything_is_measured(tmp_path):
    model = nn.Sequential(nn.Flatten(0), nn.Linear(8, 2))  # flattens the batch too: only batch 1 fits
    for sizes, reason in (([0], "positive integers"), ([2, 2], "given twice"), ([], "non-empty"),
                          ("1,2", "non-empty"), ([1.5], "positive integers")):
        with pytest.raises(ProfilerError, match=reason):
            profile(model, torch.zeros(1, 8), source="sim", batch_sizes=sizes)
    with pytest.raises(ProfilerError, match="the model rejects batch size 4: RuntimeError"):
        profile(model, torch.zeros(1, 8), source="sim", batch_sizes=[1, 4])
    out = tmp_path / "o"
    proc = run_cli("--model", "resnet18", "--batch-sizes", "1,x", "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--batch-sizes" in proc.stderr, proc.stderr
    assert not out.exists()


def test_rebatch_cycles_the_example_samples_along_the_first_dimension():
    x = torch.arange(6.0).reshape(3, 2)
    assert rebatch(x, 5).tolist() == [[0, 1], [2, 3], [4, 5], [0, 1], [2, 3]]
    assert rebatch(x, 2).tolist() == [[0, 1], [2, 3]]
    nested = rebatch({"a": (x, torch.tensor(7.0)), "b": "keep"}, 4)
    assert nested["a"][0].shape == (4, 2) and nested["a"][1].item() == 7.0 and nested["b"] == "keep"


class StopAtBatch(nn.Module):
    """Ctrl-C (KeyboardInterrupt) on the ``after``-th call with a batch of ``size``."""

    def __init__(self, size, after):
        super().__init__()
        self.size, self.after, self.calls = size, after, 0

    def forward(self, x):
        if x.shape[0] == self.size:
            self.calls += 1
            if self.calls == self.after:
                raise KeyboardInterrupt
        return x * 2


def test_ctrl_c_in_the_sweep_keeps_the_profile_and_marks_it_incomplete(tmp_path):
    model = nn.Sequential(StopAtBatch(4, after=3)).eval()  # the check's call, a warm-up call, then Ctrl-C
    result = profile(model, torch.zeros(1, 8), source="sim", min_window_s=0.05, trials=2, seed=1,
                     batch_sizes=[4, 2], warn=pytest.fail)
    assert not result.complete and result.meta["stopped_by"] == "interrupted"
    assert result.inference is not None and result.layers[0].trials >= 1, "the profile before the sweep is kept"
    assert result.batch_sizes == [], "the sweep stopped while calibrating: no size was measured"
    assert "  not measured: batch 4, 2" in result.console_summary()
    paths = result.write_all(str(tmp_path))
    with open(paths["batch_sizes_csv"]) as fh:
        assert len(fh.read().splitlines()) == 1
