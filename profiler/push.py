"""Live progress and results to a jetson-power-exporter daemon (urllib only).

Pushing is a courtesy to the dashboard, never a reason to stop profiling:
the first failure prints one warning and turns pushing off.
"""

import json
import math
import urllib.request
from typing import Callable, Iterable, List, Optional

from .errors import one_line

TIMEOUT_S = 1.0
RESULTS_PER_POST = 200  # the daemon limits bodies to 64 KiB


class LivePush:
    def __init__(self, url: Optional[str], model: str, warn: Callable[[str], None]):
        self.url = url.rstrip("/") if url else None
        self.model = model
        self._warn = warn

    @property
    def enabled(self) -> bool:
        return self.url is not None

    def _post(self, path: str, body: dict) -> None:
        if self.url is None:
            return
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                response.read()
        except Exception as exc:  # any failure at all: warn once, keep profiling
            self._warn("warning: live push to %s failed (%s); continuing without it" % (self.url, one_line(exc)))
            self.url = None

    def layer(self, index: int, label: str, op: str, state: str) -> None:
        self._post("/api/v1/layer", {"model": self.model, "index": index, "layer": label, "op": op,
                                     "state": state})

    def results(self, layers: Iterable) -> None:
        rows: List[dict] = []
        for layer in layers:
            values = (layer.energy_j, layer.dynamic_energy_j, layer.duration_s, layer.power_w)
            if not all(math.isfinite(v) for v in values):
                continue  # a layer with no finished trial has nothing to show
            rows.append({
                "index": layer.index, "layer": layer.label, "op": layer.op,
                "energy_j": max(0.0, layer.energy_j), "dynamic_energy_j": layer.dynamic_energy_j,
                "duration_s": layer.duration_s, "power_w": max(0.0, layer.power_w),
            })
        for start in range(0, max(len(rows), 1), RESULTS_PER_POST):
            self._post("/api/v1/results", {"model": self.model, "layers": rows[start:start + RESULTS_PER_POST],
                                           "replace": start == 0})
