"""Sysfs trees of real Jetson boards, laid out as the kernel lays them out.

``build_board(root, "agx_orin")`` creates, under ``root``:

* the device directories (``devices/platform/.../i2c-N/N-00AA``) holding the
  driver's attributes: ``iio:deviceN`` for the JetPack 4 ``ina3221x`` IIO
  driver, ``hwmon/hwmonN`` for the mainline ``ina3221`` / ``ina238`` drivers;
* the relative symlinks the kernel makes: ``bus/i2c/devices/N-00AA``,
  ``bus/i2c/drivers/<driver>/N-00AA``, ``class/hwmon/hwmonN``,
  ``bus/iio/devices/iio:deviceN``, each device's ``driver`` and each hwmon's
  ``device`` link;
* ``firmware/devicetree/base/model`` (NUL-terminated, as the kernel prints it);
* the alarm files each driver creates (``currN_crit_alarm`` ... on the ina3221,
  ``in1_min_alarm`` ... on the ina238, the limits ``crit_current_limit_N`` on the
  L4T ina3221x), the Orin ``soctherm_oc`` hwmon device with its
  ``ocN_event_cnt`` / ``ocN_throt_en`` (``devices/platform/soctherm-oc-event``),
  and ``class/thermal/cooling_deviceN`` (``type``, ``cur_state``, ``max_state``).

Rail names and idle values come from the tegrastats lines in
``shared/fixtures/tegrastats-samples.tsv``; addresses and bus paths from the
Jetson Linux developer guides and device trees.  Values are integers in the
drivers' units (mV, mA; mW for ``in_powerN_input``, uW for ``power1_input``)
and the expected watts are computed from the same integers.

The returned :class:`BoardTree` can change a rail while a source is running
(``set_rail``), raise an alarm or a throttle (``set_alarm``, ``set_oc_events``,
``set_cooling``), rename hwmon directories as a reboot would
(``renumber_hwmon``), and says what a correct source must report
(``rails``, ``volts``, ``amperes``, ``expected_total_w``,
``expected_update_interval_s``, ``model``).
"""

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Channel:
    """One INA channel: label as the kernel gives it (None: no label file)."""

    label: Optional[str]
    mv: int
    ma: int
    enabled: bool = True


@dataclass
class Monitor:
    driver: str  # ina3221x (L4T IIO), ina3221 or ina238 (mainline hwmon)
    controller: str  # platform path of the I2C controller, below devices/
    bus: int
    address: int
    channels: List[Channel]
    samples: int = 1  # mainline ina3221 averaging, for update_interval
    publishes_interval: bool = True  # ina238 before update_interval support: False

    @property
    def device(self) -> str:
        return "%d-%04x" % (self.bus, self.address)


@dataclass
class Board:
    model: str
    monitors: List[Monitor]
    total: Tuple[str, ...]  # rails whose sum is the board total (NVIDIA topology)
    other_hwmon: Tuple[str, ...] = ()  # non-INA hwmon chips (names) on the board
    hwmon_start: int = 0
    oc_events: bool = False  # the T234 soctherm_oc hwmon device (JetPack 5/6 Orin, Thor)
    cooling: Tuple[Tuple[str, int], ...] = ()  # thermal cooling devices: (type, max_state)


T210_I2C6 = "50000000.host1x/546c0000.i2c"  # Nano: VI I2C, i2c-6 (no platform/ on L4T 32)
T186_I2C0 = "3160000.i2c"  # TX2 gen1 I2C, i2c-0
T194_I2C1 = "platform/c240000.i2c"  # AGX Xavier gen2 I2C, i2c-1
T194_I2C7 = "platform/c250000.i2c"  # Xavier NX, i2c-7
T234_I2C1 = "platform/bus@0/c240000.i2c"  # Orin (JetPack 6), i2c-1
T264_I2C1 = "platform/bus@0/c240000.i2c"  # Thor: addresses illustrative, layout as Orin


def _ch(label: Optional[str], mv: int, ma: int, enabled: bool = True) -> Channel:
    return Channel(label, mv, ma, enabled)


BOARDS = {
    # JetPack 4.6 (L4T 32.7): POM_5V_IN 1750 mW, GPU ~0, CPU 366 mW.
    "nano": Board(
        "NVIDIA Jetson Nano Developer Kit",
        [Monitor("ina3221x", T210_I2C6, 6, 0x40, [
            _ch("POM_5V_IN", 4968, 352), _ch("POM_5V_GPU", 4968, 16), _ch("POM_5V_CPU", 4968, 74)])],
        ("POM_5V_IN",),
        other_hwmon=("pwmfan",),
        # L4T 32: the fan, and the soctherm throttles the thermal zones' passive trips drive
        cooling=(("pwm-fan", 3), ("cpu-balanced", 3), ("gpu-balanced", 3)),
    ),
    # L4T 32: module monitors 0x40/0x41, carrier board monitors 0x42/0x43.
    "tx2": Board(
        "quill",
        [
            Monitor("ina3221x", T186_I2C0, 0, 0x40, [
                _ch("VDD_SYS_GPU", 19104, 8), _ch("VDD_SYS_SOC", 19104, 16), _ch("VDD_4V0_WIFI", 4024, 0)]),
            Monitor("ina3221x", T186_I2C0, 0, 0x41, [
                _ch("VDD_IN", 19104, 86), _ch("VDD_SYS_CPU", 19104, 16), _ch("VDD_SYS_DDR", 4976, 35)]),
            Monitor("ina3221x", T186_I2C0, 0, 0x42, [
                _ch("VDD_MUX", 19160, 180), _ch("VDD_5V0_IO_SYS", 5000, 240), _ch("VDD_3V3_SYS", 3344, 120)]),
            Monitor("ina3221x", T186_I2C0, 0, 0x43, [
                _ch("VDD_3V3_IO_SLP", 3344, 88), _ch("VDD_1V8_IO", 1816, 40),
                _ch("VDD_3V3_SYS_M2", 3344, 10)]),
        ],
        ("VDD_IN",),
    ),
    # JetPack 5.1.2: VDD_IN 2763 mW, VDD_CPU_GPU_CV 650 mW, VDD_SOC 650 mW.
    "xavier_nx": Board(
        "NVIDIA Jetson Xavier NX Developer Kit",
        [Monitor("ina3221", T194_I2C7, 7, 0x40, [
            _ch("VDD_IN", 5080, 544), _ch("VDD_CPU_GPU_CV", 5072, 128), _ch("VDD_SOC", 5072, 128)])],
        ("VDD_IN",),
        other_hwmon=("pwmfan",),
        hwmon_start=1,
    ),
    # Six rails fed in parallel, no input rail: the total is their sum.
    "agx_xavier": Board(
        "Jetson-AGX",
        [
            Monitor("ina3221", T194_I2C1, 1, 0x40, [
                _ch("GPU", 19008, 4), _ch("CPU", 19008, 11), _ch("SOC", 19008, 45)]),
            Monitor("ina3221", T194_I2C1, 1, 0x41, [
                _ch("CV", 19008, 0), _ch("VDDRQ", 19008, 8), _ch("SYS5V", 4992, 378)]),
        ],
        ("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"),
        other_hwmon=("pwmfan",),
        hwmon_start=1,
    ),
    # JetPack 6: VDD_IN 12479 mW, VDD_CPU_GPU_CV 4667 mW, VDD_SOC 2817 mW.
    "orin_nano": Board(
        "NVIDIA Jetson Orin Nano Developer Kit",
        [Monitor("ina3221", T234_I2C1, 1, 0x40, [
            _ch("VDD_IN", 5064, 2464), _ch("VDD_CPU_GPU_CV", 5056, 923), _ch("VDD_SOC", 5056, 557)])],
        ("VDD_IN",),
        other_hwmon=("pwmfan",),
        hwmon_start=1,
        oc_events=True,
        cooling=(("pwm-fan", 10),),  # Orin throttles thermally in BPMP firmware: only the fan is a device
    ),
    # No input rail; VDDQ_VDD2_1V8AO is fed from VIN_SYS_5V0, so it is not added.
    # 1-0041 channel 1 is labelled NC (not connected), channel 3 is disabled.
    "agx_orin": Board(
        "NVIDIA Jetson AGX Orin Developer Kit",
        [
            Monitor("ina3221", T234_I2C1, 1, 0x40, [
                _ch("VDD_GPU_SOC", 19144, 146), _ch("VDD_CPU_CV", 19144, 21),
                _ch("VIN_SYS_5V0", 4968, 913)]),
            Monitor("ina3221", T234_I2C1, 1, 0x41, [
                _ch("NC", 0, 0), _ch("VDDQ_VDD2_1V8AO", 4968, 122), _ch(None, 0, 0, enabled=False)]),
        ],
        ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"),
        other_hwmon=("pwmfan",),
        hwmon_start=1,
        oc_events=True,
        cooling=(("pwm-fan", 10),),
    ),
    # Carrier INA238 on VIN (the system input) plus the module INA3221.
    "thor": Board(
        "NVIDIA Jetson AGX Thor Developer Kit",
        [
            Monitor("ina3221", T264_I2C1, 1, 0x40, [
                _ch("VDD_GPU", 19200, 2), _ch("VDD_CPU_SOC_MSS", 19200, 288),
                _ch("VIN_SYS_5V0", 5040, 1000)]),
            Monitor("ina238", T264_I2C1, 1, 0x44, [_ch(None, 19184, 876)], publishes_interval=False),
        ],
        ("VIN",),
        other_hwmon=("pwmfan",),
        hwmon_start=1,
        oc_events=True,
    ),
    # Jetson Nano 2GB: no power monitor at all, only the fan's hwmon.
    "nano_2gb": Board("NVIDIA Jetson Nano 2GB Developer Kit", [], (), other_hwmon=("pwmfan",)),
}

BOARD_NAMES = tuple(BOARDS)


def _rail_watts(monitor: Monitor, channel: Channel) -> float:
    if monitor.driver == "ina3221x":
        return (channel.mv * channel.ma // 1000) / 1000.0  # the driver's in_power, mW
    return channel.mv * channel.ma / 1e6


def _rail_name(monitor: Monitor, channel: Channel) -> Optional[str]:
    """The name a correct source reports, None for an unconnected channel."""
    if monitor.driver == "ina238":
        return channel.label or "VIN"
    if not channel.enabled or channel.label in (None, "NC"):
        return None
    return channel.label


def _update_interval_ms(monitor: Monitor) -> int:
    """What the mainline ina3221 driver prints: C x S x (1.1 ms + 1.1 ms), rounded."""
    enabled = sum(1 for c in monitor.channels if c.enabled)
    return int(round(enabled * monitor.samples * 2.2))


def _expected_interval_s(board: Board) -> Optional[float]:
    intervals = []
    for monitor in board.monitors:
        if monitor.driver == "ina3221" and monitor.publishes_interval:
            intervals.append(_update_interval_ms(monitor) / 1000.0)
        elif monitor.driver == "ina238":
            intervals.append(0.050496)  # driver default ADC config, not published
        else:
            intervals.append(0.0066)  # INA3221 power-on conversion config
    return min(intervals) if intervals else None


# Board total (W) as built, for every board that has a power monitor.
EXPECTED_TOTALS = {
    key: sum(
        _rail_watts(m, c) for m in board.monitors for c in m.channels
        if _rail_name(m, c) in board.total
    )
    for key, board in BOARDS.items() if board.monitors
}


def _write(path: Path, text: str) -> None:
    """Replace a file at once, so a concurrent reader never sees it half written."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(str(tmp), str(path))


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(str(target), str(link.parent)))


class _RailFiles:
    """Where one rail lives in the tree and its current integer values."""

    def __init__(self, monitor: Monitor, channel: Channel, directory: Path, index: int) -> None:
        self.monitor = monitor
        self.channel = channel
        self.directory = directory
        self.index = index

    def paths(self) -> Dict[str, Path]:
        d, i = self.directory, self.index
        if self.monitor.driver == "ina3221x":
            return {"volts": d / ("in_voltage%d_input" % i), "amps": d / ("in_current%d_input" % i),
                    "watts": d / ("in_power%d_input" % i)}
        if self.monitor.driver == "ina238":
            return {"volts": d / "in1_input", "amps": d / "curr1_input", "watts": d / "power1_input"}
        return {"volts": d / ("in%d_input" % i), "amps": d / ("curr%d_input" % i)}

    def write(self) -> None:
        mv, ma = self.channel.mv, self.channel.ma
        paths = self.paths()
        _write(paths["volts"], "%d\n" % mv)
        _write(paths["amps"], "%d\n" % ma)
        if self.monitor.driver == "ina3221x":
            _write(paths["watts"], "%d\n" % (mv * ma // 1000))
        elif self.monitor.driver == "ina238":
            _write(paths["watts"], "%d\n" % (mv * ma))


@dataclass
class BoardTree:
    """A built board: where it is, and what a correct source must report."""

    root: Path
    key: str
    board: Board
    _rails: Dict[str, _RailFiles] = field(default_factory=dict)
    hwmon_dirs: Dict[str, Path] = field(default_factory=dict)  # I2C device or chip -> hwmonN

    @property
    def model(self) -> str:
        return self.board.model

    @property
    def rails(self) -> Dict[str, float]:
        """Watts per connected rail, from the values now in the files."""
        return {n: _rail_watts(r.monitor, r.channel) for n, r in self._rails.items()}

    @property
    def volts(self) -> Dict[str, float]:
        return {n: r.channel.mv / 1000.0 for n, r in self._rails.items()}

    @property
    def amperes(self) -> Dict[str, float]:
        return {n: r.channel.ma / 1000.0 for n, r in self._rails.items()}

    @property
    def total_rails(self) -> Tuple[str, ...]:
        return self.board.total

    @property
    def expected_total_w(self) -> float:
        rails = self.rails
        return sum(rails[n] for n in self.board.total)

    @property
    def expected_update_interval_s(self) -> Optional[float]:
        return _expected_interval_s(self.board)

    def rail_file(self, name: str, kind: str = "amps") -> Path:
        """The file holding a rail's ``volts``, ``amps`` or ``watts``."""
        return self._rails[name].paths()[kind]

    def set_rail(self, name: str, watts: Optional[float] = None, volts: Optional[float] = None,
                 amps: Optional[float] = None) -> float:
        """Change a rail as the hardware would; returns the watts now reported.

        ``volts`` sets the bus voltage; ``watts`` sets the current that gives
        that power at the (new) voltage, rounded to the driver's 1 mA step.
        """
        rail = self._rails[name]
        if volts is not None:
            rail.channel.mv = int(round(volts * 1000))
        if amps is not None:
            rail.channel.ma = int(round(amps * 1000))
        if watts is not None:
            if rail.channel.mv == 0:
                raise ValueError("rail %s has no voltage to carry %g W" % (name, watts))
            rail.channel.ma = int(round(watts * 1e6 / rail.channel.mv))
        rail.write()
        return self.rails[name]

    def alarm_file(self, rail: str, attribute: str) -> Path:
        """The file of a rail's alarm or limit, by the driver's attribute without its channel:
        ``curr_crit_alarm`` is ``curr2_crit_alarm`` on an ina3221's channel 2, ``in_min_alarm``
        is the ina238's ``in1_min_alarm``; ``crit_current_limit`` is the L4T driver's
        ``crit_current_limit_N``."""
        files = self._rails[rail]
        if files.monitor.driver == "ina3221x":
            return files.directory / ("%s_%d" % (attribute, files.index))
        head, _, tail = attribute.partition("_")
        return files.directory / ("%s%d_%s" % (head, files.index, tail))

    def set_alarm(self, rail: str, attribute: str, active: bool) -> Path:
        """Raise or clear a rail's alarm flag, as the chip's alert does; returns the file."""
        path = self.alarm_file(rail, attribute)
        if not path.exists():
            raise ValueError("the %s driver has no %s" % (self._rails[rail].monitor.driver, path.name))
        _write(path, "1\n" if active else "0\n")
        return path

    def set_oc_events(self, event: str, count: int) -> None:
        """Set the soctherm_oc counter of ``event`` (``oc1``..``oc3``) as the BPMP counts it."""
        _write(self.hwmon_dirs["soctherm_oc"] / ("%s_event_cnt" % event), "%d\n" % count)

    def set_cooling(self, kind: str, state: int) -> None:
        """Put the cooling device of type ``kind`` in ``state`` (0: not throttling)."""
        for device in sorted((self.root / "class" / "thermal").iterdir()):
            if (device / "type").read_text().strip() == kind:
                _write(device / "cur_state", "%d\n" % state)
                return
        raise KeyError(kind)

    def set_update_interval(self, device: str, ms: int) -> None:
        """Write a mainline driver's ``update_interval`` (as ``samples`` would change it)."""
        _write(self.hwmon_dirs[device] / "update_interval", "%d\n" % ms)

    def renumber_hwmon(self, start: int, reverse: bool = False) -> None:
        """Give every hwmon chip a new index, as a reboot with another probe order does."""
        class_dir = self.root / "class" / "hwmon"
        for link in list(class_dir.iterdir()):
            link.unlink()
        devices = sorted(self.hwmon_dirs, reverse=reverse)
        staged = {}
        for device in devices:  # two passes: new names may collide with old ones
            old = self.hwmon_dirs[device]
            tmp = old.with_name(old.name + ".renumber")
            old.rename(tmp)
            staged[device] = tmp
        for n, device in enumerate(devices, start):
            new = staged[device].with_name("hwmon%d" % n)
            staged[device].rename(new)
            self.hwmon_dirs[device] = new
            _link(class_dir / new.name, new)
        for path in self._rails.values():
            if path.monitor.driver != "ina3221x":
                path.directory = self.hwmon_dirs[path.monitor.device]


def _build_i2c_device(root: Path, monitor: Monitor) -> Path:
    dev_dir = root / "devices" / monitor.controller / ("i2c-%d" % monitor.bus) / monitor.device
    dev_dir.mkdir(parents=True)
    (dev_dir / "name").write_text(monitor.driver + "\n")
    (dev_dir / "modalias").write_text("of:N%sT(null)Cti,%s\n" % (monitor.driver, monitor.driver))
    driver_dir = root / "bus" / "i2c" / "drivers" / monitor.driver
    driver_dir.mkdir(parents=True, exist_ok=True)
    _link(driver_dir / monitor.device, dev_dir)
    _link(dev_dir / "driver", driver_dir)
    _link(root / "bus" / "i2c" / "devices" / monitor.device, dev_dir)
    return dev_dir


def _build_l4t(root: Path, monitor: Monitor, iio_index: int, tree: BoardTree) -> None:
    """The JetPack 4 ina3221x IIO device: channels 0-2, power computed by the driver."""
    dev_dir = _build_i2c_device(root, monitor)
    iio = dev_dir / ("iio:device%d" % iio_index)
    iio.mkdir()
    (iio / "name").write_text("ina3221x\n")
    (iio / "dev").write_text("250:%d\n" % iio_index)
    (iio / "running_mode").write_text("0\n")
    _link(iio / "subsystem", root / "bus" / "iio")
    _link(root / "bus" / "iio" / "devices" / iio.name, iio)
    for index, channel in enumerate(monitor.channels):
        (iio / ("rail_name_%d" % index)).write_text("%s\n" % (channel.label or ""))
        (iio / ("crit_current_limit_%d" % index)).write_text("3000\n")
        (iio / ("warn_current_limit_%d" % index)).write_text("2000\n")
        (iio / ("in_current%d_trigger_input" % index)).write_text("%d\n" % channel.ma)
        (iio / ("in_power%d_trigger_input" % index)).write_text("0\n")
        rail = _RailFiles(monitor, channel, iio, index)
        rail.write()
        name = _rail_name(monitor, channel)
        if name is not None:
            tree._rails[name] = rail


def _build_hwmon_chip(root: Path, dev_dir: Path, name: str, index: int) -> Path:
    hwmon = dev_dir / "hwmon" / ("hwmon%d" % index)
    hwmon.mkdir(parents=True)
    (hwmon / "name").write_text(name + "\n")
    _link(hwmon / "device", dev_dir)
    _link(hwmon / "subsystem", root / "class" / "hwmon")
    _link(root / "class" / "hwmon" / hwmon.name, hwmon)
    return hwmon


def _build_mainline(root: Path, monitor: Monitor, index: int, tree: BoardTree) -> None:
    dev_dir = _build_i2c_device(root, monitor)
    hwmon = _build_hwmon_chip(root, dev_dir, monitor.driver, index)
    tree.hwmon_dirs[monitor.device] = hwmon
    if monitor.driver == "ina238":
        channel = monitor.channels[0]
        if channel.label is not None:
            (hwmon / "label").write_text(channel.label + "\n")
        (hwmon / "shunt_resistor").write_text("2000\n")
        (hwmon / "in0_input").write_text("%d\n" % (channel.ma * 2 // 1000))  # shunt mV
        (hwmon / "temp1_input").write_text("41250\n")
        # Limits at the driver's power-on defaults, alarms down (Documentation/hwmon/ina238.rst).
        for name, value in (("in0_min", -163840), ("in0_max", 163835), ("in1_min", 0), ("in1_max", 102396),
                            ("power1_max", 0), ("temp1_max", 255875)):
            (hwmon / name).write_text("%d\n" % value)
            (hwmon / (name + "_alarm")).write_text("0\n")
        if monitor.publishes_interval:
            (hwmon / "update_interval").write_text("50\n")
        rail = _RailFiles(monitor, channel, hwmon, 1)
        rail.write()
        tree._rails[_rail_name(monitor, channel)] = rail
        return
    shunt_sum_uv = 0
    current_sum = 0
    for ch, channel in enumerate(monitor.channels, 1):
        if channel.label is not None:
            (hwmon / ("in%d_label" % ch)).write_text(channel.label + "\n")
        (hwmon / ("in%d_enable" % ch)).write_text("1\n" if channel.enabled else "0\n")
        (hwmon / ("shunt%d_resistor" % ch)).write_text("5000\n")
        (hwmon / ("curr%d_crit" % ch)).write_text("32760\n")
        (hwmon / ("curr%d_max" % ch)).write_text("32760\n")
        (hwmon / ("curr%d_crit_alarm" % ch)).write_text("0\n")
        (hwmon / ("curr%d_max_alarm" % ch)).write_text("0\n")
        shunt_uv = channel.ma * 5  # 5 mOhm shunt: uV = mA x 5
        (hwmon / ("in%d_input" % (ch + 3))).write_text("%d\n" % shunt_uv)
        shunt_sum_uv += shunt_uv
        current_sum += channel.ma
        rail = _RailFiles(monitor, channel, hwmon, ch)
        rail.write()
        name = _rail_name(monitor, channel)
        if name is not None:
            tree._rails[name] = rail
    # Summation channel: a sum, never a rail of its own.
    (hwmon / "in7_label").write_text("sum of shunt voltages\n")
    (hwmon / "in7_input").write_text("%d\n" % shunt_sum_uv)
    (hwmon / "curr4_input").write_text("%d\n" % current_sum)
    (hwmon / "curr4_crit").write_text("32760\n")
    (hwmon / "curr4_crit_alarm").write_text("0\n")
    (hwmon / "samples").write_text("%d\n" % monitor.samples)
    if monitor.publishes_interval:
        (hwmon / "update_interval").write_text("%d\n" % _update_interval_ms(monitor))


def build_board(root: PathLike, key: str, hwmon_start: Optional[int] = None) -> BoardTree:
    """Create board ``key`` (one of BOARD_NAMES) under ``root`` (the fake ``/sys``)."""
    board = BOARDS[key]
    # Each tree owns its rail values: set_rail on one never touches another.
    board = Board(
        board.model,
        [Monitor(m.driver, m.controller, m.bus, m.address,
                 [Channel(c.label, c.mv, c.ma, c.enabled) for c in m.channels],
                 m.samples, m.publishes_interval) for m in board.monitors],
        board.total, board.other_hwmon, board.hwmon_start, board.oc_events, board.cooling,
    )
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tree = BoardTree(root, key, board)
    (root / "class" / "hwmon").mkdir(parents=True)
    (root / "bus" / "iio" / "devices").mkdir(parents=True)
    model = root / "firmware" / "devicetree" / "base" / "model"
    model.parent.mkdir(parents=True)
    model.write_bytes(board.model.encode() + b"\x00")

    index = board.hwmon_start if hwmon_start is None else hwmon_start
    for other in board.other_hwmon:  # e.g. the fan, probed first on these boards
        fan_dir = root / "devices" / "platform" / other
        fan_dir.mkdir(parents=True)
        hwmon = _build_hwmon_chip(root, fan_dir, other, index)
        (hwmon / "pwm1").write_text("0\n")
        tree.hwmon_dirs[other] = hwmon
        index += 1
    iio_index = 0
    for monitor in board.monitors:
        if monitor.driver == "ina3221x":
            _build_l4t(root, monitor, iio_index, tree)
            iio_index += 1
        else:
            _build_mainline(root, monitor, index, tree)
            index += 1
    if board.oc_events:
        hwmon = _build_hwmon_chip(root, root / "devices" / "platform" / "soctherm-oc-event", "soctherm_oc", index)
        for event in (1, 2, 3):
            (hwmon / ("oc%d_event_cnt" % event)).write_text("0\n")
            (hwmon / ("oc%d_throt_en" % event)).write_text("1\n")
        tree.hwmon_dirs["soctherm_oc"] = hwmon
    thermal = root / "class" / "thermal"
    thermal.mkdir(parents=True)
    for n, (kind, max_state) in enumerate(board.cooling):
        device = root / "devices" / "virtual" / "thermal" / ("cooling_device%d" % n)
        device.mkdir(parents=True)
        (device / "type").write_text(kind + "\n")
        (device / "max_state").write_text("%d\n" % max_state)
        (device / "cur_state").write_text("0\n")
        _link(thermal / device.name, device)
    return tree


def hang_reads(path: Path) -> None:
    """Make reads of a value file block, as on a hung I2C bus: a FIFO with no writer takes its place."""
    tmp = path.with_name(".fifo")
    os.mkfifo(str(tmp))
    os.replace(str(tmp), str(path))


def release_reads(path: Path, restore: Callable[[], None], data: bytes) -> None:
    """Undo ``hang_reads``: the blocked open(2) holds the FIFO, so open its other end first, let
    ``restore`` put a regular file back under the name, then hand the reader ``data`` and end-of-file."""
    fd = os.open(str(path), os.O_WRONLY | os.O_NONBLOCK)
    restore()
    os.write(fd, data)
    os.close(fd)
