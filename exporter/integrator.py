"""Energy from a stream of timestamped readings: arithmetic only, no clock, no lock, no I/O.

Integration rule (sample-and-hold sensors): an INA3221/INA238 value is the
average over the sensor's last conversion period, which lies *before* the
instant it is read.  So reading k is charged over the interval since the
previous reading, (t_{k-1}, t_k]: power is a step function that takes the
value of the next reading.  Sources with a hardware energy counter (NVML,
RAPL) are integrated from counter deltas instead, which is exact across any
pause; a counter that went backwards (a driver reload) starts a new stretch.

A pause longer than ``max_gap_s`` between power readings, or a break (a
failed read), is a gap: a held value says nothing about the time the sensor
was away, so nothing is charged for it and its length is added to
``gap_s``.  Every second between the first and the last reading is thus
either covered or a gap.  Time enters only as the readings' timestamps, so
the sampler owns the clock and tests can drive any sequence of instants.
"""

from typing import Optional, Sequence, Tuple


class EnergyIntegrator:
    def __init__(self, columns: int, max_gap_s: float):
        self.max_gap_s = max_gap_s
        self.energy = [0.0] * columns  # cumulative joules: the total first, then one per rail
        self.covered_s = 0.0
        self.gap_s = 0.0
        self.last_t: Optional[float] = None  # the reading the next one is integrated from; None after a break
        self._last_seen_t: Optional[float] = None  # the newest reading, break or not
        self._last_counter: Optional[float] = None

    def add(self, t: float, watts: Sequence[float], counter: Optional[float] = None) -> Optional[Tuple[float, float]]:
        """Integrate the reading taken at ``t``: ``watts`` per column, ``counter`` the hardware joules if any.

        Returns (start, joules): the interval (start, t] the total was charged over (start == t when
        the reading starts a new stretch) and the joules charged; None for a reading not newer than
        the newest one, which is ignored.
        """
        last_seen = self._last_seen_t
        if last_seen is not None and t <= last_seen:
            return None
        last_t, last_counter = self.last_t, self._last_counter
        start = t
        if last_t is not None:
            if counter is None:
                if t - last_t <= self.max_gap_s:
                    start = last_t
            elif last_counter is not None and counter >= last_counter:
                start = last_t
        joules = 0.0
        if start < t:
            span = t - start
            energy = self.energy
            joules = watts[0] * span if counter is None else counter - last_counter
            energy[0] += joules
            for n in range(1, len(energy)):
                energy[n] += watts[n] * span
            self.covered_s += span
        elif last_seen is not None:
            self.gap_s += t - last_seen
        self.last_t = self._last_seen_t = t
        self._last_counter = counter
        return start, joules

    def interrupt(self) -> None:
        """A failed read: the next reading starts a new stretch."""
        self.last_t = None
        self._last_counter = None
