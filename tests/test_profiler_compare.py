"""``jetson-power-profile compare``: real profiles of torchvision models on the simulated board, side by side."""

import csv
import json
import os
import struct

import pytest
import torch
import torchvision

from profiler import Comparison, ProfilerError, compare, profile
from profiler.cli import main
from profiler.compare import match_layers
from profiler.estimate import difference_ci95
from tests.support.profiler_cli import run_cli

# two trials give a CI; a target this wide refines no layer, so each profile is its base rounds only
FAST = {"source": "sim", "min_window_s": 0.05, "trials": 2, "seed": 1, "target_ci": 1000.0}


def _profile(name, granularity, dtype):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval().to(dtype)
    return profile(model, torch.randn(1, 3, 32, 32, dtype=dtype), granularity=granularity, model_name=name, **FAST)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """resnet18 (leaf: its BasicBlocks call one ReLU twice) in float32 and float16, mobilenet_v3_small by children."""
    directory = tmp_path_factory.mktemp("profiles")
    results = {
        "r18": _profile("resnet18", "leaf", torch.float32),
        "r18h": _profile("resnet18", "leaf", torch.float16),  # float16 convolutions run on CPU in torch 2.x
        "mnv3": _profile("mobilenet_v3_small", "children", torch.float32),
    }
    paths = {key: result.write_json(str(directory / (key + ".json"))) for key, result in results.items()}
    return results, paths


def _edited(path, tmp_path, name, edit):
    """A copy of a real profile's JSON with ``edit(data)`` applied."""
    data = json.load(open(path))
    edit(data)
    out = str(tmp_path / name)
    with open(out, "w") as fh:
        json.dump(data, fh)
    return out


def _png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_difference_ci_is_root_sum_square_and_significant_only_when_it_excludes_zero():
    assert difference_ci95(1.0, 0.3, 1.6, 0.4) == pytest.approx((0.6, 0.5, True))
    assert difference_ci95(1.0, 0.3, 1.4, 0.4)[1:] == pytest.approx((0.5, False))
    assert difference_ci95(1.6, 0.4, 1.0, 0.3) == pytest.approx((-0.6, 0.5, True))  # a decrease, the other way
    assert difference_ci95(1.4, 0.4, 1.0, 0.3)[2] is False
    assert difference_ci95(1.0, None, 9.0, 0.1) == (8.0, None, False)  # one trial: no CI, never significant


@pytest.mark.slow
def test_one_model_in_two_dtypes(runs, tmp_path):
    results, paths = runs
    comparison = compare([paths["r18"], paths["r18h"]])
    assert isinstance(comparison, Comparison) and len(comparison.pairs) == 1
    assert [p.name for p in comparison.profiles] == ["resnet18-float32", "resnet18-float16"]
    pair = comparison.pairs[0]
    layers = results["r18"].layers
    assert len(layers) == 60 and len(pair.rows) == 60
    # every call matches the same call: the k-th call of the shared ReLU the other's k-th, whatever the label
    assert all(r["match"] == "path" and r["baseline_label"] == r["other_label"] for r in pair.rows)
    assert [r["module"] for r in pair.rows].count("layer1.0.relu") == 2
    for row, a, b in zip(pair.rows, layers, results["r18h"].layers):
        if a.flag or b.flag:
            assert row["flag"] and row["delta_j"] is None and not row["significant"]
            continue
        assert row["baseline_j"] == pytest.approx(a.energy_j) and row["other_j"] == pytest.approx(b.energy_j)
        delta, ci, significant = difference_ci95(a.energy_j, a.energy_ci95_j, b.energy_j, b.energy_ci95_j)
        assert row["delta_j"] == pytest.approx(delta) and row["delta_ci95_j"] == pytest.approx(ci)
        assert row["significant"] is significant and row["delta_pct"] == pytest.approx(100 * delta / a.energy_j)
    for side, key in (("baseline", "r18"), ("other", "r18h")):
        inference = results[key].inference
        if inference is None or inference["flag"]:  # a whole model every window of which a neighbour disturbed
            assert pair.whole[side + "_j"] is None and not pair.whole["significant"]
            continue
        assert pair.whole[side + "_j"] == pytest.approx(inference["energy_per_inference_j"])
        assert pair.whole[side + "_latency_s"] == pytest.approx(inference["latency_s"])
    assert pair.total["layers"] == sum(1 for r in pair.rows if r["delta_j"] is not None)
    # (and a whole model that a neighbouring process disturbed in every window is said to be unusable)
    assert pair.warnings[0] == "dtypes differ: float32 (resnet18-float32) vs float16 (resnet18-float16)"
    assert all("no usable energy per inference" in w for w in pair.warnings[1:])

    # ProfileResult objects compare exactly as their JSON does; the dynamic energy on request
    same = compare([results["r18"], results["r18h"]]).pairs[0]
    assert [r["delta_j"] for r in same.rows] == pytest.approx([r["delta_j"] for r in pair.rows], nan_ok=True)
    dynamic = compare([results["r18"], results["r18h"]], energy="dynamic")
    assert [r["baseline_j"] for r in dynamic.pairs[0].rows if not r["baseline_flag"]] == pytest.approx(
        [layer.dynamic_energy_j for layer in layers if not layer.flag])

    paths_written = comparison.write_all(str(tmp_path / "out"))
    assert sorted(os.listdir(str(tmp_path / "out"))) == sorted(
        "resnet18-float32_vs_resnet18-float16_compare." + ext for ext in ("csv", "md", "png"))
    with open(paths_written["csv"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 60 + 2 and rows[-1]["match"] == "energy per inference"
    assert {"baseline_energy_j", "delta_energy_ci95_j", "significant", "flag"} <= set(rows[0])
    assert all("dtypes differ" in r["warnings"] for r in rows)
    text = open(paths_written["markdown"]).read()
    assert "dtypes differ" in text and "SIMULATED" in text and "| layer1.0.relu | ReLU |" in text
    width, height = _png_size(paths_written["plot"])
    assert height >= 60 * 20  # a fixed height per layer row: 150+ layers stay readable
    summary = comparison.console_summary()
    assert "warning: dtypes differ" in summary and "Energy per inference" in summary


@pytest.mark.slow
def test_two_models_list_unmatched_layers_on_both_sides(runs, tmp_path):
    _, paths = runs
    comparison = compare([paths["r18"], paths["mnv3"], paths["r18h"]])  # the first is every pair's baseline
    assert [(p.baseline.name, p.other.name) for p in comparison.pairs] == [
        ("resnet18-float32", "mobilenet_v3_small-float32"), ("resnet18-float32", "resnet18-float16")]
    pair = comparison.pairs[0]
    matched = [r for r in pair.rows if r["match"] == "path"]
    assert [(r["module"], r["op"]) for r in matched] == [("avgpool", "AdaptiveAvgPool2d")]
    only_other = [r["module"] for r in pair.rows if r["baseline_label"] is None]
    assert only_other == ["features", "classifier"]
    assert sum(1 for r in pair.rows if r["other_label"] is None) == 59
    assert all(r["delta_j"] is None and r["match"].startswith("only ") for r in pair.rows if r not in matched)
    assert any(w.startswith("granularities differ: leaf") for w in pair.warnings)
    assert not any("dtypes" in w for w in pair.warnings)
    text = comparison.markdown()
    assert "| features | Sequential |  |" in text and "only mobilenet_v3_small-float32" in text
    comparison.write_all(str(tmp_path))
    assert len(os.listdir(str(tmp_path))) == 3


@pytest.mark.slow
def test_renamed_paths_missing_rows_and_flags_on_real_rows(runs, tmp_path):
    _, paths = runs

    def wrap(data):  # the same model inside a wrapper: every path gains a prefix
        for layer in data["layers"]:
            layer["module"] = "model." + layer["module"]

    def rename(data):  # one stage renamed, and a layer of the next one gone
        gone = [i for i, layer in enumerate(data["layers"]) if layer["module"] == "layer3.0.bn1"]
        del data["layers"][gone[0]]
        for layer in data["layers"]:
            if layer["module"].startswith("layer2."):
                layer["module"] = "stage2." + layer["module"][len("layer2."):]

    base = json.load(open(paths["r18"]))["layers"]
    other = json.load(open(_edited(paths["r18"], tmp_path, "wrapped.json", wrap)))["layers"]
    rows = match_layers(base, other)
    assert len(rows) == 60 and all(how == "renamed" and base[i]["label"] == other[j]["label"] for i, j, how in rows)
    other = json.load(open(_edited(paths["r18"], tmp_path, "renamed.json", rename)))["layers"]
    rows = match_layers(base, other)
    hows = {base[i]["module"]: how for i, j, how in rows if i is not None and base[i]["module"] != "layer1.0.relu"}
    assert hows["layer3.0.bn1"] == "only" and hows["layer2.0.conv1"] == hows["layer2.1.bn2"] == "renamed"
    assert hows["layer3.0.conv1"] == hows["fc"] == "path" and len(rows) == 60
    assert all(base[i]["label"] == other[j]["label"] for i, j, how in rows if j is not None)

    # a profile from before the energy per inference existed: the whole-model row gives the same figure
    older = compare([paths["r18"], _edited(paths["r18"], tmp_path, "old.json", lambda data: data.pop("inference"))])
    whole = json.load(open(paths["r18"]))["whole_model"]
    expected = None if whole["flag"] or not whole["trials"] else pytest.approx(whole["energy_j"])
    assert older.pairs[0].whole["other_j"] == older.pairs[0].whole["baseline_j"] == expected

    # known CIs on a real profile: the same change is significant or not as the CIs allow
    def known(energy, ci, flag=""):
        def edit(data):
            layer = data["layers"][0]
            layer.update(energy_j=energy, energy_ci95_j=ci, flag=flag, trials=2)
        return edit

    a = _edited(paths["r18"], tmp_path, "a.json", known(0.010, 0.001))
    for energy, ci, significant in ((0.013, 0.002, True), (0.0125, 0.003, False), (0.007, 0.001, True)):
        row = compare([a, _edited(paths["r18"], tmp_path, "b.json", known(energy, ci))]).pairs[0].rows[0]
        assert row["delta_j"] == pytest.approx(energy - 0.010) and row["significant"] is significant
        assert row["delta_ci95_j"] == pytest.approx((0.001 ** 2 + ci ** 2) ** 0.5)
    flagged = compare([a, _edited(paths["r18"], tmp_path, "f.json", known(0.5, 0.001, "negative total energy"))])
    row = flagged.pairs[0].rows[0]
    assert row["delta_j"] is None and not row["significant"] and row["other_flag"] == "negative total energy"
    line = [x for x in flagged.markdown().splitlines() if x.startswith("| conv1 |")][0]
    assert "| FLAGGED | FLAGGED (resnet18-f: negative total energy) |" in line
    assert "0.5" not in line and "500" not in line  # the flagged figure is never shown as a plain number


@pytest.mark.slow
def test_cli_compares_and_rejects_bad_input_in_one_line(runs, tmp_path, capsys):
    _, paths = runs
    out = tmp_path / "cmp"
    proc = run_cli("compare", paths["r18"], paths["r18h"], "--out", str(out), "--energy", "dynamic")
    assert proc.returncode == 0, proc.stderr
    assert "Compare resnet18-float32 (baseline) vs resnet18-float16: dynamic energy" in proc.stdout
    assert "SIMULATED" in proc.stdout and "warning: dtypes differ" in proc.stdout
    assert len(os.listdir(str(out))) == 3 and not [f for f in os.listdir(str(out)) if f.endswith(".tmp")]
    assert "baseline_dynamic_energy_j" in open(str(out / "resnet18-float32_vs_resnet18-float16_compare.csv")).read()

    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"dashboard": {"panels": []}}))
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    cases = {
        "missing": [str(tmp_path / "absent.json"), paths["r18"]],
        "not json": [str(garbage), paths["r18"]],
        "other json": [paths["r18"], str(other)],
        "one file": [paths["r18"]],
        "bad top": [paths["r18"], paths["r18h"], "--top", "-1"],
        "unwritable": [paths["r18"], paths["r18h"], "--out", str(blocker / "x")],
    }
    for case, args in cases.items():
        code = main(["compare"] + args + ([] if "--out" in args else ["--out", str(tmp_path / "none")]))
        err = capsys.readouterr().err
        assert code == 2, case
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("jetson-power-profile: error: "), (case, err)
    assert not os.path.exists(str(tmp_path / "none")) or os.listdir(str(tmp_path / "none")) == []


def test_compare_needs_two_profiles_and_a_known_energy():
    for args, kwargs in ((["a.json"], {}), ("ab", {}), (["a.json", "b.json"], {"energy": "idle"})):
        with pytest.raises(ProfilerError) as info:
            compare(args, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ProfilerError, match="cannot compare int"):
        compare([1, 2])
