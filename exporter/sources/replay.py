"""Replay a recorded power trace (CSV) as if it were a live sensor.

Format: a header naming ``time_s`` and ``total_w``, optionally ``<RAIL>_w``
columns (watts per rail, e.g. ``POM_5V_GPU_w``).  Any other column (the
profiler's raw-sample CSV adds ``layer``, ``trial``, ...) is ignored, so
profiler output replays unchanged.  ``time_s`` is in seconds, strictly
ascending; only differences matter.

Semantics (a step function, like the sensor that recorded it):

* row i's power holds from ``time_s[i]`` until ``time_s[i+1]``;
* the last row only marks the end of the trace (its power is never used);
* the trace's exact energy is ``sum(P_i * (t_{i+1} - t_i))``, which
  :func:`trace_energy_joules` returns so tests can compare against it.

Playback runs once, in real time: ``time_s[0]`` is the instant ``make_source()``
returns.  The replayed sensor is an ideal averaging monitor: each read
returns the trace's mean power since the previous read (the first read, the
value at that instant), so the sampler's power x time integral reproduces
the trace's energy exactly at any sample rate.  The read that crosses the
end is stamped at the end; after it every :meth:`ReplaySource.read` raises
:class:`TraceEnded` (the sensor is down; counters stop).  Replayed readings
are labelled ``simulated``.
"""

import bisect
import csv
import math
import os
import statistics
from typing import Dict, List, Optional, Tuple

from .base import PowerSource, Reading, SourceUnavailable, TraceEnded, now

TIME_COLUMN = "time_s"
TOTAL_COLUMN = "total_w"
RAIL_SUFFIX = "_w"


class TraceFormatError(SourceUnavailable, ValueError):
    """The trace file is unreadable or malformed; the message names the line.

    It is both a SourceUnavailable (``open_source`` callers skip the source)
    and a ValueError (callers of :func:`trace_energy_joules` get a plain
    bad-input error).
    """


class Trace:
    """A parsed trace: row times, total watts and per-rail watts."""

    def __init__(self, times: List[float], totals: List[float], rails: Dict[str, List[float]]):
        self.times = times
        self.totals = totals
        self.rails = rails
        self._columns = [totals] + list(rails.values())
        self._cumulative = [_prefix_energy(times, watts) for watts in self._columns]

    @property
    def duration_s(self) -> float:
        return self.times[-1] - self.times[0]

    def energy_at(self, x: float) -> List[float]:
        """Energy of the total and of each rail (``rails`` order) from the first row to trace time ``x``."""
        row = min(bisect.bisect_right(self.times, x) - 1, len(self.times) - 1)
        dt = x - self.times[row]
        return [cum[row] + watts[row] * dt for cum, watts in zip(self._cumulative, self._columns)]

    def energy(self) -> Tuple[float, Dict[str, float]]:
        """Exact energy of the step function: sum of P_i * (t_{i+1} - t_i)."""
        spans = [b - a for a, b in zip(self.times, self.times[1:])]
        total = math.fsum(p * dt for p, dt in zip(self.totals, spans))
        rails = {name: math.fsum(p * dt for p, dt in zip(watts, spans)) for name, watts in self.rails.items()}
        return total, rails


def _number(text: str, column: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceFormatError(f"{where}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TraceFormatError(f"{where}: {column} {text!r} is not a finite number")
    return value


def load_trace(path: str) -> Trace:
    """Parse and validate ``path``; raise TraceFormatError naming the bad line."""
    label = os.path.basename(path) or path
    try:
        with open(path, newline="") as fh:
            rows = [(number, row) for number, row in enumerate(csv.reader(fh), start=1) if row]
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceFormatError(f"replay: cannot read {path}: {exc}") from None
    except csv.Error as exc:
        raise TraceFormatError(f"replay: {path} is not a CSV file: {exc}") from None
    if not rows:
        raise TraceFormatError(f"{label}: empty file, expected a header with {TIME_COLUMN},{TOTAL_COLUMN}")

    header_line, header = rows[0]
    names = [name.strip() for name in header]
    if TIME_COLUMN not in names or TOTAL_COLUMN not in names:
        raise TraceFormatError(
            f"{label} line {header_line}: header must name {TIME_COLUMN} and {TOTAL_COLUMN} columns, "
            f"got {','.join(header)!r}"
        )
    time_at = names.index(TIME_COLUMN)
    total_at = names.index(TOTAL_COLUMN)
    rail_at = {
        name[: -len(RAIL_SUFFIX)]: index
        for index, name in enumerate(names)
        if name.endswith(RAIL_SUFFIX) and name != TOTAL_COLUMN and len(name) > len(RAIL_SUFFIX)
    }

    times: List[float] = []
    totals: List[float] = []
    rails: Dict[str, List[float]] = {name: [] for name in rail_at}
    for line, row in rows[1:]:
        where = f"{label} line {line}"
        if len(row) < len(names):
            raise TraceFormatError(f"{where}: expected {len(names)} columns, got {len(row)}")
        t = _number(row[time_at].strip(), TIME_COLUMN, where)
        if times and t <= times[-1]:
            raise TraceFormatError(
                f"{where}: {TIME_COLUMN} {t:g} is not after the previous row's {times[-1]:g}"
            )
        times.append(t)
        totals.append(_number(row[total_at].strip(), TOTAL_COLUMN, where))
        for name, index in rail_at.items():
            rails[name].append(_number(row[index].strip(), name + RAIL_SUFFIX, where))
    if len(times) < 2:
        raise TraceFormatError(
            f"{label}: needs at least two data rows (the last row marks the end of the trace)"
        )
    return Trace(times, totals, rails)


def _prefix_energy(times: List[float], watts: List[float]) -> List[float]:
    """Energy from the first row to each row's start."""
    out = [0.0]
    for n in range(1, len(times)):
        out.append(out[-1] + watts[n - 1] * (times[n] - times[n - 1]))
    return out


def trace_energy_joules(path: str) -> Tuple[float, Dict[str, float]]:
    """Exact energy of a trace file: (total J, {rail: J})."""
    return load_trace(path).energy()


class ReplaySource(PowerSource):
    """Plays a :class:`Trace` once in real time, starting when it is created."""

    name = "replay"
    simulated = True

    def __init__(self, path: str, trace: Trace):
        self.path = path
        self.trace = trace
        self.board = f"replay of {os.path.basename(path)}"
        self.row_spacing_s = statistics.median(b - a for a, b in zip(trace.times, trace.times[1:]))
        self._rail_names = list(trace.rails)
        self._start = now()
        self._previous: Optional[float] = None  # trace time of the previous read

    def read(self) -> Reading:
        first, end = self.trace.times[0], self.trace.times[-1]
        x = first + (now() - self._start)
        previous = self._previous
        if (previous if previous is not None else x) >= end:
            raise TraceEnded(
                f"replay of {os.path.basename(self.path)} ended after {self.trace.duration_s:g} s"
            )
        x = min(x, end)
        if previous is None or x <= previous:
            row = bisect.bisect_right(self.trace.times, x) - 1
            values = [self.trace.totals[row]] + [self.trace.rails[r][row] for r in self._rail_names]
        else:
            e0, e1 = self.trace.energy_at(previous), self.trace.energy_at(x)
            values = [(b - a) / (x - previous) for a, b in zip(e0, e1)]
        self._previous = x
        return Reading(
            timestamp=self._start + (x - first),
            total_watts=values[0],
            rails=dict(zip(self._rail_names, values[1:])),
        )

    def describe(self) -> Dict[str, str]:
        info = super().describe()
        info["trace"] = self.path
        info["trace_duration_s"] = f"{self.trace.duration_s:g}"
        info["trace_row_spacing_s"] = f"{self.row_spacing_s:g}"
        return info


def make_source(arg: Optional[str], **options) -> ReplaySource:
    """Open ``replay:PATH``; raises TraceFormatError (a SourceUnavailable) for a bad file."""
    if not arg:
        raise SourceUnavailable("replay needs a trace file: replay:PATH")
    return ReplaySource(arg, load_trace(arg))
