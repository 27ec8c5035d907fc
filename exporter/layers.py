"""What the profiler told the daemon: the active layer, the last results, per-layer counters, and the
energy per inference of each model's last profile in each power mode.

The daemon integrates ``jetson_layer_energy_joules_total`` itself: the sampler
reports every integrated interval, and the part of it that overlaps a layer's
active period is charged to that layer.  Label sets stay bounded: at most
``max_models`` models (least recently updated evicted first) with at most
``max_layers`` layers and ``max_power_modes`` power modes (least recently
updated evicted first) each; an active layer that never ends expires.
"""

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

INDEX_WIDTH = 4  # zero-padded so dashboards sort label values in execution order
RESULT_SERIES = 4  # energy, dynamic energy, duration, power gauges per layer result
COUNTER_SERIES = 2  # energy and active-seconds counters per layer
INFERENCE_SERIES = 6  # energy, dynamic energy, latency, power, per-joule and batch-size gauges per power mode
# Ended periods wait here for the sampler's next interval; while the sensor is down nothing drains
# them, so the oldest go (they lie inside the gap, which is never integrated anyway).
MAX_CLOSING = 10000


def index_label(index: int) -> str:
    return "%0*d" % (INDEX_WIDTH, index)


@dataclass(frozen=True)
class LayerResult:
    index: int
    layer: str
    op: str
    energy_j: float
    dynamic_energy_j: float
    duration_s: float
    power_w: float


@dataclass(frozen=True)
class InferenceResult:
    """One forward pass of the whole model on a batch, as the last profile in ``power_mode`` measured it."""

    power_mode: str
    batch_size: int
    latency_s: float
    energy_j: float
    dynamic_energy_j: float
    power_w: float


@dataclass(frozen=True)
class ActiveLayer:
    model: str
    index: int
    layer: str
    op: str
    since: float


@dataclass
class _Model:
    results: Dict[int, LayerResult]
    energy_j: Dict[str, float]  # per layer label, integrated by the daemon
    active_s: Dict[str, float]
    active: Optional[ActiveLayer] = None
    inference: "OrderedDict[str, InferenceResult]" = field(default_factory=OrderedDict)  # by power mode


@dataclass(frozen=True)
class LayersSnapshot:
    active: Tuple[ActiveLayer, ...]
    results: Dict[str, Tuple[LayerResult, ...]]
    energy_j: Dict[Tuple[str, str], float]
    active_s: Dict[Tuple[str, str], float]
    evicted_total: int
    inference: Dict[str, Tuple[InferenceResult, ...]]  # model -> one per power mode, oldest first


class LayerLimitError(ValueError):
    """A write would exceed the configured per-model layer bound."""


class LayerBoard:
    def __init__(self, max_models: int = 5, max_layers: int = 1000, active_timeout_s: float = 300.0,
                 max_power_modes: int = 16):
        self.max_models = max_models
        self.max_layers = max_layers
        self.max_power_modes = max_power_modes
        self.active_timeout_s = active_timeout_s
        self._lock = threading.Lock()
        self._models: OrderedDict[str, _Model] = OrderedDict()
        # Periods that ended but that the sampler has not integrated up to yet.
        self._closing: List[Tuple[ActiveLayer, float]] = []
        self._evicted = 0

    def _model(self, name: str) -> _Model:
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = _Model(results={}, energy_j={}, active_s={})
            while len(self._models) > self.max_models:
                _, old = self._models.popitem(last=False)
                self._evicted += RESULT_SERIES * len(old.results) + COUNTER_SERIES * len(old.energy_j) + (
                    1 if old.active else 0) + INFERENCE_SERIES * len(old.inference)
        self._models.move_to_end(name)
        return model

    def _check_index(self, index: int) -> None:
        if index >= self.max_layers:
            raise LayerLimitError(
                "layer index %d exceeds the limit of %d layers per model (raise max_layers)"
                % (index, self.max_layers)
            )

    def layer_event(self, model: str, index: int, layer: str, op: str, state: str,
                    now: Optional[float] = None) -> None:
        """Mark a layer as running (``begin``) or finished (``end``)."""
        self._check_index(index)
        now = time.monotonic() if now is None else now
        with self._lock:
            known = self._models.get(model)
            if (state == "begin" and known is not None and layer not in known.energy_j
                    and len(known.energy_j) >= self.max_layers):
                # the per-layer counters are keyed by name: new names are as bounded as indices
                raise LayerLimitError(
                    "model %s already has %d layer names, the limit (raise max_layers)" % (model, self.max_layers))
            entry = self._model(model)
            if entry.active is not None:
                # begin of another layer, or the end of this one, closes the running period
                self._closing.append((entry.active, min(now, entry.active.since + self.active_timeout_s)))
                entry.active = None
                if len(self._closing) > MAX_CLOSING:
                    del self._closing[:-MAX_CLOSING]
            if state == "begin":
                entry.active = ActiveLayer(model, index, layer, op, now)
                entry.energy_j.setdefault(layer, 0.0)
                entry.active_s.setdefault(layer, 0.0)

    def set_results(self, model: str, layers: List[LayerResult], replace: bool = True) -> None:
        for result in layers:
            self._check_index(result.index)
        with self._lock:
            entry = self._model(model)
            if replace:
                entry.results = {}
            for result in layers:
                entry.results[result.index] = result

    def set_inference(self, model: str, result: InferenceResult) -> None:
        """Replace the model's energy per inference in ``result.power_mode``; other modes stay."""
        with self._lock:
            modes = self._model(model).inference
            modes[result.power_mode] = result
            modes.move_to_end(result.power_mode)
            while len(modes) > self.max_power_modes:
                modes.popitem(last=False)
                self._evicted += INFERENCE_SERIES

    def on_interval(self, start: float, end: float, joules: float) -> None:
        """Sampler listener: charge the overlap of (start, end] with active periods."""
        span = end - start
        if span <= 0:
            return
        with self._lock:
            # An unended layer is charged up to its expiry at most, even when no scrape has expired it yet.
            periods = [(a, a.since + self.active_timeout_s) for a in self._active_list()] + list(self._closing)
            for active, until in periods:
                overlap = min(end, until) - max(start, active.since)
                if overlap > 0:
                    entry = self._models.get(active.model)
                    if entry is None:
                        continue
                    entry.energy_j[active.layer] = entry.energy_j.get(active.layer, 0.0) + joules * overlap / span
                    entry.active_s[active.layer] = entry.active_s.get(active.layer, 0.0) + overlap
            self._closing = [(a, until) for a, until in self._closing if until > end]

    def _active_list(self) -> List[ActiveLayer]:
        return [m.active for m in self._models.values() if m.active is not None]

    def expire(self, now: Optional[float] = None) -> None:
        """End active layers older than the timeout (a profiler that died mid-layer)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for entry in self._models.values():
                if entry.active is not None and now - entry.active.since > self.active_timeout_s:
                    self._closing.append((entry.active, entry.active.since + self.active_timeout_s))
                    entry.active = None

    def snapshot(self) -> LayersSnapshot:
        self.expire()
        with self._lock:
            return LayersSnapshot(
                active=tuple(self._active_list()),
                results={name: tuple(sorted(m.results.values(), key=lambda r: r.index))
                         for name, m in self._models.items()},
                energy_j={(name, layer): j for name, m in self._models.items() for layer, j in m.energy_j.items()},
                active_s={(name, layer): s for name, m in self._models.items() for layer, s in m.active_s.items()},
                evicted_total=self._evicted,
                inference={name: tuple(m.inference.values()) for name, m in self._models.items() if m.inference},
            )
