"""``jetson-power-calibrate``: fit per-rail gain and offset of the on-board monitors against a reference meter.

Two inputs:

* ``--pairs CSV`` with columns ``rail,sensor_w,meter_w``: one row per
  simultaneous reading of a rail's monitor and of the meter (any order);
* ``--trace CSV`` (the replay format, :mod:`exporter.sources.replay`: the
  profiler's raw-sample CSV or any recording) with one ``--meter-log
  RAIL=CSV`` per metered rail, columns ``timestamp,watts``.  A meter reading
  is its mean over the interval since its previous reading, so each meter
  interval is paired with the trace's exact mean over the same interval
  (``--offset-s`` moves the meter's timestamps onto the trace's time axis).

Per rail, ordinary least squares of meter on sensor watts gives
``meter_w = gain * sensor_w + offset_w``; the command prints gain, offset,
residual RMS and maximum and R^2, and writes the calibration file (see
:mod:`exporter.calibration`) atomically.  Pure Python: it runs on the board.
Bad input is one line on stderr and exit 2.
"""

import argparse
import csv
import datetime
import math
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from . import calibration, files
from .sources.replay import TraceFormatError, load_trace

PROG = "jetson-power-calibrate"
EXIT_BAD_INPUT = 2
MIN_POINTS = 3

Pairs = Dict[str, List[Tuple[float, float]]]


class InputError(ValueError):
    """Bad input; the message says what to fix."""


class Fit:
    """Least squares of ``meter`` on ``sensor``: meter = gain * sensor + offset, with its residuals."""

    def __init__(self, rail: str, points: Sequence[Tuple[float, float]]):
        n = len(points)
        if n < MIN_POINTS:
            raise InputError("rail %s has %d pair(s); a fit needs at least %d, at two or more different loads"
                             % (rail, n, MIN_POINTS))
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        mean_x = math.fsum(xs) / n
        mean_y = math.fsum(ys) / n
        sxx = math.fsum((x - mean_x) ** 2 for x in xs)
        if sxx <= (1e-9 * max(1.0, abs(mean_x))) ** 2 * n:
            raise InputError("rail %s: every sensor reading is %.6g W; measure at two or more different loads"
                             % (rail, mean_x))
        sxy = math.fsum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
        self.rail = rail
        self.points = n
        self.gain = sxy / sxx
        self.offset_w = mean_y - self.gain * mean_x
        residuals = [y - (self.gain * x + self.offset_w) for x, y in zip(xs, ys)]
        ss_res = math.fsum(r * r for r in residuals)
        ss_tot = math.fsum((y - mean_y) ** 2 for y in ys)
        self.rms_w = math.sqrt(ss_res / n)
        self.max_w = max(abs(r) for r in residuals)
        self.r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
        if not self.gain > 0:
            raise InputError("rail %s: the fitted gain is %.4g; the meter does not rise with the sensor, so the "
                             "pairs are not of the same rail or time" % (rail, self.gain))


def _rows(path: str, columns: Sequence[str]) -> List[Tuple[int, Dict[str, str]]]:
    """(line number, row) of a CSV whose header names ``columns``."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [(n, row) for n, row in enumerate(csv.reader(handle), start=1) if row]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError("cannot read %s: %s" % (path, getattr(exc, "strerror", None) or exc)) from None
    except csv.Error as exc:
        raise InputError("%s is not a CSV file: %s" % (path, exc)) from None
    if not rows:
        raise InputError("%s is empty; expected a header %s" % (path, ",".join(columns)))
    header = [name.strip() for name in rows[0][1]]
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputError("%s line %d: header must name %s (got %s)"
                         % (path, rows[0][0], ",".join(columns), ",".join(header)))
    out = []
    for line, row in rows[1:]:
        if len(row) < len(header):
            raise InputError("%s line %d: expected %d columns, got %d" % (path, line, len(header), len(row)))
        out.append((line, {name: value.strip() for name, value in zip(header, row)}))
    return out


def _number(path: str, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError("%s line %d: %s %r is not a number" % (path, line, column, text)) from None
    if not math.isfinite(value):
        raise InputError("%s line %d: %s %r is not a finite number" % (path, line, column, text))
    return value


def read_pairs(path: str) -> Pairs:
    """``rail,sensor_w,meter_w`` rows grouped by rail."""
    pairs: Pairs = {}
    for line, row in _rows(path, ("rail", "sensor_w", "meter_w")):
        if not row["rail"]:
            raise InputError("%s line %d: rail is empty" % (path, line))
        pairs.setdefault(row["rail"], []).append(
            (_number(path, line, "sensor_w", row["sensor_w"]), _number(path, line, "meter_w", row["meter_w"])))
    if not pairs:
        raise InputError("%s has no rows after its header" % path)
    return pairs


def read_meter_log(path: str, offset_s: float) -> List[Tuple[float, float]]:
    """(time on the trace's axis, watts) rows, strictly ascending."""
    out: List[Tuple[float, float]] = []
    for line, row in _rows(path, ("timestamp", "watts")):
        t = _number(path, line, "timestamp", row["timestamp"]) + offset_s
        if out and t <= out[-1][0]:
            raise InputError("%s line %d: timestamp is not after the previous row's" % (path, line))
        out.append((t, _number(path, line, "watts", row["watts"])))
    return out


def trace_pairs(trace_path: str, meter_logs: Dict[str, str], offset_s: float) -> Pairs:
    """Pair each meter interval with the trace's mean power of that rail over the same interval."""
    try:
        trace = load_trace(trace_path)
    except TraceFormatError as exc:
        raise InputError(str(exc)) from None
    names = list(trace.rails)
    start, end = trace.times[0], trace.times[-1]
    pairs: Pairs = {}
    for rail, log_path in meter_logs.items():
        if rail not in trace.rails:
            raise InputError("--meter-log %s=%s: %s has no rail %s (its rails: %s)"
                             % (rail, log_path, trace_path, rail, ", ".join(names) or "none"))
        column = 1 + names.index(rail)
        rows = read_meter_log(log_path, offset_s)
        points = []
        for (t0, _), (t1, meter_w) in zip(rows, rows[1:]):
            if t0 >= start and t1 <= end:
                sensor_w = (trace.energy_at(t1)[column] - trace.energy_at(t0)[column]) / (t1 - t0)
                points.append((sensor_w, meter_w))
        if not points:
            raise InputError("%s: no meter interval lies inside the trace's %.6g..%.6g s; align the clocks "
                             "with --offset-s" % (log_path, start, end))
        pairs[rail] = points
    return pairs


def _meter_log_spec(text: str) -> Tuple[str, str]:
    rail, sep, path = text.partition("=")
    if not sep or not rail or not path:
        raise argparse.ArgumentTypeError("must be RAIL=FILE, e.g. POM_5V_IN=meter.csv")
    return rail, path


def _date(text: str) -> str:
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%d").date().isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError("must be YYYY-MM-DD") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Fit per-rail gain and offset_w of the power monitors against a reference meter "
                               "and write a calibration file for jetson-power-exporter --calibration.")
    p.add_argument("--pairs", metavar="CSV", help="CSV of rail,sensor_w,meter_w rows")
    p.add_argument("--trace", metavar="CSV", help="a recorded trace in the replay format (time_s,total_w,<RAIL>_w)")
    p.add_argument("--meter-log", metavar="RAIL=CSV", type=_meter_log_spec, action="append", default=[],
                   help="the meter's log for RAIL (timestamp,watts; each the mean since the previous row); "
                        "repeat per rail; needs --trace")
    p.add_argument("--offset-s", type=float, default=0.0,
                   help="seconds added to the meter's timestamps to put them on the trace's time axis (default 0)")
    p.add_argument("--meter", required=True, help="name of the reference meter, recorded in the file")
    p.add_argument("--date", type=_date, default=None, help="date of the comparison, YYYY-MM-DD (default today, UTC)")
    p.add_argument("--out", required=True, metavar="FILE", help="calibration YAML to write")
    return p


def _inputs(args) -> Tuple[Pairs, str]:
    if bool(args.pairs) == bool(args.trace):
        raise InputError("give either --pairs CSV or --trace CSV with --meter-log RAIL=CSV")
    if args.pairs:
        if args.meter_log:
            raise InputError("--meter-log goes with --trace, not with --pairs")
        return read_pairs(args.pairs), args.pairs
    if not args.meter_log:
        raise InputError("--trace needs at least one --meter-log RAIL=CSV")
    logs = dict(args.meter_log)
    if len(logs) != len(args.meter_log):
        raise InputError("--meter-log names a rail twice")
    if not math.isfinite(args.offset_s):
        raise InputError("--offset-s must be a finite number of seconds")
    sources = "%s with %s" % (args.trace, ", ".join("%s=%s" % kv for kv in sorted(logs.items())))
    return trace_pairs(args.trace, logs, args.offset_s), sources


def report(fits: Sequence[Fit]) -> str:
    lines = ["%-20s %7s %10s %10s %9s %9s %9s" % ("rail", "points", "gain", "offset_w", "rms_w", "max_w", "R^2")]
    for f in fits:
        lines.append("%-20s %7d %10.5f %10.4f %9.4f %9.4f %9.6f"
                     % (f.rail, f.points, f.gain, f.offset_w, f.rms_w, f.max_w, f.r2))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.meter.strip():
            raise InputError("--meter must name the reference meter")
        pairs, sources = _inputs(args)
        fits = [Fit(rail, points) for rail, points in sorted(pairs.items())]
        date = args.date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
        header = ["written by %s from %s" % (PROG, sources),
                  "calibrated_w = gain * raw_w + offset_w; fit residuals per rail:"]
        header += ["  %s: %d points, RMS %.4f W, max %.4f W, R^2 %.6f" % (f.rail, f.points, f.rms_w, f.max_w, f.r2)
                   for f in fits]
        text = calibration.dump(args.meter.strip(), date, {f.rail: (f.gain, f.offset_w) for f in fits},
                                "\n".join(header))
        try:
            files.atomic_write(args.out, lambda handle: handle.write(text))
        except OSError as exc:
            raise InputError("cannot write %s: %s" % (args.out, getattr(exc, "strerror", None) or exc)) from None
    except InputError as exc:
        print("%s: %s" % (PROG, exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(report(fits))
    print("wrote %s (meter %s, %s)" % (args.out, args.meter.strip(), date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
