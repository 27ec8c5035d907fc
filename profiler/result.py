"""Per-call statistics from the measured windows, and the result object the API returns."""

import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from . import report
from .estimate import ratio_ci95
from .measure import Schedule, Window
from .meter import RawSample


@dataclass
class LayerResult:
    """One row of the summary: per-call means over the trials, with 95 % CI half-widths.

    ``energy_j`` is all the energy the board drew during one call;
    ``dynamic_energy_j`` the part above the idle baseline (may be slightly
    negative for a call too cheap to tell from noise); ``power_w`` the mean
    total power during the call.  CI fields are None with fewer than two trials.
    ``flag``: why the figures are implausible ("" when they are not); a
    flagged row's numbers are shown as flagged, never as plain numbers.
    ``windows_disturbed``: windows left out (background bursts, sensor gaps).
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
    windows_disturbed: int = 0
    flag: str = ""
    trial_energy_j: List[float] = field(default_factory=list)
    trial_dynamic_energy_j: List[float] = field(default_factory=list)

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
    batch_sizes: Optional[List[Dict[str, Any]]] = None  # inference figures per batch size (profiler.batch)

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    @property
    def inference(self) -> Optional[Dict[str, Any]]:
        """Energy per inference, from the whole-model pass; None when it was not measured.

        See :func:`inference_figures` for the definitions.
        """
        return inference_figures(self.whole_model, self.meta.get("batch_size") or 1)

    def to_dict(self) -> Dict[str, Any]:
        """The summary JSON: ``{"meta", "layers", "whole_model", "inference", "idle_power_w"}`` (+ ``idle``)."""
        return {
            "meta": self.meta,
            "layers": [layer.to_dict() for layer in self.layers],
            "whole_model": self.whole_model,
            "inference": self.inference,
            "idle_power_w": self.idle_power_w,
            "idle": self.idle,
            **({"comparison": self.comparison} if self.comparison is not None else {}),
            **({"batch_sizes": self.batch_sizes} if self.batch_sizes is not None else {}),
        }

    # Writers (atomic: a reader never sees a half-written file).
    def write_full_csv(self, path: str) -> str:
        return report.write_full_csv(self, path)

    def write_summary_csv(self, path: str) -> str:
        return report.write_summary_csv(self, path)

    def write_json(self, path: str) -> str:
        return report.write_json(self, path)

    def write_plot(self, path: str) -> str:
        return report.write_plot(self, path)

    def write_inference_csv(self, path: str) -> str:
        return report.write_inference_csv(self, path)

    def write_all(self, out_dir: str, stem: Optional[str] = None) -> Dict[str, str]:
        """The files under ``out_dir`` (made when missing, as the CLI does): four named
        ``<stem>_layerwise_*``, ``<stem>_inference.csv`` (and ``<stem>_batch_sizes.csv``), ``stem``
        defaulting to the model's name (a power-mode sweep names each mode's files apart); returns kind -> path."""
        report.check_writable(out_dir)
        stem = stem or self.model
        base = os.path.join(out_dir, stem + "_layerwise_")
        paths = {
            "full_csv": self.write_full_csv(base + "energy_full.csv"),
            "summary_csv": self.write_summary_csv(base + "summary.csv"),
            "json": self.write_json(base + "summary.json"),
            "plot": self.write_plot(base + "energy_plot.png"),
            "inference_csv": self.write_inference_csv(os.path.join(out_dir, stem + "_inference.csv")),
        }
        if self.comparison is not None:
            from .insitu import write_compare_csv

            paths["compare_csv"] = write_compare_csv(self.comparison, base + "compare.csv")
        if self.batch_sizes is not None:
            paths["batch_sizes_csv"] = report.write_batch_sizes_csv(
                self, os.path.join(out_dir, stem + "_batch_sizes.csv"))
        return paths

    def console_summary(self) -> str:
        return report.console_summary(self)


def inference_figures(whole: Optional[Dict[str, Any]], batch_size: int) -> Optional[Dict[str, Any]]:
    """The whole-model pass restated per inference and per sample; None when it has no measured window.

    One *inference* is one forward pass of the whole model on the example
    input, a batch of ``batch_size`` samples (the first dimension of the
    first input tensor).  ``latency_s`` is that pass's duration (isolate: the
    typical call of its windows; in-situ: the mean inference);
    ``energy_per_inference_j`` all the energy the board drew during it,
    ``dynamic_energy_per_inference_j`` the part above idle, both with 95 % CI
    half-widths; ``energy_per_sample_j`` (and the dynamic one) the same over
    the batch size; ``inferences_per_joule`` 1 / ``energy_per_inference_j``
    (None unless that is positive); ``mean_power_w`` the energy over the
    latency.  ``flag`` is the
    whole-model row's plausibility flag: a flagged figure is not a number to
    report.
    """
    if not whole or not whole.get("trials"):
        return None
    energy, dynamic = whole["energy_j"], whole["dynamic_energy_j"]
    return {
        "batch_size": batch_size,
        "latency_s": whole["duration_s"],
        "energy_per_inference_j": energy,
        "energy_per_inference_ci95_j": whole["energy_ci95_j"],
        "dynamic_energy_per_inference_j": dynamic,
        "dynamic_energy_per_inference_ci95_j": whole["dynamic_energy_ci95_j"],
        "energy_per_sample_j": energy / batch_size,
        "dynamic_energy_per_sample_j": dynamic / batch_size,
        "inferences_per_joule": 1.0 / energy if math.isfinite(energy) and energy > 0 else None,
        "mean_power_w": whole["power_w"],
        "flag": whole.get("flag", ""),
    }


def idle_baseline(windows: List[Window]) -> Dict[str, Any]:
    """The clean reference windows' idle power: median, range, and whether it drifted.

    Each layer window is charged against its *local* baseline (see
    profiler.measure), so a drift is reported, not subtracted wrongly; it is
    flagged when the references span more than 2 % of idle.
    """
    levels = [w.level_w for w in windows if w.kind == "idle" and w.usable]
    if not levels:
        return {"power_w": float("nan"), "min_w": None, "max_w": None, "drift_w": None, "drift_flagged": False,
                "windows": 0, "windows_disturbed": 0}
    idle = statistics.median(levels)
    drift = max(levels) - min(levels)
    return {
        "power_w": idle, "min_w": min(levels), "max_w": max(levels), "drift_w": drift,
        "drift_flagged": drift > 0.02 * idle, "windows": len(levels),
        "windows_disturbed": sum(1 for w in windows if w.kind == "idle" and w.resolved and not w.usable),
    }


def unit_result(schedule: Schedule, position: int, peak_w: float) -> LayerResult:
    unit = schedule.units[position]
    energy, dynamic, calls, duration, wall, samples, disturbed = [], [], [], [], [], 0, 0
    for w in schedule.windows:
        if w.unit != position or not w.resolved:
            continue
        if not w.usable:
            disturbed += 1
            continue
        total_j, dyn_j = schedule.energies(w)
        energy.append(total_j / w.calls)
        dynamic.append(dyn_j / w.calls)
        calls.append(w.calls)
        duration.append(w.t1 - w.t0 - w.unattributed_s)
        wall.append(w.t1 - w.t0)
        samples += w.samples
    e, e_ci = ratio_ci95([x * c for x, c in zip(energy, calls)], calls)
    d, d_ci = ratio_ci95([x * c for x, c in zip(dynamic, calls)], calls)
    t = math.fsum(duration) / sum(calls) if calls else float("nan")
    call = unit.call
    return LayerResult(
        index=call.index, label=call.label, module=call.module_path, op=call.op,
        calls_per_window=unit.calls, trials=len(energy), duration_s=t, energy_j=e, energy_ci95_j=e_ci,
        dynamic_energy_j=d, dynamic_energy_ci95_j=d_ci,
        power_w=e / t if t > 0 else float("nan"), dynamic_power_w=d / t if t > 0 else float("nan"),
        samples=samples, windows_disturbed=disturbed,
        flag=plausibility(e, e_ci, d, d_ci, math.fsum(wall) / sum(calls) if calls else float("nan"), peak_w,
                          disturbed, len(energy)),
        trial_energy_j=energy, trial_dynamic_energy_j=dynamic,
    )


def plausibility(energy_j: float, energy_ci: Optional[float], dynamic_j: float, dynamic_ci: Optional[float],
                 wall_per_call_s: float, peak_w: float, disturbed: int, trials: int) -> str:
    """Why a layer's figures cannot be right, or "" (they can).

    A window's energy is at most the board's highest reading times its length:
    the call's energy over its share of the window (``wall_per_call_s``, loop
    and pauses included) may not exceed the peak reading by more than its CI.
    """
    reasons = []
    if not trials:
        return "no clean window (%d disturbed)" % disturbed if disturbed else "not measured"
    if energy_j < 0:
        reasons.append("negative total energy")
    if dynamic_ci is not None and dynamic_j + dynamic_ci < 0:
        reasons.append("dynamic energy below idle beyond its CI")
    if math.isfinite(peak_w) and wall_per_call_s > 0 and \
            (energy_j - (energy_ci or 0.0)) / wall_per_call_s > peak_w:
        reasons.append("power above the board's peak reading (%.3g W)" % peak_w)
    return "; ".join(reasons)


def build_result(model: str, schedule: Schedule, meta: Dict[str, Any]) -> ProfileResult:
    idle = idle_baseline(schedule.windows)
    idle_w = idle["power_w"]
    peak_w = max((s.total_w for s in schedule.samples), default=float("nan"))
    layers, whole = [], None
    for position, unit in enumerate(schedule.units):
        result = unit_result(schedule, position, peak_w)
        if unit.whole_model:
            whole = result
        else:
            layers.append(result)
    whole_dict = None
    if whole is not None:
        whole_dict = whole.to_dict()
        measured = [layer for layer in layers if layer.trials and not layer.flag]
        sum_e = math.fsum(layer.energy_j for layer in measured) if measured else float("nan")
        sum_d = math.fsum(layer.dynamic_energy_j for layer in measured) if measured else float("nan")
        whole_dict.update({
            "layers_energy_j": sum_e,
            "layers_dynamic_energy_j": sum_d,
            "coverage": sum_e / whole.energy_j if whole.trials and whole.energy_j else None,
            "dynamic_coverage": sum_d / whole.dynamic_energy_j if whole.trials and whole.dynamic_energy_j else None,
            "layers_measured": len(measured),
            "layers_flagged": sum(1 for layer in layers if layer.flag),
        })
    meta = dict(meta, peak_reading_w=peak_w if math.isfinite(peak_w) else None)
    return ProfileResult(
        model=model, layers=layers, whole_model=whole_dict, idle_power_w=idle_w, idle=idle, meta=meta,
        samples=list(schedule.samples), windows=list(schedule.windows),
    )
