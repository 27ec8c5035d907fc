"""Power read straight from the INA3221 / INA238 monitors in sysfs.

No root and no jetson-stats: the kernel drivers already publish every rail as
world-readable files.  Three layouts exist on Jetson boards:

* JetPack 4 (L4T 32) ``ina3221x`` IIO driver: ``iio:deviceN`` (``iio_device``
  on L4T 28) under the I2C device, with ``rail_name_N``,
  ``in_voltageN_input`` (mV), ``in_currentN_input`` (mA) and
  ``in_powerN_input`` (mW), channels counted from 0.
* JetPack 5/6 mainline ``ina3221`` hwmon driver: ``inN_label``,
  ``inN_input`` (mV) and ``currN_input`` (mA) for channels 1-3; ``in4..in6``
  are shunt voltages and ``in7`` / ``curr4`` the summation channel, none of
  them a rail (Documentation/hwmon/ina3221.rst).
* ``ina238`` hwmon driver (Thor carrier VIN): ``in1_input`` (mV, bus),
  ``curr1_input`` (mA), ``power1_input`` (uW) (Documentation/hwmon/ina238.rst).

Alarm flags and current limits, where the driver has them: ``currN_crit_alarm``,
``currN_max_alarm`` (and ``curr4_crit_alarm`` of the summation channel) with the
limits ``currN_crit`` / ``currN_max`` on the mainline ina3221;
``in1_min_alarm``, ``in1_max_alarm`` (bus voltage), ``curr1_min_alarm``,
``curr1_max_alarm`` and ``power1_max_alarm`` on the ina238; on the L4T
``ina3221x`` only the limits ``crit_current_limit_N`` / ``warn_current_limit_N``
(its alerts drive the over-current throttle in hardware, no flag is readable).
They are read by :meth:`HwmonSource.read_alarms` when asked, with the throttle
files of :mod:`.throttle`, never in the sampling loop.

Devices are found through the driver directories and the ``name`` attribute,
never by ``hwmonN`` number: that index depends on probe order and changes
between boots.  make_source() resolves the file list once; read() only re-reads the
value files.  When a value file is gone (the driver was unbound and bound
again, so the chip came back under another ``hwmonN``), the next read looks
the monitors up again and carries on if the same rails are there.
"""

import errno
import os
import re
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from . import throttle
from .base import Alarm, BoardAlarms, PowerSource, Reading, SensorReadError, SourceUnavailable, now
from .rails import NOT_CONNECTED, counted_rails, input_rail

__all__ = ["HwmonSource", "open"]

# Which rails make the board total (input rail, else the parallel rails minus
# those fed from another, with NVIDIA's topology per board) is shared with the
# tegrastats source: see exporter/sources/rails.py.

# Conversion period when the driver does not publish ``update_interval``.
# INA3221: the driver's INA3221_CONFIG_DEFAULT (0x7127, the chip's power-on
# value) is 1 sample, 1.1 ms bus + 1.1 ms shunt conversion, three channels:
# update_interval = C x S x (BC + SC) = 3 x 1 x 2.2 ms.
# INA238: INA238_ADC_CONFIG_DEFAULT (0xfb6a) is 16-sample averaging of bus,
# shunt and temperature conversions of 1052 us each: 16 x 3 x 1.052 ms.
_DEFAULT_INTERVAL_S = {"ina3221x": 0.0066, "ina3221": 0.0066, "ina238": 0.050496}

_I2C_DEVICE = re.compile(r"^(\d+)-([0-9a-fA-F]{4})$")
_IIO_DIR = re.compile(r"^iio(:device\d+|_device)$")
_L4T_RAIL = re.compile(r"^rail_name_(\d+)$")
_HWMON_DIR = re.compile(r"^hwmon\d+$")


class _FileGone(SensorReadError):
    """A value file no longer exists: the chip may be back under another path."""


def _read_int(path: str) -> int:
    """One sysfs value; any failure becomes SensorReadError naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.read(fd, 64)
        finally:
            os.close(fd)
    except OSError as exc:
        error = _FileGone if exc.errno in (errno.ENOENT, errno.ENODEV) else SensorReadError
        raise error(f"hwmon: cannot read {path}: {exc.strerror or exc}") from None
    try:
        return int(data)
    except ValueError:
        raise SensorReadError(f"hwmon: {path} holds {data[:32]!r}, not an integer") from None


class _ValueFiles:
    """The value files of every rail, held open and read with one ``pread`` each.

    sysfs fails a read of an attribute that went away (ENODEV), but an ordinary directory tree (a
    recorded board, a test tree) keeps serving an open descriptor the file that was replaced or
    removed.  So the files are read through their descriptors only while their directories keep
    their change time (a file replaced, removed or added, the directory renamed), and by path
    otherwise; they are opened again once the directories have been still for ``SETTLED_S``, long
    after the coarse clock that stamps a change has ticked.  Any failure of a held read is read
    again by path, which says what failed.
    """

    SETTLED_S = 0.1

    def __init__(self, paths: List[str]) -> None:
        self.paths = paths
        self._dirs = sorted(set(os.path.dirname(p) for p in paths))
        self._fds = []  # type: List[int]
        self._dir_fds = []  # type: List[int]
        self._ctimes = []  # type: List[int]

    def read(self) -> List[int]:
        fds = self._fds
        if fds:
            if [os.fstat(fd).st_ctime_ns for fd in self._dir_fds] == self._ctimes:
                try:
                    return [int(os.pread(fd, 64, 0)) for fd in fds]
                except (OSError, ValueError):
                    pass
            self.close()
        values = [_read_int(path) for path in self.paths]
        self._hold_if_settled()
        return values

    def _hold_if_settled(self) -> None:
        opened = []  # type: List[int]
        try:
            for directory in self._dirs:
                opened.append(os.open(directory, os.O_RDONLY | os.O_DIRECTORY))
            stats = [os.fstat(fd) for fd in opened]
            if all(time.time() - st.st_ctime >= self.SETTLED_S for st in stats):
                for path in self.paths:
                    opened.append(os.open(path, os.O_RDONLY))
                held = len(self._dirs)
                self._dir_fds, self._fds = opened[:held], opened[held:]
                self._ctimes = [st.st_ctime_ns for st in stats]
                return
        except OSError:
            pass
        for fd in opened:
            os.close(fd)

    def close(self) -> None:
        for fd in self._dir_fds + self._fds:
            os.close(fd)
        self._dir_fds, self._fds, self._ctimes = [], [], []


def _read_text(path: str) -> Optional[str]:
    """A text attribute (label, name, model) at make_source(); None when absent."""
    try:
        with open(path, "rb") as fh:
            return fh.read().replace(b"\x00", b"").decode("utf-8", "replace").strip()
    except OSError:
        return None


def _listdir(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _device_key(device: str) -> Tuple[int, int, str]:
    """Sort I2C devices by bus then address, so rail order survives renumbering."""
    match = _I2C_DEVICE.match(device)
    if match:
        return int(match.group(1)), int(match.group(2), 16), device
    return (1 << 30), 0, device


def _present(directory: str, files: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """(kind, path) of the ``(kind, file)`` pairs this driver created in ``directory``."""
    paths = [(kind, os.path.join(directory, name)) for kind, name in files]
    return [(kind, path) for kind, path in paths if os.path.exists(path)]


class _Rail:
    """The value files of one channel and how to turn them into SI units.

    ``alarms`` and ``limits`` are (kind, path) of its alarm flags and of its
    current limits (mA), as far as the driver has them.
    """

    __slots__ = ("name", "volts_path", "amps_path", "watts_path", "watts_scale", "alarms", "limits")

    def __init__(self, name: str, volts_path: str, amps_path: str,
                 watts_path: Optional[str] = None, watts_scale: float = 0.0) -> None:
        self.name = name
        self.volts_path = volts_path
        self.amps_path = amps_path
        self.watts_path = watts_path
        self.watts_scale = watts_scale
        self.alarms = []  # type: List[Tuple[str, str]]
        self.limits = []  # type: List[Tuple[str, str]]


class _Monitor:
    """One power-monitor chip: driver, I2C device, rails and conversion period."""

    def __init__(self, driver: str, device: str) -> None:
        self.driver = driver
        self.device = device
        self.rails = []  # type: List[_Rail]
        self.chip_alarms = []  # type: List[Tuple[str, str]]  # (kind, path) of flags for no one rail
        self.interval_s = _DEFAULT_INTERVAL_S[driver]
        self.interval_from_driver = False

    @property
    def label(self) -> str:
        return f"{self.driver}@{self.device}"

    def set_interval_from(self, path: str) -> None:
        """Use the driver's ``update_interval`` (ms) when it publishes one."""
        text = _read_text(path)
        if text is None:
            return
        try:
            value_ms = int(text)
        except ValueError:
            return
        if value_ms > 0:
            self.interval_s = value_ms / 1000.0
            self.interval_from_driver = True


def _l4t_monitor(device: str, iio_dir: str) -> _Monitor:
    monitor = _Monitor("ina3221x", device)
    channels = []
    for entry in _listdir(iio_dir):
        match = _L4T_RAIL.match(entry)
        if match:
            channels.append(int(match.group(1)))
    for ch in sorted(channels):
        label = _read_text(os.path.join(iio_dir, f"rail_name_{ch}"))
        if not label or label.upper() in NOT_CONNECTED:
            continue
        power = os.path.join(iio_dir, f"in_power{ch}_input")
        rail = _Rail(
            label,
            os.path.join(iio_dir, f"in_voltage{ch}_input"),
            os.path.join(iio_dir, f"in_current{ch}_input"),
            power if os.path.exists(power) else None,
            1e-3,
        )
        rail.limits = _present(iio_dir, [("crit", f"crit_current_limit_{ch}"), ("warn", f"warn_current_limit_{ch}")])
        monitor.rails.append(rail)
    return monitor


def _ina3221_monitor(device: str, hwmon_dir: str) -> _Monitor:
    monitor = _Monitor("ina3221", device)
    # Channels 1-3 only: in4-in6 are shunt voltages, in7/curr4 the summation.
    for ch in (1, 2, 3):
        label = _read_text(os.path.join(hwmon_dir, f"in{ch}_label"))
        enabled = _read_text(os.path.join(hwmon_dir, f"in{ch}_enable"))
        volts = os.path.join(hwmon_dir, f"in{ch}_input")
        if enabled == "0" or not os.path.exists(volts):
            continue
        if label is None:
            # An enabled channel the device tree did not name: keep it under
            # a name that says where it is rather than drop real power.
            label = f"{monitor.driver}_{device}_ch{ch}"
        elif not label or label.upper() in NOT_CONNECTED:
            continue
        rail = _Rail(label, volts, os.path.join(hwmon_dir, f"curr{ch}_input"))
        # currN_max is the chip's warning limit (averaged current), currN_crit its critical one.
        rail.alarms = _present(hwmon_dir, [("curr_crit", f"curr{ch}_crit_alarm"), ("curr_max", f"curr{ch}_max_alarm")])
        rail.limits = _present(hwmon_dir, [("crit", f"curr{ch}_crit"), ("warn", f"curr{ch}_max")])
        monitor.rails.append(rail)
    monitor.chip_alarms = _present(hwmon_dir, [("curr_sum_crit", "curr4_crit_alarm")])
    monitor.set_interval_from(os.path.join(hwmon_dir, "update_interval"))
    return monitor


def _ina238_monitor(device: str, hwmon_dir: str) -> _Monitor:
    monitor = _Monitor("ina238", device)
    # The driver has no channel labels; the hwmon core publishes ``label``
    # when the device tree names the chip.  Unnamed, it is Thor's VIN monitor.
    label = _read_text(os.path.join(hwmon_dir, "label")) or "VIN"
    rail = _Rail(
        label,
        os.path.join(hwmon_dir, "in1_input"),
        os.path.join(hwmon_dir, "curr1_input"),
        os.path.join(hwmon_dir, "power1_input"),
        1e-6,
    )
    rail.alarms = _present(hwmon_dir, [
        ("in_min", "in1_min_alarm"), ("in_max", "in1_max_alarm"), ("curr_min", "curr1_min_alarm"),
        ("curr_max", "curr1_max_alarm"), ("power_max", "power1_max_alarm")])
    monitor.rails.append(rail)
    monitor.set_interval_from(os.path.join(hwmon_dir, "update_interval"))
    return monitor


_HWMON_BUILDERS = {"ina3221": _ina3221_monitor, "ina238": _ina238_monitor}


def _hwmon_device_name(hwmon_dir: str) -> str:
    """The I2C device (``1-0040``) a hwmon directory belongs to."""
    real = os.path.realpath(hwmon_dir)
    device_link = os.path.join(real, "device")
    if os.path.exists(device_link):
        return os.path.basename(os.path.realpath(device_link))
    # devices/.../1-0040/hwmon/hwmonN
    return os.path.basename(os.path.dirname(os.path.dirname(real)))


def _discover(root: str) -> List[_Monitor]:
    """Every INA3221/INA238 under ``root``, each once, in I2C order."""
    found = {}  # type: Dict[str, _Monitor]

    def add(path: str, build: Callable[[str, str], _Monitor], device: str) -> None:
        real = os.path.realpath(path)
        if real not in found:
            found[real] = build(device, path)

    drivers = os.path.join(root, "bus", "i2c", "drivers")
    for device in _listdir(os.path.join(drivers, "ina3221x")):
        dev_dir = os.path.join(drivers, "ina3221x", device)
        for entry in _listdir(dev_dir):
            if _IIO_DIR.match(entry):
                add(os.path.join(dev_dir, entry), _l4t_monitor, device)
    iio_devices = os.path.join(root, "bus", "iio", "devices")
    for entry in _listdir(iio_devices):
        iio_dir = os.path.join(iio_devices, entry)
        if _read_text(os.path.join(iio_dir, "name")) == "ina3221x":
            device = os.path.basename(os.path.dirname(os.path.realpath(iio_dir)))
            add(iio_dir, _l4t_monitor, device)

    for driver, build in sorted(_HWMON_BUILDERS.items()):
        for device in _listdir(os.path.join(drivers, driver)):
            hwmon_parent = os.path.join(drivers, driver, device, "hwmon")
            for entry in filter(_HWMON_DIR.match, _listdir(hwmon_parent)):
                hwmon_dir = os.path.join(hwmon_parent, entry)
                if _read_text(os.path.join(hwmon_dir, "name")) == driver:
                    add(hwmon_dir, build, device)
    class_dir = os.path.join(root, "class", "hwmon")
    for entry in filter(_HWMON_DIR.match, _listdir(class_dir)):
        hwmon_dir = os.path.join(class_dir, entry)
        build = _HWMON_BUILDERS.get(_read_text(os.path.join(hwmon_dir, "name")) or "")
        if build is not None:
            add(hwmon_dir, build, _hwmon_device_name(hwmon_dir))

    return sorted(found.values(), key=lambda m: (_device_key(m.device), m.driver))


class _AlarmFiles:
    """Every alarm, limit and throttle file of the board, held open and read together."""

    def __init__(self, root: str, monitors: List[_Monitor]) -> None:
        self.monitors = monitors
        entries = []  # type: List[throttle.Entry]
        for monitor in monitors:
            for rail in monitor.rails:
                for kind, path in rail.alarms:
                    attr = os.path.basename(path)
                    entries.append(("alarm", Alarm(f"{rail.name} {attr}", rail.name, kind, False), path))
                for kind, path in rail.limits:
                    entries.append(("limit", (rail.name, kind), path))
            for kind, path in monitor.chip_alarms:
                name = f"{monitor.label} {os.path.basename(path)}"
                entries.append(("alarm", Alarm(name, None, kind, False, monitor.label), path))
        entries += throttle.discover(root)
        self._entries = entries
        self._files = _ValueFiles([path for _, _, path in entries])

    def read(self) -> BoardAlarms:
        board = BoardAlarms()
        for (slot, key, _), value in zip(self._entries, self._files.read()):
            if slot == "alarm":
                board.alarms.append(Alarm(key.name, key.rail, key.kind, value != 0, key.chip))
            elif slot == "limit":
                board.current_limits[key] = value * 1e-3
            elif slot == "oc_events":
                board.oc_events[key] = value
            elif slot == "oc_enabled":
                board.oc_throttle_enabled[key] = value != 0
            else:
                board.cooling[key[0]] = (value, key[1])
        return board

    def close(self) -> None:
        self._files.close()


def _board_model(root: str) -> str:
    model = _read_text(os.path.join(root, "firmware", "devicetree", "base", "model"))
    return model or "unknown"


class HwmonSource(PowerSource):
    """Rails of every INA3221/INA238 on the board, re-read on each call."""

    name = "hwmon"

    def __init__(self, root: str, monitors: List[_Monitor]) -> None:
        self.root = root
        self.board = _board_model(root)
        self._monitors = monitors
        rails = []  # type: List[_Rail]
        seen = set()
        for monitor in monitors:
            for rail in monitor.rails:
                if rail.name in seen:
                    # Two chips with one label: keep both, tell them apart.
                    rail.name = f"{rail.name}@{monitor.device}"
                seen.add(rail.name)
                rails.append(rail)
        self._rails = tuple(rails)
        self._files = _ValueFiles([path for r in rails for path in (r.volts_path, r.amps_path, r.watts_path) if path])
        self._files_gone = False
        self._alarm_files = None  # type: Optional[_AlarmFiles]
        self._alarm_lock = threading.Lock()  # read_alarms() runs in HTTP handler threads
        self.rail_names = tuple(r.name for r in rails)
        self.input_rail = input_rail(dict.fromkeys(self.rail_names, 0.0))
        self._counted = counted_rails(self.rail_names)  # fixed per board: not worked out per read
        # Sampling faster than the fastest chip converts yields no new values.
        fastest = min(monitors, key=lambda m: m.interval_s)
        self.update_interval_s = fastest.interval_s
        self.interval_from_driver = fastest.interval_from_driver

    def read(self) -> Reading:
        if self._files_gone:
            self._rediscover()
        try:
            return self._read_rails()
        except _FileGone:
            self._files_gone = True
            raise

    def _rediscover(self) -> None:
        """Find the monitors again; keep going only if they carry the same rails."""
        monitors = [m for m in _discover(self.root) if m.rails]
        again = HwmonSource(self.root, monitors) if monitors else None
        names = again.rail_names if again is not None else ()
        if again is None or names != self.rail_names:
            raise SensorReadError("hwmon: the power monitors under %s changed: rails now %s, were %s"
                                  % (self.root, ", ".join(names) or "none", ", ".join(self.rail_names)))
        self._files.close()
        self._monitors, self._rails, self._files, self._files_gone = again._monitors, again._rails, again._files, False

    def _read_rails(self) -> Reading:
        values = iter(self._files.read())
        rails = {}  # type: Dict[str, float]
        volts = {}  # type: Dict[str, float]
        amperes = {}  # type: Dict[str, float]
        for rail in self._rails:
            name = rail.name
            v = volts[name] = next(values) * 1e-3
            a = amperes[name] = next(values) * 1e-3
            rails[name] = v * a if rail.watts_path is None else next(values) * rail.watts_scale
        stamp = now()
        return Reading(stamp, sum([rails[n] for n in self._counted]), rails, volts, amperes)

    def read_alarms(self) -> BoardAlarms:
        """The alarm flags, current limits and throttle state, read now.

        The files are found again after a failed read (a chip rebound under
        another ``hwmonN``) and after the sampler found the monitors again.
        """
        with self._alarm_lock:
            files = self._alarm_files
            if files is not None and files.monitors is self._monitors:
                try:
                    return files.read()
                except SensorReadError:
                    pass
            if files is not None:
                files.close()
            files = self._alarm_files = _AlarmFiles(self.root, self._monitors)
            return files.read()

    def close(self) -> None:
        self._files.close()
        with self._alarm_lock:
            if self._alarm_files is not None:
                self._alarm_files.close()
                self._alarm_files = None

    def describe(self) -> Dict[str, str]:
        facts = super().describe()
        facts["sysfs_root"] = self.root
        facts["monitors"] = ", ".join(m.label for m in self._monitors)
        facts["rails"] = ", ".join(self.rail_names)
        facts["total"] = self.input_rail or "sum of parallel rails"
        facts["update_interval_from"] = (
            "driver update_interval" if self.interval_from_driver
            else "driver default conversion time (not published by the driver)"
        )
        return facts


def make_source(arg: Optional[str] = None, sysfs_root: str = "/sys", **options) -> HwmonSource:
    """Open every power monitor under the sysfs root.

    ``arg`` (``hwmon:/path``), when given, is the sysfs root and wins over the
    ``sysfs_root`` option.  Other options (``interval_s`` ...) are ignored:
    changing the conversion time needs root.
    """
    root = arg or sysfs_root
    monitors = _discover(root)
    if not monitors:
        raise SourceUnavailable(f"no INA3221/INA238 power monitor under {root}")
    connected = [m for m in monitors if m.rails]
    if not connected:
        raise SourceUnavailable(
            f"INA3221/INA238 under {root} have no connected channel"
            f" ({', '.join(m.label for m in monitors)})"
        )
    source = HwmonSource(root, connected)
    try:
        source.read()
    except SensorReadError as exc:
        raise SourceUnavailable(str(exc)) from None
    return source
