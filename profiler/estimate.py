"""Turning the sampler's power step function into the energy of one measurement window.

The sensor model
----------------
An averaging power monitor (INA3221/INA238, and the benchmark's ground-truth
sensor) publishes at update instants u_j = u_{j-1} + T the mean power over
(u_{j-1}, u_j] and holds it until the next update.  The sampler reads that
held value at its own instants t_k (period delta <= T) and charges reading k
over (t_{k-1}, t_k].  Follow one instant s of true power: its energy lands in
the value of the first update u_j >= s (u_j in [s, s+T)), which is read at
some t_k in [u_j, u_j+T) and charged over (t_k - delta, t_k].  So the sampled
step function is the true power passed through a kernel that
  * conserves energy (every instant's energy is charged exactly once), and
  * lasts from -delta to +2T (mean lag T - delta/2).

Four estimators of the energy spent in [t0, t1] follow from that:

``robust`` (default)
    A window runs one call in a loop, so its power is stationary: after the
    kernel's reach (``lag_s`` = 2T + delta + m) every value read inside the
    window averages the window's own work.  The window's level is the mean of
    that *core*, cut into blocks of at least one update and a few calls; blocks
    that stand out from the window's median by more than ``BLOCK_K`` of the
    sensor's own block noise (a background burst), and their neighbours (the
    burst's edges, smeared by the sensor), are left out.  Energy = level x
    window length.  No idle guard is needed between windows -- the next
    window's core starts after its own lag -- so the board is never left idle
    except in the reference windows the schedule interleaves on purpose.
    For sensors of ALIGN_MIN_S and slower the lag is too dear (2.5 s at 1 s):
    the update grid is found from the reads where the value changed
    (:class:`UpdateGrid`), each window ends just after an update, and its
    blocks are the values of the updates whose period lies wholly inside it,
    so a change of window costs at most one period.

``window`` (naive)
    Integrate the step function over [t0, t1].  Each edge misses or gains
    about T x (power step) -- the layer's first ~T of energy is reported after
    t0 + T, the last ~T after t1.  The error shrinks only as T / window, so the
    window must be ~50 sensor updates long.

``shifted``
    Integrate over [t0 + d, t1 + d] with d = T - delta/2, the kernel's mean lag.
    A shift cannot undo the kernel's spread: for a random sensor phase the
    kernel is a triangle of width 2T and each edge still errs by ~T/6 x step.
    Useful when windows must follow each other with no idle gap.

``settled`` (default)
    Leave the board idle for the kernel's length before and after the window
    and integrate over the whole response, [t0 - T - delta - m, t1 + 2T + m]
    (m: a margin for read jitter; the extra T in front covers a late read).  Because the kernel conserves energy and
    everything outside [t0, t1] within reach of the span is idle, the integral
    is exactly E_window + P_idle x (span - (t1 - t0)); subtracting the idle
    part leaves the window's energy with *no* edge error, whatever the sensor
    phase.  What remains is sensor noise and the uncertainty of P_idle over
    (span - window), so windows need only a few updates (noise averaging), not
    fifty.  The price is one idle guard of ~2T between windows.

    One caveat: "conserves energy" holds when the sampler reads on a regular
    grid.  Each update's value is charged from the read before the first read
    that shows it, so irregular reads stretch or shrink its share by the read
    jitter j, and each power step leaves an error of about step x j.  The
    in-process sampler therefore polls several times per update and the
    measurement loop yields to it (see profiler.meter and profiler.measure);
    windows with a read later than about one update are measured again.

For the integrating estimators the window length defaults to
``UPDATES_PER_WINDOW[method] x T`` but never below ``MIN_WINDOW_FLOOR_S``, and
for slower sensors at least ``NOISE_UPDATES`` updates (capped at
``NOISE_WINDOW_CAP_S``): sensor noise, not edges, then sets the length.
``robust`` windows are the reach plus a short core (FAST_CORE_UPDATES updates,
at least ROBUST_CORE_MIN_S: 69 ms at 6.6 ms) on a fast sensor, and whole
update periods (up to SLOW_CORE_CAP_S: 5 at 100 ms, 1 at 1 s) on a slow
one; windows are repeated until the CI target is met, so noise is averaged
over windows rather than inside one.  The idle baseline is measured with
windows of the same length through the same estimator, so both see the same
sensor.
"""

import bisect
import math
import statistics
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

ESTIMATORS = ("robust", "settled", "shifted", "window")
UPDATES_PER_WINDOW = {"robust": 2, "settled": 5, "shifted": 10, "window": 50}
MIN_WINDOW_FLOOR_S = 0.3
NOISE_UPDATES = 20  # sensor updates per window that average the monitor's noise down
NOISE_WINDOW_CAP_S = 2.0  # ...unless that would make windows longer than this
# On a slow sensor's grid a change of window costs nothing, so its windows are short (at most this, and one
# update): references then come often enough to follow drift, and a burst covers a window whole or not at all.
SLOW_CORE_CAP_S = 0.5
# A fast sensor's core: FAST_CORE_UPDATES updates and at least ROBUST_CORE_MIN_S.  Short windows cost only
# the sensor's reach each; adaptive stopping adds windows where noise needs them, and references
# interleaved every profiler.measure.REF_SPACING_S follow drift whatever the window length.
ROBUST_CORE_MIN_S = 0.05
FAST_CORE_UPDATES = 8
BLOCK_K = 4.0  # a block this many block-noise sigmas from its window's median is a burst
BLOCK_CALLS = 4  # a block lasts at least this many calls, so call phase does not look like a burst
# Sensors this slow get windows aligned to their update grid (profiler.measure): each window then loses no
# lag, only the grid's slack.
ALIGN_MIN_S = 0.05
GRID_KEEP = 64  # value changes remembered
GRID_MIN_BRACKETS = 8
GRID_SLACK_S = 0.001  # timestamps of reads vs the sensor's own instant
SETTLE_MARGIN = 0.5  # extra span, in sample periods, for read jitter
COOLDOWN_SLACK_S = 0.01  # timer slop on top of the idle guard


@dataclass(frozen=True)
class Estimator:
    """How one window's energy is read off the sampler (see the module docstring).

    ``update_interval_s`` is the sensor's update period T; ``sample_period_s``
    the sampler's read period delta.  A source that does not declare T is
    taken to produce a fresh value on every read (T = delta).
    """

    method: str
    update_interval_s: float
    sample_period_s: float

    def __post_init__(self):
        if self.method not in ESTIMATORS:
            raise ValueError("unknown estimator %r: use %s" % (self.method, ", ".join(ESTIMATORS)))
        if not (self.update_interval_s > 0 and self.sample_period_s > 0):
            raise ValueError("update interval and sample period must be positive")

    @property
    def margin_s(self) -> float:
        return SETTLE_MARGIN * self.sample_period_s

    @property
    def lag_s(self) -> float:
        """How long after a change of power every value read reflects only the new power."""
        return 2 * self.update_interval_s + self.sample_period_s + self.margin_s

    def span(self, t0: float, t1: float) -> Tuple[float, float]:
        """The interval of the step function to integrate for a window [t0, t1] (robust: its core)."""
        T, delta = self.update_interval_s, self.sample_period_s
        if self.method == "robust":
            return min(t0 + self.lag_s, t1), t1
        if self.method == "settled":
            # a late read (up to ~T + delta apart; later ones get the window measured again) is charged
            # back to the previous read, so the window's first energy may land that far before t0
            return t0 - T - delta - self.margin_s, t1 + 2 * T + self.margin_s
        if self.method == "shifted":
            d = T - delta / 2
            return t0 + d, t1 + d
        return t0, t1

    @property
    def cooldown_s(self) -> float:
        """Idle time between windows: long enough that no window's span sees the previous one."""
        T, delta = self.update_interval_s, self.sample_period_s
        if self.method == "robust":
            return delta + COOLDOWN_SLACK_S  # only for the sampler to have read past the last window
        if self.method == "settled":
            return 3 * T + delta + 2 * self.margin_s + COOLDOWN_SLACK_S
        return T + delta + COOLDOWN_SLACK_S

    def shortest_window_s(self) -> float:
        """A robust window's core (what follows the sensor's reach) must hold at least one update."""
        return self.lag_s + self.update_interval_s if self.method == "robust" else 0.0

    def default_min_window_s(self) -> float:
        if self.method == "robust":
            T = self.update_interval_s
            if T >= ALIGN_MIN_S:  # windows on the update grid: whole updates, none lost to the reach
                return self.lag_s + max(T, min(NOISE_UPDATES * T, SLOW_CORE_CAP_S))
            return self.lag_s + max(ROBUST_CORE_MIN_S, FAST_CORE_UPDATES * T)
        return max(MIN_WINDOW_FLOOR_S, UPDATES_PER_WINDOW[self.method] * self.update_interval_s,
                   min(NOISE_UPDATES * self.update_interval_s, NOISE_WINDOW_CAP_S))

    def window_energy(self, integral_j: float, t0: float, t1: float, idle_w: float,
                      unattributed_s: float = 0.0) -> Tuple[float, float]:
        """(total, dynamic) joules of the work in window [t0, t1] from the integral over :meth:`span`.

        ``unattributed_s``: time inside the window that is not the work's (the
        profiler's yields to the sampler thread, its loop, calls' hiccups
        beyond the typical call); its idle energy is not the work's.
        ``idle_w`` may be NaN (no baseline yet): the dynamic part is then NaN
        and, for ``settled``, so is the total (its idle part is needed to
        remove the guard time).
        """
        a, b = self.span(t0, t1)
        busy = t1 - t0 - unattributed_s
        if self.method == "settled":
            total = integral_j - idle_w * ((b - a) - busy)
        else:
            total = integral_j - idle_w * unattributed_s
        return total, total - idle_w * busy

    def mean_power(self, integral_j: float, t0: float, t1: float) -> float:
        """Mean power of an idle window: the span's integral over the span's length."""
        a, b = self.span(t0, t1)
        return integral_j / (b - a)


class UpdateGrid:
    """When a sample-and-hold sensor publishes (u_j = anchor + j T), from the reads where its value changed.

    A change between reads at t_{k-1} and t_k puts an update in (t_{k-1}, t_k];
    folded onto one period, many such brackets narrow the phase to well under
    a read period.  Brackets that no longer agree (a sensor whose clock
    drifts against the host's) are forgotten oldest first; with fewer than
    GRID_MIN_BRACKETS in agreement the grid is unknown.
    """

    def __init__(self, period_s: float):
        self.period_s = period_s
        self._brackets: List[Tuple[float, float]] = []
        self._last: Optional[Tuple[float, float]] = None
        self.anchor: Optional[float] = None
        self.slack_s = math.inf

    def feed(self, samples: Sequence[Tuple[float, float]]) -> None:
        for t, w in samples:
            if self._last is not None and t > self._last[0] and w != self._last[1]:
                self._brackets.append((self._last[0], t))
            self._last = (t, w)
        del self._brackets[:-GRID_KEEP]
        self._solve()

    def _solve(self) -> None:
        T = self.period_s
        brackets = self._brackets
        while len(brackets) >= GRID_MIN_BRACKETS:
            ref = brackets[-1][1]
            lo, hi = -math.inf, math.inf
            for a, b in brackets:
                n = round((ref - b) / T)
                lo, hi = max(lo, a + n * T), min(hi, b + n * T)
            if lo < hi:
                self.anchor, self.slack_s = (lo + hi) / 2, (hi - lo) / 2 + GRID_SLACK_S
                return
            brackets = brackets[1:]
        self.anchor, self.slack_s = None, math.inf

    @property
    def known(self) -> bool:
        return self.anchor is not None and self.slack_s < self.period_s / 4

    def next_update(self, t: float) -> float:
        """The first update at or after ``t``."""
        assert self.anchor is not None
        return self.anchor + math.ceil((t - self.anchor) / self.period_s) * self.period_s

    def first_period(self, t0: float) -> float:
        """Start of the first update period that lies wholly after ``t0`` (slack allowed for).

        Each change of window therefore costs up to one period (the one it
        falls in), against 2 T + a read period for a window that waits out the
        sensor's reach.
        """
        return self.next_update(t0 + self.slack_s)

    def updates_within(self, t0: float, t1: float) -> List[float]:
        """Updates whose averaging period (u - T, u] lies inside [t0, t1], slack allowed for."""
        first = self.first_period(t0) + self.period_s
        out = []
        while first <= t1 - self.slack_s:
            out.append(first)
            first += self.period_s
        return out


class StepFunction:
    """The sampler's power step function (read k charged over (t_{k-1}, t_k]) with its running integral."""

    def __init__(self):
        self.times: List[float] = []
        self.watts: List[float] = []
        self._cum: List[float] = []

    def extend(self, samples: Sequence[Tuple[float, float]]) -> None:
        for t, w in samples:
            if self.times and t <= self.times[-1]:
                continue
            self._cum.append((self._cum[-1] + w * (t - self.times[-1])) if self.times else 0.0)
            self.times.append(t)
            self.watts.append(w)

    def integral(self, t: float) -> float:
        """Joules from the first read to ``t`` (held at the ends)."""
        k = bisect.bisect_left(self.times, t)
        if k == 0:
            return 0.0
        if k == len(self.times):
            return self._cum[-1]
        return self._cum[k - 1] + self.watts[k] * (t - self.times[k - 1])

    def block_means(self, a: float, b: float, n: int) -> List[float]:
        """Mean power of ``n`` equal blocks of [a, b]."""
        edges = [a + (b - a) * i / n for i in range(n + 1)]
        values = [self.integral(t) for t in edges]
        return [(q - p) / (e - s) for p, q, s, e in zip(values, values[1:], edges, edges[1:])]


def core_blocks(a: float, b: float, update_interval_s: float, call_s: float) -> Tuple[float, int]:
    """(start, blocks) of a window's core [a, b]: equal blocks of a whole number of calls, ending at b.

    A block lasts at least one sensor update and BLOCK_CALLS calls; whole
    calls make a block's mean the loop's mean power whatever the call's
    power profile (a whole-model pass is several layers long).
    """
    if call_s <= 0:
        return a, max(1, int((b - a) / update_interval_s))
    block = call_s * math.ceil(max(update_interval_s, BLOCK_CALLS * call_s) / call_s)
    n = int((b - a) / block)
    if n < 1:
        return b - call_s * max(1, int((b - a) / call_s)), 1
    return b - n * block, n


def robust_level(blocks: Sequence[float], sigma_w: float, ceiling_w: float = math.inf) -> Tuple[float, int]:
    """(mean of the blocks that are not a burst, blocks kept).

    A block is a burst when it is more than BLOCK_K x ``sigma_w`` *above* the
    median of the window's blocks, or above ``ceiling_w`` (what the layer's
    other windows say it can draw here) -- background activity only adds
    power; a block below is the loop stalling (the OS running something
    else), which is the window's own idle time and stays.  A burst's
    neighbours go too (the sensor smears its edges over an update: less than
    BLOCK_K sigma but still biased).
    """
    if not blocks:
        return float("nan"), 0
    centre = statistics.median(blocks)
    bad = [m - centre > BLOCK_K * sigma_w or m > ceiling_w for m in blocks]
    drop = [bad[i] or (i > 0 and bad[i - 1]) or (i + 1 < len(bad) and bad[i + 1]) for i in range(len(bad))]
    kept = [m for m, d in zip(blocks, drop) if not d]
    if not kept:
        return float("nan"), 0
    return math.fsum(kept) / len(kept), len(kept)


def idle_level(blocks: Sequence[float], sigma_w: float) -> Tuple[float, int]:
    """(level, blocks kept) of an idle window: its lowest blocks.

    Nothing lowers an idle board's power and a burst only adds to it, so the
    board's own idle is the low cluster: blocks more than BLOCK_K sigma above
    the median of the lower half are a burst, and go with their neighbours.
    """
    if not blocks:
        return float("nan"), 0
    low = sorted(blocks)[:max(1, (len(blocks) + 1) // 2)]
    return robust_level(blocks, sigma_w, statistics.median(low) + BLOCK_K * sigma_w)


def mad_sigma(deviations: Sequence[float]) -> float:
    """Robust standard deviation from deviations about a centre (1.4826 x median absolute deviation)."""
    finite = [abs(d) for d in deviations if math.isfinite(d)]
    return 1.4826 * statistics.median(finite) if finite else float("nan")


def update_values(times: Sequence[float], watts: Sequence[float], updates: Sequence[float], period_s: float,
                  slack_s: float) -> List[float]:
    """The value each update published: the last read between it and the next (slack allowed for)."""
    out = []
    for u in updates:
        k = bisect.bisect_left(times, u + period_s - slack_s) - 1
        if k >= 0 and times[k] >= u + slack_s:
            out.append(watts[k])
    return out


# Two-sided 95 % Student t quantiles, df = 1..30.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: a table to 30, then the Cornish-Fisher expansion (error < 1e-4)."""
    if df < 1:
        return float("nan")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def ratio_ci95(joules: Sequence[float], calls: Sequence[int]) -> Tuple[float, Optional[float]]:
    """Energy per call over windows of different call counts: sum(J) / sum(calls), with its 95 % CI.

    A window that ends on the sensor's grid holds as many calls as fit, so a
    window whose calls ran slow has fewer: a plain mean of per-call values
    would weigh those calls more.  The CI is the ratio estimator's (delta
    method); with equal counts both reduce to the mean and its t interval.
    """
    pairs = [(j, c) for j, c in zip(joules, calls) if math.isfinite(j) and c > 0]
    if not pairs:
        return float("nan"), None
    total_c = sum(c for _, c in pairs)
    ratio = math.fsum(j for j, _ in pairs) / total_c
    n = len(pairs)
    if n < 2:
        return ratio, None
    mean_c = total_c / n
    spread = math.fsum((j - ratio * c) ** 2 for j, c in pairs) / (n - 1)
    return ratio, t_quantile_975(n - 1) * math.sqrt(spread / n) / mean_c



def difference_ci95(a: float, a_ci: Optional[float], b: float,
                    b_ci: Optional[float]) -> Tuple[float, Optional[float], bool]:
    """``b - a``, its 95 % CI half-width and whether that CI excludes 0.

    Two independent measurements: the half-widths add in quadrature.  The CI
    is None (and the difference never significant) when either side has none.
    """
    delta = b - a
    if a_ci is None or b_ci is None or not all(math.isfinite(v) for v in (a, b, a_ci, b_ci)):
        return delta, None, False
    ci = math.hypot(a_ci, b_ci)
    return delta, ci, abs(delta) > ci
