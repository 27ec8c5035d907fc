"""Ground-truth harness: layers whose power is known, and a sensor that knows which one runs.

The accuracy benchmark needs the *exact* energy of every layer call, which no
real board can give.  So:

* :class:`Burn` is a leaf module that is "active" for ``duration_s`` and draws
  ``extra_w`` above the board's idle power while it is.  It records the exact
  [start, end] of each call in a shared :class:`Timeline` (monotonic clock, the
  one readings are stamped with).  While it waits it releases the GIL, as a
  real kernel does, so sampler threads run on time.
* :class:`GroundTruthSensor` is a :class:`PowerSource` whose true power at time
  t is ``idle_w`` + the ``extra_w`` of the module active at t.  Like an
  INA3221, it publishes a new value every ``period_s`` on a fixed grid from its
  start: the *mean* true power over the period just ended, plus Gaussian noise
  (``noise_rel`` x P + ``noise_abs_w``) and quantised to ``quantum_w``; reads in
  between return the held value.  ``jitter_s`` > 0 delays each update by a
  random [0, jitter_s): a monitor whose updates follow no regular grid.
* :class:`Background` is what a busy board adds that belongs to no layer: an idle
  that drifts (a sine of ``drift_w`` amplitude and ``drift_period_s``) and random
  bursts (``burst_w`` for 0.2-0.6 s, starting every 1-3 s), both with exact
  integrals, so the sensor's values stay exact means while the truth per layer
  is unchanged.
* The truth per call of a module comes from that module's own intervals only
  (warm-ups and whole-model passes included, they are calls like any other):
  dynamic = extra x active time / calls, total = (idle + extra) x active time / calls.
"""

import bisect
import math
import random
import select
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from torch import nn

from exporter.sources.base import PowerSource, Reading, now

IDLE_W = 3.0
NOISE_REL = 0.01
NOISE_ABS_W = 0.010
QUANTUM_W = 0.001
SLEEP_MARGIN_S = 0.0004  # sleep() overshoots by ~0.1 ms: spin the last part for a precise end

# (extra watts, duration seconds): low and high power, short and long calls, in a mixed order.
DEFAULT_LAYERS: Tuple[Tuple[float, float], ...] = (
    (2.0, 0.0002),
    (0.2, 0.005),
    (5.0, 0.001),
    (0.5, 0.0005),
    (1.0, 0.020),
    (3.0, 0.002),
    (0.3, 0.010),
    (1.5, 0.0035),
)


@dataclass(frozen=True)
class Truth:
    """Exact per-call figures of one module, from its own activity intervals."""

    calls: int
    active_s: float
    dynamic_j: float  # extra energy of all calls
    total_j: float  # (idle + extra) energy of all calls

    @property
    def duration_s(self) -> float:
        return self.active_s / self.calls

    @property
    def dynamic_per_call_j(self) -> float:
        return self.dynamic_j / self.calls

    @property
    def total_per_call_j(self) -> float:
        return self.total_j / self.calls


class Timeline:
    """Who was active when: the true extra power as an exact step function of time.

    Intervals never overlap (one module runs at a time).  ``dynamic_energy(t)``
    is the extra energy from the timeline's creation to t, from a prefix sum
    over closed intervals plus the part of the one containing t; an interval
    still open counts as active up to t (its end is later than any t a caller
    may ask about, which must not lie in the future).  Intervals older than
    ``keep_s`` are dropped so that hour-long runs stay small.
    """

    def __init__(self, keep_s: float = 30.0, clock: Callable[[], float] = now):
        self.keep_s = keep_s
        self.clock = clock
        self._lock = threading.Lock()
        self._starts: List[float] = []
        self._ends: List[float] = []
        self._extras: List[float] = []
        self._cum: List[float] = []  # extra joules up to the end of interval i
        self._base = 0.0  # extra joules of the intervals already dropped
        self._horizon = -math.inf  # queries before this instant are no longer answerable
        self._open: Optional[Tuple[str, float, float]] = None  # (key, start, extra_w)
        self._stats: Dict[str, List[float]] = {}  # key -> [calls, active_s, extra_w]

    def __deepcopy__(self, memo):
        # A copied model still runs on the same board: copies share the timeline.
        return self

    def begin(self, key: str, extra_w: float) -> float:
        with self._lock:
            if self._open is not None:
                raise RuntimeError("%s started while %s is still active" % (key, self._open[0]))
            t = self.clock()
            self._open = (key, t, extra_w)
            return t

    def end(self) -> float:
        with self._lock:
            t = self.clock()
            if self._open is None:
                raise RuntimeError("end() without begin()")
            key, start, extra = self._open
            self._open = None
            self._starts.append(start)
            self._ends.append(t)
            self._extras.append(extra)
            self._cum.append((self._cum[-1] if self._cum else self._base) + extra * (t - start))
            stats = self._stats.setdefault(key, [0, 0.0, extra])
            stats[0] += 1
            stats[1] += t - start
            if len(self._ends) > 8192 and t - self._ends[0] > 2 * self.keep_s:
                self._drop_before(t - self.keep_s)
            return t

    def _drop_before(self, t: float) -> None:
        k = bisect.bisect_left(self._ends, t)
        if k == 0:
            return
        self._base = self._cum[k - 1]
        self._horizon = self._ends[k - 1]
        del self._starts[:k], self._ends[:k], self._extras[:k], self._cum[:k]

    def dynamic_energy(self, t: float) -> float:
        """Extra joules from the start of the timeline to instant ``t`` (not in the future)."""
        with self._lock:
            if t < self._horizon:
                raise ValueError("instant %.3f is older than the kept history (%.0f s)" % (t, self.keep_s))
            i = bisect.bisect_right(self._ends, t)  # intervals [0, i) ended by t
            joules = self._cum[i - 1] if i else self._base
            if i < len(self._ends):
                if self._starts[i] < t:
                    joules += self._extras[i] * (t - self._starts[i])
            elif self._open is not None and self._open[1] < t:
                joules += self._open[2] * (t - self._open[1])
            return joules

    def intervals(self, a: float, b: float) -> List[Tuple[float, float]]:
        """The closed activity intervals that overlap [a, b]."""
        with self._lock:
            first = bisect.bisect_right(self._ends, a)
            last = bisect.bisect_left(self._starts, b)
            return list(zip(self._starts[first:last], self._ends[first:last]))

    def truth(self, key: str, idle_w: float) -> Truth:
        with self._lock:
            calls, active_s, extra = self._stats.get(key, (0, 0.0, 0.0))
        return Truth(int(calls), active_s, extra * active_s, (idle_w + extra) * active_s)

    def keys(self) -> List[str]:
        with self._lock:
            return list(self._stats)


def hold_until(deadline: float, clock: Callable[[], float]) -> None:
    """Hold until ``deadline`` without holding the GIL for long (a kernel releases it too)."""
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            return
        if remaining > SLEEP_MARGIN_S:
            time.sleep(remaining - SLEEP_MARGIN_S)
        else:
            select.select([], [], [], 0)  # ~1 us: lets a waiting thread take the GIL


class Burn(nn.Module):
    """A leaf layer that is active for ``duration_s`` and draws ``extra_w`` above idle.

    It passes its input through unchanged, so any number of them chain in an
    ``nn.Sequential`` and the profiler's capture/replay sees an ordinary layer.
    """

    def __init__(self, extra_w: float, duration_s: float, timeline: Timeline, key: str):
        super().__init__()
        self.extra_w = float(extra_w)
        self.duration_s = float(duration_s)
        self.timeline = timeline
        self.key = key

    def forward(self, x):
        start = self.timeline.begin(self.key, self.extra_w)
        hold_until(start + self.duration_s, self.timeline.clock)
        self.timeline.end()
        return x

    def extra_repr(self) -> str:
        return "extra_w=%g, duration_s=%g, key=%s" % (self.extra_w, self.duration_s, self.key)


def build_model(timeline: Timeline, layers: Sequence[Tuple[float, float]] = DEFAULT_LAYERS) -> nn.Sequential:
    """An ``nn.Sequential`` of :class:`Burn` leaves, keys ``burn0``, ``burn1``, ... in order."""
    return nn.Sequential(*[Burn(w, d, timeline, "burn%d" % n) for n, (w, d) in enumerate(layers)])


class Background:
    """Power of no layer: a drifting idle plus random bursts, with an exact integral (seeded, reproducible).

    Drift: ``drift_w * sin(2 pi (t - origin) / drift_period_s + phase)``.  Bursts:
    ``burst_w`` over [s, s + d], d uniform in ``burst_s``, the next start
    uniform in ``gap_s`` after this one's start (never overlapping).
    """

    def __init__(self, seed: int = 0, drift_w: float = 0.4, drift_period_s: float = 17.0, burst_w: float = 0.8,
                 burst_s: Tuple[float, float] = (0.2, 0.6), gap_s: Tuple[float, float] = (1.0, 3.0),
                 clock: Callable[[], float] = now):
        if burst_w and burst_s[1] >= gap_s[0]:
            raise ValueError("bursts of up to %g s cannot start every %g s without overlapping"
                             % (burst_s[1], gap_s[0]))
        self.drift_w = drift_w
        self.drift_period_s = drift_period_s
        self.burst_w = burst_w
        self.burst_s = burst_s
        self.gap_s = gap_s
        self._rng = random.Random(seed)
        self.phase = self._rng.uniform(0.0, 2 * math.pi)
        self.origin = clock()
        self._lock = threading.Lock()
        self._starts: List[float] = []
        self._ends: List[float] = []
        self._next = self.origin + self._rng.uniform(0.0, gap_s[1])

    def _extend(self, t: float) -> None:
        while self._next <= t:
            start = self._next
            self._starts.append(start)
            self._ends.append(start + self._rng.uniform(*self.burst_s))
            self._next = start + self._rng.uniform(*self.gap_s)

    def bursts(self, a: float, b: float) -> List[Tuple[float, float]]:
        """The bursts that overlap [a, b]."""
        with self._lock:
            self._extend(b)
            first = bisect.bisect_right(self._ends, a)  # bursts never overlap: ends are sorted too
            last = bisect.bisect_left(self._starts, b)
            return list(zip(self._starts[first:last], self._ends[first:last]))

    def _burst_seconds(self, a: float, b: float) -> float:
        return math.fsum(min(e, b) - max(s, a) for s, e in self.bursts(a, b))

    def _drift_integral(self, t: float) -> float:
        w = 2 * math.pi / self.drift_period_s
        return -self.drift_w / w * math.cos(w * (t - self.origin) + self.phase)

    def energy(self, a: float, b: float) -> float:
        """Exact joules over [a, b]."""
        burst = self.burst_w * self._burst_seconds(a, b) if self.burst_w else 0.0
        return self._drift_integral(b) - self._drift_integral(a) + burst

    def power(self, t: float) -> float:
        w = 2 * math.pi / self.drift_period_s
        inside = any(s <= t < e for s, e in self.bursts(t, t)) if self.burst_w else False
        return self.drift_w * math.sin(w * (t - self.origin) + self.phase) + (self.burst_w if inside else 0.0)


def busy_background(seed: int, clock: Callable[[], float] = now) -> Background:
    """The busy board of issue 10: idle drifting +/-0.4 W over ~17 s, 0.8 W bursts of 0.2-0.6 s every 1-3 s."""
    return Background(seed=seed, clock=clock)


class GroundTruthSensor(PowerSource):
    """A sample-and-hold monitor of the harness's true power (see the module docstring).

    Update k (k = 0, 1, ...) appears at ``origin + k * period_s`` and holds the
    mean true power over the period before it.  Its noise is drawn from a
    generator seeded by (seed, k), so a held value is the same whoever reads it
    and a run is reproducible for a given grid phase.
    """

    name = "groundtruth"
    board = "ground-truth harness"
    simulated = True

    def __init__(
        self,
        timeline: Timeline,
        period_s: float,
        idle_w: float = IDLE_W,
        noise_rel: float = NOISE_REL,
        noise_abs_w: float = NOISE_ABS_W,
        quantum_w: float = QUANTUM_W,
        seed: int = 0,
        phase_s: Optional[float] = None,
        background: Optional[Background] = None,
        jitter_s: float = 0.0,
    ):
        if not period_s > 0:
            raise ValueError("period_s must be positive, got %r" % (period_s,))
        if not 0 <= jitter_s < period_s:
            raise ValueError("jitter_s must be in [0, period_s), got %r" % (jitter_s,))
        self.jitter_s = jitter_s
        if period_s * 3 > timeline.keep_s:
            raise ValueError("timeline keeps %g s, too little for a %g s period" % (timeline.keep_s, period_s))
        self.timeline = timeline
        self.clock = timeline.clock
        self.update_interval_s = period_s
        self.idle_w = idle_w
        self.noise_rel = noise_rel
        self.noise_abs_w = noise_abs_w
        self.quantum_w = quantum_w
        self.seed = seed
        self.background = background
        if phase_s is None:
            phase_s = random.Random(seed).uniform(0.0, period_s)
        self.origin = self.clock() - phase_s  # update 0 is at origin; the first read sees a later one
        self._lock = threading.Lock()
        self._k: Optional[int] = None
        self._value = 0.0
        self.updates = 0  # distinct updates that were read

    def true_mean(self, start: float, end: float) -> float:
        """Exact mean true power over [start, end], background included."""
        tl = self.timeline
        joules = tl.dynamic_energy(end) - tl.dynamic_energy(start)
        if self.background is not None:
            joules += self.background.energy(start, end)
        return self.idle_w + joules / (end - start)

    def measure(self, watts: float, k: int) -> float:
        """What the monitor reports for a true mean ``watts`` at update ``k``."""
        rng = random.Random(self.seed * 1000003 + k)
        noisy = watts + rng.gauss(0.0, self.noise_rel * abs(watts) + self.noise_abs_w)
        if self.quantum_w > 0:
            noisy = round(noisy / self.quantum_w) * self.quantum_w
        return noisy

    def published(self, k: int) -> float:
        """When update ``k`` appears: on the grid, delayed by its own random share of ``jitter_s``."""
        delay = random.Random(self.seed * 7919 + k).uniform(0.0, self.jitter_s) if self.jitter_s else 0.0
        return self.origin + k * self.update_interval_s + delay

    def update_index(self, t: float) -> int:
        """The update whose value is held at instant ``t``."""
        k = math.floor((t - self.origin) / self.update_interval_s)
        return k - 1 if t < self.published(k) else k

    def update_time(self, t: float) -> float:
        """When the value held at instant ``t`` was published."""
        return self.published(self.update_index(t))

    def read(self) -> Reading:
        with self._lock:
            t = self.clock()
            k = self.update_index(t)
            if k != self._k:
                self._value = self.measure(self.true_mean(self.published(k - 1), self.published(k)), k)
                self._k = k
                self.updates += 1
            value = self._value
        return Reading(timestamp=t, total_watts=value, rails={"VDD_IN": value})

    def describe(self) -> Dict[str, str]:
        info = super().describe()
        info.update(idle_w="%g" % self.idle_w, noise="%g %% + %g W" % (100 * self.noise_rel, self.noise_abs_w))
        return info


# 16 layers: enough CIs for a coverage test with a binomial margin (below).
LAYERS = [(w, d) for w in (0.5, 1.0, 2.0, 4.0) for d in (0.0005, 0.001, 0.002, 0.004)]


def binomial_floor(n: int, p: float, alpha: float) -> int:
    """Largest k with P(X < k) <= alpha for X ~ Binomial(n, p): fewer hits than k refutes coverage p."""
    below, k = 0.0, 0
    while True:
        term = math.comb(n, k) * p ** k * (1 - p) ** (n - k)
        if below + term > alpha:
            return k
        below += term
        k += 1
