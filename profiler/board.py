"""The board's performance settings recorded with a profile: the nvpmodel power mode and jetson_clocks.

Both change every layer's energy, so a result says what they were.  Each probe
answers None where it cannot tell (off-Jetson, no permission, tool missing).
"""

import glob
import os
import shutil
import subprocess
from typing import Optional

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


def nvpmodel_mode() -> Optional[str]:
    """The power mode name from ``nvpmodel -q`` (its ``NV Power Mode: MAXN`` line)."""
    for line in (_tool_output("nvpmodel", "-q") or "").splitlines():
        if line.startswith("NV Power Mode"):
            return line.split(":", 1)[-1].strip() or None
    return None


def jetson_clocks_state(sysfs: str = "/sys") -> Optional[str]:
    """``on`` when the GPU's clock floor equals its ceiling (what jetson_clocks sets), else ``off``.

    Read from the GPU's devfreq files; where /sys has none (a container),
    from the ``GPU MinFreq=... MaxFreq=...`` line of ``jetson_clocks --show``.
    """
    state = _devfreq_state(sysfs)
    if state is not None:
        return state
    for line in (_tool_output("jetson_clocks", "--show") or "").splitlines():
        if line.startswith("GPU "):
            fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
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
