"""In-situ attribution on the ground-truth harness: one run, and the exact per-call truth of its own loop.

The truth per call is taken over the in-situ loop only (warm-up and capture
calls are left out, since a stalled warm-up call would move a mean that the
loop never saw): the timeline's per-layer statistics are read at the loop's
first progress report and at its last, so they cover every inference but
the first.  The bench and the tests share this.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from tests.support.groundtruth import (
    DEFAULT_LAYERS,
    IDLE_W,
    NOISE_ABS_W,
    NOISE_REL,
    GroundTruthSensor,
    Timeline,
    build_model,
    busy_background,
)


@dataclass
class LayerCheck:
    """One Burn layer: the in-situ estimate per call, its 95 % CI, and the truth over the loop."""

    label: str
    extra_w: float
    share: float  # of the whole inference's estimated energy
    duration_s: float  # true mean call
    dynamic_j: float
    total_j: float
    est_dynamic_j: float
    est_dynamic_ci95_j: Optional[float]
    est_total_j: float
    est_total_ci95_j: Optional[float]
    all_calls_dynamic_j: float  # per call over every call (capture and warm-up included)

    @property
    def dynamic_err(self) -> float:
        return (self.est_dynamic_j - self.dynamic_j) / abs(self.dynamic_j)

    @property
    def total_err(self) -> float:
        return (self.est_total_j - self.total_j) / abs(self.total_j)

    @property
    def ci_contains(self) -> Optional[bool]:
        if self.est_dynamic_ci95_j is None:
            return None
        return abs(self.est_dynamic_j - self.dynamic_j) <= self.est_dynamic_ci95_j


class LoopTruth:
    """A progress callback that snapshots every layer's (calls, active seconds) at the loop's first and last report."""

    def __init__(self, timeline: Timeline, keys: Sequence[str]):
        self.timeline = timeline
        self.keys = list(keys)
        self.first: Optional[List[Tuple[int, float]]] = None
        self.last: Optional[List[Tuple[int, float]]] = None

    def _snapshot(self) -> List[Tuple[int, float]]:
        return [(t.calls, t.active_s) for t in (self.timeline.truth(k, 0.0) for k in self.keys)]

    def __call__(self, done: int, total: int, text: str) -> None:
        if not text.startswith("in-situ"):
            return
        if self.first is None:
            self.first = self._snapshot()
        if done >= total:
            self.last = self._snapshot()

    def per_call(self, position: int) -> Tuple[int, float]:
        """(calls, mean call seconds) of one layer between the two snapshots."""
        if self.first is None or self.last is None:
            raise RuntimeError("the in-situ loop did not report its start and end")
        calls = self.last[position][0] - self.first[position][0]
        return calls, (self.last[position][1] - self.first[position][1]) / calls


def run_insitu_harness(period_s: float, seed: int, insitu_s: float, busy: bool = False,
                       layers: Sequence[Tuple[float, float]] = DEFAULT_LAYERS, idle_w: float = IDLE_W,
                       noise_rel: float = NOISE_REL, noise_abs_w: float = NOISE_ABS_W, jitter_s: float = 0.0):
    """(ProfileResult, [LayerCheck per Burn]) of ``profile(..., method="in-situ")`` on the harness."""
    import profiler

    timeline = Timeline(keep_s=math.inf)
    model = build_model(timeline, layers).eval()
    sensor = GroundTruthSensor(timeline, period_s, idle_w=idle_w, noise_rel=noise_rel, noise_abs_w=noise_abs_w,
                               seed=seed, background=busy_background(seed) if busy else None, jitter_s=jitter_s)
    truth = LoopTruth(timeline, [burn.key for burn in model])
    result = profiler.profile(model, torch.zeros(1), source=sensor, method="in-situ", insitu_s=insitu_s,
                              seed=seed, progress=truth)
    whole_j = result.whole_model["energy_j"]
    checks = []
    for position, (layer, burn) in enumerate(zip(result.layers, model)):
        calls, duration = truth.per_call(position)
        checks.append(LayerCheck(
            layer.label, burn.extra_w, layer.energy_j / whole_j, duration, burn.extra_w * duration,
            (idle_w + burn.extra_w) * duration, layer.dynamic_energy_j, layer.dynamic_energy_ci95_j,
            layer.energy_j, layer.energy_ci95_j, timeline.truth(burn.key, idle_w).dynamic_per_call_j))
    return result, checks
