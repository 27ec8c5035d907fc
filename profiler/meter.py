"""Where window energy comes from: an in-process sampler, or a running exporter's window API.

With ``--exporter`` the daemon stays the only reader of the sensor (two
readers of one INA3221 or jetson-stats socket disturb each other); the
profiler asks it for the integral over each window and for the raw samples.
Both sides stamp with ``time.monotonic()``, which is one clock for the host.
"""

import logging
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from exporter import calibration as calibration_file
from exporter import contract
from exporter.sampler import Sampler, WindowError
from exporter.sources import PowerSource, SourceUnavailable, open_source

from .client import DaemonClient, DaemonError
from .errors import ProfilerError, one_line

log = logging.getLogger(__name__)

MAX_SAMPLE_HZ = 1000.0
UNKNOWN_INTERVAL_HZ = 200.0
# The Sampler never polls faster than the source's update_interval_s.  A held value read at exactly the
# update rate misses an update whenever read jitter straddles one, and each miss charges up to one
# update period to the wrong side of a window edge -- the very error the settled estimator removes.
# So the sampler is shown a source that updates OVERSAMPLE times faster than the real one -- and, for a slow
# sensor, at least every GRID_READ_S: the reads where the value changed bound the sensor's update instants
# (profiler.estimate.UpdateGrid) only as closely as reads follow each other, and windows on that grid lose
# twice that uncertainty (a 1 s sensor read 3 times a second: a third of every window).
OVERSAMPLE = 3
GRID_READ_S = 0.005
READY_TIMEOUT_S = 5.0
HTTP_TIMEOUT_S = 5.0


class MeterError(ProfilerError):
    """A window's energy could not be read (sensor down, window outside the buffer, daemon gone)."""


class RawSample(NamedTuple):
    t: float
    total_w: float
    rails: Dict[str, float]


class WindowReading(NamedTuple):
    joules: float
    samples: int
    covered_s: float


class PolledSource(PowerSource):
    """What the profiler's own sampler reads: the real source, advertised as updating OVERSAMPLE x faster
    (and at least every GRID_READ_S).

    Also lets any object with ``read() -> Reading`` feed the sampler.
    ``owned``: close the wrapped source with the sampler (True when the
    profiler opened it from a spec; a caller's object is left alone).
    """

    def __init__(self, obj: Any, owned: bool):
        self._obj = obj
        self._owned = owned
        self.name = str(getattr(obj, "name", type(obj).__name__))
        self.board = str(getattr(obj, "board", "unknown"))
        self.simulated = bool(getattr(obj, "simulated", False))
        interval = getattr(obj, "update_interval_s", None)
        self.sensor_interval_s = float(interval) if interval else None
        self.update_interval_s = (min(self.sensor_interval_s / OVERSAMPLE, GRID_READ_S)
                                  if self.sensor_interval_s else None)

    def read(self):
        return self._obj.read()

    def close(self) -> None:
        if self._owned:
            self._obj.close()

    def describe(self) -> Dict[str, str]:
        describe = getattr(self._obj, "describe", None)
        return dict(describe()) if callable(describe) else super().describe()


class InProcessMeter:
    """Owns a Sampler on the given source (a spec string or an object with ``read()``).

    ``calibration``: a :class:`exporter.calibration.Calibration` the sampler applies, as the daemon does.
    """

    in_process = True

    def __init__(self, source: Any = "auto", calibration: Optional[calibration_file.Calibration] = None,
                 **options: Any):
        if isinstance(source, str):
            try:
                opened = PolledSource(open_source(source, **options), owned=True)
            except (SourceUnavailable, ValueError) as exc:
                raise ProfilerError("power source %s: %s" % (source, one_line(exc))) from None
        elif callable(getattr(source, "read", None)):
            opened = PolledSource(source, owned=False)
        else:
            raise ProfilerError("source must be a spec string or an object with read(), got %s"
                                % type(source).__name__)
        interval = opened.sensor_interval_s
        hz = MAX_SAMPLE_HZ if interval else UNKNOWN_INTERVAL_HZ
        self.sampler = Sampler(opened, sample_hz=hz, buffer_s=3600.0, calibration=calibration).start()
        if not self.sampler.wait_ready(READY_TIMEOUT_S):
            reason = self.sampler.snapshot().last_error or "no reading within %.0f s" % READY_TIMEOUT_S
            self.sampler.stop()
            raise ProfilerError("power source %s gives no readings: %s" % (opened.name, reason))
        if calibration is not None:
            try:
                calibration.check_rails(self.sampler.snapshot().rails)
            except calibration_file.CalibrationError as exc:
                self.sampler.stop()
                raise ProfilerError(str(exc)) from None
        self.sample_period_s = self.sampler.period_s
        self.update_interval_s = interval or self.sample_period_s
        self.info = dict(opened.describe())
        self.info["simulated"] = bool(opened.simulated)
        self.info["via"] = "in-process sampler"
        self.info["calibration"] = calibration.describe() if calibration is not None else None

    def energy(self, start: float, end: float) -> WindowReading:
        try:
            window = self.sampler.energy(start, end, wait_s=2 * self.sample_period_s + 1.0)
        except WindowError as exc:
            raise MeterError(one_line(exc)) from None
        return WindowReading(window.total_joules, window.samples, window.covered_s)

    def samples(self, since: float) -> List[RawSample]:
        return [RawSample(s.timestamp, s.total_watts, dict(s.rails)) for s in self.sampler.samples(since)]

    def close(self) -> None:
        self.sampler.stop()


class ExporterMeter:
    """Reads windows and samples from a running jetson-power-exporter through ``client``."""

    in_process = False

    def __init__(self, client: DaemonClient):
        self.client = client
        info = self._get(contract.SOURCE_PATH, {})
        self.sample_period_s = float(info.get("sample_period_s") or 0.01)
        interval = info.get("update_interval_s")
        self.update_interval_s = interval or self.sample_period_s
        self.info = {k: v for k, v in info.items() if k not in ("sample_period_s",)}
        self.info["via"] = "exporter %s" % client.url

    def _get(self, path: str, query: Dict[str, str]) -> Dict[str, Any]:
        try:
            return self.client.get(path, query, timeout=HTTP_TIMEOUT_S)
        except DaemonError as exc:
            raise MeterError(str(exc)) from None

    def energy(self, start: float, end: float) -> WindowReading:
        last: Optional[MeterError] = None
        for _ in range(3):  # the daemon may not have sampled past ``end`` yet
            try:
                data = self._get(contract.ENERGY_PATH, {"start": repr(start), "end": repr(end)})
            except MeterError as exc:
                last = exc
                time.sleep(0.2)
                continue
            try:
                return WindowReading(*contract.energy_answer(data))
            except contract.ContractError as exc:
                raise MeterError("exporter %s: %s" % (contract.ENERGY_PATH, exc)) from None
        assert last is not None
        raise last

    def samples(self, since: float) -> List[RawSample]:
        out: List[RawSample] = []
        while True:
            rows = self._get(contract.SAMPLES_PATH, {"since": repr(since)}).get("samples", [])
            if not rows:
                return out
            out.extend(RawSample(float(r["t"]), float(r["total_w"]), dict(r.get("rails", {}))) for r in rows)
            since = out[-1].t

    def close(self) -> None:
        """Nothing to release: the daemon keeps sampling."""


def open_meter(source: Any, client: Optional[DaemonClient], warn, **options: Any) -> Tuple[Any, bool]:
    """(meter, daemon answered).  A daemon that does not answer costs one warning, not the run."""
    if client is not None:
        try:
            return ExporterMeter(client), True
        except MeterError as exc:
            warn("warning: %s; measuring in-process with source %s and not pushing live results"
                 % (exc, source if isinstance(source, str) else type(source).__name__))
    return InProcessMeter(source, **options), False
