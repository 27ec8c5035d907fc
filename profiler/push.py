"""Live progress and results to a jetson-power-exporter daemon, in the bodies of ``exporter/contract.py``.

Pushing is a courtesy to the dashboard, never a reason to stop profiling:
the first failure prints one warning and turns pushing off.
"""

import math
from typing import Any, Callable, Dict, Iterable, List, Optional

from exporter import contract

from .client import DaemonClient
from .errors import one_line

TIMEOUT_S = 1.0


class LivePush:
    """Pushes through ``client``; None (no daemon answered) pushes nothing."""

    def __init__(self, client: Optional[DaemonClient], model: str, warn: Callable[[str], None]):
        self.client = client
        self.model = model
        self._warn = warn

    def _post(self, path: str, bodies: Callable[[], List[bytes]]) -> None:
        if self.client is None:
            return
        try:
            for body in bodies():
                self.client.post(path, body, timeout=TIMEOUT_S)
        except Exception as exc:  # any failure at all, a body refused by the contract too: warn once, go on
            self._warn("warning: live push to %s failed (%s); continuing without it"
                       % (self.client.url, one_line(exc)))
            self.client = None

    def layer(self, index: int, label: str, op: str, state: str) -> None:
        self._post(contract.LAYER_PATH, lambda: [contract.layer_event(self.model, index, label, op, state)])

    def results(self, layers: Iterable) -> None:
        rows = []
        for layer in layers:
            values = (layer.energy_j, layer.dynamic_energy_j, layer.duration_s, layer.power_w)
            if not all(math.isfinite(v) for v in values):
                continue  # a layer with no finished trial has nothing to show
            rows.append({
                "index": layer.index, "layer": layer.label, "op": layer.op,
                "energy_j": max(0.0, layer.energy_j), "dynamic_energy_j": layer.dynamic_energy_j,
                "duration_s": layer.duration_s, "power_w": max(0.0, layer.power_w),
            })
        self._post(contract.RESULTS_PATH, lambda: contract.results_bodies(self.model, rows))

    def inference(self, figures: Optional[Dict[str, Any]], power_mode: str) -> None:
        """Energy per inference (ProfileResult.inference) as the model's gauges in ``power_mode``; nothing
        when it was not measured or is flagged (a flagged figure is never shown as a number)."""
        if figures is None or figures["flag"]:
            return
        values = (figures["latency_s"], figures["energy_per_inference_j"], figures["dynamic_energy_per_inference_j"],
                  figures["mean_power_w"])
        if not all(math.isfinite(v) for v in values):
            return
        body = {"model": self.model, "power_mode": power_mode, "batch_size": figures["batch_size"],
                "latency_s": figures["latency_s"], "energy_j": figures["energy_per_inference_j"],
                "dynamic_energy_j": figures["dynamic_energy_per_inference_j"], "power_w": figures["mean_power_w"]}
        self._post(contract.INFERENCE_PATH, lambda: [contract.inference_body(body)])
