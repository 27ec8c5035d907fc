"""What every power source returns, and the two ways it can fail.

Sources know nothing of Prometheus or of the sampler: they turn one sensor
into SI readings stamped with ``time.monotonic()``.
"""

import abc
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


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


@dataclass
class Alarm:
    """One alarm flag of a power monitor, as its driver reports it.

    ``kind`` is the kernel attribute without its channel number (``curr_crit``
    for ``curr1_crit_alarm``); ``rail`` is None for a chip-wide flag (the
    INA3221 summation channel), whose ``chip`` then says which monitor it is.
    """

    name: str
    rail: Optional[str]
    kind: str
    active: bool
    chip: str = ""


@dataclass
class BoardAlarms:
    """Alarm flags, current limits and throttle state, read when asked (never in the sampling loop).

    ``current_limits`` maps (rail, ``crit``/``warn``) to amperes; ``oc_events`` and
    ``oc_throttle_enabled`` map the over-current event (``oc1``...) to the kernel's
    cumulative count and to whether it throttles; ``cooling`` maps a throttling
    cooling device's type to (cur_state, max_state).
    """

    alarms: List[Alarm] = field(default_factory=list)
    current_limits: Dict[Tuple[str, str], float] = field(default_factory=dict)
    oc_events: Dict[str, int] = field(default_factory=dict)
    oc_throttle_enabled: Dict[str, bool] = field(default_factory=dict)
    cooling: Dict[str, Tuple[int, int]] = field(default_factory=dict)


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

    def read_alarms(self) -> Optional[BoardAlarms]:
        """The board's alarm and throttle files; None when this source has none to read.

        Raises :class:`SensorReadError` when the files are there but cannot be read.
        """
        return None

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
