"""What every power source returns, and the two ways it can fail.

Sources know nothing of Prometheus or of the sampler: they turn one sensor
into SI readings stamped with ``time.monotonic()``.
"""

import abc
import time
from dataclasses import dataclass, field
from typing import Dict, Optional


class SourceUnavailable(Exception):
    """The source cannot be opened on this machine; the message says why."""


class SensorReadError(Exception):
    """One read failed; the sampler counts it, marks the sensor down and retries."""


class TraceEnded(SensorReadError):
    """A replayed recording has no more data: the sensor stays down."""


@dataclass  # not frozen: a frozen dataclass's __init__ costs a sampler several microseconds per reading
class Reading:
    """One sensor reading in SI units; nothing changes it once made.

    ``timestamp`` is ``time.monotonic()`` when the value was read.
    ``rails`` maps rail name to watts; ``volts`` / ``amperes`` hold the same
    rails where the monitor reports them.  ``energy_joules`` is a cumulative
    hardware energy counter (NVML, RAPL) when the source has one: the sampler
    then integrates counter deltas instead of power x time.
    """

    timestamp: float
    total_watts: float
    rails: Dict[str, float] = field(default_factory=dict)
    volts: Dict[str, float] = field(default_factory=dict)
    amperes: Dict[str, float] = field(default_factory=dict)
    energy_joules: Optional[float] = None


class PowerSource(abc.ABC):
    """Base class: a sensor that yields :class:`Reading` objects.

    Subclasses set ``name`` (the spec that opened them, e.g. ``hwmon``),
    ``board`` (what the source knows of the hardware), ``simulated``
    (True for the simulated board and for replayed recordings) and
    ``update_interval_s`` (how often the sensor produces a new value, when
    known), and implement :meth:`read`.
    """

    name = "unknown"
    board = "unknown"
    simulated = False
    update_interval_s: Optional[float] = None

    @abc.abstractmethod
    def read(self) -> Reading:
        """One reading; raises :class:`SensorReadError` when the sensor fails."""

    def close(self) -> None:
        """Release files, sockets or child processes; safe to call twice."""

    def describe(self) -> Dict[str, str]:
        """Facts for logs, the landing page and profiler reports."""
        return {
            "source": self.name,
            "board": self.board,
            "simulated": "true" if self.simulated else "false",
            "update_interval_s": "" if self.update_interval_s is None else "%g" % self.update_interval_s,
        }

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def now() -> float:
    """The clock every reading is stamped with (shared by all processes on the host)."""
    return time.monotonic()
