"""Build the model to profile from a command-line name, and its example input.

Nothing is ever downloaded: ``DEFAULT`` weights are used only when they are
already in the torch hub cache; otherwise the model keeps random weights (a
layer's energy depends on its shapes, not on its weight values).
"""

import importlib
import inspect
import os
import pickle
import re
import sys
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from .errors import ProfilerError, one_line

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".zip")
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def classification_models() -> List[str]:
    import torchvision

    models = torchvision.models
    if hasattr(models, "list_models"):
        return models.list_models(module=models)
    # torchvision < 0.14 (JetPack 4.6 has 0.11): the classification builders are its functions taking pretrained=
    return sorted(name for name, value in vars(models).items()
                  if inspect.isfunction(value) and "pretrained" in inspect.signature(value).parameters)


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
    model = _random_torchvision(name)
    if weights.lower() == "none":
        return model
    if weights.lower() != "default":
        _load_state(model, weights, name)
        return model
    url = _default_weights_url(name)
    where = "torchvision names no weights file for it"
    if url is not None:
        where = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        if os.path.isfile(where):
            try:
                model.load_state_dict(_load_weights_file(where))
                return model
            except Exception as exc:
                raise ProfilerError("cannot read cached weights %s: %s" % (where, one_line(exc))) from None
    notice("notice: no cached %s weights (%s); using random weights -- energy barely depends on weight values"
           % (name, where))
    return model


def _random_torchvision(name: str) -> nn.Module:
    import torchvision

    models = torchvision.models
    if hasattr(models, "get_model"):
        return models.get_model(name, weights=None)
    return getattr(models, name)(pretrained=False)  # torchvision < 0.14


def _default_weights_url(name: str) -> Optional[str]:
    import torchvision

    models = torchvision.models
    if hasattr(models, "get_model_weights"):
        return models.get_model_weights(name).DEFAULT.url
    # torchvision < 0.14: the builder's module maps model names to weight URLs
    module = sys.modules[getattr(models, name).__module__]
    urls = getattr(module, "model_urls", None) or getattr(module, "_MODEL_URLS", None) or {}
    return urls.get(name)


class _WeightsUnpickler(pickle.Unpickler):
    """Refuses every global a state dict does not need: reading weights never runs pickled code."""

    SAFE = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
            ("torch._utils", "_rebuild_parameter")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.SAFE or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError("%s.%s is not allowed in a weights file" % (module, name))


class _WeightsPickle:
    """The pickle module ``torch.load`` is given where it has no ``weights_only`` (torch < 1.13)."""

    Unpickler = _WeightsUnpickler

    @staticmethod
    def load(file, **kwargs):
        return _WeightsUnpickler(file, **kwargs).load()


def _load_weights_file(path: str):
    if "weights_only" in inspect.signature(torch.load).parameters:
        return torch.load(path, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", pickle_module=_WeightsPickle)


def _load_state(model: nn.Module, path: str, name: str) -> None:
    try:
        state = _load_weights_file(path)
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
