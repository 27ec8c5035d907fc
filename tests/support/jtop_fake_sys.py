"""A Jetson-shaped ``/fake_sys`` tree and a private root to run the real jtop service in.

jetson-stats' testing mode (``JTOP_TESTING=1``) reads CPU, GPU, fan, engine,
memory and power-monitor files from the fixed path ``/fake_sys`` instead of
``/sys``.  The service also needs things the host may lack or must not see
changed: the ``jtop`` group, ``/sys/devices/virtual/dmi/id`` (board facts on
x86), ``/run`` for its socket and ``<python base prefix>/local/jtop`` for its
config.  :func:`private_root` builds, inside a mount namespace, a root made of
bind mounts of the host's top-level directories with those paths replaced, so
nothing on the host is created or changed.  Run it only under ``unshare -m``.
"""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Tuple

# Orin-style INA3221 channels: name -> (millivolts, milliamperes).  VDD_IN is
# the board input that jtop reports as its total.
RAILS = {
    "VDD_IN": (5000, 1500),
    "VDD_CPU_GPU_CV": (5000, 400),
    "VDD_SOC": (5000, 300),
}  # type: Dict[str, Tuple[int, int]]

BOARD = "jtop-test-board"
INA_DIR = "bus/i2c/devices/1-0040"


def _write(path: Path, text: str) -> None:
    """Replace a file in one step: the service must never read a half-written number."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(str(tmp), str(path))


def _hwmon(fake_sys: Path) -> Path:
    return fake_sys / INA_DIR / "hwmon" / "hwmon3"


def build_fake_sys(fake_sys: Path, rails: Dict[str, Tuple[int, int]] = RAILS) -> Path:
    """Write the tree jtop's testing mode reads: two CPUs and one INA3221 with ``rails``."""
    _write(fake_sys / "stat", "cpu  100 0 100 1000 0 0 0 0 0 0\n"
           "cpu0 50 0 50 500 0 0 0 0 0 0\ncpu1 50 0 50 500 0 0 0 0 0 0")
    for cpu in range(2):
        _write(fake_sys / ("devices/system/cpu/cpu%d/online" % cpu), "1")
    for folder in ("class/devfreq", "class/hwmon", "class/power_supply", "kernel/debug/clk"):
        (fake_sys / folder).mkdir(parents=True, exist_ok=True)
    _write(fake_sys / INA_DIR / "name", "ina3221")
    hwmon = _hwmon(fake_sys)
    _write(hwmon / "name", "ina3221")
    for channel, (rail, (millivolts, milliamperes)) in enumerate(rails.items(), start=1):
        _write(hwmon / ("in%d_label" % channel), rail)
        _write(hwmon / ("curr%d_max" % channel), "10000")
        _write(hwmon / ("curr%d_crit" % channel), "20000")
        set_rail(fake_sys, channel, millivolts, milliamperes)
    return fake_sys


def set_rail(fake_sys: Path, channel: int, millivolts: int, milliamperes: int) -> None:
    """Change what INA3221 ``channel`` (1-based) reports."""
    hwmon = _hwmon(fake_sys)
    _write(hwmon / ("in%d_input" % channel), str(millivolts))
    _write(hwmon / ("curr%d_input" % channel), str(milliamperes))


def _mount(*args: str) -> None:
    subprocess.run(("mount", "-n") + args, check=True)


def _mirror(host_dir: str, target: Path) -> None:
    """Cover ``target`` with a tmpfs holding bind mounts of everything in ``host_dir``.

    This is how a path that does not exist on the host gets a place to be
    mounted: its parent becomes a copy made of binds, and the copy can grow.
    """
    _mount("-t", "tmpfs", "tmpfs", str(target))
    for entry in os.scandir(host_dir):
        place = target / entry.name
        if entry.is_symlink():
            place.symlink_to(os.readlink(entry.path))
        elif entry.is_dir():
            place.mkdir()
            _mount("--rbind", entry.path, str(place))
        else:
            place.touch()
            _mount("--bind", entry.path, str(place))


def _plant(root: Path, path: str, source: Path) -> None:
    """Make ``source`` appear at absolute ``path`` inside ``root``, host untouched."""
    parts = Path(path).parts[1:]
    for depth in range(len(parts)):
        host = os.path.join("/", *parts[: depth + 1])
        if not os.path.lexists(host):
            parent = os.path.join("/", *parts[:depth])
            if depth:
                _mirror(parent, root.joinpath(*parts[:depth]))
            place = root.joinpath(*parts)
            if source.is_dir():
                place.mkdir(parents=True)
            else:
                place.parent.mkdir(parents=True, exist_ok=True)
                place.touch()
            break
    _mount("--bind", str(source), str(root.joinpath(*parts)))


def private_root(work: Path, fake_sys: Path) -> Path:
    """Build the service's root under ``work`` (call inside a fresh mount namespace)."""
    root = work / "root"
    root.mkdir()
    _mirror("/", root)
    _write(work / "group", Path("/etc/group").read_text().rstrip("\n") + "\njtop:x:990:root")
    dmi = work / "dmi"
    _write(dmi / "product_name", BOARD)
    _write(dmi / "sys_vendor", "jetson-power-exporter tests")
    for name in ("run", "tmp", "config"):
        (work / name).mkdir()
    _plant(root, "/fake_sys", fake_sys)
    _plant(root, "/etc/group", work / "group")
    _plant(root, "/sys/devices/virtual/dmi/id", dmi)
    _plant(root, "/run", work / "run")
    _plant(root, "/tmp", work / "tmp")
    _plant(root, os.path.join(sys.base_prefix, "local", "jtop"), work / "config")
    # The checkout and its venv may live under /tmp (a CI clone): keep them visible over the private /tmp.
    checkout = Path(__file__).resolve().parents[2]
    if checkout.is_relative_to(Path("/tmp").resolve()):
        root.joinpath(*checkout.parts[1:]).mkdir(parents=True, exist_ok=True)
        _mount("--bind", str(checkout), str(root.joinpath(*checkout.parts[1:])))
    return root


SERVICE_LOG = "/tmp/jtop-service.log"  # inside the private root: <work>/tmp on the host


def start_service() -> subprocess.Popen:
    """The real jtop service in testing mode (inside the private root), once its socket is up."""
    env = dict(os.environ, JTOP_SERVICE="1", JTOP_TESTING="1")
    program = shutil.which("jtop", path=str(Path(sys.executable).parent)) or shutil.which("jtop")
    log = open(SERVICE_LOG, "a")
    service = subprocess.Popen([program, "--force"], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    log.close()
    deadline = time.monotonic() + 20
    while not os.path.exists("/run/jtop.sock"):
        if service.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("jtop service did not start; see %s" % SERVICE_LOG)
        time.sleep(0.05)
    return service


def stop_service(service: subprocess.Popen) -> None:
    os.killpg(service.pid, signal.SIGKILL)
    service.wait(timeout=10)


def sandbox_problem():
    """Why the real-service scenario cannot run here, or None."""
    if importlib.util.find_spec("jtop") is None:
        return "jetson-stats is not installed"
    if os.geteuid() != 0:
        return "needs root: the jtop service and the mount namespace require it"
    for tool in ("unshare", "mount"):
        if shutil.which(tool) is None:
            return "%s is not installed (util-linux)" % tool
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "true"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if probe.returncode != 0:
        return "cannot create mount/PID namespaces: %s" % probe.stdout.strip()
    return None
