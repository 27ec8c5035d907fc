"""The one thread that owns a power source: samples it, integrates energy, buffers history.

Energy is integrated by :class:`~exporter.integrator.EnergyIntegrator` (the
integration rule is there); this module owns the clock, the thread and the
locks.  A failed read never kills the thread: it counts the error, marks the
sensor down, retries with backoff and does not integrate across the gap (a
held value says nothing about the time the sensor was away); the skipped
time is counted in ``gap_seconds_total``.  A calibration
(:mod:`exporter.calibration`) is applied here, to each reading before it is
integrated, so power, energy and the history are all calibrated; the raw
reading stays in the snapshot.
"""

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from .calibration import Calibration
from .integrator import EnergyIntegrator
from .ringbuffer import RingBuffer
from .sources.base import PowerSource, Reading

log = logging.getLogger(__name__)

DEFAULT_HZ = 100.0  # sample rate for a sensor that does not say how often it updates
MAX_DEFAULT_HZ = 200.0  # ...and the most a sensor's own update rate sets it to
MAX_BACKOFF_S = 1.0
GAP_PERIODS = 5  # a pause longer than this many sample periods is a gap, not an interval
MIN_GAP_S = 0.1  # ...but never shorter than this: a scheduler hiccup is not a sensor fault
HANG_SLACK_S = 0.05  # a read running this much longer than a period is a hung sensor
JITTER_WINDOW = 1000
TURN_LEAD_S = 0.001  # under load the sampler takes its turn this long before it reads (at most period/4)


class WindowError(ValueError):
    """The requested energy window is not (or not yet) inside the buffer."""


@dataclass(frozen=True)
class WindowEnergy:
    start: float
    end: float
    total_joules: float
    rail_joules: Dict[str, float]
    samples: int
    covered_s: float

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    @property
    def mean_watts(self) -> float:
        """Mean power over the time the sensor actually covered."""
        return self.total_joules / self.covered_s if self.covered_s > 0 else float("nan")


@dataclass(frozen=True)
class Sample:
    timestamp: float
    total_watts: float
    rails: Dict[str, float]


@dataclass(frozen=True)
class SamplerSnapshot:
    """Everything a scrape needs, copied under one lock so it is consistent."""

    reading: Optional[Reading]
    up: bool
    samples_total: int
    errors_total: int
    energy_joules: float
    rail_energy_joules: Dict[str, float]
    gap_seconds: float
    sample_interval_s: Optional[float]
    sensor_interval_s: Optional[float]
    jitter_p99_s: Optional[float]
    period_s: float
    last_error: str = ""
    buffer_span_s: float = 0.0
    rails: tuple = field(default_factory=tuple)
    raw_reading: Optional[Reading] = None  # the reading before calibration (the same one without)


class Sampler:
    def __init__(self, source: PowerSource, sample_hz: Optional[float] = None, buffer_s: float = 600.0,
                 calibration: Optional[Calibration] = None):
        """``sample_hz`` None: the sensor's update rate, at most MAX_DEFAULT_HZ, or DEFAULT_HZ when unknown."""
        if sample_hz is not None and not (sample_hz > 0 and math.isfinite(sample_hz)):
            raise ValueError("sample_hz must be a positive number, got %r" % (sample_hz,))
        if not (buffer_s > 0 and math.isfinite(buffer_s)):
            raise ValueError("buffer_s must be a positive number of seconds, got %r" % (buffer_s,))
        self.source = source
        self.calibration = calibration
        if sample_hz is None:
            sample_hz = MAX_DEFAULT_HZ if source.update_interval_s else DEFAULT_HZ
        hz = sample_hz
        if source.update_interval_s:
            # Sampling faster than the sensor produces values only re-reads held values.
            hz = min(hz, 1.0 / source.update_interval_s)
        self.period_s = 1.0 / hz
        self.buffer_s = buffer_s
        self._capacity = int(buffer_s * hz) + 16
        self._max_gap_s = max(GAP_PERIODS * self.period_s, MIN_GAP_S)
        self._lock = threading.Lock()
        self._new_sample = threading.Condition(self._lock)
        self._window_waiters = 0  # energy() calls waiting for a sample: a notify costs even when nobody waits
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._listeners: List[Callable[[float, float, float], None]] = []
        self._buffer: Optional[RingBuffer] = None
        self._integrator: Optional[EnergyIntegrator] = None  # both made at the first reading, which names the rails
        self._reading: Optional[Reading] = None
        self._raw_reading: Optional[Reading] = None
        self._up = False
        self._samples = 0
        self._errors = 0
        self._read_started: Optional[float] = None  # set while source.read() runs
        self._interval_ema: Optional[float] = None
        self._sensor_ema: Optional[float] = None
        self._last_change_t: Optional[float] = None
        self._jitter: deque = deque(maxlen=JITTER_WINDOW)
        self._last_error = ""
        self._ready = threading.Event()
        # Held around each read.  Other threads of the process that run Python hold it too (the daemon's
        # HTTP handlers), so the read's syscalls never hand the GIL to them: a thread that gives up the
        # GIL for a syscall waits to get it back behind every runnable thread, once per file read.
        self.turn = threading.Lock()

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "Sampler":
        self._thread = threading.Thread(target=self._run, name="power-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.source.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def read_running_s(self) -> float:
        """How long the sensor read in progress has been running; 0 between reads."""
        started = self._read_started
        return 0.0 if started is None else max(0.0, time.monotonic() - started)

    def wait_ready(self, timeout: float) -> bool:
        """True once the first good sample is in."""
        return self._ready.wait(timeout)

    def add_listener(self, listener: Callable[[float, float, float], None]) -> None:
        """Call ``listener(start, end, joules)`` for every integrated interval (sampler thread)."""
        self._listeners.append(listener)

    # -- the loop --------------------------------------------------------
    def _take_turn(self) -> Tuple[bool, bool]:
        """(holds the turn, a handler had it): waits half a period at most, then reads without it."""
        if self.turn.acquire(False):
            return True, False
        return self.turn.acquire(timeout=self.period_s / 2), True

    def _run(self) -> None:
        next_t = time.monotonic()
        failures = 0
        lead_s = min(TURN_LEAD_S, self.period_s / 4)
        contended = False
        while not self._stop.is_set():
            early = contended
            if early:
                # A handler held the turn last time: queue for it ahead of the sample instant, so
                # waiting out a handler's burst delays the wait, not the read.
                _sleep_until(next_t - lead_s)
                turn, contended = self._take_turn()
            _sleep_until(next_t)
            if not early:
                turn, contended = self._take_turn()
            woke = time.monotonic()
            self._read_started = woke
            try:
                reading = self.source.read()
            except Exception as exc:  # a sensor fault of any kind must not kill the thread
                if turn:
                    self.turn.release()
                self._read_started = None
                failures += 1
                self._record_failure(exc, first=failures == 1)
                backoff = min(self.period_s * (2 ** min(failures, 16)), MAX_BACKOFF_S)
                self._stop.wait(backoff)
                next_t = time.monotonic()
                continue
            self._read_started = None
            if failures:
                log.info("sensor back after %d failed reads", failures)
                failures = 0
            self._jitter.append(abs(woke - next_t))
            self._ingest(reading)
            if turn:
                self.turn.release()
            next_t += self.period_s
            now = time.monotonic()
            if next_t < now:  # overran (GIL, slow sensor): resume the grid from now
                next_t = now + self.period_s

    def _record_failure(self, exc: Exception, first: bool) -> None:
        message = "%s: %s" % (type(exc).__name__, exc)
        with self._lock:
            self._errors += 1
            self._up = False
            if self._integrator is not None:
                self._integrator.interrupt()
            self._last_error = message
        if first:
            log.warning("sensor read failed (%s); retrying with backoff", message)

    def _ingest(self, raw: Reading) -> None:
        reading = raw if self.calibration is None else self.calibration.apply(raw)
        t = reading.timestamp
        with self._lock:
            integrator, buf = self._integrator, self._buffer
            if integrator is None or buf is None:
                buf = self._buffer = RingBuffer(self._capacity, sorted(reading.rails))
                integrator = self._integrator = EnergyIntegrator(1 + len(buf.rails), self._max_gap_s)
            rails = reading.rails
            watts = [reading.total_watts]
            watts += [rails.get(r, 0.0) for r in buf.rails]
            step = integrator.add(t, watts, reading.energy_joules)
            if step is None:
                return  # the source handed back a reading we already have
            start, joules = step
            span = t - start
            buf.append(t, start, watts, integrator.energy, integrator.covered_s)
            if span > 0:
                self._interval_ema = _ema(self._interval_ema, span)
            previous = self._reading
            if previous is None or reading.total_watts != previous.total_watts:
                if self._last_change_t is not None and span > 0:
                    self._sensor_ema = _ema(self._sensor_ema, t - self._last_change_t)
                self._last_change_t = t
            self._reading = reading
            self._raw_reading = raw
            self._samples += 1
            self._up = True
            if self._window_waiters:
                self._new_sample.notify_all()
        if not self._ready.is_set():
            self._ready.set()
        if span > 0:
            for listener in self._listeners:
                listener(start, t, joules)

    # -- queries ---------------------------------------------------------
    def _stale(self, now: float) -> bool:
        """True when the newest sample no longer stands for the sensor (caller holds the lock).

        A read that hangs (a stuck I2C bus) raises nothing, so it is caught by its age: down once it
        runs a period plus slack, which is within two periods of the fault.  A sampler that is only
        late, starved of CPU by a burst of scrapes, is not a sensor fault: between reads it may fall
        behind by up to the gap limit before the sensor is called down.
        """
        last_t = self._integrator.last_t if self._integrator is not None else None
        if last_t is None or self.read_running_s() > self.period_s + HANG_SLACK_S:
            return True
        return now - last_t > self._max_gap_s

    def state_key(self) -> Tuple[int, int, bool]:
        """Changes whenever a scrape would show something new: a sample, an error, the sensor going stale."""
        with self._lock:
            return self._samples, self._errors, self._up and not self._stale(time.monotonic())

    def snapshot(self) -> SamplerSnapshot:
        with self._lock:
            reading = self._reading
            stale = self._stale(time.monotonic())
            buf, integrator = self._buffer, self._integrator
            rails = buf.rails if buf else ()
            jitter = sorted(self._jitter)
            return SamplerSnapshot(
                reading=reading,
                up=self._up and not stale,
                samples_total=self._samples,
                errors_total=self._errors,
                energy_joules=integrator.energy[0] if integrator else 0.0,
                rail_energy_joules=dict(zip(rails, integrator.energy[1:])) if integrator else {},
                gap_seconds=integrator.gap_s if integrator else 0.0,
                sample_interval_s=self._interval_ema,
                sensor_interval_s=self._sensor_ema,
                jitter_p99_s=jitter[int(0.99 * (len(jitter) - 1))] if jitter else None,
                period_s=self.period_s,
                last_error=self._last_error,
                buffer_span_s=(buf.newest_time() - buf.oldest_time()) if buf and buf.size else 0.0,
                rails=rails,
                raw_reading=self._raw_reading,
            )

    def energy(self, start: float, end: float, wait_s: float = 1.0) -> WindowEnergy:
        """Joules in [start, end] (monotonic seconds), exact for the integrated step function."""
        if not (math.isfinite(start) and math.isfinite(end)) or end < start:
            raise WindowError("window needs finite start <= end, got start=%r end=%r" % (start, end))
        deadline = time.monotonic() + wait_s
        with self._new_sample:
            while self._buffer is None or self._buffer.newest_time() < end:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    newest = self._buffer.newest_time() if self._buffer else None
                    raise WindowError(
                        "window end %.3f is after the newest sample (%s); the sensor may be down"
                        % (end, "none yet" if newest is None else "%.3f" % newest)
                    )
                self._window_waiters += 1
                try:
                    self._new_sample.wait(remaining)
                finally:
                    self._window_waiters -= 1
            buf = self._buffer
            if start < buf.oldest_time():
                raise WindowError(
                    "window start %.3f is before the oldest buffered sample %.3f (buffer holds %.0f s)"
                    % (start, buf.oldest_time(), self.buffer_s)
                )
            e0, c0 = buf.cumulative_at(start)
            e1, c1 = buf.cumulative_at(end)
            count = buf.first_after(end) - buf.first_after(start)
            return WindowEnergy(
                start=start,
                end=end,
                total_joules=e1[0] - e0[0],
                rail_joules={r: e1[n + 1] - e0[n + 1] for n, r in enumerate(buf.rails)},
                samples=count,
                covered_s=c1 - c0,
            )

    def samples(self, since: float, limit: Optional[int] = None) -> List[Sample]:
        """Buffered samples with timestamp > ``since``, oldest first."""
        with self._lock:
            buf = self._buffer
            if buf is None:
                return []
            first = buf.first_after(since)
            if limit is not None:
                first = max(first, buf.size - limit)
            return [Sample(t, w[0], buf.rail_dict(w)) for t, w in buf.rows(first)]


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)  # clock_nanosleep: far finer than Event.wait


def _ema(previous: Optional[float], value: float, alpha: float = 0.05) -> float:
    return value if previous is None else previous + alpha * (value - previous)
