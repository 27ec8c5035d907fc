"""Per-rail calibration against a reference power meter: ``calibrated_w = gain * raw_w + offset_w``.

On-board monitors can read well below an external meter; a calibration file
maps each rail's reading onto the meter's scale.  The sampler applies it to
every reading before integrating, so power and the energy counters are both
calibrated; sources know nothing of it.  File format (YAML)::

    meter: Yokogawa WT310E     # the reference meter (free text)
    date: 2026-12-02           # when the meter was compared (YYYY-MM-DD)
    rails:
      POM_5V_IN: {gain: 1.042, offset_w: 0.13}

Rails the file does not name stay as read.  The total is made consistent
with its rails: it moves by the corrections of the rails that make it
(:func:`exporter.sources.rails.counted_rails`: the input rail, or the
parallel rails), so a board whose total is ``POM_5V_IN`` reports the
calibrated ``POM_5V_IN``.  A hardware energy counter (NVML, RAPL) is not
calibrated: with a calibration the sampler integrates calibrated power.
Volts and amperes stay as the monitor reports them.
"""

import datetime
import math
from typing import Any, Dict, Iterable, Tuple

import yaml

from .sources.base import Reading
from .sources.rails import counted_rails

TOP_KEYS = ("meter", "date", "rails")
RAIL_KEYS = ("gain", "offset_w")


class CalibrationError(ValueError):
    """The calibration file is unreadable or wrong; the message names the file and what to fix."""


class Calibration:
    """A loaded calibration: ``rails`` maps rail name to (gain, offset_w)."""

    def __init__(self, path: str, meter: str, date: str, rails: Dict[str, Tuple[float, float]]):
        self.path = path
        self.meter = meter
        self.date = date
        self.rails = rails
        self._counted: Tuple[Tuple[str, ...], frozenset] = ((), frozenset())

    def check_rails(self, source_rails: Iterable[str]) -> None:
        """Raise CalibrationError when the file names a rail the source does not have."""
        present = set(source_rails)
        unknown = sorted(set(self.rails) - present)
        if unknown:
            raise CalibrationError(
                "calibration file %s: rail %s is not among the source's rails (%s); remove it or fix its name"
                % (self.path, ", ".join(unknown), ", ".join(sorted(present)) or "none"))

    def apply(self, reading: Reading) -> Reading:
        """The calibrated reading: rails corrected, total moved by its rails' corrections, no counter."""
        names = tuple(reading.rails)
        if names != self._counted[0]:
            self._counted = (names, frozenset(counted_rails(names)))
        counted = self._counted[1]
        rails = dict(reading.rails)
        total = reading.total_watts
        for name, (gain, offset) in self.rails.items():
            raw = rails.get(name)
            if raw is None:
                continue
            value = gain * raw + offset
            rails[name] = value
            if name in counted:
                total += value - raw
        return Reading(reading.timestamp, total, rails, reading.volts, reading.amperes, None)

    def describe(self) -> Dict[str, Any]:
        """What is applied, for the window API, the source API and profiler reports."""
        return {
            "file": self.path,
            "meter": self.meter,
            "date": self.date,
            "rails": {name: {"gain": g, "offset_w": o} for name, (g, o) in sorted(self.rails.items())},
        }


def _fail(path: str, what: str) -> CalibrationError:
    return CalibrationError("calibration file %s: %s" % (path, what))


def _number(path: str, where: str, value: Any, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, "%s must be a finite number (got %r)" % (where, value))
    if positive and value <= 0:
        raise _fail(path, "%s must be positive (got %r): a gain scales the reading, check the fit" % (where, value))
    return float(value)


def parse(path: str, data: Any) -> Calibration:
    """Validate the parsed YAML of ``path``; raise CalibrationError naming the first thing to fix."""
    if not isinstance(data, dict):
        raise _fail(path, "must be a mapping with keys %s" % ", ".join(TOP_KEYS))
    extra = sorted(str(k) for k in data if k not in TOP_KEYS)
    if extra:
        raise _fail(path, "unknown key %s (valid keys: %s)" % (", ".join(extra), ", ".join(TOP_KEYS)))
    missing = [k for k in TOP_KEYS if k not in data]
    if missing:
        raise _fail(path, "missing key %s (a file needs %s)" % (", ".join(missing), ", ".join(TOP_KEYS)))
    meter = data["meter"]
    if not isinstance(meter, str) or not meter.strip():
        raise _fail(path, "meter must name the reference meter, e.g. meter: Yokogawa WT310E")
    date = data["date"]
    if isinstance(date, datetime.date):
        date = date.isoformat()
    try:
        date = datetime.datetime.strptime(str(date), "%Y-%m-%d").date().isoformat()
    except ValueError:
        raise _fail(path, "date must be YYYY-MM-DD (got %r)" % (data["date"],)) from None
    rails = data["rails"]
    if not isinstance(rails, dict) or not rails:
        raise _fail(path, "rails must map each rail name to {gain: G, offset_w: W}")
    out: Dict[str, Tuple[float, float]] = {}
    for name, entry in rails.items():
        where = "rails.%s" % name
        if not isinstance(name, str) or not name:
            raise _fail(path, "rail names must be strings (got %r)" % (name,))
        if not isinstance(entry, dict) or sorted(entry) != sorted(RAIL_KEYS):
            raise _fail(path, "%s must be {gain: G, offset_w: W} (got %r)" % (where, entry))
        out[name] = (_number(path, where + ".gain", entry["gain"], positive=True),
                     _number(path, where + ".offset_w", entry["offset_w"], positive=False))
    return Calibration(path, meter.strip(), date, out)


def load(path: str) -> Calibration:
    """Read and validate a calibration file; raise CalibrationError with a one-line reason."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, "cannot read it: %s" % (getattr(exc, "strerror", None) or exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = " at line %d" % (mark.line + 1) if mark is not None else ""
        raise _fail(path, "not valid YAML%s" % where) from None
    except ValueError as exc:  # YAML that parses but cannot be built, e.g. date: 2026-13-01
        raise _fail(path, "a value is not valid: %s" % exc) from None
    return parse(path, data)


def dump(meter: str, date: str, rails: Dict[str, Tuple[float, float]], header: str = "") -> str:
    """The YAML text of a calibration; ``header`` lines become comments at the top."""
    body = yaml.safe_dump({
        "meter": meter,
        "date": date,
        "rails": {name: {"gain": float(g), "offset_w": float(o)} for name, (g, o) in sorted(rails.items())},
    }, sort_keys=False, default_flow_style=False)
    comments = "".join("# %s\n" % line if line else "#\n" for line in header.splitlines())
    return comments + body
