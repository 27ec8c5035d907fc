"""What the profiler isolates: one entry per call, real inputs, execution order, any granularity."""

import collections

import pytest
import torch
import torchvision
from torch import nn

from profiler import ProfilerError, capture
from profiler.capture import InputRejected, parse_granularity

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation notices


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


X = torch.randn(1, 3, 32, 32)


def test_vgg11_has_the_original_29_layers():
    calls = capture(torchvision.models.vgg11().eval(), X)
    paths = [c.module_path for c in calls]
    assert len(calls) == 29
    assert sum(p.startswith("features.") for p in paths) == 21
    assert paths.count("avgpool") == 1
    assert sum(p.startswith("classifier.") for p in paths) == 7
    assert [c.label for c in calls[:4]] == ["Conv2d_0", "ReLU_1", "MaxPool2d_2", "Conv2d_3"]
    assert calls[21].label == "AdaptiveAvgPool2d_21" and calls[22].module_path == "classifier.0"


def test_resnet_shared_relu_gives_one_entry_per_call(resnet):
    calls = capture(resnet, X)
    assert len(calls) == 60
    per_path = collections.Counter(c.module_path for c in calls)
    for block in ("layer1.0", "layer1.1", "layer2.0", "layer4.1"):
        assert per_path[block + ".relu"] == 2  # before and after the skip connection
    assert per_path["layer2.0.downsample.0"] == 1
    assert [c.index for c in calls] == list(range(60))
    assert len({c.label for c in calls}) == 60
    # the second ReLU of a block sees the sum of the skip connection, not the first ReLU's input
    first, second = [c for c in calls if c.module_path == "layer1.0.relu"]
    assert not torch.equal(first.args[0], second.args[0])
    # every entry replays on what it captured
    for call in calls:
        assert call() is not None


def test_resnet_granularities(resnet):
    children = capture(resnet, X, "children")
    assert [c.module_path for c in children] == [
        "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"]
    depth2 = capture(resnet, X, "depth:2")
    assert [c.op for c in depth2].count("BasicBlock") == 8
    assert depth2[4].label == "BasicBlock_4" and depth2[4].module_path == "layer1.0"
    out = depth2[4]()
    assert out.shape == (1, 64, 8, 8)
    assert len(capture(resnet, X, "depth:3")) == 57  # the three downsample Sequentials stay whole


def test_captured_inputs_are_detached_clones():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)).eval()
    x = torch.randn(2, 4, requires_grad=True)
    calls = capture(model, x)
    assert calls[0].args[0] is not x and torch.equal(calls[0].args[0], x.detach())
    assert not calls[0].args[0].requires_grad
    # the in-place ReLU ran after capture: its captured input still holds the negatives
    assert (calls[1].args[0] < 0).any()


class Scale(nn.Module):
    def forward(self, x, *, factor=1.0, bias=None):
        out = x * factor
        return out if bias is None else out + bias


class KwargsModel(nn.Module):
    """A leaf called with keyword arguments, a reused leaf, dict and non-tensor inputs."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.act = nn.Tanh()
        self.scale = Scale()

    def forward(self, x, extra=None):
        y = self.act(self.fc(x))
        y = self.scale(y, factor=2.5, bias=extra["bias"])
        return self.act(self.fc(y))


def test_keyword_arguments_and_reused_modules():
    model = KwargsModel().eval()
    x, bias = torch.randn(1, 8), torch.ones(8)
    calls = capture(model, {"x": x, "extra": {"bias": bias}})
    assert [(c.label, c.module_path) for c in calls] == [
        ("Linear_0", "fc"), ("Tanh_1", "act"), ("Scale_2", "scale"), ("Linear_3", "fc"), ("Tanh_4", "act")]
    scale = calls[2]
    assert scale.kwargs["factor"] == 2.5 and torch.equal(scale.kwargs["bias"], bias)
    assert scale.kwargs["bias"] is not bias
    assert torch.allclose(scale(), scale.args[0] * 2.5 + 1)


def test_tuple_inputs_and_a_model_without_children():
    class Pair(nn.Module):
        def forward(self, a, b):
            return a @ b

    calls = capture(Pair(), (torch.randn(2, 3), torch.randn(3, 2)))
    assert len(calls) == 1 and calls[0].label == "Pair_0" and calls[0].module_path == ""
    assert calls[0]().shape == (2, 2)


def test_torchscript_matches_eager_capture(resnet, tmp_path):
    path = str(tmp_path / "r18.pt")
    torch.jit.trace(resnet, X).save(path)
    scripted = torch.jit.load(path)
    eager = capture(resnet, X)
    traced = capture(scripted, X)
    assert [(c.label, c.module_path) for c in traced] == [(c.label, c.module_path) for c in eager]
    for a, b in zip(eager, traced):
        assert torch.allclose(a.args[0], b.args[0], atol=1e-5), a.label
    # the traced second call of a shared ReLU is its method forward1; both replay
    relus = [c for c in traced if c.module_path == "layer1.0.relu"]
    assert len(relus) == 2 and all(r().shape == (1, 64, 8, 8) for r in relus)
    assert [c.module_path for c in capture(scripted, X, "depth:2")][4:6] == ["layer1.0", "layer1.1"]


def test_bad_granularity_and_rejected_input(resnet):
    assert parse_granularity("leaf") is None and parse_granularity("children") == 1
    assert parse_granularity("depth:3") == 3
    for bad in ("depth:0", "depth:x", "blocks"):
        with pytest.raises(ProfilerError):
            parse_granularity(bad)
    with pytest.raises(InputRejected) as info:
        capture(resnet, torch.randn(1, 5, 32, 32))
    assert "\n" not in str(info.value)
