"""RAPL source against sysfs-shaped powercap trees laid out as the kernel does."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from exporter.sources import SensorReadError, SourceUnavailable, open_source
from exporter.sources.rapl import MIN_POWER_WINDOW_S, find_zones

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Powercap:
    """A /sys tree: real zone dirs under devices/virtual/powercap, class/powercap symlinks."""

    def __init__(self, root):
        self.root = root
        self.devices = root / "devices" / "virtual" / "powercap" / "intel-rapl"
        self.cls = root / "class" / "powercap"
        self.devices.mkdir(parents=True)
        self.cls.mkdir(parents=True)
        (self.cls / "intel-rapl").symlink_to(os.path.relpath(self.devices, self.cls))
        self.zones = {}

    def zone(self, zone_id, name, energy_uj=0, max_range_uj=262143328850):
        parts = zone_id.split(":")
        if len(parts) == 2:
            path = self.devices / zone_id
        else:
            path = self.devices / (parts[0] + ":" + parts[1]) / zone_id
        path.mkdir(parents=True)
        (path / "name").write_text(name + "\n")
        (path / "max_energy_range_uj").write_text("%d\n" % max_range_uj)
        (path / "enabled").write_text("1\n")
        (self.cls / zone_id).symlink_to(os.path.relpath(path, self.cls))
        self.zones[zone_id] = path
        self.set(zone_id, energy_uj)
        return path

    def set(self, zone_id, energy_uj):
        (self.zones[zone_id] / "energy_uj").write_text("%d\n" % energy_uj)

    def add(self, zone_id, delta_uj):
        path = self.zones[zone_id] / "energy_uj"
        self.set(zone_id, int(path.read_text()) + delta_uj)


@pytest.fixture
def sysfs(tmp_path):
    return Powercap(tmp_path / "sys")


def server(sysfs):
    """Two sockets with core and dram subzones, plus an mmio duplicate to ignore."""
    sysfs.zone("intel-rapl:0", "package-0", 1000)
    sysfs.zone("intel-rapl:0:0", "core", 500)
    sysfs.zone("intel-rapl:0:1", "dram", 100)
    sysfs.zone("intel-rapl:1", "package-1", 7000)
    sysfs.zone("intel-rapl:1:0", "dram", 0)
    mmio = sysfs.root / "devices" / "virtual" / "powercap" / "intel-rapl-mmio" / "intel-rapl-mmio:0"
    mmio.mkdir(parents=True)
    (mmio / "name").write_text("package-0\n")
    (mmio / "energy_uj").write_text("999999999\n")
    (sysfs.cls / "intel-rapl-mmio:0").symlink_to(os.path.relpath(mmio, sysfs.cls))


def test_zones_found_through_class_symlinks(sysfs):
    server(sysfs)
    zones = [(rail, kind) for _, rail, kind in find_zones(str(sysfs.root))]
    assert zones == [
        ("package-0", "package"),
        ("package-0/core", "core"),
        ("package-0/dram", "dram"),
        ("package-1", "package"),
        ("package-1/dram", "dram"),
    ]


def test_energy_and_power_without_double_counting(sysfs):
    server(sysfs)
    source = open_source("rapl", sysfs_root=str(sysfs.root), interval_s=0.5)
    assert source.update_interval_s == 0.001
    assert source.simulated is False
    assert "package-0, package-1" in source.board
    assert source.describe()["total_zones"] == "package-0,package-0/dram,package-1,package-1/dram"
    start = source.read()
    assert start.energy_joules == 0.0

    sysfs.add("intel-rapl:0", 2_000_000)
    sysfs.add("intel-rapl:0:0", 1_500_000)  # part of package-0: not added again
    sysfs.add("intel-rapl:0:1", 400_000)  # dram: outside the package counter
    sysfs.add("intel-rapl:1", 1_000_000)
    sysfs.add("intel-rapl:1:0", 100_000)
    time.sleep(0.05)
    r = source.read()
    assert r.energy_joules == pytest.approx(3.5)
    assert r.total_watts == pytest.approx(
        r.rails["package-0"] + r.rails["package-0/dram"] + r.rails["package-1"] + r.rails["package-1/dram"]
    )
    dt = r.timestamp - start.timestamp
    assert r.total_watts == pytest.approx(3.5 / dt, rel=0.05)
    assert r.rails["package-0/core"] == pytest.approx(0.75 * r.rails["package-0"])
    assert set(r.rails) == {"package-0", "package-0/core", "package-0/dram", "package-1", "package-1/dram"}
    source.close()
    source.close()


def test_counter_wrap(sysfs):
    max_range = 1_000_000
    sysfs.zone("intel-rapl:0", "package-0", 990_000, max_range_uj=max_range)
    source = open_source("rapl", sysfs_root=str(sysfs.root))
    assert source.read().energy_joules == 0.0
    sysfs.set("intel-rapl:0", 999_500)
    assert source.read().energy_joules == pytest.approx(0.0095)
    sysfs.set("intel-rapl:0", 4_500)  # wrapped: 500 to the top, then 4500
    time.sleep(MIN_POWER_WINDOW_S)
    r = source.read()
    assert r.energy_joules == pytest.approx(0.0095 + 0.005)
    assert r.total_watts > 0
    sysfs.set("intel-rapl:0", 10_000)
    assert source.read().energy_joules == pytest.approx(0.0095 + 0.005 + 0.0055)


def test_power_holds_between_close_reads(sysfs):
    sysfs.zone("intel-rapl:0", "package-0", 0)
    source = open_source("rapl", sysfs_root=str(sysfs.root))
    sysfs.add("intel-rapl:0", 100_000)
    time.sleep(0.02)
    first = source.read()
    assert first.total_watts > 0
    sysfs.add("intel-rapl:0", 100_000)
    second = source.read()  # well inside MIN_POWER_WINDOW_S: RAPL quantisation would dominate
    assert second.total_watts == first.total_watts
    assert second.energy_joules == pytest.approx(first.energy_joules + 0.1)


def test_psys_alone_is_the_total(sysfs):
    sysfs.zone("intel-rapl:0", "package-0", 0)
    sysfs.zone("intel-rapl:0:0", "core", 0)
    sysfs.zone("intel-rapl:0:1", "uncore", 0)
    sysfs.zone("intel-rapl:1", "psys", 0)
    source = open_source("rapl", sysfs_root=str(sysfs.root))
    assert source.board.endswith("(package-0, psys)")
    sysfs.add("intel-rapl:0", 3_000_000)
    sysfs.add("intel-rapl:0:0", 2_000_000)
    sysfs.add("intel-rapl:0:1", 500_000)
    sysfs.add("intel-rapl:1", 5_000_000)
    time.sleep(0.02)
    r = source.read()
    assert r.energy_joules == pytest.approx(5.0)
    assert r.total_watts == pytest.approx(r.rails["psys"])
    assert r.rails["package-0"] < r.rails["psys"]


def test_counter_read_failure_is_a_sensor_error(sysfs):
    sysfs.zone("intel-rapl:0", "package-0", 0)
    source = open_source("rapl", sysfs_root=str(sysfs.root))
    (sysfs.zones["intel-rapl:0"] / "energy_uj").write_text("garbage\n")
    with pytest.raises(SensorReadError, match="energy_uj"):
        source.read()


def test_no_powercap_or_no_rapl(tmp_path, sysfs):
    with pytest.raises(SourceUnavailable, match="no powercap interface"):
        open_source("rapl", sysfs_root=str(tmp_path / "empty"))
    with pytest.raises(SourceUnavailable, match="no intel-rapl zones"):
        open_source("rapl", sysfs_root=str(sysfs.root))


def _open_in_child(sysfs_root):
    """Open the source in a real child process without root's file-permission override."""
    code = (
        "from exporter.sources import SourceUnavailable, open_source\n"
        "try:\n    open_source('rapl', sysfs_root=%r)\n"
        "except SourceUnavailable as exc:\n    print(exc)\n    raise SystemExit(3)\n" % sysfs_root
    )
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] + cmd
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_energy_readable_only_by_root(sysfs):
    # The kernel makes energy_uj 0400 root.  As root, the same denial is had by
    # giving the file to another owner and dropping the capabilities that let
    # root read any file.
    sysfs.zone("intel-rapl:0", "package-0", 0)
    energy = sysfs.zones["intel-rapl:0"] / "energy_uj"
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop the right to read any file")
        os.chown(energy, 65534, 65534)
        os.chmod(energy, 0o400)
    else:
        os.chmod(energy, 0o000)
    done = _open_in_child(str(sysfs.root))
    assert done.returncode == 3, done.stderr
    assert "readable only by root" in done.stdout
    assert "class/powercap/intel-rapl:0/energy_uj" in done.stdout
