"""Compare saved profiles layer by layer: what changed, and whether the change is real.

The first profile is the baseline; every other one is compared against it
(so ``A B C`` gives A->B and A->C, never B->C).  Layers match by module path
and op; the k-th call of a module (ResNet's shared ReLU runs twice) matches
the other profile's k-th call of it.  Rows left over between two matched
layers whose op sequences are the same on both sides match in order (a
wrapper that renamed ``conv1`` to ``model.conv1``, a shifted Sequential
index): marked ``renamed``.  Everything else is listed as only on its side.

A difference is ``other - baseline`` per call.  The two profiles are
independent measurements, so the 95 % CI half-width of the difference is
the root-sum-square of both sides' half-widths; the change is significant
only when that CI excludes 0.  A row flagged on either side (its figures
cannot be right, see profiler.result.plausibility) gets no difference.
"""

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import ProfilerError, one_line
from .estimate import difference_ci95
from .models import safe_name
from .report import _cell, _energy_unit, _json_safe, atomic_write, check_writable, png_figure

# which energy is compared: the field and its CI field in a layer row
ENERGIES = {
    "total": ("energy_j", "energy_ci95_j"),  # all the board drew during the call (what the battery pays)
    "dynamic": ("dynamic_energy_j", "dynamic_energy_ci95_j"),  # the part above the idle baseline
}
LAYER_KEYS = ("module", "op", "label", "trials", "flag") + ENERGIES["total"] + ENERGIES["dynamic"]
# meta entries that should agree for a comparison to isolate the one change the user made
WARN_KEYS = (
    ("board", "boards"), ("nvpmodel", "power modes"), ("jetson_clocks", "jetson_clocks states"),
    ("input_shape", "input shapes"), ("dtype", "dtypes"), ("device", "devices"), ("source", "sources"),
    ("method", "methods"), ("estimator", "estimators"), ("granularity", "granularities"),
    ("simulated", "simulated flags"), ("cpu_governor", "CPU governors"),
)
TOP_N = 10


@dataclass
class Profile:
    """One side of a comparison: a profile's summary as written to ``<model>_layerwise_summary.json``."""

    name: str
    origin: str  # the file it came from, or "ProfileResult"
    meta: Dict[str, Any]
    layers: List[Dict[str, Any]]
    whole_model: Optional[Dict[str, Any]]
    inference: Optional[Dict[str, Any]]  # energy per inference (profiles from before it existed: None)

    @property
    def simulated(self) -> bool:
        return bool(self.meta.get("simulated"))


def load(item: Any) -> Profile:
    """A Profile from a summary JSON path or a :class:`profiler.ProfileResult`; ProfilerError otherwise."""
    if isinstance(item, (str, os.PathLike)):
        item = os.fspath(item)
        try:
            with open(item, encoding="utf-8") as fh:
                data = json.load(fh)
        except OSError as exc:
            raise ProfilerError("cannot read %s: %s" % (item, exc.strerror or one_line(exc))) from None
        except ValueError as exc:
            raise ProfilerError("%s is not JSON: %s" % (item, one_line(exc))) from None
        origin = item
    elif hasattr(item, "to_dict") and hasattr(item, "layers"):
        data, origin = _json_safe(item.to_dict()), "ProfileResult"
    else:
        raise ProfilerError("cannot compare %s: pass summary JSON paths or ProfileResult objects"
                            % type(item).__name__)
    what = "%s is not a jetson-power-profile summary JSON (*_layerwise_summary.json)" % origin
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict) or not isinstance(data.get("layers"), list):
        raise ProfilerError(what + ": no meta and layers")
    for position, layer in enumerate(data["layers"]):
        missing = [k for k in LAYER_KEYS if not isinstance(layer, dict) or k not in layer]
        if missing:
            raise ProfilerError("%s: layer %d lacks %s" % (what, position, ", ".join(missing)))
    whole, inference = data.get("whole_model"), data.get("inference")
    meta = data["meta"]
    name = str(meta.get("model") or os.path.splitext(os.path.basename(origin))[0])
    return Profile(name=name, origin=origin, meta=meta, layers=data["layers"],
                   whole_model=whole if isinstance(whole, dict) else None,
                   inference=inference if isinstance(inference, dict) else None)


def _unique_names(profiles: List[Profile]) -> None:
    """Two profiles of one model (say float32 and float16) get what tells them apart appended."""
    names = [p.name for p in profiles]
    if len(set(names)) == len(names):
        return
    for key in ("dtype", "method", "nvpmodel", "input_shape", "file"):
        tried = ["%s-%s" % (p.name, _shown(p.meta.get(key)) if key != "file" else
                            os.path.splitext(os.path.basename(p.origin))[0]) for p in profiles]
        if len(set(tried)) == len(tried):
            break
    else:
        tried = ["%s-%d" % (p.name, i + 1) for i, p in enumerate(profiles)]
    for p, name in zip(profiles, tried):
        p.name = safe_name(name)


def match_layers(base: Sequence[Dict[str, Any]],
                 other: Sequence[Dict[str, Any]]) -> List[Tuple[Optional[int], Optional[int], str]]:
    """``(baseline index, other index, how)`` rows: ``path``, ``renamed``, or one side None.

    Order: the baseline's execution order, each other-only row after the
    matched row that precedes it in the other profile.
    """
    def keys(layers):
        seen: Dict[Tuple[str, str], int] = {}
        out = []
        for layer in layers:
            k = (layer["module"], layer["op"])
            seen[k] = seen.get(k, 0) + 1
            out.append(k + (seen[k],))
        return out

    where = {k: j for j, k in enumerate(keys(other))}
    pairs = {}
    for i, k in enumerate(keys(base)):
        if k in where:
            pairs[i] = (where[k], "path")
    # the gaps between matched neighbours (and before the first, after the last): same ops -> renamed
    anchors = [(-1, -1)] + sorted((i, j) for i, (j, _) in pairs.items()) + [(len(base), len(other))]
    by_path = {j for j, _ in pairs.values()}
    for (i0, j0), (i1, j1) in zip(anchors, anchors[1:]):
        if j1 <= j0:
            continue  # the two orders cross here: nothing sensible to align
        left = [i for i in range(i0 + 1, i1) if i not in pairs]
        right = [j for j in range(j0 + 1, j1) if j not in by_path]
        if left and [base[i]["op"] for i in left] == [other[j]["op"] for j in right]:
            pairs.update((i, (j, "renamed")) for i, j in zip(left, right))
    matched_other = {j for j, _ in pairs.values()}
    rows: List[Tuple[Optional[int], Optional[int], str]] = []
    after: Dict[Optional[int], List[int]] = {}
    last = None
    for j in range(len(other)):
        if j in matched_other:
            last = j
        else:
            after.setdefault(last, []).append(j)
    rows.extend((None, j, "only") for j in after.get(None, []))
    for i in range(len(base)):
        j, how = pairs.get(i, (None, "only"))
        rows.append((i, j, how))
        if j is not None:
            rows.extend((None, k, "only") for k in after.get(j, []))
    return rows


def _side(layer: Optional[Dict[str, Any]], energy: str) -> Tuple[Optional[float], Optional[float], str]:
    """A row's energy, CI and why it cannot be used ("" when it can)."""
    if layer is None:
        return None, None, ""
    value_key, ci_key = ENERGIES[energy]
    value = layer.get(value_key)
    if layer.get("flag"):
        return value, layer.get(ci_key), layer["flag"]
    if value is None or not layer.get("trials"):
        return None, None, "not measured"
    return value, layer.get(ci_key), ""


def _delta(a: Optional[float], a_ci: Optional[float], b: Optional[float], b_ci: Optional[float]) -> Dict[str, Any]:
    if a is None or b is None:
        return {"delta_j": None, "delta_ci95_j": None, "delta_pct": None, "significant": False}
    delta, ci, significant = difference_ci95(a, a_ci, b, b_ci)
    return {"delta_j": delta, "delta_ci95_j": ci, "delta_pct": 100.0 * delta / a if a > 0 else None,
            "significant": significant}


@dataclass
class Pair:
    """The baseline against one other profile: layer rows, totals, whole model and warnings."""

    baseline: Profile
    other: Profile
    energy: str
    rows: List[Dict[str, Any]] = field(default_factory=list)
    total: Dict[str, Any] = field(default_factory=dict)
    whole: Dict[str, Any] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)

    def build(self) -> "Pair":
        base, other = self.baseline.layers, self.other.layers
        for i, j, how in match_layers(base, other):
            a_layer = base[i] if i is not None else None
            b_layer = other[j] if j is not None else None
            a, a_ci, a_flag = _side(a_layer, self.energy)
            b, b_ci, b_flag = _side(b_layer, self.energy)
            flags = ["%s: %s" % (p.name, f) for p, f in ((self.baseline, a_flag), (self.other, b_flag)) if f]
            both = a_layer is not None and b_layer is not None
            usable = both and not flags
            row = {
                "match": how if both else "only " + (self.baseline.name if b_layer is None else self.other.name),
                "module": (a_layer or b_layer)["module"], "op": (a_layer or b_layer)["op"],
                "other_module": b_layer["module"] if b_layer is not None else None,
                "baseline_label": a_layer["label"] if a_layer else None,
                "other_label": b_layer["label"] if b_layer else None,
                "baseline_j": a, "baseline_ci95_j": a_ci, "other_j": b, "other_ci95_j": b_ci,
                "baseline_duration_s": a_layer.get("duration_s") if a_layer else None,
                "other_duration_s": b_layer.get("duration_s") if b_layer else None,
                "flag": "; ".join(flags), "baseline_flag": a_flag, "other_flag": b_flag,
            }
            row.update(_delta(a, a_ci, b, b_ci) if usable else _delta(None, None, None, None))
            self.rows.append(row)
        usable = [r for r in self.rows if r["delta_j"] is not None]
        cis = [r[k] for r in usable for k in ("baseline_ci95_j", "other_ci95_j")]
        a_sum = math.fsum(r["baseline_j"] for r in usable)
        b_sum = math.fsum(r["other_j"] for r in usable)
        # layers are measured in separate windows: their errors add in quadrature
        known = all(c is not None for c in cis)
        self.total = dict(_delta(a_sum, _rss(cis[0::2]) if known else None, b_sum,
                                 _rss(cis[1::2]) if known else None) if usable else _delta(None, None, None, None),
                          layers=len(usable), baseline_j=a_sum if usable else None,
                          other_j=b_sum if usable else None)
        (a, a_ci, a_s), (b, b_ci, b_s) = _whole(self.baseline, self.energy), _whole(self.other, self.energy)
        self.whole = dict(_delta(a, a_ci, b, b_ci), baseline_j=a, baseline_ci95_j=a_ci, other_j=b, other_ci95_j=b_ci,
                          baseline_latency_s=a_s, other_latency_s=b_s)
        self.warnings = _warnings(self.baseline, self.other)
        return self

    def counts(self) -> Dict[str, int]:
        rows = self.rows
        return {
            "matched": sum(1 for r in rows if r["match"] in ("path", "renamed")),
            "renamed": sum(1 for r in rows if r["match"] == "renamed"),
            "only_baseline": sum(1 for r in rows if r["other_label"] is None),
            "only_other": sum(1 for r in rows if r["baseline_label"] is None),
            "flagged": sum(1 for r in rows if r["flag"]),
            "up": sum(1 for r in rows if r["significant"] and r["delta_j"] > 0),
            "down": sum(1 for r in rows if r["significant"] and r["delta_j"] < 0),
        }

    def top(self, n: int = TOP_N) -> List[Dict[str, Any]]:
        """The n largest significant changes, largest first."""
        return sorted((r for r in self.rows if r["significant"]), key=lambda r: -abs(r["delta_j"]))[:n]


def _rss(values: Sequence[float]) -> float:
    return math.sqrt(math.fsum(v * v for v in values))


def _whole(profile: Profile, energy: str) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """Energy per inference (one forward pass on the profile's input), its CI and the latency.

    From the profile's ``inference`` figures; a profile written before they
    existed has the same numbers in its whole-model row.  None when flagged.
    """
    inference = profile.inference
    if inference is not None:
        if inference.get("flag"):
            return None, None, None
        key = "energy_per_inference" if energy == "total" else "dynamic_energy_per_inference"
        return inference.get(key + "_j"), inference.get(key + "_ci95_j"), inference.get("latency_s")
    whole = profile.whole_model
    if not whole or not whole.get("trials") or whole.get("flag"):
        return None, None, None
    value_key, ci_key = ENERGIES[energy]
    return whole.get(value_key), whole.get(ci_key), whole.get("duration_s")


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(map(str, value))
    return "unknown" if value is None else str(value)


def _warnings(a: Profile, b: Profile) -> List[str]:
    out = []
    for key, what in WARN_KEYS:
        va, vb = a.meta.get(key), b.meta.get(key)
        if va != vb:
            out.append("%s differ: %s (%s) vs %s (%s)" % (what, _shown(va), a.name, _shown(vb), b.name))
    for p in (a, b):
        if not p.meta.get("complete", True):
            out.append("%s is incomplete (%s)" % (p.name, p.meta.get("stopped_by") or "stopped early"))
        if _whole(p, "total")[0] is None:
            out.append("%s has no usable energy per inference (whole model not measured or flagged)" % p.name)
    return out


COLUMNS = (
    "baseline", "other", "match", "module", "other_module", "op", "baseline_label", "other_label",
    "baseline_{e}_j", "baseline_{e}_ci95_j", "other_{e}_j", "other_{e}_ci95_j", "delta_{e}_j", "delta_{e}_ci95_j",
    "delta_pct", "significant", "baseline_duration_s", "other_duration_s", "flag", "warnings",
)


class Comparison:
    """Profiles compared against the first: ``pairs`` (one per other profile) and the writers."""

    def __init__(self, profiles: List[Profile], energy: str = "total", top: int = TOP_N):
        self.profiles = profiles
        self.energy = energy
        self.top_n = top
        self.pairs = [Pair(profiles[0], other, energy).build() for other in profiles[1:]]

    @property
    def baseline(self) -> Profile:
        return self.profiles[0]

    @property
    def simulated(self) -> bool:
        return any(p.simulated for p in self.profiles)

    @property
    def energy_text(self) -> str:
        return "%s energy per call (%s)" % (self.energy, ENERGIES[self.energy][0])

    def stem(self) -> str:
        """``<baseline>_vs_<other>[_vs_...]_compare``: the files' common name."""
        return "_vs_".join(p.name for p in self.profiles) + "_compare"

    def columns(self) -> List[str]:
        e = "energy" if self.energy == "total" else "dynamic_energy"
        return [c.format(e=e) for c in COLUMNS]

    def csv_rows(self) -> List[List[Any]]:
        """Every pair's layer rows, then its ``matched layers total`` and ``whole model`` rows."""
        out = []
        for pair in self.pairs:
            warnings = "; ".join(pair.warnings)
            for row in pair.rows:
                out.append([pair.baseline.name, pair.other.name, row["match"], row["module"], row["other_module"],
                            row["op"], row["baseline_label"], row["other_label"], row["baseline_j"],
                            row["baseline_ci95_j"], row["other_j"], row["other_ci95_j"], row["delta_j"],
                            row["delta_ci95_j"], row["delta_pct"], row["significant"],
                            row["baseline_duration_s"], row["other_duration_s"], row["flag"], warnings])
            for what, summary in (("matched layers total", pair.total), ("energy per inference", pair.whole)):
                out.append([pair.baseline.name, pair.other.name, what, "", "", "", "", "", summary["baseline_j"],
                            summary.get("baseline_ci95_j"), summary["other_j"], summary.get("other_ci95_j"),
                            summary["delta_j"], summary["delta_ci95_j"], summary["delta_pct"],
                            summary["significant"], summary.get("baseline_latency_s"),
                            summary.get("other_latency_s"), "", warnings])
        return out

    def write_csv(self, path: str) -> str:
        def fill(fh) -> None:
            writer = csv.writer(fh)
            writer.writerow(self.columns())
            for row in self.csv_rows():
                writer.writerow([_cell(v) for v in row])

        return atomic_write(path, fill)

    def markdown(self) -> str:
        lines = ["# Energy comparison: %s (baseline) vs %s" % (self.baseline.name,
                                                               ", ".join(p.name for p in self.profiles[1:])),
                 "",
                 "Compared: %s. Delta = other - baseline; its 95 %% CI is the root-sum-square of both sides' "
                 "CI half-widths; **significant** only when that CI excludes 0." % self.energy_text]
        if self.simulated:
            lines += ["", "> **SIMULATED**: at least one profile comes from a simulated or replayed sensor (%s); "
                          "these are not hardware measurements." % ", ".join(p.name for p in self.profiles
                                                                             if p.simulated)]
        for pair in self.pairs:
            lines += [""] + self._markdown_pair(pair)
        return "\n".join(lines) + "\n"

    def _markdown_pair(self, pair: Pair) -> List[str]:
        a, b = pair.baseline.name, pair.other.name
        scale, unit = _energy_unit(max([abs(r["baseline_j"] or 0.0) for r in pair.rows] + [0.0]))
        out = ["## %s vs %s" % (a, b), ""]
        out += ["- warning: " + w for w in pair.warnings] + ([""] if pair.warnings else [])
        c = pair.counts()
        out.append("Layers: %d matched (%d renamed), %d only in %s, %d only in %s, %d flagged; %d significant "
                   "(%d up, %d down)." % (c["matched"], c["renamed"], c["only_baseline"], a, c["only_other"], b,
                                          c["flagged"], c["up"] + c["down"], c["up"], c["down"]))
        out += ["", "| | %s (J) | %s (J) | delta (J) | 95 %% CI | delta %% | significant |" % (a, b),
                "|---|---:|---:|---:|---:|---:|:---:|"]
        for what, s in (("energy per inference", pair.whole),
                        ("matched layers total (%d)" % pair.total["layers"], pair.total)):
            out.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                what, _num(s["baseline_j"], 1, s.get("baseline_ci95_j")), _num(s["other_j"], 1, s.get("other_ci95_j")),
                _num(s["delta_j"], 1, signed=True), _num(s["delta_ci95_j"], 1), _pct(s["delta_pct"]),
                _yes(s)))
        out += ["", "Latency per inference: %s ms (%s), %s ms (%s)." % (
            _num(pair.whole["baseline_latency_s"], 1e3), a, _num(pair.whole["other_latency_s"], 1e3), b)]
        out += ["", "| module | op | %s (%s) | %s (%s) | delta (%s) | 95 %% CI | delta %% | significant |" % (
            a, unit, b, unit, unit), "|---|---|---:|---:|---:|---:|---:|:---:|"]
        for r in pair.rows:
            module = r["module"] if r["other_module"] in (None, r["module"]) else "%s -> %s" % (
                r["module"], r["other_module"])
            sides = tuple("" if label is None else "FLAGGED" if flag else _num(value, scale, ci)
                          for label, flag, value, ci in (
                              (r["baseline_label"], r["baseline_flag"], r["baseline_j"], r["baseline_ci95_j"]),
                              (r["other_label"], r["other_flag"], r["other_j"], r["other_ci95_j"])))
            if r["baseline_label"] is None or r["other_label"] is None:
                cells = sides + (r["match"], "", "")
            elif r["flag"]:
                cells = sides + ("FLAGGED (%s)" % r["flag"], "", "")
            else:
                cells = sides + (_num(r["delta_j"], scale, signed=True), _num(r["delta_ci95_j"], scale),
                                 _pct(r["delta_pct"]))
            out.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % ((_md(module), r["op"]) + cells + (_yes(r),)))
        return out

    def write_markdown(self, path: str) -> str:
        text = self.markdown()
        return atomic_write(path, lambda fh: fh.write(text))

    def write_plot(self, path: str) -> str:
        return _plot(self, path)

    def write_all(self, out_dir: str) -> Dict[str, str]:
        """The CSV, Markdown table and PNG under ``out_dir`` (made when missing); returns kind -> path."""
        check_writable(out_dir)
        base = os.path.join(out_dir, self.stem())
        return {"csv": self.write_csv(base + ".csv"), "markdown": self.write_markdown(base + ".md"),
                "plot": self.write_plot(base + ".png")}

    def console_summary(self) -> str:
        lines = []
        for pair in self.pairs:
            a, b = pair.baseline.name, pair.other.name
            lines.append("Compare %s (baseline) vs %s: %s, 95 %% CI of the difference" % (a, b, self.energy_text))
            lines += ["  warning: " + w for w in pair.warnings]
            for what, s in (("Energy per inference", pair.whole),
                            ("Matched layers total (%d)" % pair.total["layers"], pair.total)):
                lines.append("  %s: %s -> %s mJ | delta %s mJ +/- %s (%s)%s" % (
                    what, _num(s["baseline_j"], 1e3), _num(s["other_j"], 1e3), _num(s["delta_j"], 1e3, signed=True),
                    _num(s["delta_ci95_j"], 1e3), _pct(s["delta_pct"]),
                    " significant" if s["significant"] else " not significant"))
            lines.append("  Latency per inference: %s -> %s ms" % (_num(pair.whole["baseline_latency_s"], 1e3),
                                                                   _num(pair.whole["other_latency_s"], 1e3)))
            c = pair.counts()
            lines.append("  Layers: %d matched (%d renamed) | %d only in %s | %d only in %s | %d flagged | "
                         "%d significant (%d up, %d down)" % (
                             c["matched"], c["renamed"], c["only_baseline"], a, c["only_other"], b, c["flagged"],
                             c["up"] + c["down"], c["up"], c["down"]))
            for r in pair.top(self.top_n):
                lines.append("    %s %s: %s -> %s mJ, delta %s +/- %s mJ (%s)" % (
                    r["module"], r["op"], _num(r["baseline_j"], 1e3), _num(r["other_j"], 1e3),
                    _num(r["delta_j"], 1e3, signed=True), _num(r["delta_ci95_j"], 1e3), _pct(r["delta_pct"])))
        if self.simulated:
            lines.append("SIMULATED: %s come from a simulated or replayed sensor; not hardware measurements"
                         % ", ".join(p.name for p in self.profiles if p.simulated))
        return "\n".join(lines)


def _num(value: Optional[float], scale: float, ci: Optional[float] = None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    text = ("%+.4g" if signed else "%.4g") % (value * scale)
    return text + (" +/- %.2g" % (ci * scale) if ci is not None else "")


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else "%+.1f %%" % value


def _yes(summary: Dict[str, Any]) -> str:
    return "yes" if summary["significant"] else ""


def _md(text: str) -> str:
    return text.replace("|", "\\|") or "(model)"


def compare(profiles: Sequence[Any], energy: str = "total", top: int = TOP_N) -> Comparison:
    """Compare profiles (summary JSON paths or ProfileResult objects) against the first one.

    ``energy``: ``total`` (all the board drew during a call) or ``dynamic``
    (the part above idle).  ``top``: how many of the largest significant
    changes the console and the plot single out.  ProfilerError on bad input.
    """
    if energy not in ENERGIES:
        raise ProfilerError("unknown energy %r: use %s" % (energy, " or ".join(ENERGIES)))
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ProfilerError("top must be a non-negative integer, got %r" % (top,))
    if isinstance(profiles, (str, bytes)) or len(profiles) < 2:
        raise ProfilerError("compare needs at least two profiles (the first is the baseline)")
    loaded = [load(p) for p in profiles]
    _unique_names(loaded)
    return Comparison(loaded, energy, top)


def _plot(comparison: Comparison, path: str) -> str:
    """Side-by-side horizontal bars per layer (baseline order), the top changes marked; a top-changes panel above.

    One row per layer of the baseline (others' unmatched rows after the
    layer they follow), one bar per profile, heights growing with the rows
    so 150+ layers stay readable; significant top-N changes are shaded and
    their labels set in red, and repeated in the panel above with their CIs.
    """
    profiles = comparison.profiles
    rows = _plot_rows(comparison)
    n, k = max(len(rows), 1), len(profiles)
    top = [(pair, r) for pair in comparison.pairs for r in pair.top(comparison.top_n)]
    top.sort(key=lambda pr: -abs(pr[1]["delta_j"]))
    top = top[:comparison.top_n]
    marked = {id(r) for _, r in top}
    largest = max([abs(v) for row in rows for v in row["values"] if v is not None] + [0.0])
    scale, unit = _energy_unit(largest)
    top_h = 0.3 * len(top) + 1.2 if top else 0.0
    main_h = 0.12 * n * max(2, k) + 1.8
    with png_figure(path, figsize=(11, min(top_h + main_h, 300.0))) as fig:
        grid = fig.add_gridspec(2 if top else 1, 1, height_ratios=[top_h, main_h] if top else [1])
        if top:
            ax = fig.add_subplot(grid[0])
            y = list(range(len(top)))
            deltas = [r["delta_j"] * scale for _, r in top]
            ax.barh(y, deltas, xerr=[r["delta_ci95_j"] * scale for _, r in top],
                    color=["#d9534f" if d > 0 else "#5cb85c" for d in deltas], ecolor="black", capsize=2)
            for position, (d, (_, r)) in enumerate(zip(deltas, top)):
                ax.annotate(" %s %s (%s) " % (_num(r["delta_j"], scale, signed=True), unit, _pct(r["delta_pct"])),
                            (d, position), va="center", ha="left" if d > 0 else "right", fontsize=7)
            ax.set_yticks(y)
            ax.set_yticklabels(["%s %s (%s)" % (r["module"], r["op"], p.other.name) for p, r in top], fontsize=7)
            ax.invert_yaxis()
            ax.axvline(0, color="black", linewidth=0.8)
            ax.set_xlabel("change vs %s (%s per call, 95 %% CI)" % (comparison.baseline.name, unit))
            ax.set_title("Top %d significant changes (red: more energy, green: less)" % len(top), fontsize=9)
            ax.grid(axis="x", alpha=0.3)
        ax = fig.add_subplot(grid[-1])
        height = 0.8 / k
        colors = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
        shown = [[(row["values"][s] or 0.0) * scale if not row["flags"][s] else 0.0 for row in rows]
                 for s in range(k)]
        positive = [v for values in shown for v in values if v > 0] or [1.0]
        # layer energies span decades (a ReLU next to a convolution): a log axis keeps every bar visible
        floor = min(positive) / 2 if max(positive) > 100 * min(positive) else 0.0
        for s, profile in enumerate(profiles):
            y = [i - 0.4 + height * (s + 0.5) for i in range(len(rows))]
            errors = [(row["cis"][s] or 0.0) * scale if not row["flags"][s] else 0.0 for row in rows]
            ax.barh(y, [max(v - floor, 0.0) for v in shown[s]], left=floor, height=height, xerr=errors,
                    color=colors[s % len(colors)], ecolor="black", error_kw={"elinewidth": 0.5, "capsize": 1},
                    label=profile.name + (" (baseline)" if s == 0 else ""))
        for i, row in enumerate(rows):
            if any(id(r) in marked for r in row["pair_rows"]):
                ax.axhspan(i - 0.5, i + 0.5, color="#fff3b0", zorder=0)
            flagged = [profiles[s].name for s in range(k) if row["flags"][s]]
            if flagged:
                ax.text(floor, i, "  FLAGGED in " + ", ".join(flagged), va="center", fontsize=6, color="#a94442")
        ax.set_yticks(list(range(len(rows))))
        ax.set_yticklabels([row["label"] for row in rows], fontsize=6)
        for tick, row in zip(ax.get_yticklabels(), rows):
            if any(id(r) in marked for r in row["pair_rows"]):
                tick.set_color("#c9302c")
                tick.set_fontweight("bold")
        ax.set_ylim(len(rows) - 0.5, -0.5)
        if floor:
            ax.set_xscale("log")
        # error bars may run past the largest bar: they are clipped, the bars keep the width
        ax.set_xlim(floor or 0.0, max(positive) * (3.0 if floor else 1.15))
        ax.set_xlabel("%s (%s%s)" % (comparison.energy_text, unit, ", log scale" if floor else ""))
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        title = "Per-layer energy: %s vs %s" % (comparison.baseline.name, ", ".join(p.name for p in profiles[1:]))
        if comparison.simulated:
            title += "\nSIMULATED/REPLAYED SENSOR, not a hardware measurement"
        warnings = sorted({w for pair in comparison.pairs for w in pair.warnings})
        if warnings:
            title += "\nwarning: " + "\nwarning: ".join(warnings[:6]) + (" ..." if len(warnings) > 6 else "")
        ax.set_title(title, fontsize=8)
    return path


def _plot_rows(comparison: Comparison) -> List[Dict[str, Any]]:
    """One entry per baseline layer (with each other profile's matched row) and per other-only layer."""
    k = len(comparison.profiles)
    by_base: Dict[str, Dict[str, Any]] = {}
    rows: List[Dict[str, Any]] = []

    def new(label: str) -> Dict[str, Any]:
        return {"label": label, "values": [None] * k, "cis": [None] * k, "flags": [""] * k, "pair_rows": []}

    for p, pair in enumerate(comparison.pairs, start=1):
        previous, leading = None, 0
        for r in pair.rows:
            if r["baseline_label"] is None:  # next to the layer it follows in its own profile
                row = new("%s %s (only %s)" % (r["other_module"], r["op"], pair.other.name))
                at = rows.index(previous) + 1 if previous is not None else leading
                leading += previous is None
                rows.insert(at, row)
            else:
                row = by_base.get(r["baseline_label"])
                if row is None:
                    row = by_base[r["baseline_label"]] = new("%s  %s" % (r["baseline_label"], r["module"]))
                    row["values"][0], row["cis"][0] = r["baseline_j"], r["baseline_ci95_j"]
                    row["flags"][0] = r["baseline_flag"]
                    rows.append(row)
            if r["other_label"] is not None:
                row["values"][p], row["cis"][p] = r["other_j"], r["other_ci95_j"]
                row["flags"][p] = r["other_flag"]
            row["pair_rows"].append(r)
            previous = row
    return rows
