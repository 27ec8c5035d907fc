"""Power from NVIDIA's ``tegrastats``: a live child process, or a saved log replayed.

tegrastats is on every Jetson image and needs no extra package, so it is the
fallback when neither jtop nor the sysfs monitors can be read.  Its power
fields changed with every JetPack generation (``POM_5V_IN 933/933`` in mW on
JetPack 4, ``VDD_IN 5072mW/5072mW`` from JetPack 5, three values per rail on
JetPack 7.2); :func:`parse_line` reads all of them and always takes the first
value, the instantaneous one, because the others are running averages/peaks.

``make_source(None)`` runs ``tegrastats --interval MS`` and serves its latest line;
``make_source("run.log")`` replays a ``tegrastats --logfile`` recording in real time.
"""

import datetime
import logging
import math
import re
import shutil
import subprocess
import threading
import time
from typing import Dict, List, Optional, Tuple, Union

from .base import PowerSource, Reading, SensorReadError, SourceUnavailable, TraceEnded
from .rails import NOT_CONNECTED, total_of

log = logging.getLogger(__name__)

NO_POWER_FIELDS = "no power fields in tegrastats line (this board has no power monitor?)"
NOT_TEGRASTATS = "not a tegrastats line"

DEFAULT_INTERVAL_S = 0.1  # tegrastats' own default is 1 s; power wants finer steps
DEFAULT_REPLAY_INTERVAL_S = 1.0  # tegrastats --logfile default when the log carries no dates
MAX_RESTART_BACKOFF_S = 30.0

# ``NAME cur/avg`` or ``NAME cur/avg/peak``, bare mW (JetPack 4) or with ``mW``.
# Values are capped at 9 digits (1 MW) so a float never overflows; a following
# unit other than mW (``RAM 3168/6851MB``) or ``%``/``@`` fields do not match.
_NUMBER = r"\d{1,9}(?:\.\d{1,6})?"
_RAIL = re.compile(
    r"(?<!\S)([A-Za-z][A-Za-z0-9_]*)[ \t]+(%s)(?:mW)?(?:/%s(?:mW)?){1,2}(?!\S)" % (_NUMBER, _NUMBER)
)
# Memory fields that share the ``used/total`` shape when printed without a unit.
_NOT_RAILS = frozenset({"RAM", "SWAP", "IRAM"})

# Every tegrastats line has the RAM field (first, after the date of JetPack 5+ logs); a line with
# neither it nor a rail (``date``, ``NV Power Mode: MAXN``, a shell prompt) is not tegrastats output.
_RAM_FIELD = re.compile(r"(?<!\S)RAM \d+/\d+[kMG]?B(?!\S)")

# ``tegrastats --logfile`` on JetPack 5+ starts each line with ``MM-DD-YYYY HH:MM:SS``.
_DATE = re.compile(r"^\s*(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\s")

# Rails that only one module family reports, first match wins (Thor also has
# VIN_SYS_5V0, so it comes before AGX Orin; L4T 28 TX2 has TX1's rails too).
_BOARD_SIGNATURES = (
    ({"VIN"}, "jetson-thor"),
    ({"VDD_CPU_SOC_MSS"}, "jetson-thor"),
    ({"VDD_GPU_SOC", "VDD_CPU_CV"}, "jetson-agx-orin"),
    ({"VIN_SYS_5V0"}, "jetson-agx-orin"),
    ({"VDDRQ"}, "jetson-agx-xavier"),
    ({"SYS5V"}, "jetson-agx-xavier"),
    ({"POM_5V_IN"}, "jetson-nano"),
    ({"VDD_SYS_GPU"}, "jetson-tx2"),
    ({"VDD_4V0_WIFI"}, "jetson-tx2"),
    ({"VDD_WIFI"}, "jetson-tx2"),
    ({"VDD_CPU_GPU"}, "jetson-tx2-nx"),
    ({"VDD_CPU_GPU_CV"}, "jetson-xavier-nx/orin-nx/orin-nano"),
    ({"VDD_IN", "VDD_CPU", "VDD_GPU"}, "jetson-tx1"),
)


class NotTegrastatsLine(ValueError):
    """The line is something else that landed in the log or the pipe: skipped, not an error."""


def parse_line(line: str) -> Tuple[float, Dict[str, float]]:
    """``(total_watts, {rail: watts})`` from one tegrastats line of any JetPack generation.

    Unconnected ``NC`` channels are dropped; the total follows
    :func:`exporter.sources.rails.total_of`.  A tegrastats line without power
    fields raises ValueError: a board without a monitor must not read as 0 W.
    Any other line raises :class:`NotTegrastatsLine`.
    """
    rails: Dict[str, float] = {}
    for match in _RAIL.finditer(line):
        name = match.group(1)
        if name.upper() in _NOT_RAILS or name.upper() in NOT_CONNECTED:
            continue
        rails[name] = float(match.group(2)) / 1000.0
    if not rails:
        if _RAM_FIELD.search(line) is None:
            raise NotTegrastatsLine(NOT_TEGRASTATS)
        raise ValueError(NO_POWER_FIELDS)
    return total_of(rails), rails


def board_from_rails(rails: Dict[str, float]) -> str:
    """The module family the rail names betray, or ``unknown``."""
    names = {name.upper() for name in rails}
    for signature, board in _BOARD_SIGNATURES:
        if signature <= names:
            return "%s (from tegrastats rails)" % board
    return "unknown"


def _parse_date(line: str) -> Optional[datetime.datetime]:
    match = _DATE.match(line)
    if match is None:
        return None
    try:
        return datetime.datetime.strptime(match.group(1), "%m-%d-%Y %H:%M:%S")
    except ValueError:
        return None


class _Child:
    """One tegrastats process and what its reader thread has seen so far."""

    def __init__(self, proc: "subprocess.Popen") -> None:
        self.proc = proc
        self.last_line_at = time.monotonic()  # the start, until it prints
        self.latest: Optional[Union[Reading, str]] = None
        self.last_text = ""  # last line that was not a reading, for error messages
        self.bad_lines = 0  # lines without power since the last reading
        self.last_skipped = ""  # last line that was not tegrastats output
        self.returncode: Optional[int] = None
        self.thread: Optional[threading.Thread] = None


class LiveTegrastats(PowerSource):
    """A ``tegrastats --interval MS`` child; :meth:`read` serves its latest line.

    tegrastats blocks between lines, so a reader thread consumes them and
    stamps each with the monotonic time it arrived: that, not the moment the
    sampler asks, is when the value was measured.
    """

    name = "tegrastats"

    def __init__(self, executable: str, interval_s: float, first_line_timeout_s: float,
                 restart_backoff_s: float) -> None:
        interval_ms = max(1, int(round(interval_s * 1000)))
        self.update_interval_s = interval_ms / 1000.0
        self._command = [executable, "--interval", str(interval_ms)]
        # A tegrastats that stops printing is as dead as one that exited.
        self._stale_after_s = max(2.0, 10 * self.update_interval_s)
        self._initial_backoff_s = restart_backoff_s
        self._backoff_s = restart_backoff_s
        self._restart_at = 0.0
        self._last_exit = ""
        self._closed = False
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._child: Optional[_Child] = None
        self.skipped_lines = 0  # over every child: lines that were not tegrastats output
        with self._lock:
            try:
                self._spawn()
            except SensorReadError as exc:
                raise SourceUnavailable(str(exc)) from exc
        self._await_first_line(first_line_timeout_s)

    def _spawn(self) -> None:
        """Start a child and its reader thread; caller holds the lock."""
        try:
            proc = subprocess.Popen(
                self._command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # its complaints end up in our error messages
                universal_newlines=True,
                errors="replace",
                bufsize=1,
            )
        except OSError as exc:
            raise SensorReadError("cannot run %s: %s" % (self._command[0], exc)) from exc
        child = _Child(proc)
        child.thread = threading.Thread(target=self._pump, args=(child,), name="tegrastats-reader", daemon=True)
        self._child = child
        child.thread.start()

    def _pump(self, child: _Child) -> None:
        assert child.proc.stdout is not None
        for text in child.proc.stdout:
            arrived = time.monotonic()
            try:
                total, rails = parse_line(text)
                update: Union[Reading, str] = Reading(timestamp=arrived, total_watts=total, rails=rails)
            except NotTegrastatsLine:
                self._skip(child, text.strip()[:200])
                continue
            except ValueError as exc:
                update = "%s: %r" % (exc, text.strip()[:200])
            with self._lock:
                child.latest = update
                child.last_line_at = arrived
                if isinstance(update, Reading):
                    child.bad_lines = 0
                    self._backoff_s = self._initial_backoff_s
                    if self.board == "unknown":
                        self.board = board_from_rails(update.rails)
                else:
                    child.bad_lines += 1
                    child.last_text = text.strip()[:200]
                self._changed.notify_all()
        code = child.proc.wait()
        with self._lock:
            child.returncode = code
            self._changed.notify_all()

    def _skip(self, child: _Child, text: str) -> None:
        with self._lock:
            child.last_skipped = text
            self.skipped_lines += 1
            count = self.skipped_lines
        log.info("tegrastats: skipped a line that is not tegrastats output (%d so far): %r", count, text)

    def _await_first_line(self, timeout_s: float) -> None:
        """Turn a tegrastats that cannot deliver power here into SourceUnavailable.

        A warning line or two before the first reading is tolerated; a run of
        lines without power (a board with no monitor) is not.
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            child = self._child
            assert child is not None
            while not isinstance(child.latest, Reading) and child.returncode is None and child.bad_lines < 3:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            latest, code, skipped = child.latest, child.returncode, self.skipped_lines
            last_text = child.last_text or child.last_skipped
        if isinstance(latest, Reading):
            return
        self.close()
        if code is not None:
            raise SourceUnavailable(_exit_message(code, last_text))
        if isinstance(latest, str):
            raise SourceUnavailable(latest)
        if skipped:
            raise SourceUnavailable("tegrastats printed no tegrastats line within %g s, only %d other lines (last: %r)"
                                    % (timeout_s, skipped, child.last_skipped))
        raise SourceUnavailable("tegrastats printed no line within %g s" % timeout_s)

    def read(self) -> Reading:
        now = time.monotonic()
        with self._lock:
            if self._closed:
                raise SensorReadError("tegrastats source is closed")
            if self._child is None:
                if now < self._restart_at:
                    raise SensorReadError("%s; restarting in %.1f s" % (self._last_exit, self._restart_at - now))
                try:
                    self._spawn()
                except SensorReadError:
                    self._schedule_restart(now)
                    raise
            child = self._child
            assert child is not None
            latest, code = child.latest, child.returncode
            if code is not None:
                self._child = None
                exit_message = self._last_exit = _exit_message(code, child.last_text)
                self._schedule_restart(now)
        if code is not None:
            _reap(child)
            raise SensorReadError(exit_message)
        silent_s = now - child.last_line_at
        if silent_s > self._stale_after_s:
            child.proc.kill()  # a hung tegrastats: the next read sees it exit and restarts it
            raise SensorReadError("tegrastats printed no line for %.1f s; killed it" % silent_s)
        if latest is None:
            raise SensorReadError("waiting for tegrastats' first line")
        if isinstance(latest, str):
            raise SensorReadError(latest)
        return latest

    def _schedule_restart(self, now: float) -> None:
        self._restart_at = now + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, MAX_RESTART_BACKOFF_S)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
        if child is None:
            return
        if child.proc.poll() is None:
            child.proc.terminate()
            try:
                child.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        _reap(child)

    def describe(self) -> Dict[str, str]:
        facts = super().describe()
        facts["skipped_lines"] = str(self.skipped_lines)
        return facts


def _exit_message(code: int, last_text: str) -> str:
    message = "tegrastats exited with code %d" % code
    return "%s: %s" % (message, last_text) if last_text else message


def _reap(child: _Child) -> None:
    """Join the reader thread and close the pipe of a child that has exited."""
    if child.thread is not None:
        child.thread.join(timeout=2.0)
    if child.proc.stdout is not None:
        child.proc.stdout.close()


class ReplayedTegrastats(PowerSource):
    """A ``tegrastats --logfile`` recording played back in real time from make_source().

    Line k is served from ``t0 + k * interval`` on, stamped with that instant,
    so the sampler integrates the recording exactly as it was measured.
    """

    name = "tegrastats"
    simulated = True

    def __init__(self, path: str, interval_s: Optional[float]) -> None:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = [line.strip() for line in handle]
        except OSError as exc:
            raise SourceUnavailable("cannot read tegrastats log %s: %s" % (path, exc)) from exc
        if not any(lines):
            raise SourceUnavailable("tegrastats log %s has no lines" % path)
        self.path = path
        self._entries: List[Union[Tuple[float, Dict[str, float]], str]] = []
        kept: List[str] = []  # the tegrastats lines: each is one step of the recording
        skipped: List[str] = []
        for line in lines:
            try:
                self._entries.append(parse_line(line))
            except NotTegrastatsLine:
                skipped.append(line)
                continue
            except ValueError as exc:
                self._entries.append("%s (%s)" % (exc, path))
            kept.append(line)
        self.skipped_lines = len(skipped)
        if skipped:
            log.info("tegrastats log %s: skipped %d lines that are not tegrastats output (first: %r)",
                     path, len(skipped), skipped[0][:200])
        if not kept:
            raise SourceUnavailable("tegrastats log %s has no tegrastats lines (%d other lines, first: %r)"
                                    % (path, len(skipped), skipped[0][:200]))
        first = next((e for e in self._entries if not isinstance(e, str)), None)
        if first is None:
            raise SourceUnavailable("%s: %s" % (NO_POWER_FIELDS, path))
        self.board = board_from_rails(first[1])
        self.update_interval_s = _replay_interval(kept, interval_s)
        self._t0 = time.monotonic()

    def read(self) -> Reading:
        index = int((time.monotonic() - self._t0) / self.update_interval_s)
        if index >= len(self._entries):
            raise TraceEnded("tegrastats log %s ended after %d lines" % (self.path, len(self._entries)))
        entry = self._entries[index]
        if isinstance(entry, str):
            raise SensorReadError(entry)
        total, rails = entry
        return Reading(timestamp=self._t0 + index * self.update_interval_s, total_watts=total, rails=dict(rails))

    def describe(self) -> Dict[str, str]:
        facts = super().describe()
        facts["replay_file"] = self.path
        facts["skipped_lines"] = str(self.skipped_lines)
        return facts


def _replay_interval(lines: List[str], interval_s: Optional[float]) -> float:
    """Seconds between lines: the log's own dates win, as they say how it was recorded.

    Dates have 1 s resolution, so the mean spacing over the whole log is used.
    """
    first, last = _parse_date(lines[0]), _parse_date(lines[-1])
    if first is not None and last is not None and all(_DATE.match(line) for line in lines):
        span = (last - first).total_seconds()
        if span > 0:
            return span / (len(lines) - 1)
    if interval_s is not None and interval_s > 0 and math.isfinite(interval_s):
        return float(interval_s)
    return DEFAULT_REPLAY_INTERVAL_S


def make_source(arg: Optional[str], interval_s: Optional[float] = None, **options) -> PowerSource:
    """``tegrastats`` (live child process) or ``tegrastats:PATH`` (replay a saved log).

    Options: ``interval_s`` (live: the ``--interval`` asked of tegrastats,
    default 0.1 s; replay: used only when the log has no dates, default 1 s),
    ``restart_backoff_s`` (first wait before restarting a dead tegrastats,
    doubling up to 30 s), ``first_line_timeout_s``.  Others are ignored.
    """
    if arg:
        return ReplayedTegrastats(arg, interval_s)
    executable = shutil.which("tegrastats")
    if executable is None:
        raise SourceUnavailable("tegrastats not found on PATH")
    interval = DEFAULT_INTERVAL_S if interval_s is None else float(interval_s)
    if not (interval > 0 and math.isfinite(interval)):
        raise ValueError("interval_s must be a positive number of seconds, not %r" % interval_s)
    return LiveTegrastats(
        executable,
        interval,
        first_line_timeout_s=float(options.get("first_line_timeout_s", max(5.0, 3 * interval))),
        restart_backoff_s=float(options.get("restart_backoff_s", 1.0)),
    )
