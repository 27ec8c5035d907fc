"""Power sources: one module per kind of sensor, opened by a spec string.

A spec is ``NAME`` or ``NAME:ARG`` (``replay:trace.csv``, ``tegrastats:run.log``).
``auto`` tries the real sensors in the order a Jetson user expects and falls
back to the simulated board, logging why each candidate was skipped.
"""

import importlib
import logging
from typing import Callable, List, Optional, Tuple

from .base import PowerSource, Reading, SensorReadError, SourceUnavailable, TraceEnded

__all__ = [
    "PowerSource",
    "Reading",
    "SensorReadError",
    "SourceUnavailable",
    "TraceEnded",
    "open_source",
    "SOURCE_NAMES",
    "AUTO_ORDER",
]

log = logging.getLogger(__name__)

# Each module exposes ``make_source(arg, **options) -> PowerSource`` and raises
# SourceUnavailable with a one-line reason when it cannot run here.
SOURCE_NAMES = ("hwmon", "jtop", "tegrastats", "nvml", "rapl", "sim", "replay")

# The monitors read directly first: they update every ~6.6 ms and we read them at
# 100+ Hz, where the jetson-stats service publishes every 0.5-1 s.  jtop only where
# sysfs is not readable (a container without /sys), then tegrastats, then desktop
# GPUs and CPUs, then the demo board.
AUTO_ORDER = ("hwmon", "jtop", "tegrastats", "nvml", "rapl", "sim")


def _opener(name: str) -> Callable[..., PowerSource]:
    module = importlib.import_module("." + name, __name__)
    return module.make_source


def parse_spec(spec: str) -> Tuple[str, Optional[str]]:
    """Split ``NAME[:ARG]``; raise ValueError naming the valid choices."""
    name, sep, arg = spec.strip().partition(":")
    name = name.strip().lower()
    if name != "auto" and name not in SOURCE_NAMES:
        raise ValueError(
            "unknown source %r: use auto, %s" % (spec, ", ".join(SOURCE_NAMES))
        )
    if name == "replay" and not arg:
        raise ValueError("source 'replay' needs a trace file: replay:PATH")
    return name, (arg if sep else None)


def open_source(spec: str = "auto", **options) -> PowerSource:
    """Open the source named by ``spec``.

    Options are passed to the source (``sysfs_root``, ``interval_s``, ...);
    each source ignores the ones it does not use.  Raises SourceUnavailable
    (one-line reason) or ValueError for a malformed spec.
    """
    name, arg = parse_spec(spec)
    if name == "auto":
        return _open_auto(**options)
    return _opener(name)(arg, **options)


def _open_auto(**options) -> PowerSource:
    skipped: List[str] = []
    for name in AUTO_ORDER:
        try:
            source = _opener(name)(None, **options)
        except SourceUnavailable as exc:
            skipped.append("%s: %s" % (name, exc))
            log.info("auto: skipped %s (%s)", name, exc)
            continue
        log.info("auto: using %s (%s)", name, source.board)
        source.auto_skipped = tuple(skipped)
        return source
    raise SourceUnavailable("no power source found: " + "; ".join(skipped))
