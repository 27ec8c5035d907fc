"""The measurement schedule: calibrate, then layer windows interleaved with idle reference windows.

Design (issue 10: a busy board -- drifting idle, background bursts of no layer):

* Layer windows sit between idle *reference* windows about REF_SPACING_S
  apart (R W W W ... R, shared by their neighbours) in a freshly shuffled
  order every round.  A window's idle baseline is a local fit through the
  nearest clean references in time (quadratic through two on each side,
  else linear), so slow drift cancels instead of being charged to whichever
  layer ran when the board was warmer.
* A slow sensor's windows lie on its update grid: whole update periods, the
  calls inside them only, the next window from the boundary where the last
  ended -- no update is lost to the sensor's reach or to a change of window.
* With the default ``robust`` estimator a window's level leaves out blocks
  that stand out from the rest of the window by more than the sensor's own
  block noise (see :func:`profiler.estimate.robust_level`); a window left
  with too few blocks, or whose level (a reference against its neighbours, a
  layer's dynamic power against the layer's other windows) jumps by more than
  LEVEL_K robust sigmas, is *dirty*: a burst covered it, and it is measured
  again.
* Adaptive stopping: after ``trials`` rounds, layers whose 95 % CI of dynamic
  energy is wider than ``target_ci`` (relative, with a floor of
  ``target_ci`` x FLOOR_SHARE of the whole model's dynamic energy for tiny
  layers) or with fewer than ``trials`` clean windows get more windows, the
  widest first, round after round, until they reach it, the window cap, or
  ``budget_s`` (AUTO: in proportion to the planned rounds).

Nothing but the loop (or sleep) runs inside a window: window energies are
read from the meter in batches after each round.  The only exception is the
live push: the daemon is told ``begin`` right before a layer window and
``end`` right after it, so its own per-layer counters line up with the work.
"""

import bisect
import itertools
import math
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy
import torch

from .capture import LayerCall
from .estimate import (
    ALIGN_MIN_S,
    BLOCK_K,
    Estimator,
    StepFunction,
    UpdateGrid,
    core_blocks,
    idle_level,
    mad_sigma,
    ratio_ci95,
    robust_level,
    update_values,
)
from .meter import MeterError, RawSample

COVERAGE_MIN = 0.9  # a window whose span the sensor covered less than this is dropped (sensor gap)
# A read more than an update period (plus half a sample period of jitter) after the previous one may
# have missed a sensor value: the sampler then charges one held value over time it does not describe
# (a starved sampler thread on a busy CPU).  Windows with such a read are measured again.
LATE_READ_SLACK_S = 0.002
# CPython's GIL convoy: a loop of short torch ops (each releases and at once retakes the GIL) can keep
# the sampler thread waiting for the GIL for hundreds of ms.  Windows measured against an in-process
# sampler therefore pause briefly every half sample period (the sampler holds the GIL from the pause
# until its read is done); the pauses are taken out of the call's duration and their idle energy out
# of its total.  Regular reads matter: see the read-jitter note in profiler.estimate.
YIELD_S = 0.00005
TIMING_MIN_S = 0.01
JUMP_ROUNDS = 3  # robust reweightings of the references' local fit (see _mark_jumps)
LOWESS_C = 6.0  # ... whose weights fall to 0 at this many robust sigmas (Cleveland's LOWESS)
LEVEL_K = 5.0  # robust sigmas a window's level may stray from its peers before it counts as a burst
SIGMA_FLOOR_W = 1e-4  # block noise is never taken as below this (a quantised, noiseless sensor)
REF_REACH = 2.0  # references farther than this many reference spacings away do not say what idle was then
# Layer windows between two references: as many as fit in this (at least one).  Slow drift is followed by a
# fit through the references; spacing them about a second apart follows a board's thermal drift (tens of
# seconds) while a fast sensor's short windows spend most of their time on layers, not on references.
REF_SPACING_S = 1.0
MIN_KEPT = 3  # an idle window needs this many blocks clear of bursts
FLOOR_SHARE = 0.01  # tiny layers: CI target relative to this share of the whole model's dynamic energy
WINDOW_CAP = 4  # a layer gets at most WINDOW_CAP x trials windows (more than trials + WINDOW_CAP_MIN) ...
WINDOW_CAP_MIN = 8
WINDOW_CAP_S = 6.0  # ... or, with the default (short) windows, as many as last this long
# budget_s="auto" (the default): refining ends when the run has lasted AUTO_REFINE x the planned rounds
# (every layer's least windows), and not before AUTO_MIN_S or AUTO_MIN_UPDATES sensor updates, whichever
# is longer: a model's profile takes time in proportion to its layers, a slow sensor tells as much in
# proportion to its updates, and windows beyond that go where the CI is widest first.  A number is a hard
# budget; None: none.
AUTO = "auto"
AUTO_REFINE = 1.5
AUTO_MIN_S = 100.0
AUTO_MIN_UPDATES = 300


@dataclass
class Unit:
    """A call to measure and the number of calls that fill one window."""

    call: LayerCall
    whole_model: bool = False
    calls: int = 0
    call_s: float = 0.0  # one call's time, from calibration


@dataclass
class Window:
    kind: str  # "idle" (a reference), "layer" or "whole"
    unit: Optional[int]  # position in the unit list; None for idle
    trial: int
    t0: float
    t1: float
    label: str = ""  # the layer label, "whole_model" or "idle"
    calls: int = 0
    joules: float = float("nan")  # integral over the estimator's span (robust: level x window length)
    samples: int = 0
    covered_s: float = 0.0
    phase: str = ""  # "reference" for idle windows
    resolved: bool = False
    dropped: bool = False  # sensor gap, late read or overrun: not used
    aligned: bool = False  # t0 and t1 are update instants of the sensor's grid
    overran: bool = False  # grid-aligned: the last call ran past the window's last update (energy lost)
    longest_read_gap_s: float = 0.0
    unattributed_s: float = 0.0  # time inside the window that is not the layer's (see typical_busy_s)
    call_times: Optional[List[float]] = None  # each call's own time (CPU), until _flush reads it
    blocks: Optional[List[float]] = None  # robust: the core's block means
    level_w: float = float("nan")  # mean power of the window's span, bursts left out
    baseline_w: float = float("nan")  # local idle power from the nearest clean references
    dirty: str = ""  # why a resolved window is not used ("burst", "level jump", "no reference")
    noise_w: float = 0.0  # robust: the level's standard error from the sensor's block noise

    @property
    def usable(self) -> bool:
        return self.resolved and not self.dropped and not self.dirty

    @property
    def centre(self) -> float:
        return (self.t0 + self.t1) / 2


Progress = Callable[[int, int, str], None]


class _OutOfTime(Exception):
    pass


class Schedule:
    """Runs the whole measurement; ``run()`` never raises KeyboardInterrupt or MeterError.

    After ``run()``: ``windows`` (usable ones carry energies via :meth:`energies`),
    ``samples`` (every raw sample seen), ``complete``, ``stopped_by`` and
    ``budget_hit`` (the time budget ended the refinement).
    """

    def __init__(self, units: List[Unit], meter: Any, estimator: Estimator, trials: int,
                 min_window_s: float, device: torch.device, push: Any, progress: Optional[Progress],
                 seed: Optional[int] = None, target_ci: float = 0.01, budget_s: Union[float, str, None] = None,
                 cap_s: float = 0.0):
        self.units = units
        self.meter = meter
        self.estimator = estimator
        self.trials = trials
        self.min_window_s = min_window_s
        self.device = device
        self.push = push
        self.progress = progress
        self.target_ci = target_ci
        self.auto_budget = budget_s == AUTO
        self.budget_s = None if self.auto_budget else budget_s
        self.rng = random.Random(seed)
        self.windows: List[Window] = []
        self.samples: List[RawSample] = []
        self.complete = False
        self.stopped_by = ""
        self.budget_hit = False
        self._step = StepFunction()
        self._done = 0
        self._since = time.monotonic()
        self._measuring_since = self._since
        self._cap = max(WINDOW_CAP * trials, trials + WINDOW_CAP_MIN)
        T = estimator.update_interval_s
        # slow sensors: windows lie on the sensor's update grid, one after the other (no lag lost)
        self._grid = UpdateGrid(T) if estimator.method == "robust" and T >= ALIGN_MIN_S else None
        self._align_updates = max(1, int(round((min_window_s - estimator.lag_s) / T)))
        self.window_s = self._align_updates * T if self._grid is not None else min_window_s
        self.refs_every = max(1, int(REF_SPACING_S / self.window_s) - 1)
        # A reference serves the refs_every windows around it: its noise is in all their baselines, so it is
        # sqrt(refs_every) x as long (the least total variance for the time it takes).
        share = math.sqrt(self.refs_every)
        self._ref_updates = max(1, int(round(self._align_updates * share)))
        core = max(min_window_s - estimator.lag_s, 0.0) if estimator.method == "robust" else min_window_s
        self.reference_s = min_window_s + core * (share - 1)
        ref_s = self._ref_updates * T if self._grid is not None else self.reference_s
        self._ref_spacing_s = self.refs_every * self.window_s + ref_s
        self._cap = max(self._cap, int(math.ceil(cap_s / self.window_s)))
        # one stable total: the planned rounds (a reference after every refs_every layer windows, one before all)
        self._total = trials * (len(units) + self._references(len(units))) + 1
        self._last_end = -math.inf  # where the last window ended (grid-aligned windows)
        self._work_end = -math.inf  # when the last window's last call returned

    # -- helpers ---------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _gap(self) -> None:
        time.sleep(self.estimator.cooldown_s)

    def _guard(self) -> None:
        """Between windows: the integrating estimators need the idle guard; robust cores skip the lag instead."""
        if self.estimator.method != "robust":
            self._gap()

    def _pull(self) -> None:
        fresh = self.meter.samples(self.samples[-1].t if self.samples else self._since)
        self.samples.extend(fresh)
        pairs = [(x.t, x.total_w) for x in fresh]
        self._step.extend(pairs)
        if self._grid is not None:
            self._grid.feed(pairs)

    def _references(self, windows: int) -> int:
        """References that follow ``windows`` layer windows in a round (one after each refs_every)."""
        return -(-windows // self.refs_every)

    def _aligned_span(self, updates: int) -> Optional[Tuple[float, float]]:
        """(t0, t1) on the sensor's update grid for the next window of ``updates`` periods (None: grid unknown).

        The window starts on the boundary where the last one ended, unless the
        last call ran into that period or this one starts more than a quarter
        period late; work runs within [t0 + slack, t1 - slack], so each of its
        updates averages this window alone and a change of window costs nothing.
        """
        grid = self._grid
        if grid is None:
            return None
        self._pull()
        if not grid.known:
            return None
        T = grid.period_s
        now = time.monotonic()
        t0 = grid.next_update(max(self._work_end + grid.slack_s, now - T / 4, self._last_end - T / 2))
        return t0, t0 + updates * T

    def _updates_for(self, unit: Unit) -> int:
        """Whole updates a grid-aligned window of this unit spans: enough for one call and the grid's slack."""
        T = self.estimator.update_interval_s
        slack = self._grid.slack_s if self._grid is not None and self._grid.known else 0.0
        return max(self._align_updates, int(math.ceil((1.5 * unit.call_s + 2 * slack) / T)))

    def _check_time(self) -> None:
        if self.budget_s is not None and time.monotonic() - self._since >= self.budget_s:
            self.budget_hit = True
            raise _OutOfTime

    def _tick(self, text: str, remaining: Optional[int] = None) -> None:
        self._done += 1
        if self.progress is None:
            return
        per_window = (time.monotonic() - self._measuring_since) / self._done
        left = self._total - self._done if remaining is None else remaining
        eta = per_window * max(left, 0)
        if self.budget_s is not None:
            eta = min(eta, max(0.0, self.budget_s - (time.monotonic() - self._since)))
        # the count stops one short of the total until the run is over: extra windows never push it past
        self.progress(min(self._done, self._total - 1), self._total, "ETA %s %s" % (_duration(eta), text))

    # -- phases ----------------------------------------------------------
    def calibrate(self, unit: Unit) -> None:
        """Warm the call up, time it, and size the window to at least ``min_window_s``."""
        call = unit.call
        warmup_s = min(0.5, max(0.02, self.min_window_s / 5))
        start, count = time.monotonic(), 0
        while count < 2 or time.monotonic() - start < warmup_s:
            call()
            count += 1
        self._sync()
        target = max(TIMING_MIN_S, self.min_window_s / 10)
        batch, count, elapsed = 1, 0, 0.0
        start = time.monotonic()
        while elapsed < target:
            for _ in range(batch):
                call()
            self._sync()
            count += batch
            batch *= 2
            elapsed = time.monotonic() - start
        unit.call_s = elapsed / count
        unit.calls = max(1, math.ceil(self.min_window_s / unit.call_s))

    def _reference(self, trial: int, remaining: Optional[int] = None) -> None:
        self._guard()
        span = self._aligned_span(self._ref_updates)
        t0, t1 = span or (time.monotonic(), time.monotonic() + self.reference_s)
        time.sleep(max(0.0, t1 - time.monotonic()))
        self._last_end = t1
        self.windows.append(Window("idle", None, trial, t0, t1, "idle", phase="reference", aligned=span is not None))
        self._tick("round %d/%d idle reference" % (trial + 1, self.trials) if remaining is None else
                   "refining, idle reference", remaining)

    def _measure(self, position: int, trial: int, remaining: Optional[int] = None) -> None:
        unit = self.units[position]
        call, calls = unit.call, unit.calls
        self._guard()
        if not unit.whole_model:
            self.push.layer(call.index, call.label, call.op, "begin")
        span = self._aligned_span(self._updates_for(unit))
        slack = self._grid.slack_s if span is not None else 0.0
        every = max(self.meter.sample_period_s / 2, 0.0005) if self.meter.in_process else math.inf
        times: List[float] = []
        self._sync()
        if span is not None:
            time.sleep(max(0.0, span[0] + slack - time.monotonic()))
        first = time.monotonic()
        t0 = first if span is None else span[0]
        stop = None if span is None else span[1] - slack
        next_yield = first + every
        while True:
            start = time.monotonic()
            call()
            now = time.monotonic()
            times.append(now - start)
            if stop is None:
                # a CPU window lasts its length whatever the loop's own overhead; a GPU's counts calls, each
                # timed with a sync at calibration, as launches run ahead of the work
                if (now - first >= self.min_window_s) if self.device.type == "cpu" else len(times) >= calls:
                    break
            elif max(now + max(unit.call_s, times[-1]) if self.device.type == "cpu" else now,
                     first + (len(times) + 1) * unit.call_s) > stop:
                break  # the next call would end past the window's last update (on a GPU: queued work)
            if now >= next_yield:
                time.sleep(YIELD_S)
                next_yield = time.monotonic() + every
        calls = len(times)
        self._sync()
        self._work_end = time.monotonic()
        t1 = self._work_end if span is None else span[1]
        if span is not None:
            self._last_end = t1
            time.sleep(max(0.0, t1 - time.monotonic()))
        if not unit.whole_model:
            self.push.layer(call.index, call.label, call.op, "end")
        kind = "whole" if unit.whole_model else "layer"
        # On a GPU a call's time is its launch, and the queued work runs on through the pauses: the whole
        # window is the layer's.
        self.windows.append(Window(kind, position, trial, t0, t1, call.label, calls,
                                   call_times=times if self.device.type == "cpu" else None,
                                   aligned=span is not None, overran=self._work_end > t1 + slack))
        text = "round %d/%d %s" % (trial + 1, self.trials, call.label) if remaining is None else \
            "refining %s" % call.label
        self._tick(text, remaining)

    def _flush(self, wait: bool = True) -> None:
        """Read every pending window's energy (after a guard) and the new raw samples, then judge them all."""
        if wait:
            self._gap()
            if self._grid is not None and self._grid.known:  # the last update's value must have been read
                time.sleep(max(0.0, self._last_end + self._grid.slack_s + 2 * self.meter.sample_period_s
                               - time.monotonic()))
        self._pull()
        times = self._step.times
        est = self.estimator
        late = max(est.update_interval_s, est.sample_period_s) + est.sample_period_s / 2 + LATE_READ_SLACK_S
        for window in self.windows:
            if window.resolved:
                continue
            if window.call_times:
                window.unattributed_s = window.t1 - window.t0 - typical_busy_s(window.call_times)
                window.call_times = None
            a, b = est.span(window.t0, window.t1)
            if est.method == "robust":
                first, last = bisect.bisect_right(times, a), bisect.bisect_left(times, b)
                window.covered_s = (b - a) if 0 < first and last < len(times) else 0.0  # reads close it
                window.samples = bisect.bisect_left(times, window.t1) - bisect.bisect_right(times, window.t0)
                grid = self._grid
                T = est.update_interval_s
                if window.aligned:  # every update of the window is its own (the grid may be lost since)
                    a, b = window.t0, window.t1
                    updates = [a + k * T for k in range(1, int(round((b - a) / T)) + 1)]
                    window.blocks = update_values(times, self._step.watts, updates, T, grid.slack_s) \
                        if grid.known else []
                    window.covered_s = (b - a) * len(window.blocks) / len(updates)
                    values = window.blocks
                elif grid is not None and grid.known:
                    values = update_values(times, self._step.watts, grid.updates_within(window.t0, window.t1), T,
                                           grid.slack_s)
                    window.covered_s = (b - a) if values else 0.0
                else:
                    values = []
                if values:
                    window.blocks = values  # one block per whole update inside the window
                elif not window.aligned:
                    call_s = (window.t1 - window.t0) / window.calls if window.calls else 0.0
                    start, n = core_blocks(a, b, est.update_interval_s, call_s)
                    window.blocks = self._step.block_means(start, b, n)
            else:
                window.joules, window.samples, window.covered_s = self.meter.energy(a, b)
            window.resolved = True
            first, last = bisect.bisect_right(times, a), bisect.bisect_left(times, b) + 1
            inside = times[max(first - 1, 0):last + 1]
            window.longest_read_gap_s = max((q - p for p, q in zip(inside, inside[1:])), default=0.0)
            # a late read only upsets the integrating estimators' exact edges; robust levels are means of
            # held values, and dropping the windows of a starved sampler would select the calm windows
            window.dropped = window.overran or window.covered_s < COVERAGE_MIN * (b - a) or (
                est.method != "robust" and window.longest_read_gap_s > late)
        self.judge()

    # -- judging ---------------------------------------------------------
    def judge(self) -> None:
        """Levels with bursts left out, local baselines, and which windows are dirty (see the module doc).

        References first: a reference is idle, so any block off its median is
        a burst and the whole reference goes, and one that a burst covered
        whole stands out from the running median of its neighbours.  Then
        each layer window's baseline comes from the clean references around
        it, and its blocks are judged against both its own median and a
        ceiling from the layer's other windows (baseline + the layer's typical
        dynamic power + BLOCK_K spreads), which catches a burst that covered
        the window whole.
        """
        est = self.estimator
        resolved = [w for w in self.windows if w.resolved and not w.dropped]
        for w in resolved:
            w.dirty = ""
        sigma: Dict[Optional[int], float] = {}
        if est.method == "robust":
            deviations: Dict[Optional[int], List[float]] = {}
            for w in resolved:
                centre = statistics.median(w.blocks) if w.blocks else float("nan")
                deviations.setdefault(w.unit, []).extend(m - centre for m in w.blocks or ())
            sigma = {g: max(mad_sigma(d), SIGMA_FLOOR_W) if d else SIGMA_FLOOR_W for g, d in deviations.items()}
            for w in resolved:
                if w.kind == "idle":
                    w.level_w, kept = idle_level(w.blocks or [], sigma[None])
                    w.noise_w = sigma[None] / math.sqrt(kept) if kept else float("nan")
                    if kept < min(MIN_KEPT, len(w.blocks or ())) or not kept:
                        w.dirty = "burst"
        else:
            for w in resolved:
                w.level_w = est.mean_power(w.joules, w.t0, w.t1)
        refs = sorted((w for w in resolved if w.kind == "idle" and not w.dirty), key=lambda w: w.centre)
        _mark_jumps(refs)
        refs = [w for w in refs if not w.dirty]
        centres = [w.centre for w in refs]
        for w in resolved:
            if w.kind == "idle":
                continue
            reach = REF_REACH * max(self._ref_spacing_s, (self.refs_every + 1) * (w.t1 - w.t0))
            w.baseline_w = _baseline(refs, centres, w.centre, reach)
            if not math.isfinite(w.baseline_w):
                w.dirty = "no reference"
        for position in range(len(self.units)):
            mine = [w for w in resolved if w.unit == position and not w.dirty]
            if est.method == "robust":
                self._judge_blocks(mine, sigma.get(position, SIGMA_FLOOR_W))
                mine = [w for w in mine if not w.dirty]
            if len(mine) >= 3:
                powers = [self.energies(w)[1] / w.calls for w in mine]
                centre = statistics.median(powers)
                # the spread of the lower half: a burst that slipped through pulls windows up, so the upper
                # half may hold several of them; and never below the levels' own noise (a small sample's MAD
                # can be tiny by chance)
                noise = statistics.median(w.noise_w * (w.t1 - w.t0) / w.calls for w in mine)
                spread = max(mad_sigma([p - centre for p in powers if p <= centre]), noise)
                for w, p in zip(mine, powers):
                    if abs(p - centre) > LEVEL_K * spread and abs(p - centre) > 1e-12:
                        w.dirty = "level jump"

    def _judge_blocks(self, mine: List[Window], sigma_w: float) -> None:
        """A layer's windows: levels without bursts, under a ceiling from the layer's own typical power."""
        typical = [statistics.median(w.blocks) - w.baseline_w for w in mine if w.blocks]
        ceiling = math.inf
        if len(typical) >= 3:
            # stalls pull windows down and bursts up: the spread of the narrower half is the clean one's (on a
            # slow sensor nearly half the windows may hold a burst, and their half is wide)
            centre = statistics.median(typical)
            spread = min(mad_sigma([d - centre for d in typical if d >= centre]),
                         mad_sigma([d - centre for d in typical if d <= centre]))
            ceiling = centre + BLOCK_K * max(spread, sigma_w)
        for w in mine:
            w.level_w, kept = robust_level(w.blocks or [], sigma_w, w.baseline_w + ceiling)
            w.noise_w = sigma_w / math.sqrt(kept) if kept else float("nan")
            w.joules = w.level_w * (w.t1 - w.t0)
            if not kept or kept < len(w.blocks or ()) / 2:
                w.dirty = "burst"

    def energies(self, w: Window):
        """(total, dynamic) joules of the work in a judged window, against its local baseline."""
        if self.estimator.method == "robust":
            # the level stands for the whole window; the time that is not the layer's is idle time of no layer
            total = w.level_w * (w.t1 - w.t0) - w.baseline_w * w.unattributed_s
            return total, total - w.baseline_w * (w.t1 - w.t0 - w.unattributed_s)
        return self.estimator.window_energy(w.joules, w.t0, w.t1, w.baseline_w, w.unattributed_s)

    def per_call_dynamic(self, position: int):
        """(dynamic joules per call, 95 % CI half-width or None, usable windows) of one unit."""
        mine = [w for w in self.windows if w.unit == position and w.usable]
        mean, half = ratio_ci95([self.energies(w)[1] for w in mine], [w.calls for w in mine])
        return mean, half, len(mine)

    # -- adaptive stopping -------------------------------------------------
    def wanting(self) -> Dict[int, int]:
        """Units that need more windows -> a guess of how many (for the ETA), the neediest first."""
        whole = [p for p, u in enumerate(self.units) if u.whole_model]
        floor = 0.0
        if whole:
            mean = self.per_call_dynamic(whole[0])[0]
            floor = FLOOR_SHARE * abs(mean) if math.isfinite(mean) else 0.0
        taken = [0] * len(self.units)
        for w in self.windows:
            if w.unit is not None:
                taken[w.unit] += 1
        want, need = {}, {}
        for position in range(len(self.units)):
            if taken[position] >= self._cap:
                continue
            mean, half, n = self.per_call_dynamic(position)
            if n < self.trials or half is None:
                want[position], need[position] = max(1, self.trials - n), math.inf
                continue
            goal = self.target_ci * max(abs(mean), floor)
            if half > goal:
                more = n * ((half / goal) ** 2 - 1) if goal > 0 else self._cap
                want[position] = max(1, min(int(math.ceil(more)), self._cap - taken[position]))
                need[position] = half / goal if goal > 0 else math.inf
        return {p: want[p] for p in sorted(want, key=lambda p: -need[p])}

    def run(self) -> None:
        try:
            for unit in self.units:
                self.calibrate(unit)
            self._measuring_since = time.monotonic()
            self._reference(0)
            for trial in range(self.trials):
                order = list(range(len(self.units)))
                self.rng.shuffle(order)
                for n, position in enumerate(order, 1):
                    self._check_time()
                    self._measure(position, trial)
                    if n % self.refs_every == 0 or n == len(order):
                        self._reference(trial)
                self._flush()
            if self.auto_budget:
                self.budget_s = max(AUTO_MIN_S, AUTO_MIN_UPDATES * self.estimator.update_interval_s,
                                    AUTO_REFINE * (time.monotonic() - self._since))
            self._refine()
            self.complete = True
        except _OutOfTime:
            self._flush()
            self.complete = True
        except KeyboardInterrupt:
            self.stopped_by = "interrupted"
        except MeterError as exc:
            self.stopped_by = str(exc)
        if not self.complete:
            self._salvage()
        elif self.progress is not None:
            self.progress(self._total, self._total, "ETA 0s done")

    def _refine(self) -> None:
        """Extra rounds for layers that lost windows to bursts or sensor gaps, or whose CI is still wide."""
        trial = self.trials
        while True:
            want = self.wanting()
            if not want:
                return
            order = list(want)  # the neediest first: a budget that ends the round leaves the others
            wanted = sum(want.values())
            remaining = wanted + self._references(wanted)
            for n, position in enumerate(order, 1):
                self._check_time()
                remaining -= 1
                self._measure(position, trial, remaining)
                if n % self.refs_every == 0 or n == len(order):
                    remaining -= 1
                    self._reference(trial, remaining)
            self._flush()
            trial += 1

    def _salvage(self) -> None:
        """After an interruption: keep the windows whose spans have passed; drop the rest."""
        try:
            self._gap()
            now = time.monotonic()
            self.windows = [w for w in self.windows if w.resolved or self.estimator.span(w.t0, w.t1)[1] < now]
            self._flush(wait=False)
        except MeterError:
            self.windows = [w for w in self.windows if w.resolved]
            self.judge()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return "%dm%02ds" % divmod(seconds, 60) if seconds >= 60 else "%ds" % seconds


def _fit(refs: List[Window], t: float) -> float:
    """Idle power at ``t`` from reference windows: quadratic through 2+2 around t, else linear, else one."""
    if not refs:
        return float("nan")
    if len(refs) == 1:
        return refs[0].level_w
    x = [w.centre - t for w in refs]
    y = [w.level_w for w in refs]
    before = sum(1 for v in x if v < 0)
    degree = 2 if len(refs) >= 4 and 2 <= before <= len(refs) - 2 else 1 if 0 < before < len(refs) else 0
    if degree == 0:
        return y[min(range(len(x)), key=lambda i: abs(x[i]))]
    return float(numpy.polyval(numpy.polyfit(x, y, degree), 0.0))


def _neighbours(refs: List[Window], centres: List[float], t: float) -> List[Window]:
    """Up to two clean references on each side of ``t``."""
    i = bisect.bisect_left(centres, t)
    return refs[max(0, i - 2):i + 2]


def _baseline(refs: List[Window], centres: List[float], t: float, reach_s: float) -> float:
    """Idle at ``t`` from clean references within ``reach_s`` -- on both sides, or NaN (measure again)."""
    near = [w for w in _neighbours(refs, centres, t) if abs(w.centre - t) <= reach_s]
    if not any(w.centre < t for w in near) or not any(w.centre > t for w in near):
        return float("nan")
    return _fit(near, t)


def _mark_jumps(refs: List[Window]) -> None:
    """Mark references that lie > LEVEL_K sigmas above the idle their neighbours give at their time.

    That idle is a robust local fit (LOWESS-style): quadratic through the
    reference and up to three each side, with bursts weighted out -- the
    first weights from the residuals of a low running quantile, then from
    the fit's own (a burst's weight falls to 0, so its fit is its
    neighbours').  A quadratic follows a drifting idle through its peaks
    and troughs, where a median or a line cuts the curve (and would mark a
    trough's references, leaving the layers there a baseline from its rim).
    Nothing lowers an idle board's power: only references above the fit are
    bursts.
    """
    clean = [w for w in refs if not w.dirty]
    if len(clean) < 4:
        return
    levels = [w.level_w for w in clean]
    # the first fit: the second lowest of seven, since bursts only add and may be most of a run of references
    fitted = [sorted(levels[max(0, i - 3):i + 4])[1] for i in range(len(clean))]
    for _ in range(JUMP_ROUNDS):
        residuals = [y - f for y, f in zip(levels, fitted)]
        scale = LOWESS_C * max(mad_sigma(residuals), SIGMA_FLOOR_W)
        weights = [max(0.0, 1 - (r / scale) ** 2) ** 2 for r in residuals]
        fitted = [_local_fit(clean, weights, i) for i in range(len(clean))]
    residuals = [y - f for y, f in zip(levels, fitted)]
    noise = statistics.median(w.noise_w for w in clean) if clean[0].noise_w else 0.0
    spread = max(mad_sigma(residuals), noise, SIGMA_FLOOR_W)
    for i, (w, r) in enumerate(zip(clean, residuals)):
        # a clean reference among bursts can be far from a fit that has few others near it: it is a burst
        # only if it is above the line through the nearest weighted references too
        if r > LEVEL_K * spread and w.level_w - _flank_line(clean, weights, i) > LEVEL_K * spread * math.sqrt(1.5):
            w.dirty = "level jump"


def _flank_line(refs: List[Window], weights: List[float], i: int) -> float:
    """Idle at ``refs[i]`` on the line through the nearest weighted reference each side (at an end: the two
    nearest on the one side); its own level where there are not two."""
    before = list(itertools.islice((j for j in range(i - 1, -1, -1) if weights[j] > 0), 2))
    after = list(itertools.islice((j for j in range(i + 1, len(refs)) if weights[j] > 0), 2))
    pair = [before[0], after[0]] if before and after else before or after
    if len(pair) < 2:
        return refs[i].level_w
    a, b = refs[pair[0]], refs[pair[1]]
    return a.level_w + (b.level_w - a.level_w) * (refs[i].centre - a.centre) / (b.centre - a.centre)


def _local_fit(refs: List[Window], weights: List[float], i: int) -> float:
    """Idle at ``refs[i]`` from it and three references each side, weighted: quadratic with two or more
    others on each side, else linear with two others, else the nearest other weighted level."""
    t = refs[i].centre
    near = [j for j in range(max(0, i - 3), min(len(refs), i + 4)) if weights[j] > 0]
    before = sum(1 for j in near if j < i)
    after = sum(1 for j in near if j > i)
    degree = 2 if min(before, after) >= 2 else 1 if before + after >= 2 else 0
    if degree == 0:
        others = [j for j in near if j != i]
        return refs[min(others, key=lambda j: abs(refs[j].centre - t))].level_w if others else refs[i].level_w
    x = [refs[j].centre - t for j in near]
    y = [refs[j].level_w for j in near]
    root_w = [math.sqrt(weights[j]) for j in near]
    return float(numpy.polyval(numpy.polyfit(x, y, degree, w=root_w), 0.0))


def typical_busy_s(call_times: List[float]) -> float:
    """The layer's share of a CPU window: calls x its typical call, the median call time (the mean if lower).

    The rest of the window -- the loop's own steps, the yields, and the scheduling hiccups that make a few
    calls far longer than the others -- is charged at idle power to no layer.  Median, not mean, for the
    reason timeit and torch.utils.benchmark give: what is slower than typical is other work interfering.
    """
    mean = math.fsum(call_times) / len(call_times)
    return len(call_times) * min(statistics.median(call_times), mean)
