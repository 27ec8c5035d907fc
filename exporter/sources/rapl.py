"""Intel/AMD CPU energy from the kernel's RAPL powercap zones.

Zones live at ``<sysfs_root>/class/powercap/intel-rapl:N`` (packages, and on
Skylake+ clients a ``psys`` platform zone) with subzones ``intel-rapl:N:M``
(``core`` = PP0, ``uncore`` = PP1, ``dram``).  AMD Zen CPUs use the same
``intel-rapl`` control type since Linux 5.8.  ``intel-rapl-mmio`` zones
duplicate the package counters for power limiting and are ignored.

What is added up, so nothing is counted twice:

* core and uncore are parts of their package (PP0 + PP1 <= PKG): rails only;
* dram is a separate RAPL domain, *not* included in the package counter,
  even though the kernel lists it under the package zone;
* psys (platform) covers the whole SoC platform, packages and memory
  included, so when present it alone is the total;
* otherwise total = sum of packages + sum of dram zones.

Each read returns ``energy_joules``: the cumulative, wrap-corrected energy of
the zones in the total since :func:`open`.  A counter that went backwards
wrapped at ``max_energy_range_uj`` (the counter's range); reads must come
more often than one full range (minutes to hours at real power), which any
sampler does.  ``total_watts`` and the rails are dE/dt between the last two
reads at least ``MIN_POWER_WINDOW_S`` apart: RAPL updates every ~1 ms
(976 us time unit), so shorter windows would show quantisation noise; reads
closer together repeat the last power.  ``update_interval_s`` is 0.001 s,
the counter's refresh period.

Since Linux 5.10 (CVE-2020-8694, "Platypus") ``energy_uj`` is mode 0400
root: as another user the source is unavailable and says so.
"""

import os
import re
import time
from typing import Dict, List, Optional, Tuple

from .base import PowerSource, Reading, SensorReadError, SourceUnavailable, now

UPDATE_INTERVAL_S = 0.001
MIN_POWER_WINDOW_S = 0.01
_ZONE_RE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


class Zone:
    """One powercap zone: its counter file (kept open), range and running total."""

    def __init__(self, path: str, rail: str, kind: str):
        self.path = path
        self.rail = rail
        self.kind = kind  # "package", "dram", "psys", or another subzone name
        self.max_range_uj = _read_int(os.path.join(path, "max_energy_range_uj"))
        energy = os.path.join(path, "energy_uj")
        try:
            self._fd = os.open(energy, os.O_RDONLY)
        except PermissionError:
            raise SourceUnavailable(
                f"rapl: {energy} is readable only by root (Linux >= 5.10, CVE-2020-8694); run as root or "
                "grant read access (e.g. a udev rule or chmod a+r)"
            ) from None
        except OSError as exc:
            raise SourceUnavailable(f"rapl: cannot open {energy}: {exc.strerror}") from None
        try:
            self.last_uj = self.read_uj()
        except SensorReadError as exc:
            self.close()
            raise SourceUnavailable(str(exc)) from None
        self.total_uj = 0

    def read_uj(self) -> int:
        try:
            return int(os.pread(self._fd, 64, 0))
        except (OSError, ValueError) as exc:
            raise SensorReadError(f"rapl: reading {self.path}/energy_uj failed: {exc}") from None

    def advance(self) -> None:
        """Read the counter and add the (wrap-corrected) increase to ``total_uj``."""
        raw = self.read_uj()
        delta = raw - self.last_uj
        if delta < 0:
            delta += self.max_range_uj
        self.last_uj = raw
        self.total_uj += delta

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _read_text(path: str) -> str:
    with open(path) as fh:
        return fh.read().strip()


def _read_int(path: str) -> int:
    try:
        return int(_read_text(path))
    except (OSError, ValueError) as exc:
        raise SourceUnavailable(f"rapl: cannot read {path}: {exc}") from None


def find_zones(sysfs_root: str = "/sys") -> List[Tuple[str, str, str]]:
    """(path, rail name, kind) of every RAPL zone, packages before their subzones.

    Rail names are the zone's ``name`` for top-level zones (``package-0``,
    ``psys``) and ``<package>/<name>`` for subzones (``package-0/dram``).
    """
    base = os.path.join(sysfs_root, "class", "powercap")
    try:
        entries = os.listdir(base)
    except OSError as exc:
        raise SourceUnavailable(f"rapl: no powercap interface at {base} ({exc.strerror})") from None
    ids = sorted(
        (tuple(int(g) for g in m.groups() if g is not None), entry)
        for entry in entries
        for m in [_ZONE_RE.match(entry)]
        if m
    )
    if not ids:
        raise SourceUnavailable(
            f"rapl: no intel-rapl zones under {base} (not an Intel/AMD CPU, or intel_rapl_msr not loaded)"
        )
    names: Dict[Tuple[int, ...], str] = {}
    zones = []
    for key, entry in ids:
        path = os.path.join(base, entry)
        try:
            name = _read_text(os.path.join(path, "name"))
        except OSError as exc:
            raise SourceUnavailable(f"rapl: cannot read {path}/name: {exc.strerror}") from None
        names[key] = name
        if len(key) == 1:
            kind = "psys" if name == "psys" else "package"
            zones.append((path, name, kind))
        else:
            parent = names.get(key[:1], f"intel-rapl:{key[0]}")
            zones.append((path, f"{parent}/{name}", name))
    return zones


class RaplSource(PowerSource):
    """Package (and psys/dram) energy counters of the CPU via powercap."""

    name = "rapl"
    update_interval_s = UPDATE_INTERVAL_S

    def __init__(self, sysfs_root: str = "/sys"):
        self.zones: List[Zone] = []
        try:
            for path, rail, kind in find_zones(sysfs_root):
                self.zones.append(Zone(path, rail, kind))
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        has_psys = any(z.kind == "psys" for z in self.zones)
        counted = ("psys",) if has_psys else ("package", "dram")
        self.total_zones = [z for z in self.zones if z.kind in counted]
        top = ", ".join(z.rail for z in self.zones if "/" not in z.rail)
        self.board = f"{_cpu_model()} ({top})"
        self._window = (now(), [z.total_uj for z in self.zones])
        self._watts = [0.0] * len(self.zones)
        # Prime the power value so that the first read() already has one.
        time.sleep(MIN_POWER_WINDOW_S)
        try:
            self.read()
        except SensorReadError as exc:
            raise SourceUnavailable(str(exc)) from None

    def read(self) -> Reading:
        for zone in self.zones:
            zone.advance()
        t = now()
        start, start_uj = self._window
        if t - start >= MIN_POWER_WINDOW_S:
            dt = t - start
            self._watts = [(z.total_uj - e0) / 1e6 / dt for z, e0 in zip(self.zones, start_uj)]
            self._window = (t, [z.total_uj for z in self.zones])
        rails = {z.rail: w for z, w in zip(self.zones, self._watts)}
        return Reading(
            timestamp=t,
            total_watts=sum(rails[z.rail] for z in self.total_zones),
            rails=rails,
            energy_joules=sum(z.total_uj for z in self.total_zones) / 1e6,
        )

    def close(self) -> None:
        for zone in self.zones:
            zone.close()

    def describe(self) -> Dict[str, str]:
        info = super().describe()
        info["total_zones"] = ",".join(z.rail for z in self.total_zones)
        return info


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, for the board label."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return "unknown CPU"


def make_source(arg: Optional[str], sysfs_root: str = "/sys", **options) -> RaplSource:
    """Open every RAPL zone under ``sysfs_root``; ``arg`` is unused."""
    return RaplSource(sysfs_root or "/sys")
