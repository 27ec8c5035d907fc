"""Every documented profiler feature on this stack's torch and torchvision, through the CLI and the Python API.

Small inputs and short windows: these check that each feature works on the stack, not what it measures.
"""

import json
import os
import sys

import pytest
import torch
import torchvision
from stack_helpers import Exporter, board_env, command, load_tests_module, run

import profiler
from profiler.board import jetson_clocks_state, nvpmodel_mode, nvpmodel_query
from profiler.errors import ProfilerError
from profiler.models import load_model

FAST = ["--input-shape", "1,3,32,32", "--source", "sim", "--min-window-s", "0.02", "--trials", "1", "--seed", "1"]
jetson_root = load_tests_module("jetson_root")
OUTPUTS = ("energy_full.csv", "summary.csv", "summary.json", "energy_plot.png")

# A module written to the working directory, as a user's own model is (``--model tinynets:kwnet``): a module
# called with a keyword argument, and one module called twice.
TINYNETS = '''
from torch import nn


class Scale(nn.Module):
    def forward(self, x, factor=1.0):
        return x * factor


class KwNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.scale = Scale()

    def forward(self, x):
        return self.act(self.scale(self.act(self.conv(x)), factor=2.0))


def kwnet():
    return KwNet()


def convnet():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 28 * 28, 10))
'''


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "tinynets.py").write_text(TINYNETS)
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("tinynets", None)


def profile_cli(workdir, *args, **env):
    proc = run(command("jetson-power-profile", "profiler") + list(args), workdir, board_env(**env))
    return proc


def summary(out, model):
    paths = [os.path.join(str(out), "%s_layerwise_%s" % (model, suffix)) for suffix in OUTPUTS]
    assert all(os.path.getsize(p) > 0 for p in paths), os.listdir(str(out))
    with open(paths[2]) as handle:
        return json.load(handle)


def default_weights_file(name):
    """Where torchvision keeps ``name``'s DEFAULT weights, asked of torchvision itself."""
    models = torchvision.models
    if hasattr(models, "get_model_weights"):
        url = models.get_model_weights(name).DEFAULT.url
    else:
        url = sys.modules[getattr(models, name).__module__].model_urls[name]
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def constant_state(model, value):
    return {k: torch.full_like(v, value) if v.is_floating_point() else v for k, v in model.state_dict().items()}


def test_torchvision_name_granularity_push_and_board_settings(workdir):
    """resnet18 by name, --granularity children, --exporter push, nvpmodel/jetson_clocks from the stand-ins."""
    out = workdir / "out"
    with Exporter("--source", "sim") as daemon:
        proc = profile_cli(workdir, "--model", "resnet18", "--weights", "none", "--granularity", "children",
                           "--exporter", daemon.url, "--out", str(out), *FAST,
                           JETSON_ROOT=jetson_root.make_jetson_root(workdir / "board", 4, mode=1, clocks="on"))
        assert proc.returncode == 0, proc.stderr
        pushed = {labels["layer"] for labels, _ in daemon.samples("jetson_layer_call_energy_joules")
                  if labels["model"] == "resnet18"}
        per_mode = {labels["power_mode"]: value for labels, value in daemon.samples("jetson_inference_energy_joules")
                    if labels["model"] == "resnet18"}
    data = summary(out, "resnet18")
    inference = data["inference"]  # pushed under the stand-in's power mode unless its figure is flagged
    assert per_mode == ({} if inference["flag"] else {"5W": pytest.approx(inference["energy_per_inference_j"])})
    assert [layer["module"] for layer in data["layers"]] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    # a layer whose windows a starved sampler thread spoiled has no result to push (see profiler/push.py)
    measured = {layer["label"] for layer in data["layers"] if layer["trials"]}
    assert measured and pushed == measured
    meta = data["meta"]
    assert meta["measured_via"] == "exporter %s" % daemon.url
    assert meta["nvpmodel"] == "5W" and meta["jetson_clocks"] == "on"
    assert meta["torch_version"] == torch.__version__ and meta["complete"] is True


def test_state_dict_weights_and_depth_granularity(workdir):
    path = str(workdir / "resnet18.pth")
    torch.save(constant_state(torchvision.models.resnet18(), 0.25), path)
    proc = profile_cli(workdir, "--model", "resnet18", "--weights", path, "--granularity", "depth:2",
                       "--out", str(workdir / "out"), *FAST)
    assert proc.returncode == 0, proc.stderr
    modules = [layer["module"] for layer in summary(workdir / "out", "resnet18")["layers"]]
    assert modules[4:6] == ["layer1.0", "layer1.1"] and len(modules) == 14
    model, _ = load_model("resnet18", path)
    assert float(model.conv1.weight.detach().flatten()[0]) == 0.25


def test_weights_that_do_not_fit_or_run_code_are_one_line_errors(workdir):
    path = str(workdir / "vgg11.pth")
    torch.save(constant_state(torchvision.models.vgg11(), 0.5), path)
    proc = profile_cli(workdir, "--model", "resnet18", "--weights", path, "--out", str(workdir / "out"), *FAST)
    assert proc.returncode == 2 and "do not fit resnet18" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.exists(str(workdir / "out")) or os.listdir(str(workdir / "out")) == []

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("touch %s" % (workdir / "pwned"),))

    evil = str(workdir / "evil.pth")
    torch.save({"conv1.weight": RunsCode()}, evil)
    with pytest.raises(ProfilerError, match="cannot read weights"):
        load_model("resnet18", evil)
    assert not (workdir / "pwned").exists()


def test_cached_default_weights_and_their_absence(workdir, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(workdir / "torch"))
    notices = []
    load_model("resnet18", "DEFAULT", notice=notices.append)
    assert len(notices) == 1 and "random weights" in notices[0]
    cached = default_weights_file("resnet18")
    os.makedirs(os.path.dirname(cached))
    torch.save(constant_state(torchvision.models.resnet18(), 0.125), cached)
    notices = []
    model, _ = load_model("resnet18", "DEFAULT", notice=notices.append)
    assert notices == [] and float(model.fc.weight.detach().flatten()[0]) == 0.125
    proc = profile_cli(workdir, "--model", "resnet18", "--granularity", "children", "--out", str(workdir / "o"),
                       *FAST, TORCH_HOME=str(workdir / "torch"))
    assert proc.returncode == 0 and "notice" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("how", ["trace", "script"])
def test_torchscript_files(workdir, how):
    import tinynets

    eager = tinynets.convnet().eval()
    example = torch.randn(1, 3, 32, 32)
    compiled = torch.jit.trace(eager, example) if how == "trace" else torch.jit.script(eager)
    compiled.save(str(workdir / "net.pt"))
    proc = profile_cli(workdir, "--model", str(workdir / "net.pt"), "--out", str(workdir / "out"), *FAST)
    assert proc.returncode == 0, proc.stderr
    layers = summary(workdir / "out", "net")["layers"]
    assert [(r["label"], r["module"]) for r in layers] == [
        ("Conv2d_0", "0"), ("ReLU_1", "1"), ("Conv2d_2", "2"), ("ReLU_3", "3"), ("Flatten_4", "4"),
        ("Linear_5", "5")]
    # a shape the model refuses is reported as such, and only then
    proc = profile_cli(workdir, "--model", str(workdir / "net.pt"), "--out", str(workdir / "bad"),
                       "--input-shape", "1,3,16,16", "--source", "sim")
    assert proc.returncode == 2 and "net rejects input shape 1,3,16,16" in proc.stderr, proc.stderr


@pytest.mark.parametrize("how", ["trace", "script"])
def test_in_memory_torchscript_captures_what_eager_does(how):
    model = torchvision.models.resnet18().eval()
    example = torch.randn(1, 3, 32, 32)
    compiled = torch.jit.trace(model, example) if how == "trace" else torch.jit.script(model)
    eager, inside = profiler.capture(model, example), profiler.capture(compiled, example)
    assert [(c.label, c.module_path) for c in inside] == [(c.label, c.module_path) for c in eager]
    with torch.no_grad():
        for a, b in zip(eager, inside):
            assert torch.allclose(a(), b(), atol=1e-5), a.label


def test_keyword_arguments_and_a_reused_module_through_the_cli(workdir):
    proc = profile_cli(workdir, "--model", "tinynets:kwnet", "--out", str(workdir / "out"), *FAST)
    assert proc.returncode == 0, proc.stderr
    layers = summary(workdir / "out", "kwnet")["layers"]
    assert [(r["label"], r["module"]) for r in layers] == [
        ("Conv2d_0", "conv"), ("ReLU_1", "act"), ("Scale_2", "scale"), ("ReLU_3", "act")]


def test_python_api_replays_keyword_calls_and_writes_every_output(workdir):
    import tinynets

    model = tinynets.kwnet().eval()
    example = torch.randn(1, 3, 16, 16)
    calls = profiler.capture(model, example)
    scale = calls[2]
    assert scale.kwargs == {"factor": 2.0}
    with torch.no_grad():
        assert torch.equal(scale(), scale.args[0] * 2.0)
    assert "forward" not in vars(model.scale)  # the capture leaves the model as it found it
    result = profiler.profile(model, example, source="sim", min_window_s=0.02, trials=1, seed=1, model_name="kwnet",
                              batch_sizes=[1, 2])
    assert isinstance(result, profiler.ProfileResult) and result.complete
    assert [layer.label for layer in result.layers] == ["Conv2d_0", "ReLU_1", "Scale_2", "ReLU_3"]
    assert [row["batch_size"] for row in result.batch_sizes] == [1, 2]
    os.mkdir(str(workdir / "api"))
    paths = result.write_all(str(workdir / "api"))
    assert sorted(os.path.basename(p) for p in paths.values()) == sorted(
        ["kwnet_layerwise_" + s for s in OUTPUTS] + ["kwnet_inference.csv", "kwnet_batch_sizes.csv"])


def test_board_probes_read_the_tools_as_they_print(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", board_env()["PATH"])
    monkeypatch.setenv("FAKE_NVPMODEL_FAN", "quiet")
    monkeypatch.setenv("JETSON_ROOT", jetson_root.make_jetson_root(tmp_path / "board", 4))
    assert nvpmodel_mode() == "MAXN" and nvpmodel_query() == (0, "MAXN")
    empty_sys = str(tmp_path)  # no devfreq here: jetson_clocks --show answers
    assert jetson_clocks_state(empty_sys) == "off" and jetson_clocks_state() == "off"
    assert jetson_root.tool(tmp_path / "board", "jetson_clocks").returncode == 0
    assert jetson_clocks_state(empty_sys) == "on" and jetson_clocks_state() == "on"
    monkeypatch.setenv("PATH", str(tmp_path))  # off a Jetson
    monkeypatch.delenv("JETSON_ROOT")
    assert nvpmodel_mode() is None and jetson_clocks_state(empty_sys) is None


def test_a_torchscript_graph_this_torch_cannot_edit_is_not_blamed_on_the_input(monkeypatch):
    """torch 1.10 once failed inside the graph editing, and that read as "the model rejects the example input"."""
    capture_module = sys.modules["profiler.capture"]

    def graph_api_missing(*args):
        raise AttributeError("'torch._C.Graph' object has no attribute 'eraseOutput'")

    monkeypatch.setattr(capture_module, "_instrumented", graph_api_missing)
    scripted = torch.jit.script(torchvision.models.resnet18().eval())
    with pytest.raises(ProfilerError) as caught:
        profiler.capture(scripted, torch.randn(1, 3, 32, 32))
    assert not isinstance(caught.value, profiler.InputRejected)
    assert "cannot split TorchScript model ResNet into its layers on torch %s" % torch.__version__ in str(caught.value)
    assert "eraseOutput" in str(caught.value)
    with pytest.raises(profiler.InputRejected):
        profiler.capture(scripted, torch.randn(1, 3))
