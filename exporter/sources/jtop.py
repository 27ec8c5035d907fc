"""Power from the jetson-stats service (``jtop``), read through its own client.

The service samples every INA3221/INA238 channel and publishes milliwatts,
millivolts and milliamperes on a Unix socket; this source converts them to
SI units.  Facts that shape the code:

* The service runs at the rate asked for by its FIRST client; later clients
  get that rate.  We ask for ``interval_s`` (default 0.5 s: each service tick
  also scans CPUs, memory and processes, so faster ticks cost the board CPU
  time; use the ``hwmon`` source for fast sampling) and report the rate in
  force as ``update_interval_s``.
* The client wakes on a shared event and, after a timeout, re-delivers the
  last sample; the sample's ``uptime`` tells a repeat from new data.
* read() hands out each sample once, stamped when the client delivered it.
  With nothing new within 1.5 intervals it returns the last sample again,
  same timestamp; after 4 intervals + 1 s without one, or when the client
  loses the service, it raises SensorReadError and a later read reconnects
  (in a helper thread, so no read waits much longer than one interval).
* jtop's ``avg`` fields are a running (new + old) / 2, not a mean: unused.
* Importing jtop forces multiprocessing's start method to ``fork`` for the
  whole process; we put the previous setting back.

jetson-stats is AGPL: it is imported, never copied.
"""

import functools
import importlib.util
import logging
import multiprocessing
import os
import threading
from typing import Any, Dict, Optional

from .base import PowerSource, Reading, SensorReadError, SourceUnavailable, now

log = logging.getLogger(__name__)

# Where jetson-stats 4.x-7.x puts the service socket (jtop.service.JTOP_PIPE).
SOCKET_PATH = "/run/jtop.sock"
DEFAULT_INTERVAL_S = 0.5
# /proc/uptime, the freshness marker, has 10 ms resolution.
MIN_INTERVAL_S = 0.05
# read() waits this many intervals for a new sample before repeating the last.
READ_WAIT_INTERVALS = 1.5
# No new sample for this many intervals (plus a second): the service is stuck.
STALE_INTERVALS = 4
# Least time between two reconnection attempts (each builds a jtop client).
RECONNECT_GAP_S = 1.0
# make_source() gives up when the service has not answered by then.
OPEN_TIMEOUT_S = 5.0


def _load_client_class():
    """The ``jtop`` client class, without leaving its multiprocessing side effect behind."""
    previous = multiprocessing.get_start_method(allow_none=True)
    try:
        from jtop import jtop as client_class
    except ImportError as exc:
        raise SourceUnavailable("cannot import jetson-stats (%s): reinstall the jtop extra" % exc) from exc
    finally:
        multiprocessing.set_start_method(previous, force=True)
    return client_class


def _describe_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def _board_name(hardware: Dict[str, Any]) -> str:
    """Jetson device-tree model or module name; DMI product name elsewhere."""
    for key in ("Model", "Module", "Product name"):
        value = hardware.get(key)
        if value:
            return str(value)
    return "unknown"


def _to_reading(power: Dict[str, Any], stamp: float) -> Optional[Reading]:
    """Convert ``jetson.power`` (mW, mV, mA) to a Reading; None when it has no monitors.

    jtop moves the board-input channel (VDD_IN, POM_5V_IN, VIN) out of
    ``rail`` into ``tot``; it is put back among the rails so they match what
    the monitor exposes.  Without such a channel ``tot`` is jtop's sum of rails.
    """
    total = power.get("tot")
    if not total:
        return None
    channels = dict(power.get("rail") or {})
    if total.get("name"):
        channels[total["name"]] = total
    rails, volts, amperes = {}, {}, {}
    for name, values in channels.items():
        if not values.get("online", True):
            continue
        rails[name] = values["power"] / 1000.0
        if "volt" in values:
            volts[name] = values["volt"] / 1000.0
        if "curr" in values:
            amperes[name] = values["curr"] / 1000.0
    return Reading(stamp, total["power"] / 1000.0, rails, volts, amperes)


class JtopSource(PowerSource):
    """Readings pushed by the jtop client thread, handed out once each.

    Connecting runs in a helper thread: the client's handshake has no
    timeout, and a hung service must not hang the sampler.  Every client
    gets a token; callbacks from a client that was dropped are ignored.
    """

    name = "jtop"

    def __init__(self, client_class, interval_s: float) -> None:
        self._client_class = client_class
        self._requested_s = interval_s
        self.update_interval_s = interval_s
        self._cond = threading.Condition()
        self._client = None  # type: Any
        self._token = 0
        self._closed = False
        self._connector = None  # type: Optional[threading.Thread]
        self._connect_error = None  # type: Optional[str]
        self._next_attempt = 0.0
        self._latest = None  # type: Optional[Reading]
        self._latest_uptime = None  # type: Any
        self._seq = 0
        self._returned_seq = 0
        self._begin_connect()
        self._connector.join(OPEN_TIMEOUT_S)
        client = self._client
        if client is None:
            self.close()
            raise SensorReadError(
                self._connect_error or "the jtop service did not answer within %g s" % OPEN_TIMEOUT_S
            )
        if self._latest is None:
            self.close()
            raise SensorReadError("the jtop service reports no power monitor on this board")
        self.board = _board_name(client.board.get("hardware", {}))

    def _begin_connect(self) -> None:
        with self._cond:
            self._token += 1
            token = self._token
            self._connect_error = None
        self._next_attempt = now() + RECONNECT_GAP_S
        self._connector = threading.Thread(
            target=self._connect, args=(token,), name="jtop-connect", daemon=True
        )
        self._connector.start()

    def _connect(self, token: int) -> None:
        """Connector thread: start a client; publish it unless the source moved on meanwhile."""
        client = self._client_class(interval=self._requested_s)
        client.attach(functools.partial(self._on_data, token))
        try:
            client.start()
        except Exception as exc:  # the client raises JtopException, OSError, EOFError, queue.Empty
            client.close()
            with self._cond:
                self._connect_error = "cannot connect to the jtop service: %s" % _describe_error(exc)
            return
        interval = float(client.interval)
        with self._cond:
            current = token == self._token and not self._closed
            if current:
                self._client = client
                self.update_interval_s = interval
        if not current:
            client.close()
            return
        if abs(interval - self._requested_s) > 1e-6:
            log.warning(
                "jtop service updates every %g s, not the requested %g s "
                "(another client started it first)", interval, self._requested_s,
            )

    def _on_data(self, token: int, jetson) -> None:
        """Client-thread callback: keep a sample only if the service took a new one."""
        stamp = now()
        uptime = jetson.uptime
        reading = _to_reading(jetson.power, stamp)
        with self._cond:
            if token != self._token or reading is None or uptime == self._latest_uptime:
                return
            self._latest = reading
            self._latest_uptime = uptime
            self._seq += 1
            self._cond.notify_all()

    def _drop(self) -> None:
        with self._cond:
            self._token += 1
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _fail(self, reason: str) -> SensorReadError:
        self._drop()
        self._next_attempt = now() + RECONNECT_GAP_S
        return SensorReadError(reason)

    def _check_alive(self, client) -> None:
        if client.is_alive():
            return
        reason = "client stopped"
        try:
            client.ok(spin=True)
        except Exception as exc:  # ok() re-raises whatever ended the client thread
            reason = _describe_error(exc)
        raise self._fail("lost the jtop service: %s" % reason)

    def _reconnect(self):
        """The new client, or SensorReadError; waits at most one interval."""
        connector = self._connector
        if connector is None or not connector.is_alive():
            if now() < self._next_attempt:
                raise SensorReadError(self._connect_error or "jtop service unavailable; reconnecting")
            if not os.path.exists(SOCKET_PATH):
                self._next_attempt = now() + RECONNECT_GAP_S
                raise SensorReadError("jtop service socket %s not found" % SOCKET_PATH)
            self._begin_connect()
            connector = self._connector
        connector.join(self.update_interval_s)
        client = self._client
        if client is None:
            raise SensorReadError(self._connect_error or "connecting to the jtop service")
        log.info("reconnected to the jtop service (new sample every %g s)", self.update_interval_s)
        return client

    def read(self) -> Reading:
        client = self._client
        if client is None:
            client = self._reconnect()
        self._check_alive(client)
        with self._cond:
            self._cond.wait_for(
                lambda: self._seq != self._returned_seq,
                timeout=READ_WAIT_INTERVALS * self.update_interval_s,
            )
            latest, seq = self._latest, self._seq
        if seq != self._returned_seq:
            self._returned_seq = seq
            return latest
        self._check_alive(client)
        age = now() - latest.timestamp
        if age > STALE_INTERVALS * self.update_interval_s + 1.0:
            raise self._fail("jtop service sent no new sample for %.1f s" % age)
        return latest

    def close(self) -> None:
        self._closed = True
        self._drop()


def make_source(arg: Optional[str], interval_s: Optional[float] = None, **options) -> PowerSource:
    """Connect to the running jtop service; SourceUnavailable says why not."""
    if arg:
        raise ValueError("source 'jtop' takes no argument, got %r" % arg)
    interval = DEFAULT_INTERVAL_S if interval_s is None else float(interval_s)
    if interval < MIN_INTERVAL_S:
        log.warning("jtop interval %g s raised to %g s", interval, MIN_INTERVAL_S)
        interval = MIN_INTERVAL_S
    if importlib.util.find_spec("jtop") is None:
        raise SourceUnavailable(
            "jetson-stats is not installed: install the jtop extra "
            "(pip install 'jetson-power-exporter[jtop]')"
        )
    if not os.path.exists(SOCKET_PATH):
        # Checked before the import so that boards without the service skip jtop cheaply.
        raise SourceUnavailable("jtop service socket %s not found (is jtop.service running?)" % SOCKET_PATH)
    client_class = _load_client_class()
    try:
        return JtopSource(client_class, interval)
    except SensorReadError as exc:
        raise SourceUnavailable(str(exc)) from exc
