"""The measurement schedule: warm-up, idle baseline, shuffled trials, idle baseline again.

Every window is separated from the next by the estimator's idle guard, and
nothing but sleeping happens inside a guard: window energies are read from
the meter in batches (after each trial, behind a guard of their own), so the
bookkeeping never lands inside a window's span.  The only exception is the
live push: the daemon is told ``begin`` right before a window and ``end``
right after it, so its own per-layer counters line up with the work.
"""

import bisect
import math
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import torch

from .capture import LayerCall
from .estimate import Estimator
from .meter import MeterError, RawSample

COVERAGE_MIN = 0.9  # a window whose span the sensor covered less than this is dropped (sensor gap)
# A read more than an update period (plus half a sample period of jitter) after the previous one may
# have missed a sensor value: the sampler then charges one held value over time it does not describe
# (a starved sampler thread on a busy CPU).  Windows with such a read are measured again.
LATE_READ_SLACK_S = 0.002
RETRY_ROUNDS = 2
# CPython's GIL convoy: a loop of short torch ops (each releases and at once retakes the GIL) can keep
# the sampler thread waiting for the GIL for hundreds of ms.  Windows measured against an in-process
# sampler therefore pause briefly every half sample period (the sampler holds the GIL from the pause
# until its read is done); the pauses are taken out of the call's duration and their idle energy out
# of its total.  Regular reads matter: see the read-jitter note in profiler.estimate.
YIELD_S = 0.00005
TIMING_MIN_S = 0.01


@dataclass
class Unit:
    """A call to measure and the number of calls that fill one window."""

    call: LayerCall
    whole_model: bool = False
    calls: int = 0


@dataclass
class Window:
    kind: str  # "idle", "layer" or "whole"
    unit: Optional[int]  # position in the unit list; None for idle
    trial: int
    t0: float
    t1: float
    label: str = ""  # the layer label, "whole_model" or "idle"
    calls: int = 0
    joules: float = float("nan")
    samples: int = 0
    covered_s: float = 0.0
    phase: str = ""  # "before" / "after" for idle windows
    resolved: bool = False
    dropped: bool = False
    longest_read_gap_s: float = 0.0
    unattributed_s: float = 0.0  # time inside the window that is not the layer's (see typical_busy_s)
    call_times: Optional[List[float]] = None  # each call's own time (CPU), until _flush reads it


Progress = Callable[[int, int, str], None]


class Schedule:
    """Runs the whole measurement; ``run()`` never raises KeyboardInterrupt or MeterError.

    After ``run()``: ``windows`` (resolved ones carry their integral),
    ``samples`` (every raw sample seen), ``complete`` and ``stopped_by``.
    """

    def __init__(self, units: List[Unit], meter: Any, estimator: Estimator, trials: int,
                 min_window_s: float, device: torch.device, push: Any, progress: Optional[Progress],
                 seed: Optional[int] = None):
        self.units = units
        self.meter = meter
        self.estimator = estimator
        self.trials = trials
        self.min_window_s = min_window_s
        self.device = device
        self.push = push
        self.progress = progress
        self.rng = random.Random(seed)
        self.windows: List[Window] = []
        self.samples: List[RawSample] = []
        self.complete = False
        self.stopped_by = ""
        self._done = 0
        self._total = trials * len(units) + 2 * trials
        self._since = time.monotonic()

    # -- helpers ---------------------------------------------------------
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _gap(self) -> None:
        time.sleep(self.estimator.cooldown_s)

    def _tick(self, text: str) -> None:
        self._done += 1
        if self.progress is not None:
            self.progress(self._done, self._total, text)

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
        unit.calls = max(1, math.ceil(self.min_window_s / (elapsed / count)))

    def _idle(self, phase: str) -> None:
        self._gap()
        length = self.min_window_s
        t0 = time.monotonic()
        for trial in range(self.trials):
            t1 = t0 + length
            time.sleep(max(0.0, t1 - time.monotonic()))
            self.windows.append(Window("idle", None, trial, t0, t1, "idle", phase=phase))
            self._tick("idle (%s)" % phase)
            t0 = t1
        self._flush()

    def _measure(self, position: int, trial: int) -> None:
        unit = self.units[position]
        call, calls = unit.call, unit.calls
        self._gap()
        if not unit.whole_model:
            self.push.layer(call.index, call.label, call.op, "begin")
        every = max(self.meter.sample_period_s / 2, 0.0005) if self.meter.in_process else math.inf
        times: List[float] = []
        self._sync()
        t0 = time.monotonic()
        next_yield = t0 + every
        for _ in range(calls):
            start = time.monotonic()
            call()
            now = time.monotonic()
            times.append(now - start)
            if now >= next_yield:
                time.sleep(YIELD_S)
                next_yield = time.monotonic() + every
        self._sync()
        t1 = time.monotonic()
        if not unit.whole_model:
            self.push.layer(call.index, call.label, call.op, "end")
        kind = "whole" if unit.whole_model else "layer"
        # On a GPU a call's time is its launch, and the queued work runs on through the pauses: the whole
        # window is the layer's.
        self.windows.append(Window(kind, position, trial, t0, t1, call.label, calls,
                                   call_times=times if self.device.type == "cpu" else None))
        self._tick("trial %d/%d %s" % (trial + 1, self.trials, call.label))

    def _flush(self, wait: bool = True) -> None:
        """Read every pending window's energy (after a guard) and the new raw samples."""
        if wait:
            self._gap()
        fresh = self.meter.samples(self.samples[-1].t if self.samples else self._since)
        self.samples.extend(fresh)
        times = [s.t for s in self.samples]
        est = self.estimator
        late = max(est.update_interval_s, est.sample_period_s) + est.sample_period_s / 2 + LATE_READ_SLACK_S
        for window in self.windows:
            if window.resolved:
                continue
            if window.call_times:
                window.unattributed_s = window.t1 - window.t0 - typical_busy_s(window.call_times)
                window.call_times = None
            a, b = self.estimator.span(window.t0, window.t1)
            reading = self.meter.energy(a, b)
            window.joules, window.samples, window.covered_s = reading
            window.resolved = True
            first, last = bisect.bisect_right(times, a), bisect.bisect_left(times, b) + 1
            inside = times[max(first - 1, 0):last + 1]
            window.longest_read_gap_s = max((q - p for p, q in zip(inside, inside[1:])), default=0.0)
            window.dropped = reading.covered_s < COVERAGE_MIN * (b - a) or window.longest_read_gap_s > late

    def run(self) -> None:
        try:
            for unit in self.units:
                self.calibrate(unit)
            self._idle("before")
            for trial in range(self.trials):
                order = list(range(len(self.units)))
                self.rng.shuffle(order)
                for position in order:
                    self._measure(position, trial)
                self._flush()
            for _ in range(RETRY_ROUNDS):
                self._retry_dropped()
            self._idle("after")
            self.complete = True
        except KeyboardInterrupt:
            self.stopped_by = "interrupted"
        except MeterError as exc:
            self.stopped_by = str(exc)
        if not self.complete:
            self._salvage()

    def _retry_dropped(self) -> None:
        """An extra round for units that lost windows to a sensor gap or late reads (a starved sampler)."""
        good = [0] * len(self.units)
        for w in self.windows:
            if w.unit is not None and w.resolved and not w.dropped:
                good[w.unit] += 1
        retry = [p for p, n in enumerate(good) if n < self.trials]
        if not retry:
            return
        self._total += len(retry)
        self.rng.shuffle(retry)
        for position in retry:
            self._measure(position, self.trials)
        self._flush()

    def _salvage(self) -> None:
        """After an interruption: keep the windows whose spans have passed; drop the rest."""
        try:
            self._gap()
            now = time.monotonic()
            self.windows = [w for w in self.windows if w.resolved or self.estimator.span(w.t0, w.t1)[1] < now]
            self._flush(wait=False)
        except MeterError:
            self.windows = [w for w in self.windows if w.resolved]


def typical_busy_s(call_times: List[float]) -> float:
    """The layer's share of a CPU window: calls x its typical call, the median call time (the mean if lower).

    The rest of the window -- the loop's own steps, the yields, and the scheduling hiccups that make a few
    calls far longer than the others -- is charged at idle power to no layer.  Median, not mean, for the
    reason timeit and torch.utils.benchmark give: what is slower than typical is other work interfering.
    """
    mean = math.fsum(call_times) / len(call_times)
    return len(call_times) * min(statistics.median(call_times), mean)
