"""Fixed-size column store of recent samples, with cumulative energy per column.

Each sample k stores its timestamp t_k, the start s_k of the interval it was
integrated over ((s_k, t_k]; s_k == t_k after a gap), the reported power, and
cumulative energy and covered time up to t_k.  Energy between any two instants
inside the buffer is then a difference of two interpolated cumulative values:
exact for the step function the sampler integrates, and O(log n) to compute.
Columns are ``array('d')`` so ten minutes at 100 Hz costs a few MB, not dicts.
"""

from array import array
from typing import Dict, List, Sequence, Tuple


class RingBuffer:
    def __init__(self, capacity: int, rails: Sequence[str]):
        if capacity < 2:
            raise ValueError("ring buffer capacity must be at least 2")
        self.capacity = capacity
        self.rails = tuple(rails)
        zeros = array("d", [0.0]) * capacity
        self._t = array("d", zeros)
        self._start = array("d", zeros)
        self._covered = array("d", zeros)
        self._watts = [array("d", zeros) for _ in range(1 + len(self.rails))]
        self._energy = [array("d", zeros) for _ in range(1 + len(self.rails))]
        self._head = 0  # physical index of the oldest sample
        self.size = 0

    def append(self, t: float, start: float, watts: Sequence[float], energy: Sequence[float],
               covered: float) -> None:
        """Add one sample; ``watts``/``energy`` are total first, then rails in order."""
        if self.size < self.capacity:
            i = (self._head + self.size) % self.capacity
            self.size += 1
        else:
            i = self._head
            self._head = (self._head + 1) % self.capacity
        self._t[i] = t
        self._start[i] = start
        self._covered[i] = covered
        for column, value in zip(self._watts, watts):
            column[i] = value
        for column, value in zip(self._energy, energy):
            column[i] = value

    def _phys(self, k: int) -> int:
        return (self._head + k) % self.capacity

    def time(self, k: int) -> float:
        return self._t[self._phys(k)]

    def oldest_time(self) -> float:
        return self.time(0)

    def newest_time(self) -> float:
        return self.time(self.size - 1)

    def first_at_or_after(self, t: float) -> int:
        """Logical index of the first sample with t_k >= t (``size`` if none)."""
        lo, hi = 0, self.size
        while lo < hi:
            mid = (lo + hi) // 2
            if self._t[self._phys(mid)] < t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def first_after(self, t: float) -> int:
        """Logical index of the first sample with t_k > t (``size`` if none)."""
        lo, hi = 0, self.size
        while lo < hi:
            mid = (lo + hi) // 2
            if self._t[self._phys(mid)] <= t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def cumulative_at(self, t: float) -> Tuple[List[float], float]:
        """Cumulative energy per column and covered seconds at instant ``t``.

        ``t`` must lie within [oldest_time, newest_time].  Inside sample k's
        interval the power is constant, so the value is interpolated linearly.
        """
        k = self.first_at_or_after(t)
        i = self._phys(k)
        t_k, s_k = self._t[i], self._start[i]
        span = t_k - s_k
        missing = t_k - max(t, s_k) if span > 0 else 0.0
        if missing <= 0 or k == 0:
            # k == 0 only for t == t_0: the oldest interval's start is not buffered.
            return [column[i] for column in self._energy], self._covered[i]
        fraction = missing / span
        j = self._phys(k - 1)
        energies = [e[i] - (e[i] - e[j]) * fraction for e in self._energy]
        return energies, self._covered[i] - missing

    def rows(self, first: int) -> List[Tuple[float, List[float]]]:
        """(t, [total, rails...]) for logical indices first..size-1."""
        out = []
        for k in range(first, self.size):
            i = self._phys(k)
            out.append((self._t[i], [column[i] for column in self._watts]))
        return out

    def rail_dict(self, values: Sequence[float]) -> Dict[str, float]:
        return dict(zip(self.rails, values[1:]))
