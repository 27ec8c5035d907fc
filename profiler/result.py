"""Per-call statistics from the measured windows, and the result object the API returns."""

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from .estimate import Estimator, mean_ci95
from .measure import Schedule, Window
from .meter import RawSample

SUMMARY_COLUMNS = (
    "index", "label", "module", "op", "calls_per_window", "trials", "duration_s", "energy_j",
    "energy_ci95_j", "dynamic_energy_j", "dynamic_energy_ci95_j", "power_w", "dynamic_power_w", "samples",
)


@dataclass
class LayerResult:
    """One row of the summary: per-call means over the trials, with 95 % CI half-widths.

    ``energy_j`` is all the energy the board drew during one call;
    ``dynamic_energy_j`` the part above the idle baseline (may be slightly
    negative for a call too cheap to tell from noise); ``power_w`` the mean
    total power during the call.  CI fields are None with fewer than two trials.
    """

    index: int
    label: str
    module: str
    op: str
    calls_per_window: int
    trials: int
    duration_s: float
    energy_j: float
    energy_ci95_j: Optional[float]
    dynamic_energy_j: float
    dynamic_energy_ci95_j: Optional[float]
    power_w: float
    dynamic_power_w: float
    samples: int
    trial_energy_j: List[float] = field(default_factory=list)
    trial_dynamic_energy_j: List[float] = field(default_factory=list)

    def row(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in SUMMARY_COLUMNS}

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class ProfileResult:
    """What :func:`profiler.profile` returns.  ``complete`` is False after an interruption."""

    model: str
    layers: List[LayerResult]
    whole_model: Optional[Dict[str, Any]]
    idle_power_w: float
    idle: Dict[str, Any]
    meta: Dict[str, Any]
    samples: List[RawSample]
    windows: List[Window]
    comparison: Optional[List[Dict[str, Any]]] = None  # in-situ next to isolated (method "both")

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def to_dict(self) -> Dict[str, Any]:
        """The summary JSON: ``{"meta", "layers", "whole_model", "idle_power_w"}`` (+ ``idle`` details)."""
        return {
            "meta": self.meta,
            "layers": [layer.to_dict() for layer in self.layers],
            "whole_model": self.whole_model,
            "idle_power_w": self.idle_power_w,
            "idle": self.idle,
            **({"comparison": self.comparison} if self.comparison is not None else {}),
        }

    # Writers (atomic: a reader never sees a half-written file).
    def write_full_csv(self, path: str) -> str:
        from . import report

        return report.write_full_csv(self, path)

    def write_summary_csv(self, path: str) -> str:
        from . import report

        return report.write_summary_csv(self, path)

    def write_json(self, path: str) -> str:
        from . import report

        return report.write_json(self, path)

    def write_plot(self, path: str) -> str:
        from . import report

        return report.write_plot(self, path)

    def write_all(self, out_dir: str) -> Dict[str, str]:
        """The four files under ``out_dir``, named ``<model>_layerwise_*``; returns kind -> path."""
        base = os.path.join(out_dir, self.model + "_layerwise_")
        paths = {
            "full_csv": self.write_full_csv(base + "energy_full.csv"),
            "summary_csv": self.write_summary_csv(base + "summary.csv"),
            "json": self.write_json(base + "summary.json"),
            "plot": self.write_plot(base + "energy_plot.png"),
        }
        if self.comparison is not None:
            from .insitu import write_compare_csv

            paths["compare_csv"] = write_compare_csv(self.comparison, base + "compare.csv")
        return paths

    def console_summary(self) -> str:
        from . import report

        return report.console_summary(self)


def _finite_mean(values: List[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return math.fsum(finite) / len(finite) if finite else float("nan")


def idle_baseline(windows: List[Window], estimator: Estimator) -> Dict[str, Any]:
    """Idle power before and after, their mean, and whether the board drifted in between.

    Drift is flagged when before and after differ by more than 2 % of idle
    and by more than three standard errors of the difference.
    """
    powers: Dict[str, List[float]] = {"before": [], "after": []}
    for w in windows:
        if w.kind == "idle" and w.resolved and not w.dropped:
            powers[w.phase].append(estimator.mean_power(w.joules, w.t0, w.t1))
    before, before_ci = mean_ci95(powers["before"])
    after, after_ci = mean_ci95(powers["after"])
    idle = _finite_mean(powers["before"] + powers["after"])
    drift = after - before
    flagged = False
    if math.isfinite(drift):
        se = math.sqrt(sum(_se(v) ** 2 for v in (powers["before"], powers["after"])))
        flagged = abs(drift) > max(0.02 * idle, 3 * se)
    return {
        "power_w": idle, "before_w": before, "after_w": after, "before_ci95_w": before_ci,
        "after_ci95_w": after_ci, "drift_w": drift if math.isfinite(drift) else None,
        "drift_flagged": flagged, "windows": len(powers["before"]) + len(powers["after"]),
    }


def _se(values: List[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def unit_result(schedule: Schedule, position: int, estimator: Estimator, idle_w: float) -> LayerResult:
    unit = schedule.units[position]
    energy, dynamic, duration, samples = [], [], [], 0
    for w in schedule.windows:
        if w.unit != position or not w.resolved or w.dropped or w.kind == "idle":
            continue
        total_j, dyn_j = estimator.window_energy(w.joules, w.t0, w.t1, idle_w, w.unattributed_s)
        energy.append(total_j / w.calls)
        dynamic.append(dyn_j / w.calls)
        duration.append((w.t1 - w.t0 - w.unattributed_s) / w.calls)
        samples += w.samples
    e, e_ci = mean_ci95(energy)
    d, d_ci = mean_ci95(dynamic)
    t = _finite_mean(duration)
    call = unit.call
    return LayerResult(
        index=call.index, label=call.label, module=call.module_path, op=call.op,
        calls_per_window=unit.calls, trials=len(energy), duration_s=t, energy_j=e, energy_ci95_j=e_ci,
        dynamic_energy_j=d, dynamic_energy_ci95_j=d_ci,
        power_w=e / t if t > 0 else float("nan"), dynamic_power_w=d / t if t > 0 else float("nan"),
        samples=samples, trial_energy_j=energy, trial_dynamic_energy_j=dynamic,
    )


def build_result(model: str, schedule: Schedule, estimator: Estimator, meta: Dict[str, Any]) -> ProfileResult:
    idle = idle_baseline(schedule.windows, estimator)
    idle_w = idle["power_w"]
    layers, whole = [], None
    for position, unit in enumerate(schedule.units):
        result = unit_result(schedule, position, estimator, idle_w)
        if unit.whole_model:
            whole = result
        else:
            layers.append(result)
    whole_dict = None
    if whole is not None:
        whole_dict = whole.to_dict()
        measured = [layer for layer in layers if layer.trials]
        sum_e = math.fsum(layer.energy_j for layer in measured) if measured else float("nan")
        sum_d = math.fsum(layer.dynamic_energy_j for layer in measured) if measured else float("nan")
        whole_dict.update({
            "layers_energy_j": sum_e,
            "layers_dynamic_energy_j": sum_d,
            "coverage": sum_e / whole.energy_j if whole.trials and whole.energy_j else None,
            "dynamic_coverage": sum_d / whole.dynamic_energy_j if whole.trials and whole.dynamic_energy_j else None,
            "layers_measured": len(measured),
        })
    return ProfileResult(
        model=model, layers=layers, whole_model=whole_dict, idle_power_w=idle_w, idle=idle, meta=meta,
        samples=list(schedule.samples), windows=list(schedule.windows),
    )
