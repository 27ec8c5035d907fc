"""Energy per inference: the profile's figures, the files, and the gauges the daemon exports per power mode."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter import contract
from profiler.result import ProfileResult, inference_figures
from tests.support import prom
from tests.support.daemon import ROOT, Daemon
from tests.support.profiler_cli import env

FAKEBIN = str(Path(__file__).resolve().parent / "fakebin")
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
    """CLI on mobilenet_v3_small (batch 2) under a stand-in nvpmodel in mode MODE_15W, against the real daemon."""
    out = tmp_path / "o"
    with Daemon("--source", "sim") as daemon:
        # an earlier profile of the same model in another mode stays beside the new one
        assert daemon.post(contract.INFERENCE_PATH, _body(model="mobilenet_v3_small"))[0] == 200
        proc = subprocess.run(
            [sys.executable, "-m", "profiler", "--model", "mobilenet_v3_small", "--weights", "none",
             "--input-shape", "2,3,32,32", "--granularity", "children", "--source", "sim", "--min-window-s", "0.05",
             "--trials", "2", "--seed", "1", "--exporter", daemon.url, "--out", str(out)],
            cwd=ROOT, env=dict(env(), PATH=FAKEBIN + os.pathsep + os.environ["PATH"], FAKE_NVPMODEL_MODE="MODE_15W"),
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "warning" not in proc.stderr.lower(), proc.stderr
        data = json.load(open(out / "mobilenet_v3_small_layerwise_summary.json"))
        inference, whole = data["inference"], data["whole_model"]
        assert data["meta"]["nvpmodel"] == "MODE_15W" and data["meta"]["batch_size"] == 2
        assert not inference["flag"], inference  # a flagged figure is not pushed: the rest would not hold
        assert inference["batch_size"] == 2 and inference["latency_s"] == whole["duration_s"] > 0
        assert inference["energy_per_inference_j"] == whole["energy_j"] > 0
        assert inference["energy_per_inference_ci95_j"] == whole["energy_ci95_j"]
        assert inference["dynamic_energy_per_inference_j"] == whole["dynamic_energy_j"]
        assert inference["energy_per_sample_j"] == pytest.approx(whole["energy_j"] / 2)
        assert inference["inferences_per_joule"] == pytest.approx(1 / whole["energy_j"])
        assert inference["mean_power_w"] == whole["power_w"]
        assert "Per inference (batch 2, power mode MODE_15W): Latency=" in proc.stdout

        with open(out / "mobilenet_v3_small_inference.csv") as fh:
            (row,) = list(csv.DictReader(fh))
        assert row["power_mode"] == "MODE_15W" and row["method"] == "isolate" and row["simulated"] == "True"
        assert float(row["energy_per_inference_j"]) == inference["energy_per_inference_j"]
        assert int(row["batch_size"]) == 2

        model = "mobilenet_v3_small"
        assert _by_mode(daemon, "jetson_inference_energy_joules", model) == {
            "MAXN": 0.05, "MODE_15W": pytest.approx(inference["energy_per_inference_j"])}
        expected = {
            "jetson_inference_dynamic_energy_joules": inference["dynamic_energy_per_inference_j"],
            "jetson_inference_latency_seconds": inference["latency_s"],
            "jetson_inference_power_watts": inference["mean_power_w"],
            "jetson_inference_per_joule": inference["inferences_per_joule"],
            "jetson_inference_batch_size": 2,
        }
        for metric, value in expected.items():
            assert _by_mode(daemon, metric, model)["MODE_15W"] == pytest.approx(value), metric
        text = daemon.metrics()
        assert prom.promtool_check(text) == ""
        for name in GAUGES:
            assert "# TYPE %s gauge" % name in text


def test_the_daemon_bounds_power_modes_and_refuses_what_the_contract_refuses():
    with Daemon("--source", "sim", "--max-power-modes", "2", "--max-models", "1") as daemon:
        for mode in ("MAXN", "MODE_10W", "MODE_15W"):
            assert daemon.post(contract.INFERENCE_PATH, _body(power_mode=mode)) == (200, {"ok": True})
        # the least recently updated mode goes, counted with the other evicted series
        assert set(_by_mode(daemon, "jetson_inference_energy_joules", "net")) == {"MODE_10W", "MODE_15W"}
        assert daemon.value("jetson_exporter_layer_series_evicted_total") == 6
        assert _by_mode(daemon, "jetson_inference_per_joule", "net") == {"MODE_10W": 20.0, "MODE_15W": 20.0}
        # zero energy has no inferences per joule: that gauge is left out, not infinite
        assert daemon.post(contract.INFERENCE_PATH, _body(power_mode="MODE_10W", energy_j=0.0))[0] == 200
        assert _by_mode(daemon, "jetson_inference_per_joule", "net") == {"MODE_15W": 20.0}
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
