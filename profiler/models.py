"""Build the model to profile from a command-line name, and its example input.

Nothing is ever downloaded: ``DEFAULT`` weights are used only when they are
already in the torch hub cache; otherwise the model keeps random weights (a
layer's energy depends on its shapes, not on its weight values).
"""

import importlib
import os
import re
import sys
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from .errors import ProfilerError, one_line

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".zip")
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def classification_models():
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def load_model(spec: str, weights: str = "DEFAULT",
               notice: Callable[[str], None] = lambda line: None) -> Tuple[nn.Module, str]:
    """(model in eval mode, a file-safe name for it); ProfilerError with a one-line reason otherwise.

    ``spec``: a torchvision classification model name, a TorchScript file, or
    ``package.module:factory``.  ``weights``: ``none``, ``DEFAULT`` (cached
    torchvision weights, else random with a notice) or a state-dict file.
    """
    kind = weights.strip()
    if os.path.isfile(spec) or spec.lower().endswith(TORCHSCRIPT_SUFFIXES):
        if kind.lower() not in ("none", "default"):
            raise ProfilerError("--weights %s does not apply to a TorchScript file (its weights are inside)" % kind)
        model, name = _torchscript(spec), os.path.splitext(os.path.basename(spec))[0]
    elif ":" in spec:
        model, name = _factory(spec), spec.rpartition(":")[2]
        if kind.lower() not in ("none", "default"):
            _load_state(model, kind, name)
    else:
        name = spec.strip().lower()
        if name not in classification_models():
            raise ProfilerError(
                "unknown model %r: give a torchvision classification model (vgg11, resnet18, ...), "
                "a TorchScript file or package.module:factory" % spec
            )
        model = _torchvision(name, kind, notice)
    model.eval()
    return model, safe_name(name)


def safe_name(name: str) -> str:
    """Usable in file names and as a Prometheus label value."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name) or "model"


def _torchscript(path: str) -> nn.Module:
    if not os.path.isfile(path):
        raise ProfilerError("model file %s does not exist" % path)
    try:
        return torch.jit.load(path, map_location="cpu")
    except Exception as exc:
        raise ProfilerError("cannot load TorchScript file %s: %s" % (path, one_line(exc))) from None


def _factory(spec: str) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # the console script does not put the working directory there
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ProfilerError("cannot import %s: %s" % (spec, one_line(exc))) from None
    try:
        model = factory()
    except Exception as exc:
        raise ProfilerError("%s() failed: %s: %s" % (spec, type(exc).__name__, one_line(exc))) from None
    if not isinstance(model, nn.Module):
        raise ProfilerError("%s() returned %s, not a torch.nn.Module" % (spec, type(model).__name__))
    return model


def _torchvision(name: str, weights: str, notice: Callable[[str], None]) -> nn.Module:
    import torchvision

    if weights.lower() == "none":
        return torchvision.models.get_model(name, weights=None)
    if weights.lower() != "default":
        model = torchvision.models.get_model(name, weights=None)
        _load_state(model, weights, name)
        return model
    default = torchvision.models.get_model_weights(name).DEFAULT
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(default.url))
    if os.path.isfile(cached):
        try:
            model = torchvision.models.get_model(name, weights=None)
            model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
            return model
        except Exception as exc:
            raise ProfilerError("cannot read cached weights %s: %s" % (cached, one_line(exc))) from None
    notice("notice: no cached %s weights (%s); using random weights -- energy barely depends on weight values"
           % (name, cached))
    return torchvision.models.get_model(name, weights=None)


def _load_state(model: nn.Module, path: str, name: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ProfilerError("cannot read weights %s: %s" % (path, one_line(exc))) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict):
        raise ProfilerError("cannot read weights %s: not a state dict" % path)
    try:
        model.load_state_dict(state)
    except Exception as exc:
        raise ProfilerError("weights %s do not fit %s: %s" % (path, name, one_line(exc))) from None


def parse_shape(text: str, batch: Optional[int] = None) -> Tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in re.split(r"[,x]", text.strip()))
    except ValueError:
        shape = ()
    if not shape or any(n <= 0 for n in shape):
        raise ProfilerError("bad --input-shape %r: give positive integers like 1,3,224,224" % text)
    if batch is not None:
        if batch <= 0:
            raise ProfilerError("--batch must be positive, got %d" % batch)
        shape = (batch,) + shape[1:]
    return shape


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ProfilerError("--device cuda: no CUDA device is available to torch here")
    return torch.device(name)
