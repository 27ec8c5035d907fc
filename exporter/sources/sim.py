"""A simulated Jetson Nano whose power follows this machine's real CPU load.

The demo needs a board that reacts to real work without Jetson hardware, so
the simulated power is driven by the host's CPU utilisation from
``/proc/stat`` (all CPUs together, over the last ``LOAD_WINDOW_S``; it starts
from idle):

* ``POM_5V_IN`` (the module input, = ``total_watts``): about 1.3 W idle to
  about 7 W at full load;
* ``POM_5V_CPU`` and ``POM_5V_GPU``: parts of ``POM_5V_IN`` (the rest is
  SoC, memory and I/O).

Each rail is measured the way the Nano's INA3221 does it: bus volts (about
5 V, sagging slightly under load) in mV, current in mA, each with ~1 %
Gaussian noise, and power = volts x amperes quantised to 1 mW.  The monitor
free-runs: a new value appears every ``interval_s`` (default 6.6 ms: three
channels x bus + shunt conversions of 1.1 ms, no averaging) and reads in
between return the held value.  Readings are always labelled simulated.
"""

import collections
import random
from typing import Deque, Dict, Optional, Tuple

from .base import PowerSource, Reading, SensorReadError, SourceUnavailable, now

DEFAULT_INTERVAL_S = 0.0066
LOAD_WINDOW_S = 0.25
NOISE = 0.01  # relative standard deviation of each current measurement
PROC_STAT = "/proc/stat"

# (watts at idle, extra watts at full load) for the measured rails and the rest of the module.
CPU_RAIL = (0.30, 4.10)
GPU_RAIL = (0.08, 0.30)
REST = (0.92, 1.25)
VOLTS_IDLE = 5.08
VOLTS_SAG = 0.04  # input sag at full load

RAILS = ("POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU")


def cpu_times(path: str = PROC_STAT) -> Tuple[int, int]:
    """(busy, total) jiffies of all CPUs from the aggregate ``cpu`` line."""
    with open(path) as fh:
        fields = fh.readline().split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"{path}: first line is not the aggregate cpu line")
    values = [int(v) for v in fields[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values + [0] * (8 - len(values))
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def measure(rng: random.Random, watts: float, volts: float) -> Tuple[float, float, float]:
    """One INA3221 channel reading of a true (watts, volts): (W, V, A) with mW / mV / mA resolution."""
    millivolts = round(volts * 1000.0 * (1.0 + rng.gauss(0.0, 0.0004)))
    milliamps = round(watts / volts * 1000.0 * (1.0 + rng.gauss(0.0, NOISE)))
    milliwatts = round(millivolts * milliamps / 1000.0)
    return milliwatts / 1000.0, millivolts / 1000.0, milliamps / 1000.0


class CpuLoad:
    """CPU utilisation over a sliding window of ``/proc/stat`` snapshots.

    /proc/stat counts in 10 ms jiffies, far coarser than the sensor period,
    so the load is measured over a window rather than between two updates.
    """

    def __init__(self, window_s: float = LOAD_WINDOW_S, path: str = PROC_STAT):
        self.window_s = window_s
        self.path = path
        self.load = 0.0
        self._snapshots: Deque[Tuple[float, int, int]] = collections.deque()
        self.update()

    def update(self) -> float:
        busy, total = cpu_times(self.path)
        t = now()
        snapshots = self._snapshots
        snapshots.append((t, busy, total))
        while len(snapshots) > 2 and t - snapshots[1][0] >= self.window_s:
            snapshots.popleft()
        _, busy0, total0 = snapshots[0]
        if total > total0:
            self.load = min(1.0, max(0.0, (busy - busy0) / (total - total0)))
        return self.load


class SimulatedNano(PowerSource):
    """The Nano's three INA3221 channels, driven by host CPU load (see the module docstring)."""

    name = "sim"
    board = "jetson-nano (simulated)"
    simulated = True

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, seed: Optional[int] = None):
        if not interval_s > 0:
            raise ValueError(f"sim: interval_s must be positive, got {interval_s!r}")
        self.update_interval_s = interval_s
        self._rng = random.Random(seed)
        try:
            self._load = CpuLoad()
        except (OSError, ValueError) as exc:
            raise SourceUnavailable(f"sim: cannot read CPU load from {PROC_STAT}: {exc}") from None
        self._start = now()
        self._tick = -1
        self._held: Tuple[Dict[str, float], Dict[str, float], Dict[str, float]] = ({}, {}, {})

    def _update(self) -> None:
        try:
            load = self._load.update()
        except (OSError, ValueError) as exc:
            raise SensorReadError(f"sim: cannot read CPU load: {exc}") from None
        cpu = CPU_RAIL[0] + CPU_RAIL[1] * load
        gpu = GPU_RAIL[0] + GPU_RAIL[1] * load
        rest = REST[0] + REST[1] * load
        volts = VOLTS_IDLE - VOLTS_SAG * load
        watts: Dict[str, float] = {}
        vs: Dict[str, float] = {}
        amps: Dict[str, float] = {}
        for rail, true_watts in zip(RAILS, (cpu + gpu + rest, gpu, cpu)):
            watts[rail], vs[rail], amps[rail] = measure(self._rng, true_watts, volts)
        self._held = (watts, vs, amps)

    def read(self) -> Reading:
        t = now()
        tick = int((t - self._start) / self.update_interval_s)
        if tick != self._tick:
            self._update()
            self._tick = tick
        watts, volts, amps = self._held
        return Reading(
            timestamp=t,
            total_watts=watts["POM_5V_IN"],
            rails=dict(watts),
            volts=dict(volts),
            amperes=dict(amps),
        )


def make_source(
    arg: Optional[str], interval_s: Optional[float] = None, seed: Optional[int] = None, **options
) -> SimulatedNano:
    """Open the simulated Nano; ``interval_s`` is the INA3221 update period (default 6.6 ms)."""
    return SimulatedNano(DEFAULT_INTERVAL_S if interval_s is None else float(interval_s), seed=seed)
