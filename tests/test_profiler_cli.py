"""``jetson-power-profile`` as users run it: real subprocesses, the sim source, a real daemon."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from exporter.sources.replay import load_trace
from tests.support.daemon import ROOT, Daemon, free_port
from tests.support.models import write_tiny_model
from tests.support.profiler_cli import env, run_cli

FAST = ["--weights", "none", "--input-shape", "1,3,32,32", "--source", "sim", "--min-window-s", "0.05",
        "--trials", "2", "--seed", "1"]
SUFFIXES = ("energy_full.csv", "summary.csv", "summary.json", "energy_plot.png")


def outputs(out_dir, model):
    return [os.path.join(out_dir, "%s_layerwise_%s" % (model, s)) for s in SUFFIXES]


@pytest.mark.slow
def test_vgg11_end_to_end(tmp_path):
    out = str(tmp_path / "results")
    proc = run_cli("--model", "vgg11", "--out", out, *FAST)
    assert proc.returncode == 0, proc.stderr
    full_csv, summary_csv, summary_json, plot = outputs(out, "vgg11")
    assert sorted(os.listdir(out)) == sorted([os.path.basename(p) for p in (full_csv, summary_csv, summary_json, plot)]
                                             + ["vgg11_inference.csv"])

    data = json.load(open(summary_json))
    layers = data["layers"]
    assert len(layers) == 29
    assert sum(layer["module"].startswith("features.") for layer in layers) == 21
    assert [layer["module"] for layer in layers].count("avgpool") == 1
    assert sum(layer["module"].startswith("classifier.") for layer in layers) == 7
    assert [layer["label"] for layer in layers[:3]] == ["Conv2d_0", "ReLU_1", "MaxPool2d_2"]
    meta = data["meta"]
    assert meta["complete"] is True and meta["source"] == "sim" and meta["simulated"] is True
    assert meta["sensor_update_interval_s"] == pytest.approx(0.0066)
    assert meta["input_shape"] == [1, 3, 32, 32] and meta["dtype"] == "float32" and meta["device"] == "cpu"
    assert meta["torch_version"] and meta["estimator"] == "robust"
    assert 0.5 < data["idle_power_w"] < 10  # the simulated Nano idles near 1.3 W, tops out near 7 W
    # the simulated board follows this machine's load: a layer whose every window a neighbouring process
    # disturbed is flagged (checked below) instead of measured
    measured = [layer for layer in layers if not layer["flag"]]
    assert measured
    for layer in measured:
        assert layer["duration_s"] > 0 and layer["calls_per_window"] >= 1 and layer["trials"] >= 1
        assert layer["samples"] > 0
    powers = sorted(layer["power_w"] for layer in measured)
    assert 0.5 < powers[len(powers) // 2] < 20
    whole = data["whole_model"]
    assert whole["energy_j"] > 0 and whole["coverage"] > 0
    # a layer whose figures cannot be right is flagged with its reason and left out of the sums
    flagged = [layer for layer in layers if layer["flag"]]
    assert whole["layers_measured"] + whole["layers_flagged"] == 29 and whole["layers_flagged"] == len(flagged)
    for layer in flagged:
        assert "FLAGGED (%s)" % layer["flag"] in proc.stdout

    with open(summary_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == [layer["label"] for layer in layers]
    assert {"energy_j", "energy_ci95_j", "dynamic_energy_j", "calls_per_window", "module", "op", "flag",
            "windows_disturbed"} <= set(rows[0])

    with open(full_csv) as fh:
        header = fh.readline().strip().split(",")
    assert header[:2] == ["time_s", "total_w"] and header[-2:] == ["layer", "trial"]
    assert "POM_5V_IN_w" in header
    trace = load_trace(full_csv)  # the raw samples replay as a power trace
    assert trace.duration_s > 1.0
    labels = {row["layer"] for row in csv.DictReader(open(full_csv))}
    assert {"idle", "whole_model", "Conv2d_0", "Linear_28"} <= labels

    assert open(plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| Energy=" in proc.stdout and "| Avg Power=" in proc.stdout
    assert "Total (%d layers" % whole["layers_measured"] in proc.stdout and "Whole model" in proc.stdout
    assert "SIMULATED: source sim" in proc.stdout
    assert "progress:" in proc.stderr
    # The run's cwd is the checkout, the output under /tmp: the paths printed are the real ones.
    for path in (full_csv, summary_csv, summary_json, plot):
        assert "\n  %s\n" % path in proc.stdout, proc.stdout[-600:]


@pytest.mark.parametrize("case", ["unknown model", "rejected shape", "missing weights", "garbage weights",
                                  "unwritable out", "bad budget"])
def test_bad_input_is_one_line_and_leaves_no_file(tmp_path, case):
    out = str(tmp_path / "out")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a state dict")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    args = {
        "unknown model": ["--model", "nosuchnet", "--weights", "none"],
        "rejected shape": ["--model", "vgg11", "--weights", "none", "--input-shape", "1,5,32,32"],
        "missing weights": ["--model", "vgg11", "--weights", str(tmp_path / "absent.pth")],
        "garbage weights": ["--model", "vgg11", "--weights", str(garbage)],
        "unwritable out": ["--model", "vgg11", "--weights", "none"],
        "bad budget": ["--model", "vgg11", "--weights", "none", "--budget-s", "soon"],
    }[case]
    if case == "unwritable out":
        out = str(blocker / "results")
    proc = run_cli(*args, "--out", out, "--source", "sim", "--min-window-s", "0.05", "--trials", "2")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("jetson-power-profile: error: ") and "Traceback" not in proc.stderr
    if os.path.isdir(out):
        assert os.listdir(out) == []


@pytest.mark.slow
def test_sigint_writes_what_was_measured(tmp_path):
    out = str(tmp_path / "results")
    args = [a if a != "0.05" else "0.1" for a in FAST] + ["--trials", "3"]
    # Ctrl-C at a terminal: a suite started in the background (``make test &``) inherits SIGINT
    # ignored, and Python keeps an inherited ignore, so the child gets the terminal's default back.
    proc = subprocess.Popen([sys.executable, "-m", "profiler", "--model", "vgg11", "--out", out] + args,
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stderr:  # the progress lines: wait until the first layers are measured
            if "round 1/3" in line and not line.startswith("progress:   0%"):
                break
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "incomplete" in stderr
    for path in outputs(out, "vgg11"):
        assert os.path.isfile(path)
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    data = json.load(open(outputs(out, "vgg11")[2]))
    assert data["meta"]["complete"] is False and data["meta"]["stopped_by"] == "interrupted"
    assert len(data["layers"]) == 29
    measured = [layer for layer in data["layers"] if layer["trials"]]
    assert 1 <= len(measured) and any(layer["trials"] < 3 for layer in data["layers"])
    assert "INCOMPLETE" in stdout


@pytest.mark.slow
def test_torchscript_file_and_factory_with_keywords(tmp_path):
    (tmp_path / "kwnet.py").write_text(
        "import torch\n"
        "from torch import nn\n\n"
        "class Scale(nn.Module):\n"
        "    def forward(self, x, *, factor=1.0):\n"
        "        return x * factor\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 4, 3, padding=1)\n"
        "        self.act = nn.ReLU()\n"
        "        self.scale = Scale()\n"
        "    def forward(self, x):\n"
        "        x = self.act(self.conv(x))\n"
        "        return self.act(self.scale(x, factor=-2.0))\n\n"
        "def build():\n"
        "    return Net()\n"
    )
    script = (
        "import sys, torch, warnings; warnings.simplefilter('ignore'); sys.path.insert(0, %r)\n"
        "import kwnet\n"
        "torch.jit.trace(kwnet.build().eval(), torch.randn(1, 3, 16, 16)).save(%r)\n"
    ) % (str(tmp_path), str(tmp_path / "net.pt"))
    subprocess.run([sys.executable, "-c", script], check=True, env=env(), timeout=120)
    common = ["--input-shape", "1,3,16,16", "--source", "sim", "--min-window-s", "0.05", "--trials", "2"]

    factory = run_cli("--model", "kwnet:build", "--out", str(tmp_path / "f"), *common, cwd=str(tmp_path))
    assert factory.returncode == 0, factory.stderr
    layers = json.load(open(tmp_path / "f" / "build_layerwise_summary.json"))["layers"]
    assert [(r["label"], r["module"]) for r in layers] == [
        ("Conv2d_0", "conv"), ("ReLU_1", "act"), ("Scale_2", "scale"), ("ReLU_3", "act")]

    traced = run_cli("--model", str(tmp_path / "net.pt"), "--out", str(tmp_path / "t"), *common)
    assert traced.returncode == 0, traced.stderr
    assert traced.stderr.count("Warning") == 0
    layers = json.load(open(tmp_path / "t" / "net_layerwise_summary.json"))["layers"]
    assert [(r["label"], r["module"]) for r in layers] == [
        ("Conv2d_0", "conv"), ("ReLU_1", "act"), ("Scale_2", "scale"), ("ReLU_3", "act")]


def test_no_daemon_costs_one_warning(tmp_path):
    url = "http://127.0.0.1:%d" % free_port()
    proc = run_cli("--model", "kwnet:build", "--input-shape", "1,3,8,8", "--exporter", url,
                   "--out", str(tmp_path / "o"), "--source", "sim", "--min-window-s", "0.05", "--trials", "2",
                   cwd=str(write_tiny_model(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and url in warnings[0]
    meta = json.load(open(tmp_path / "o" / "build_layerwise_summary.json"))["meta"]
    assert meta["measured_via"] == "in-process sampler"


@pytest.mark.slow
def test_live_push_to_a_real_daemon(tmp_path):
    with Daemon("--source", "sim") as daemon:
        proc = subprocess.Popen(
            [sys.executable, "-m", "profiler", "--model", "kwnet:build", "--input-shape", "1,3,8,8",
             "--exporter", daemon.url, "--out", str(tmp_path / "o"), "--min-window-s", "0.1", "--trials", "2"],
            cwd=str(write_tiny_model(tmp_path)), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = set()
        stop = threading.Event()

        def poll():
            while not stop.is_set():
                for labels, value in daemon.values("jetson_profiler_active_layer"):
                    if value == 1 and labels.get("model") == "build":
                        seen.add(labels["layer"])
                time.sleep(0.02)

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            stdout, stderr = proc.communicate(timeout=120)
        finally:
            stop.set()
            poller.join()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, stderr
        assert "warning" not in stderr.lower()
        assert len(seen) >= 2, seen  # the active layer moved from layer to layer
        assert not [v for labels, v in daemon.values("jetson_profiler_active_layer")
                    if labels.get("model") == "build" and v == 1]  # ...and cleared at the end
        energies = {labels["layer"]: v for labels, v in daemon.values("jetson_layer_call_energy_joules")
                    if labels.get("model") == "build"}
        summary = json.load(open(tmp_path / "o" / "build_layerwise_summary.json"))
        # every layer with a finished trial, as the summary has it (a loaded machine may leave one unmeasured)
        measured = {layer["label"]: layer["energy_j"] for layer in summary["layers"] if layer["trials"]}
        assert set(measured) <= {"Conv2d_0", "ReLU_1", "Flatten_2", "Linear_3"} and len(measured) >= 2, measured
        assert energies == pytest.approx({label: max(0.0, e) for label, e in measured.items()}), (energies, measured)
        assert summary["meta"]["measured_via"] == "exporter " + daemon.url
