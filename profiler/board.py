"""The board's performance settings recorded with a profile: the nvpmodel power mode and jetson_clocks.

Both change every layer's energy, so a result says what they were.  Each probe
answers None where it cannot tell (off-Jetson, no permission, tool missing).
"""

import glob
import os
import shutil
import subprocess
from typing import Optional, Tuple

GPU_NODES = ("gpu", "gv11b", "ga10b", "gp10b", "gm20b")
TOOL_TIMEOUT_S = 5


def _tool_output(name: str, *args: str) -> Optional[str]:
    """stdout of a board tool on PATH, or None when it is missing, fails to start or hangs."""
    tool = shutil.which(name)
    if tool is None:
        return None
    try:
        out = subprocess.run([tool] + list(args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             timeout=TOOL_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.decode("utf-8", "replace")  # text= is Python 3.7+


def jetson_root() -> str:
    """Where the board's files are: ``/``, or the stand-in tree JETSON_ROOT names (as for deploy/jetson.sh)."""
    return os.environ.get("JETSON_ROOT") or "/"


def nvpmodel_query() -> Optional[Tuple[int, str]]:
    """(id, name) of the power mode from ``nvpmodel -q``: its ``NV Power Mode: MAXN`` line and the id below it
    (JetPack 5/6 print an ``NV Fan Mode:`` line first)."""
    lines = (_tool_output("nvpmodel", "-q") or "").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("NV Power Mode"):
            name = line.split(":", 1)[-1].strip()
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return (int(following), name) if name and following.isdigit() else None
    return None


def nvpmodel_mode() -> Optional[str]:
    """The power mode name from ``nvpmodel -q``."""
    found = nvpmodel_query()
    return found[1] if found else None


def cpu_governor(sysfs: Optional[str] = None) -> Optional[str]:
    """cpu0's cpufreq governor (``schedutil`` on JetPack), from sysfs or ``jetson_clocks --show``'s cpu0 line."""
    try:
        with open(os.path.join(sysfs or os.path.join(jetson_root(), "sys"),
                               "devices/system/cpu/cpu0/cpufreq/scaling_governor")) as fh:
            return fh.read().strip() or None
    except OSError:
        pass
    for line in (_tool_output("jetson_clocks", "--show") or "").splitlines():
        if line.startswith("cpu0:"):
            return _fields(line).get("Governor")
    return None


def _fields(line: str):
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def jetson_clocks_state(sysfs: Optional[str] = None) -> Optional[str]:
    """``on`` when the GPU's clock floor equals its ceiling (what jetson_clocks sets), else ``off``.

    Read from the GPU's devfreq files; where /sys has none (a container),
    from the ``GPU MinFreq=... MaxFreq=...`` line of ``jetson_clocks --show``.
    """
    state = _devfreq_state(sysfs or os.path.join(jetson_root(), "sys"))
    if state is not None:
        return state
    for line in (_tool_output("jetson_clocks", "--show") or "").splitlines():
        if line.startswith("GPU "):
            fields = _fields(line)
            if "MinFreq" in fields and "MaxFreq" in fields:
                return "on" if fields["MinFreq"] == fields["MaxFreq"] else "off"
    return None


def _devfreq_state(sysfs: str) -> Optional[str]:
    for directory in sorted(glob.glob(os.path.join(sysfs, "class", "devfreq", "*"))):
        try:
            with open(os.path.join(directory, "device", "of_node", "name")) as fh:
                node = fh.read().strip("\x00\n ")
        except OSError:
            node = os.path.basename(os.path.realpath(directory))
        if not any(name in node for name in GPU_NODES):
            continue
        try:
            with open(os.path.join(directory, "min_freq")) as fh:
                low = fh.read().strip()
            with open(os.path.join(directory, "max_freq")) as fh:
                high = fh.read().strip()
        except OSError:
            return None
        return "on" if low == high else "off"
    return None
