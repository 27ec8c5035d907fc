"""In-situ attribution: the whole model runs as in production, and each layer's energy is solved for.

Isolation replays one layer at a time, away from the caches, clocks and
queue that surround it inside the model.  Here the model runs whole, again
and again, with nothing replayed:

* Forward hooks timestamp every layer call (on a CPU with ``time.monotonic``,
  the clock readings are stamped with; on CUDA with CUDA events, mapped to
  host time by one synchronisation per inference, none per layer).  Time
  inside an inference outside every layer call is *framework* time (Python,
  dispatch, launches) and gets a row of its own.
* Inferences are separated by random idle gaps, so their phase against the
  sensor's update grid is random (equivalent-time sampling): over many
  inferences every part of the model lands at every position of an update.
* A sensor update publishes the mean power over a known interval: the update
  grid is bounded by when the sampler saw values change, and fitted to the
  updates within those bounds (:class:`Grid`, :func:`attribute`).  So each update
  value is a linear equation in the unknowns -- the extra power of every
  layer call while it runs, of the framework, and the idle power (a
  piecewise-linear function of time, so slow drift does not leak into the
  layers) -- with the known overlaps as coefficients.
* A robust least-squares fit (Huber, then Tukey's biweight: updates hit by
  background bursts that belong to no layer lose their weight) gives each
  layer's energy; its 95 % CI comes from the M-estimator's sandwich
  covariance (leverage-corrected, HC3-style), Newey-West over a second of
  updates for the residuals' serial correlation (drift, bursts), and the
  fitted grid's own uncertainty: the estimate is averaged over the grids
  the reads allow, weighted by their likelihood, and their spread added.

Per call, energy = (idle around the call + the layer's extra power) x its
duration.  The layer rows and the framework row add up to the energy of an
inference, so coverage is 100 % by construction.
"""

import math
import random
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .capture import LayerCall, call_model
from .errors import ProfilerError
from .estimate import difference_ci95, t_quantile_975
from .measure import Window
from .meter import MeterError, RawSample
from .result import LayerResult, ProfileResult, plausibility

DEFAULT_MIN_S = 30.0
DEFAULT_UPDATES = 1200  # sensor updates a default run lasts...
DEFAULT_MAX_S = 120.0  # ...within these bounds
WARMUP_S = 0.3
# Gaps between inferences: uniform in [0, GAP_SCALE x max(sensor period, inference)].  Long enough that
# some updates see idle only (the idle curve), short enough that most updates cut through an inference
# (each cut inside a layer is what tells it from its neighbours).
GAP_SCALE = 0.5
KNOT_UPDATES = 20  # the idle curve bends at most every this many updates...
KNOT_MIN_S = 2.0  # ...and at most every this many seconds
# residuals stay correlated this long (a background burst, the idle curve's misfit between knots): the
# covariance counts updates this close together as partly the same (Newey-West)
SERIAL_S = 1.0
HUBER_K = 1.345
TUKEY_C = 4.685
FIT_ROUNDS = 20
GRID_SEED_STEPS = 16  # consecutive update steps that give the first estimate of the period
PHASE_STEPS = 9  # sensor phases tried per refinement (see attribute)
PHASE_ROUNDS = 2  # reweighting rounds while comparing phases
SEARCH_GROUPS = 8  # runs of neighbouring layers in the model that compares candidate grids
SEARCH_ROUNDS = 4  # grids of PHASE_STEPS per coordinate, each a quarter as wide (last step: 1/512 of the range)
ALIGN_POINTS = 16  # grids around the fitted one, within the reads' bounds, that its uncertainty is taken over
GRID_SLACK = 0.1  # periods by which a change bracket may miss the grid before it counts as a read error
GRID_MIN_FIT = 0.9  # no grid when fewer of the change brackets than this fit it
HELD_READS = 1.5  # reads per sensor update above which a read repeats a held value, not a fresh mean
GRIDLESS_FLAG = "sensor update grid not found: attribution off by up to one update period"
FRAMEWORK = "framework"
METHODS = ("isolate", "in-situ", "both")


class Timestamps:
    """Forward hooks on the layer modules that stamp every call of one inference.

    CPU: host clock at each pre/post hook.  CUDA: an event recorded at each
    hook, read back after the inference's single synchronisation.
    """

    def __init__(self, calls: List[LayerCall], device: torch.device, clock: Callable[[], float]):
        self.cuda = device.type == "cuda"
        self.device = device
        self.clock = clock
        self.expected = [id(c.module) for c in calls]
        self.order: List[int] = []
        self.marks: List[Any] = []
        self.handles = []
        if self.cuda:
            self.pool = [torch.cuda.Event(enable_timing=True) for _ in range(2 * len(calls) + 2)]
        modules = {id(c.module): c.module for c in calls}
        for module in modules.values():
            self.handles.append(module.register_forward_pre_hook(self._pre))
            self.handles.append(module.register_forward_hook(self._post))

    def _mark(self) -> None:
        if self.cuda:
            n = len(self.marks) + 1
            if n < len(self.pool) - 1:  # the last event marks the end of the inference
                event = self.pool[n]
                event.record()
                self.marks.append(event)
            else:
                self.marks.append(None)  # more calls than captured: the inference is discarded anyway
        else:
            self.marks.append(self.clock())

    def _pre(self, module, inputs):
        self.order.append(id(module))
        self._mark()

    def _post(self, module, inputs, output):
        self._mark()

    def run(self, model: Any, example_input: Any) -> Optional[Tuple[float, float, List[float]]]:
        """One inference: (start, end, [start0, end0, start1, ...]) in host time; None if the calls differ."""
        self.order, self.marks = [], []
        if self.cuda:
            anchor = self.pool[0]
            t0 = self.clock()
            anchor.record()
            call_model(model, example_input)
            self.pool[-1].record()
            torch.cuda.synchronize(self.device)
            if self.order != self.expected:
                return None
            marks = [t0 + anchor.elapsed_time(e) / 1e3 for e in self.marks]
            return t0, t0 + anchor.elapsed_time(self.pool[-1]) / 1e3, marks
        t0 = self.clock()
        call_model(model, example_input)
        t1 = self.clock()
        if self.order != self.expected:
            return None
        return t0, t1, list(self.marks)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class InSitu:
    """Runs the model whole, repeatedly, with random gaps; ``run()`` never raises KeyboardInterrupt or MeterError.

    After ``run()``: ``records`` (per inference: start, end and every call's
    start and end, host time), ``discarded`` (spans of inferences whose calls
    were not the captured ones), ``samples``, ``windows`` (one per
    inference), ``complete`` and ``stopped_by`` -- the last four are what
    core's metadata reads.
    """

    def __init__(self, model: Any, example_input: Any, calls: List[LayerCall], meter: Any,
                 device: torch.device, duration_s: float, progress: Optional[Callable[[int, int, str], None]],
                 seed: Optional[int] = None, clock: Callable[[], float] = time.monotonic):
        self.model = model
        self.example_input = example_input
        self.calls = calls
        self.meter = meter
        self.device = device
        self.duration_s = duration_s
        self.progress = progress
        self.rng = random.Random(seed)
        self.clock = clock
        self.period_s = float(meter.update_interval_s)
        self.records: List[Tuple[float, float, List[float]]] = []
        self.discarded: List[Tuple[float, float]] = []
        self.samples: List[RawSample] = []
        self.windows: List[Window] = []
        self.complete = False
        self.stopped_by = ""
        self.loop_start = self.loop_end = float("nan")

    def run(self) -> None:
        stamps = Timestamps(self.calls, self.device, self.clock)
        since = self.clock()
        try:
            inference_s = self._warm_up(stamps)
            gap_scale = GAP_SCALE * max(self.period_s, inference_s)
            time.sleep(2 * self.period_s + self.meter.sample_period_s)
            self.loop_start = self.clock()
            deadline = self.loop_start + self.duration_s
            shown = -1
            while True:
                record = stamps.run(self.model, self.example_input)
                if record is None:
                    self.discarded.append((self.loop_start if not self.records else self.records[-1][1],
                                           self.clock()))
                else:
                    self.records.append(record)
                now = self.clock()
                if now >= deadline:
                    break
                done = int(100 * (now - self.loop_start) / self.duration_s)
                if done != shown and self.progress is not None:
                    shown = done
                    self.progress(done, 100, "in-situ: %d inferences" % len(self.records))
                time.sleep(self.rng.uniform(0.0, gap_scale))
            self.loop_end = self.clock()
            if self.progress is not None:
                self.progress(100, 100, "in-situ: %d inferences" % len(self.records))
            self.complete = True
        except KeyboardInterrupt:
            self.stopped_by = "interrupted"
            self.loop_end = self.clock()
        finally:
            stamps.remove()
        try:
            # the last updates that cover the loop appear up to a period later; let the sampler read them
            time.sleep(2 * self.period_s + 2 * self.meter.sample_period_s)
            self.samples = self.meter.samples(since)
        except MeterError as exc:
            self.complete = False
            self.stopped_by = self.stopped_by or str(exc)
        except KeyboardInterrupt:
            self.complete = False
            self.stopped_by = "interrupted"
        self.windows = [Window("whole", None, n, r[0], r[1], "inference", 1, resolved=True)
                        for n, r in enumerate(self.records)]

    def _warm_up(self, stamps: Timestamps) -> float:
        """A few whole inferences (caches, allocator, clocks); returns the typical inference time."""
        times = []
        start = self.clock()
        while len(times) < 3 or self.clock() - start < WARMUP_S:
            record = stamps.run(self.model, self.example_input)
            if record is None:
                raise ProfilerError("the model calls its layers in a different order on every inference; "
                                    "in-situ attribution needs a fixed order (use --method isolate)")
            times.append(record[1] - record[0])
        return sorted(times)[len(times) // 2]


# -- the sensor's update grid -------------------------------------------------------------------
class Grid:
    """The sensor's update instants u_k = centre + period x (k - kc), as far as the reads bound them.

    An update happened after the read before a change and at or before the
    read that shows it.  Indexed by whole periods, these brackets bound the
    grid: the (centre, period) pairs that fit every bracket form a polygon
    (a sensor's clock is not the host's, so the period is unknown too).
    Reads locked to the sensor's grid leave it as wide as their spacing; the
    updates' values narrow it further (see :func:`attribute`).
    """

    def __init__(self, lo: np.ndarray, hi: np.ndarray, k: np.ndarray, period: float):
        self.lo, self.hi = lo, hi
        self.kc = float(np.median(k))
        self.d = k - self.kc
        # the feasible width of the centre is concave in the period: golden-section search for its peak
        a, b = period * (1 - 1e-3), period * (1 + 1e-3)
        ratio = (math.sqrt(5) - 1) / 2
        for _ in range(80):
            c, e = b - ratio * (b - a), a + ratio * (b - a)
            if self.width(c) >= self.width(e):
                b = e
            else:
                a = c
        self.period = (a + b) / 2

    def centres(self, period: float) -> Tuple[float, float]:
        """The range of centres that fit every bracket at this period."""
        return float(np.max(self.lo - period * self.d)), float(np.min(self.hi - period * self.d))

    def width(self, period: float) -> float:
        first, last = self.centres(period)
        return last - first

    def periods(self, centre: float) -> Tuple[float, float]:
        """The range of periods that fit every bracket with this centre."""
        up, down = self.d > 0, self.d < 0
        lows = np.concatenate([(self.lo[up] - centre) / self.d[up], (self.hi[down] - centre) / self.d[down]])
        highs = np.concatenate([(self.hi[up] - centre) / self.d[up], (self.lo[down] - centre) / self.d[down]])
        return float(np.max(lows)), float(np.min(highs))

    def origin(self, centre: float, period: float) -> float:
        return centre - period * self.kc


def fit_grid(times: np.ndarray, values: np.ndarray, nominal_s: float) -> Optional[Grid]:
    """The update grid from the reads where the value changed; None when the changes follow no regular grid."""
    changed = np.nonzero(values[1:] != values[:-1])[0] + 1
    if len(changed) < 10:
        return None
    lo, hi = times[changed - 1], times[changed]
    # a late read (a starved sampler) leaves a wide bracket that bounds little: fit to the tight ones
    tight = hi - lo <= min(2 * float(np.median(hi - lo)), 0.75 * nominal_s)
    lo, hi = lo[tight], hi[tight]
    mid = (lo + hi) / 2
    steps = np.diff(mid)
    near = steps[(steps > 0.5 * nominal_s) & (steps < 1.5 * nominal_s)]
    if len(near) < 5:
        return None
    # reads locked to the sensor quantise single steps to their spacing, so no one step gives the period;
    # the mean of a few does well enough to index a short stretch, and each fit one half as long again
    period, origin = float(np.mean(near[:GRID_SEED_STEPS])), float(mid[0])
    span = GRID_SEED_STEPS
    while True:
        k = np.round((mid[:span] - origin) / period)
        period, origin = (float(v) for v in np.polyfit(k, mid[:span], 1))
        if span >= len(mid):
            break
        span = span * 3 // 2
    if not period > 0:
        return None
    # brackets that miss the fitted grid by more than a tenth of a period are read errors, not the grid;
    # a grid that many brackets miss is no grid
    k = np.round((mid - origin) / period)
    slack = GRID_SLACK * period
    fits = (origin + period * k > lo - slack) & (origin + period * k <= hi + slack)
    if fits.mean() < GRID_MIN_FIT:
        return None
    grid = Grid(lo[fits], hi[fits], k[fits], period)
    if grid.width(grid.period) < -slack:
        return None
    return grid


def _search(loss: Callable[[float], float], first: float, last: float) -> float:
    """The argument in [first, last] with the lowest loss: a grid of PHASE_STEPS, refined around the best."""
    if not last > first:
        return (first + last) / 2
    candidates = np.linspace(first, last, PHASE_STEPS)
    for _ in range(SEARCH_ROUNDS):
        losses = [loss(float(c)) for c in candidates]
        best = float(candidates[int(np.argmin(losses))])
        step = candidates[1] - candidates[0]
        candidates = np.linspace(max(first, best - step), min(last, best + step), PHASE_STEPS)
    return best


def _around(best: float, first: float, last: float) -> Tuple[np.ndarray, np.ndarray]:
    """Points over [first, last], dense near ``best`` (halving steps out to either bound), and each one's share
    of the range: a quadrature for a likelihood that may be far narrower than the range, or as wide."""
    if not last > first:
        return np.array([best]), np.array([1.0])
    best = min(max(best, first), last)
    steps = 2.0 ** -np.arange(ALIGN_POINTS // 2)
    points = np.unique(np.concatenate([[best], best - (best - first) * steps, best + (last - best) * steps]))
    edges = np.concatenate([[points[0]], (points[1:] + points[:-1]) / 2, [points[-1]]])
    return points, np.maximum(np.diff(edges), 1e-300)


def on_grid(times: np.ndarray, values: np.ndarray, period: float, origin: float) -> Tuple[np.ndarray, np.ndarray]:
    """(end instant, value) of every distinct update seen; update k covers (u_k - period, u_k].

    A held value that differs between two reads of one update means the grid
    is off there: that update is left out.
    """
    k = np.floor((times - origin) / period).astype(np.int64)
    first = np.concatenate([[True], k[1:] != k[:-1]])
    keys, vals = k[first], values[first]
    group = np.cumsum(first) - 1
    consistent = np.ones(len(keys), dtype=bool)
    consistent[np.unique(group[values != vals[group]])] = False
    return origin + period * keys[consistent], vals[consistent]


# -- the fit ----------------------------------------------------------------------------------
def _cumulative(starts: np.ndarray, ends: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Time spent inside the sorted, disjoint segments [starts, ends) before each instant of ``t``."""
    lengths = np.maximum(ends - starts, 0.0)
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    j = np.searchsorted(starts, t, side="right")
    before = cum[np.maximum(j - 1, 0)]
    partial = np.where(j > 0, np.clip(t - starts[np.maximum(j - 1, 0)], 0.0, lengths[np.maximum(j - 1, 0)]), 0.0)
    return before + partial


def _hats(knots: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Piecewise-linear basis (one tent per knot) evaluated at ``t``: rows sum to 1."""
    out = np.zeros((len(t), len(knots)))
    if len(knots) == 1:
        out[:, 0] = 1.0
        return out
    pos = np.clip(np.interp(t, knots, np.arange(len(knots))), 0, len(knots) - 1)
    low = np.minimum(np.floor(pos).astype(int), len(knots) - 2)
    frac = pos - low
    rows = np.arange(len(t))
    out[rows, low] = 1.0 - frac
    out[rows, low + 1] = frac
    return out


class Fit:
    """Robust weighted least squares of update values on overlaps, with a sandwich covariance.

    ``rounds`` of reweighting: the first half Huber (bounded influence), the
    rest Tukey's biweight (updates far off the model, such as background
    bursts that belong to no layer, get no weight at all).
    """

    def __init__(self, design: np.ndarray, y: np.ndarray, rounds: int = FIT_ROUNDS, covariance: bool = True,
                 lags: int = 0):
        self.X, self.y = design, y
        n, p = design.shape
        if n <= p + 2:
            raise ProfilerError("in-situ: %d sensor updates for %d unknowns; run longer (--insitu-s)" % (n, p))
        w = np.ones(n)
        beta = self._solve(w)
        for round_ in range(rounds):
            r = y - design @ beta
            self.scale = _mad(r)
            if round_ < max(rounds // 2, 1):
                u = np.abs(r) / (HUBER_K * self.scale)
                w_new = np.where(u <= 1, 1.0, 1.0 / np.maximum(u, 1e-300))
            else:
                u = r / (TUKEY_C * self.scale)
                w_new = np.where(np.abs(u) < 1, (1 - u ** 2) ** 2, 0.0)
            settled = float(np.max(np.abs(w_new - w))) < 1e-4 and round_ >= rounds // 2
            w = w_new
            beta = self._solve(w)
            if settled:
                break
        self.beta, self.weights = beta, w
        self.fitted = beta  # the fit's own estimate; ``marginalise`` moves ``beta``
        r = y - design @ beta
        self.residuals = r
        if rounds == 0:
            self.scale = _mad(r)
        used = w > 0
        self.used = int(used.sum())
        self.dof = max(self.used - p, 1)
        if not covariance:  # a candidate grid is compared by its loss alone
            return
        # M-estimator sandwich, HC3-style: the bread from the slope of the final round's influence function
        # (a weight held fixed would hide that updates near the rejection edge move the fit), the meat from
        # the influence itself, each update's inflated by its leverage: the updates that tell layers apart
        # are few and high-leverage, and a plain sandwich understates what their noise does to the estimate
        psi, slope = self._influence(r)
        bread = np.linalg.pinv((design * slope[:, None]).T @ design)
        leverage = np.clip(np.einsum("ij,jk,ik->i", design, bread, design) * slope, 0.0, 0.99)
        scores = design * (psi / (1 - leverage))[:, None]
        white = scores.T @ scores
        # neighbouring updates share drift and bursts: Newey-West, so correlated updates count as fewer
        self.cov = bread @ _bartlett(scores, lags) @ bread
        # a negative autocorrelation estimated from noise would narrow a CI: ``combo`` keeps the wider of the two
        self.cov_white = bread @ white @ bread
        plain = np.diag(self.cov_white)
        self.inflation = float(np.median(np.diag(self.cov)[plain > 0] / plain[plain > 0])) if np.any(plain > 0) else 1.0

    def marginalise(self, others: List["Fit"], cells: np.ndarray) -> None:
        """Average over alternative fits of the same unknowns (other sensor grids), weighted by likelihood.

        ``cells``: each fit's share of the range its grids cover.  Deviance
        from the Huber loss at this fit's scale, divided by the serial
        inflation (correlated updates say less than their count); the estimate
        moves to the weighted mean and the weighted spread joins ``cov``.
        """
        n = len(self.y)
        dev = np.array([n * HUBER_K ** 2 * o.loss(self.scale) for o in others]) / max(self.inflation, 1.0)
        w = np.exp(-(dev - dev.min()) / 2) * cells
        w /= w.sum()
        betas = np.array([o.beta for o in others])
        mean = w @ betas
        spread = betas - mean
        between = (spread * w[:, None]).T @ spread
        self.cov, self.cov_white = self.cov + between, self.cov_white + between
        self.beta = self.beta + (mean - self.fitted)

    def _influence(self, r: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Tukey's psi(r) at the final scale and its slope (the covariance is the biweight fit's)."""
        u = r / (TUKEY_C * self.scale)
        inside = np.abs(u) < 1
        return np.where(inside, r * (1 - u ** 2) ** 2, 0.0), np.where(inside, (1 - u ** 2) * (1 - 5 * u ** 2), 0.0)

    def _solve(self, w: np.ndarray) -> np.ndarray:
        """Weighted least squares by the normal equations, columns scaled to unit norm (an SVD per
        reweighting round costs 50x more and the design is far from singular); SVD when it is."""
        xw = torch.from_numpy(self.X * w[:, None])
        # torch's thread pool, the one the model ran with: numpy's BLAS spins its own threads, 30x slower
        # than one thread on a board whose cores are busy
        gram = (xw.T @ torch.from_numpy(self.X)).numpy()
        rhs = (xw.T @ torch.from_numpy(self.y)).numpy()
        norm = np.sqrt(np.maximum(np.diag(gram), 1e-300))
        try:
            return np.linalg.solve(gram / np.outer(norm, norm), rhs / norm) / norm
        except np.linalg.LinAlgError:
            sw = np.sqrt(w)
            return np.linalg.lstsq(self.X * sw[:, None], self.y * sw, rcond=None)[0]

    def loss(self, scale: float) -> float:
        """Mean Huber loss of the residuals at a fixed scale: how well this model explains the updates."""
        u = np.abs(self.residuals) / (HUBER_K * scale)
        return float(np.mean(np.where(u <= 1, u ** 2, 2 * u - 1)))

    def combo(self, g: np.ndarray) -> Tuple[float, float]:
        """Estimate and 95 % CI half-width of the linear combination g . beta."""
        value = float(g @ self.beta)
        var = max(float(g @ self.cov @ g), float(g @ self.cov_white @ g))
        return value, t_quantile_975(self.dof) * math.sqrt(max(var, 0.0))


def _mad(r: np.ndarray) -> float:
    """Robust scale of residuals (normal-consistent median absolute deviation)."""
    return 1.4826 * float(np.median(np.abs(r - np.median(r)))) or float(np.std(r)) or 1e-12


def _bartlett(scores: np.ndarray, lags: int) -> np.ndarray:
    """Newey-West meat: the scores' cross-products up to ``lags`` rows apart, weighted 1 - lag / (lags + 1).

    The triangle is two running sums of width lags + 1 in a row, so this costs
    one product of the scores, not one per lag.
    """
    n, m = len(scores), min(max(lags, 0), len(scores) - 1) + 1
    c = np.vstack([np.zeros((1, scores.shape[1])), np.cumsum(scores, axis=0)])
    starts = np.arange(1 - m, n)
    ahead = c[np.minimum(starts + m, n)] - c[np.maximum(starts, 0)]  # rows i .. i + m - 1, from i = 1 - m
    c = np.vstack([np.zeros((1, scores.shape[1])), np.cumsum(ahead, axis=0)])
    tri = c[m:] - c[:n]  # the sums starting at t - m + 1 .. t
    return scores.T @ tri / m


class Activity:
    """When each layer call and the framework ran, over all inferences: the columns of the design."""

    def __init__(self, insitu: "InSitu"):
        n_calls = len(insitu.calls)
        self.spans = np.array([(r[0], r[1]) for r in insitu.records])
        marks = np.array([r[2] for r in insitu.records]).reshape(len(insitu.records), n_calls, 2)
        self.starts, self.ends = marks[:, :, 0], np.maximum(marks[:, :, 1], marks[:, :, 0])
        self.fw_starts = np.column_stack([self.spans[:, 0], self.ends]).ravel()
        self.fw_ends = np.maximum(np.column_stack([self.starts, self.spans[:, 1]]).ravel(), self.fw_starts)
        self.n_calls = n_calls

    def overlaps(self, lo: np.ndarray, hi: np.ndarray) -> List[np.ndarray]:
        """Fraction of each interval (lo, hi] that each layer call, then the framework, was running."""
        length = hi - lo
        pairs = [(self.starts[:, i], self.ends[:, i]) for i in range(self.n_calls)]
        pairs.append((self.fw_starts, self.fw_ends))
        return [(_cumulative(a, b, hi) - _cumulative(a, b, lo)) / length for a, b in pairs]

    def framework_s(self) -> np.ndarray:
        return (self.fw_ends - self.fw_starts).reshape(len(self.spans), self.n_calls + 1).sum(axis=1)


def _design(insitu: "InSitu", activity: Activity, knots: np.ndarray, lo: np.ndarray,
            hi: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The design matrix for update intervals (lo, hi], and which of them may be used."""
    keep = (lo >= insitu.loop_start) & (hi <= insitu.loop_end)
    for a, b in insitu.discarded:  # an inference whose calls were not the captured ones: unknown activity
        keep &= (hi <= a) | (lo >= b)
    lo, hi = lo[keep], hi[keep]
    return np.column_stack(activity.overlaps(lo, hi) + [_hats(knots, (lo + hi) / 2)]), keep


def attribute(insitu: "InSitu") -> Dict[str, Any]:
    """Solve for every layer's energy: see the module docstring.  Returns rows, whole model and idle."""
    if not insitu.records:
        raise ProfilerError("in-situ: no inference was recorded")
    activity = Activity(insitu)
    n_calls = activity.n_calls
    t_lo, t_hi = insitu.loop_start, insitu.loop_end
    knot_s = max(KNOT_MIN_S, KNOT_UPDATES * insitu.period_s)
    knots = np.linspace(t_lo, t_hi, max(2, int(math.ceil((t_hi - t_lo) / knot_s)) + 1))
    times = np.array([s.t for s in insitu.samples], dtype=float)
    values = np.array([s.total_w for s in insitu.samples], dtype=float)
    grid = fit_grid(times, values, insitu.period_s) if len(times) > 2 and insitu.period_s else None
    gridless = False
    if grid is None:  # each read describes the time since the previous one, as the sampler charges it
        design, keep = _design(insitu, activity, knots, times[:-1], times[1:])
        lags = int(math.ceil(SERIAL_S / max(float(np.median(np.diff(times))), 1e-6)))
        fit, how = Fit(design, values[1:][keep], lags=lags), "reads"
        # a sensor that holds each update over several reads: a read is not the mean since the previous
        # one, so energy lands up to a period away from its layer, and the CIs do not cover that
        gridless = insitu.period_s > HELD_READS * float(np.median(np.diff(times)))
    else:

        # candidate grids are compared on a coarser model, the layers summed into a few runs of neighbours:
        # the alignment shows in the big steps of power, and the full model's fit is costly on large models
        groups = np.array_split(np.arange(n_calls), min(n_calls, SEARCH_GROUPS))

        def fit_at(centre: float, period: float, rounds: int = PHASE_ROUNDS, coarse: bool = True,
                   covariance: bool = False) -> "Fit":
            ends, vals = on_grid(times, values, period, grid.origin(centre, period))
            design, keep = _design(insitu, activity, knots, ends - period, ends)
            if coarse:
                design = np.column_stack([design[:, g].sum(axis=1) for g in groups] + [design[:, n_calls:]])
            return Fit(design, vals[keep], rounds, covariance, lags=int(math.ceil(SERIAL_S / period)))

        # the grid within the reads' bounds that explains the updates best (a profile likelihood), searched
        # one coordinate at a time: the centre at a fixed period, then the period about that centre
        period = grid.period
        first, last = grid.centres(period)
        centre = (first + last) / 2
        if last < first:  # a few brackets disagree (a starved read): the middle of what remains
            first = last = centre
        scale = fit_at(centre, period).scale
        for _ in range(2):
            centre = _search(lambda c, p=period: fit_at(c, p).loss(scale), *grid.centres(period))
            low, high = grid.periods(centre)
            if not low <= period <= high:
                low = high = period
            period = _search(lambda p, c=centre: fit_at(c, p).loss(scale), low, high)
        fit = fit_at(centre, period, FIT_ROUNDS, coarse=False, covariance=True)
        # the grid is an estimate too: a misplaced edge moves energy between neighbouring layers.  So the
        # estimate is averaged over the grids the reads allow, each weighted by its profile likelihood, and
        # the spread between them joins the covariance (a flat or two-humped likelihood widens the CI)
        lo_c, hi_c = grid.centres(period)
        lo_p, hi_p = grid.periods(centre)
        centres, c_cells = _around(centre, lo_c, hi_c)
        periods, p_cells = _around(period, lo_p, hi_p)
        fit.marginalise([fit_at(c, period, FIT_ROUNDS, coarse=False) for c in centres], c_cells)
        fit.marginalise([fit_at(centre, q, FIT_ROUNDS, coarse=False) for q in periods], p_cells)
        how = "grid %.7f s, bounded by the reads to %.2f ms" % (period, 1e3 * max(last - first, 0.0))
    p = fit.X.shape[1]
    k0 = n_calls + 1  # first idle coefficient

    def idle_at(t: np.ndarray) -> np.ndarray:
        """Mean idle-curve coefficients over instants ``t`` (a row of weights on the knots)."""
        return _hats(knots, t).mean(axis=0)

    rows = []
    whole_g, whole_dyn_g = np.zeros(p), np.zeros(p)
    spans = activity.spans
    for i in range(n_calls + 1):
        if i < n_calls:
            seg_s, seg_e = activity.starts[:, i], activity.ends[:, i]
            mids, dur = (seg_s + seg_e) / 2, float(np.mean(seg_e - seg_s))
        else:
            mids, dur = (spans[:, 0] + spans[:, 1]) / 2, float(np.mean(activity.framework_s()))
        g_dyn = np.zeros(p)
        g_dyn[i] = dur
        g_tot = g_dyn.copy()
        g_tot[k0:] = dur * idle_at(mids)
        whole_g += g_tot
        whole_dyn_g += g_dyn
        rows.append((i, dur, fit.combo(g_tot), fit.combo(g_dyn)))
    idle_g, first_g, last_g = np.zeros(p), np.zeros(p), np.zeros(p)
    idle_g[k0:] = idle_at(np.linspace(t_lo, t_hi, 200))
    first_g[k0], last_g[-1] = 1.0, 1.0
    return {
        "rows": rows, "whole": (fit.combo(whole_g), fit.combo(whole_dyn_g), float(np.mean(spans[:, 1] - spans[:, 0]))),
        "idle": fit.combo(idle_g), "before": fit.combo(first_g), "after": fit.combo(last_g),
        "drift": fit.combo(last_g - first_g), "updates": fit.used, "updates_total": len(fit.y),
        "intervals": how, "gridless": gridless, "inflation": fit.inflation, "knots": len(knots),
    }


def default_duration_s(update_interval_s: float) -> float:
    """Long enough for ``DEFAULT_UPDATES`` sensor updates, within [DEFAULT_MIN_S, DEFAULT_MAX_S]."""
    return min(max(DEFAULT_MIN_S, DEFAULT_UPDATES * update_interval_s), DEFAULT_MAX_S)


def _row(index: int, label: str, module: str, op: str, inferences: int, duration: float,
         energy: Tuple[float, float], dynamic: Tuple[float, float], updates: int) -> LayerResult:
    (e, e_ci), (d, d_ci) = energy, dynamic
    return LayerResult(
        index=index, label=label, module=module, op=op, calls_per_window=1, trials=inferences,
        duration_s=duration, energy_j=e, energy_ci95_j=e_ci, dynamic_energy_j=d, dynamic_energy_ci95_j=d_ci,
        power_w=e / duration if duration > 0 else float("nan"),
        dynamic_power_w=d / duration if duration > 0 else float("nan"), samples=updates,
    )


def build_insitu_result(name: str, insitu: InSitu, model_op: str, meta: Dict[str, Any]) -> ProfileResult:
    """The in-situ ProfileResult: one row per layer call, a ``framework`` row, and the whole inference.

    An interrupted run too short to solve gives no rows (the result says it is incomplete).
    """
    calls, n = insitu.calls, len(insitu.records)
    meta = dict(meta, method="in-situ", inferences=n, inferences_discarded=len(insitu.discarded),
                insitu_s=insitu.duration_s, estimator=None, min_window_s=None, cooldown_s=None, trials=n)
    solving = time.monotonic()
    try:
        solved = attribute(insitu)
    except ProfilerError:
        if insitu.complete:
            raise
        return ProfileResult(model=name, layers=[], whole_model=None, idle_power_w=float("nan"), idle={},
                             meta=meta, samples=list(insitu.samples), windows=list(insitu.windows))
    layers = []
    for i, duration, energy, dynamic in solved["rows"]:
        if i < len(calls):
            c = calls[i]
            layers.append(_row(c.index, c.label, c.module_path, c.op, n, duration, energy, dynamic,
                               solved["updates"]))
        else:
            layers.append(_row(len(calls), FRAMEWORK, "", FRAMEWORK, n, duration, energy, dynamic,
                               solved["updates"]))
    peak_w = max((s.total_w for s in insitu.samples), default=float("nan"))
    for layer in layers:
        reasons = [plausibility(layer.energy_j, layer.energy_ci95_j, layer.dynamic_energy_j,
                                layer.dynamic_energy_ci95_j, layer.duration_s, peak_w, 0, n),
                   GRIDLESS_FLAG if solved["gridless"] else ""]
        layer.flag = "; ".join(r for r in reasons if r)
    (whole_e, whole_d, whole_t) = solved["whole"]
    whole = _row(len(calls) + 1, "whole_model", "", model_op, n, whole_t, whole_e, whole_d,
                 solved["updates"]).to_dict()
    whole["flag"] = GRIDLESS_FLAG if solved["gridless"] else ""  # the energy per inference is then not shown either
    sum_e = math.fsum(layer.energy_j for layer in layers)
    sum_d = math.fsum(layer.dynamic_energy_j for layer in layers)
    whole.update({
        "layers_energy_j": sum_e, "layers_dynamic_energy_j": sum_d,
        "coverage": sum_e / whole["energy_j"] if whole["energy_j"] else None,
        "dynamic_coverage": sum_d / whole["dynamic_energy_j"] if whole["dynamic_energy_j"] else None,
        "layers_measured": len(layers), "layers_flagged": sum(1 for layer in layers if layer.flag),
    })
    idle_w, idle_ci = solved["idle"]
    (before, before_ci), (after, after_ci), (drift, drift_ci) = solved["before"], solved["after"], solved["drift"]
    idle = {
        "power_w": idle_w, "power_ci95_w": idle_ci, "before_w": before, "after_w": after,
        "before_ci95_w": before_ci, "after_ci95_w": after_ci, "drift_w": drift,
        "drift_flagged": abs(drift) > max(0.02 * idle_w, drift_ci), "windows": 0,
    }
    meta.update({
        "sensor_updates_used": solved["updates"], "sensor_updates": solved["updates_total"],
        "update_intervals": solved["intervals"], "idle_knots": solved["knots"],
        "ci_serial_inflation": solved["inflation"], "solve_s": time.monotonic() - solving,
    })
    return ProfileResult(model=name, layers=layers, whole_model=whole, idle_power_w=idle_w, idle=idle,
                         meta=meta, samples=list(insitu.samples), windows=list(insitu.windows))


# -- in-situ next to isolated ---------------------------------------------------------------------
COMPARE_COLUMNS = (
    "index", "label", "module", "insitu_energy_j", "insitu_energy_ci95_j", "isolated_energy_j",
    "isolated_energy_ci95_j", "insitu_dynamic_energy_j", "insitu_dynamic_energy_ci95_j",
    "isolated_dynamic_energy_j", "isolated_dynamic_energy_ci95_j", "insitu_duration_s", "isolated_duration_s",
    "energy_ratio", "disagree",
)


def _apart(a: float, a_ci: Optional[float], b: float, b_ci: Optional[float]) -> bool:
    """True when the difference exceeds its own 95 % CI (the two CIs in quadrature)."""
    return difference_ci95(a, a_ci, b, b_ci)[2]


def compare(isolated: ProfileResult, insitu: ProfileResult) -> List[Dict[str, Any]]:
    """One row per layer measured both ways; ``disagree`` where the energies differ beyond their CIs.

    A disagreement is what isolation cannot show: caches warm or cold from the
    neighbouring layers, clocks, queueing -- the layer's cost in its context.
    """
    by_index = {layer.index: layer for layer in isolated.layers if layer.trials}
    rows = []
    for layer in insitu.layers:
        other = by_index.get(layer.index)
        if layer.op == FRAMEWORK or other is None or other.label != layer.label:
            continue
        rows.append({
            "index": layer.index, "label": layer.label, "module": layer.module,
            "insitu_energy_j": layer.energy_j, "insitu_energy_ci95_j": layer.energy_ci95_j,
            "isolated_energy_j": other.energy_j, "isolated_energy_ci95_j": other.energy_ci95_j,
            "insitu_dynamic_energy_j": layer.dynamic_energy_j,
            "insitu_dynamic_energy_ci95_j": layer.dynamic_energy_ci95_j,
            "isolated_dynamic_energy_j": other.dynamic_energy_j,
            "isolated_dynamic_energy_ci95_j": other.dynamic_energy_ci95_j,
            "insitu_duration_s": layer.duration_s, "isolated_duration_s": other.duration_s,
            "energy_ratio": layer.energy_j / other.energy_j if other.energy_j else float("nan"),
            "disagree": _apart(layer.energy_j, layer.energy_ci95_j, other.energy_j, other.energy_ci95_j),
        })
    return rows


def write_compare_csv(rows: List[Dict[str, Any]], path: str) -> str:
    from .report import write_rows

    return write_rows(path, COMPARE_COLUMNS, rows)


def compare_lines(rows: List[Dict[str, Any]]) -> List[str]:
    """Console lines: each layer's in-situ and isolated energy side by side, disagreements marked."""
    if not rows:
        return []
    out = ["In-situ vs isolated (mJ per call, 95 % CI; ! = differ beyond their CIs):"]
    for row in rows:
        out.append("  %s%s: in-situ %s +/- %s | isolated %s +/- %s | ratio %s" % (
            "! " if row["disagree"] else "", row["label"], _mj(row["insitu_energy_j"]),
            _mj(row["insitu_energy_ci95_j"]), _mj(row["isolated_energy_j"]), _mj(row["isolated_energy_ci95_j"]),
            "n/a" if not math.isfinite(row["energy_ratio"]) else "%.3f" % row["energy_ratio"]))
    out.append("  %d of %d layers differ beyond their CIs" % (sum(r["disagree"] for r in rows), len(rows)))
    return out


def _mj(value: Optional[float]) -> str:
    return "n/a" if value is None or not math.isfinite(value) else "%.4f" % (value * 1e3)
