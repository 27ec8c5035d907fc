"""Files and console output of a profile.  Every file is written atomically.

``result`` below is a :class:`profiler.result.ProfileResult`, whose methods
call these; this module does not import it, so the dependency runs one way.
A temporary file in the target directory is filled, flushed to disk and
renamed over the final name (``os.replace``), so an interrupted or failed
write leaves either the old file or none -- never half of one.
"""

import bisect
import contextlib
import csv
import io
import json
import math
import os
import sys
import tempfile
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, TextIO

from exporter import files

from .errors import ProfilerError, one_line

SUMMARY_COLUMNS = (
    "index", "label", "module", "op", "calls_per_window", "trials", "duration_s", "energy_j",
    "energy_ci95_j", "dynamic_energy_j", "dynamic_energy_ci95_j", "power_w", "dynamic_power_w", "samples",
    "windows_disturbed", "flag",
)

INFERENCE_COLUMNS = (
    "model", "method", "power_mode", "batch_size", "latency_s", "energy_per_inference_j",
    "energy_per_inference_ci95_j", "dynamic_energy_per_inference_j", "dynamic_energy_per_inference_ci95_j",
    "energy_per_sample_j", "dynamic_energy_per_sample_j", "inferences_per_joule", "mean_power_w", "flag",
    "simulated", "complete",
)
UNKNOWN_MODE = "unknown"


def power_mode(meta: Dict[str, Any]) -> str:
    """The nvpmodel power mode a profile ran in, ``unknown`` where the board did not say."""
    return meta.get("nvpmodel") or UNKNOWN_MODE


def atomic_write(path: str, fill: Callable[[Any], None], binary: bool = False) -> str:
    try:
        return files.atomic_write(path, fill, binary)
    except OSError as exc:
        raise ProfilerError("cannot write %s: %s" % (path, one_line(exc))) from None


def check_writable(out_dir: str) -> None:
    """Fail before any measurement if results could not be saved."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".write-test-", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ProfilerError("output directory %s is not writable: %s" % (out_dir, one_line(exc))) from None


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def write_json(result: Any, path: str) -> str:
    text = json.dumps(_json_safe(result.to_dict()), indent=2, allow_nan=False)
    return atomic_write(path, lambda fh: fh.write(text + "\n"))


def write_summary_csv(result: Any, path: str) -> str:
    def fill(fh: TextIO) -> None:
        writer = csv.writer(fh)
        writer.writerow(SUMMARY_COLUMNS)
        for layer in result.layers:
            writer.writerow([_cell(getattr(layer, name)) for name in SUMMARY_COLUMNS])

    return atomic_write(path, fill)


def write_inference_csv(result: Any, path: str) -> str:
    """One row per profile: energy per inference (see ProfileResult.inference); only the header when the
    whole-model pass was not measured."""
    rows = [] if result.inference is None else [result.inference]
    return _write_inference_rows(result, path, rows, result.meta.get("method"))


def write_batch_sizes_csv(result: Any, path: str) -> str:
    """One row per batch size measured (ProfileResult.batch_sizes), the columns of the inference CSV; the
    sweep's windows are isolated whole-model passes whatever the profile's method."""
    return _write_inference_rows(result, path, result.batch_sizes or [], "isolate")


def _write_inference_rows(result: Any, path: str, rows: List[Dict[str, Any]], method: Optional[str]) -> str:
    meta = result.meta
    common = {"model": result.model, "method": method, "power_mode": power_mode(meta),
              "simulated": bool(meta.get("simulated")), "complete": result.complete}
    return write_rows(path, INFERENCE_COLUMNS, [dict(figures, **common) for figures in rows])


def write_rows(path: str, columns: Sequence[str], rows: Iterable[Dict[str, Any]]) -> str:
    """A CSV of ``rows`` (dicts) in ``columns`` order, cells written as in every CSV here."""
    def fill(fh: TextIO) -> None:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row[name]) for name in columns])

    return atomic_write(path, fill)


@contextlib.contextmanager
def png_figure(path: str, **figure: Any) -> Iterator[Any]:
    """A matplotlib figure that is written to ``path`` as a PNG when the block ends (atomically), closed either way."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig = plt.figure(**figure)
    try:
        yield fig
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    atomic_write(path, lambda fh: fh.write(buffer.getvalue()), binary=True)


def write_full_csv(result: Any, path: str) -> str:
    """Every raw sample in the replay source's format, plus the layer and trial it fell in.

    The sampler charges reading k over (t_{k-1}, t_k]; the replay format holds
    row i's power from ``time_s[i]`` to ``time_s[i+1]``.  So each row carries
    the *start* of its interval and the power of the reading that closes it,
    and the trace replays with exactly the energy the profiler measured.
    ``time_s`` counts from the first sample (``meta.samples_time_origin``).
    """
    samples = sorted(result.samples, key=lambda s: s.t)
    rails: List[str] = []
    for s in samples:
        for name in s.rails:
            if name not in rails:
                rails.append(name)
    windows = sorted(result.windows, key=lambda w: w.t0)
    starts = [w.t0 for w in windows]

    def where(t: float):
        i = bisect.bisect_left(starts, t) - 1
        if i >= 0 and windows[i].t0 < t <= windows[i].t1:
            return windows[i].label, windows[i].trial
        return "", ""

    def fill(fh: TextIO) -> None:
        writer = csv.writer(fh)
        writer.writerow(["time_s", "total_w"] + [r + "_w" for r in rails] + ["layer", "trial"])
        if not samples:
            return
        origin = samples[0].t
        rows = [(samples[k - 1].t, samples[k]) for k in range(1, len(samples))]
        rows.append((samples[-1].t, samples[-1]))
        for start, s in rows:
            layer, trial = where(s.t)
            writer.writerow(["%.6f" % (start - origin), repr(s.total_w)]
                            + [repr(s.rails[r]) if r in s.rails else "" for r in rails] + [layer, trial])

    return atomic_write(path, fill)


def write_plot(result: Any, path: str) -> str:
    """Horizontal bars, one per layer call in execution order, dynamic part stacked on the idle part.

    The figure grows with the layer count (a fixed height per bar), so 150+
    layers stay readable; the error bar is the 95 % CI of the total energy.
    """
    layers = [layer for layer in result.layers if layer.trials or layer.flag]
    n = max(len(layers), 1)
    height = min(max(3.0, 0.22 * n + 1.6), 300.0)
    with png_figure(path, figsize=(10, height)) as fig:
        ax = fig.subplots()
        y = list(range(len(layers)))
        scale, unit = _energy_unit(max([layer.energy_j for layer in layers if not layer.flag] + [0.0]))
        # a flagged layer gets no bar: its reason is written where the bar would be
        total = [0.0 if layer.flag else max(layer.energy_j, 0.0) * scale for layer in layers]
        dyn = [0.0 if layer.flag else min(max(layer.dynamic_energy_j, 0.0) * scale, t)
               for layer, t in zip(layers, total)]
        idle = [t - d for t, d in zip(total, dyn)]
        err = [0.0 if layer.flag else (layer.energy_ci95_j or 0.0) * scale for layer in layers]
        ax.barh(y, idle, color="#b0b0b0", label="idle share (idle power x duration)")
        ax.barh(y, dyn, left=idle, color="#d9534f", label="dynamic (above idle)")
        ax.errorbar(total, y, xerr=err, fmt="none", ecolor="black", elinewidth=0.8, capsize=2, label="95 % CI")
        for position, layer in enumerate(layers):
            if layer.flag:
                ax.text(0, position, "  FLAGGED: " + layer.flag, va="center", fontsize=7, color="#a94442")
        ax.set_yticks(y)
        ax.set_yticklabels(["%s  %s" % (layer.label, layer.module) for layer in layers], fontsize=7)
        ax.invert_yaxis()
        ax.set_ylim(len(layers) - 0.5, -0.5) if layers else None
        ax.set_xlim(left=0)
        ax.set_xlabel("energy per call (%s)" % unit)
        ax.grid(axis="x", alpha=0.3)
        meta = result.meta
        title = "%s: per-layer energy (%s, idle %.3f W)" % (result.model, meta.get("source", "?"),
                                                            result.idle_power_w)
        if meta.get("simulated"):
            title += " -- SIMULATED/REPLAYED SENSOR, not a hardware measurement"
        if not meta.get("complete", False):
            title += " -- INCOMPLETE"
        ax.set_title(title, fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    return path


def _energy_unit(largest: float):
    if largest >= 1.0 or not math.isfinite(largest):
        return 1.0, "J"
    if largest >= 1e-3:
        return 1e3, "mJ"
    return 1e6, "uJ"


def _fmt(value: Optional[float], scale: float, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return "%.*f" % (digits, value * scale)


def console_summary(result: Any) -> str:
    """The original profiler's lines (``Conv2d_0: Duration=... | Energy=... | Avg Power=...``), then totals."""
    lines = []
    for layer in result.layers:
        if layer.flag:
            # an implausible figure is never printed as a plain number
            lines.append("%s: FLAGGED (%s) | Duration=%s ms" % (layer.label, layer.flag, _fmt(layer.duration_s, 1e3)))
            continue
        lines.append(
            "%s: Duration=%s ms | Energy=%s mJ (+/- %s, dynamic %s mJ) | Avg Power=%s W"
            % (layer.label, _fmt(layer.duration_s, 1e3), _fmt(layer.energy_j, 1e3),
               _fmt(layer.energy_ci95_j, 1e3), _fmt(layer.dynamic_energy_j, 1e3), _fmt(layer.power_w, 1, 3))
        )
    measured = [layer for layer in result.layers if layer.trials and not layer.flag]
    flagged = sum(1 for layer in result.layers if layer.flag)
    total_t = math.fsum(layer.duration_s for layer in measured)
    total_e = math.fsum(layer.energy_j for layer in measured)
    total_d = math.fsum(layer.dynamic_energy_j for layer in measured)
    lines.append("Total (%d layers%s): Duration=%s ms | Energy=%s mJ | Dynamic Energy=%s mJ | Avg Power=%s W"
                 % (len(measured), ", %d flagged left out" % flagged if flagged else "", _fmt(total_t, 1e3),
                    _fmt(total_e, 1e3), _fmt(total_d, 1e3),
                    _fmt(total_e / total_t if total_t > 0 else float("nan"), 1, 3)))
    idle = result.idle
    drifted = "; DRIFTED" if idle.get("drift_flagged") else ""
    if "min_w" in idle:
        lines.append("Idle power: %s W (reference windows %s to %s W%s; each layer is charged its local idle)"
                     % (_fmt(result.idle_power_w, 1, 3), _fmt(idle.get("min_w"), 1, 3),
                        _fmt(idle.get("max_w"), 1, 3), drifted))
    else:
        lines.append("Idle power: %s W (before %s W, after %s W%s)"
                     % (_fmt(result.idle_power_w, 1, 3), _fmt(idle.get("before_w"), 1, 3),
                        _fmt(idle.get("after_w"), 1, 3), drifted))
    disturbed = result.meta.get("windows_disturbed")
    if disturbed:
        lines.append("Background: %d windows disturbed (bursts of no layer) were left out and measured again"
                     % disturbed)
    whole = result.whole_model
    if whole and whole.get("trials"):
        coverage = whole.get("coverage")
        lines.append("Whole model: Duration=%s ms | Energy=%s mJ | Dynamic Energy=%s mJ | layers cover %s %%"
                     % (_fmt(whole["duration_s"], 1e3), _fmt(whole["energy_j"], 1e3),
                        _fmt(whole["dynamic_energy_j"], 1e3), _fmt(coverage, 100, 1)))
    lines.extend(inference_lines(result.inference, power_mode(result.meta)))
    if result.batch_sizes is not None:
        lines.extend(batch_size_lines(result.batch_sizes, result.meta.get("batch_sizes") or []))
    if result.comparison:
        from .insitu import compare_lines

        lines.extend(compare_lines(result.comparison))
    if result.meta.get("simulated"):
        lines.append("SIMULATED: source %s (%s) is simulated or replayed; these are not hardware measurements"
                     % (result.meta.get("source"), result.meta.get("board")))
    if not result.complete:
        lines.append("INCOMPLETE: %s" % (result.meta.get("stopped_by") or "stopped early"))
    return "\n".join(lines)


def inference_lines(figures: Optional[Dict[str, Any]], mode: str) -> List[str]:
    """The energy per inference (one forward pass of the batch) and per sample, or why there is none."""
    if figures is None:
        return ["Per inference: not measured (the whole-model pass has no clean window)"]
    head = "Per inference (batch %d, power mode %s)" % (figures["batch_size"], mode)
    if figures["flag"]:
        return ["%s: FLAGGED (%s) | Latency=%s ms" % (head, figures["flag"], _fmt(figures["latency_s"], 1e3))]
    per_joule = figures["inferences_per_joule"]
    return ["%s: Latency=%s ms | Energy=%s mJ (+/- %s) | Dynamic=%s mJ (+/- %s) | per sample %s mJ | "
            "%s inferences/J | Avg Power=%s W"
            % (head, _fmt(figures["latency_s"], 1e3), _fmt(figures["energy_per_inference_j"], 1e3),
               _fmt(figures["energy_per_inference_ci95_j"], 1e3),
               _fmt(figures["dynamic_energy_per_inference_j"], 1e3),
               _fmt(figures["dynamic_energy_per_inference_ci95_j"], 1e3),
               _fmt(figures["energy_per_sample_j"], 1e3), "n/a" if per_joule is None else "%.4g" % per_joule,
               _fmt(figures["mean_power_w"], 1, 3))]


def batch_size_lines(rows: List[Dict[str, Any]], asked: List[int]) -> List[str]:
    """Energy per inference and per sample at each batch size of the sweep, and the sizes not measured."""
    lines = ["Batch sizes (whole model, energy per inference and per sample):"]
    for figures in rows:
        label = "  batch %d" % figures["batch_size"]
        if figures["flag"]:
            lines.append("%s: FLAGGED (%s) | Latency=%s ms" % (label, figures["flag"], _fmt(figures["latency_s"], 1e3)))
            continue
        lines.append("%s: Latency=%s ms | Energy=%s mJ/inference (+/- %s) | %s mJ/sample (dynamic %s) | "
                     "%s samples/J"
                     % (label, _fmt(figures["latency_s"], 1e3), _fmt(figures["energy_per_inference_j"], 1e3),
                        _fmt(figures["energy_per_inference_ci95_j"], 1e3), _fmt(figures["energy_per_sample_j"], 1e3),
                        _fmt(figures["dynamic_energy_per_sample_j"], 1e3),
                        "%.4g" % (1.0 / figures["energy_per_sample_j"]) if figures["energy_per_sample_j"] > 0
                        else "n/a"))
    missing = [size for size in asked if size not in {figures["batch_size"] for figures in rows}]
    if missing:
        lines.append("  not measured: batch %s" % ", ".join(map(str, missing)))
    return lines


class ProgressBar:
    """A one-line bar on a terminal; on a pipe, a line at every tenth of the way."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30):
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self._decile = -1
        self._open = False

    def __call__(self, done: int, total: int, text: str) -> None:
        fraction = done / total if total else 1.0
        if self.tty:
            filled = int(self.width * fraction)
            self.stream.write("\r[%s%s] %3d%% %s" % ("#" * filled, "." * (self.width - filled),
                                                      100 * fraction, text[:40].ljust(40)))
            self._open = done < total
            if not self._open:
                self.stream.write("\n")
        else:
            decile = int(10 * fraction)
            if decile == self._decile:
                return
            self._decile = decile
            self.stream.write("progress: %3d%% (%d/%d) %s\n" % (100 * fraction, done, total, text))
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
