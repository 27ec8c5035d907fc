"""A stand-in Jetson root for tests/fakebin's ``nvpmodel`` and ``jetson_clocks`` (``JETSON_ROOT=DIR``).

Plain Python 3.6 (the JetPack 4.6 stack tests load it too).  The tree holds what the tools read and write on a
board: ``etc/nv_tegra_release`` (the JetPack generation), ``etc/nvpmodel.conf`` in the real file's format, the
mode in ``var/lib/nvpmodel/status`` and sysfs-shaped CPU and GPU frequency files.  The starting mode is applied
by the ``nvpmodel`` stand-in itself and the clocks raised by the ``jetson_clocks`` stand-in, so the tree starts in
the state the tools leave, not in one written here by hand.
"""

import collections
import os
import subprocess

FAKEBIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fakebin")

RELEASES = {
    4: "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 2022",
    5: "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 2023",
    6: "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 2025",
}
MODELS = {4: "NVIDIA Jetson Nano Developer Kit", 5: "Jetson AGX Orin", 6: "NVIDIA Jetson Orin Nano Developer Kit"}
CPU_TABLE = (102000, 204000, 403200, 825600, 918000, 1224000, 1479000)
GPU_TABLE = (76800000, 153600000, 384000000, 640000000, 768000000, 921600000)
CPUS = 4
GPU_DIR = "sys/devices/gpu.0/devfreq/57000000.gpu"

# cores: CPUs online; cpu_max / gpu_max: the caps (-1: none); masks: GPU power-gating masks, or None (none set)
Mode = collections.namedtuple("Mode", "id name cores cpu_max gpu_max tpc_mask")

# A Nano's two modes (JetPack 4.6's nvpmodel_t210_jetson-nano.conf: MAXN and 5W with two cores at 918 MHz).
NANO = (Mode(0, "MAXN", 4, -1, -1, None), Mode(1, "5W", 2, 918000, 640000000, None))


def conf_text(modes, default):
    """nvpmodel.conf as the real files lay it out: PARAM definitions, POWER_MODEL blocks, PM_CONFIG."""
    lines = ["# stand-in nvpmodel.conf (tests/support/jetson_root.py)", "< PARAM TYPE=FILE NAME=CPU_ONLINE >"]
    lines += ["CORE_%d /sys/devices/system/cpu/cpu%d/online" % (i, i) for i in range(CPUS)]
    if any(m.tpc_mask is not None for m in modes):
        lines += ["< PARAM TYPE=FILE NAME=TPC_POWER_GATING >", "TPC_PG_MASK /sys/devices/gpu.0/tpc_pg_mask"]
    lines += ["< PARAM TYPE=CLOCK NAME=CPU_A57 >",
              "FREQ_TABLE /sys/devices/system/cpu/cpu0/cpufreq/scaling_available_frequencies",
              "MAX_FREQ /sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq",
              "MIN_FREQ /sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq",
              "< PARAM TYPE=CLOCK NAME=GPU >",
              "FREQ_TABLE /%s/available_frequencies" % GPU_DIR,
              "MAX_FREQ /%s/max_freq" % GPU_DIR,
              "MIN_FREQ /%s/min_freq" % GPU_DIR, ""]
    for m in modes:
        lines.append("< POWER_MODEL ID=%d NAME=%s >" % (m.id, m.name))
        lines += ["CPU_ONLINE CORE_%d %d" % (i, 1 if i < m.cores else 0) for i in range(CPUS)]
        if m.tpc_mask is not None:
            lines.append("TPC_POWER_GATING TPC_PG_MASK %d" % m.tpc_mask)
        lines += ["CPU_A57 MIN_FREQ 0", "CPU_A57 MAX_FREQ %d" % m.cpu_max,
                  "GPU MIN_FREQ 0", "GPU MAX_FREQ %d" % m.gpu_max, ""]
    lines.append("< PM_CONFIG DEFAULT=%d >" % default)
    return "\n".join(lines) + "\n"


def _write(root, relative, text):
    path = os.path.join(root, relative)
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path))
    with open(path, "w") as fh:
        fh.write(text)


def tool_env(root, **extra):
    """The environment a tool sees on the stand-in board: the stand-ins first on PATH, JETSON_ROOT set."""
    env = dict(os.environ, JETSON_ROOT=str(root), HOME=str(root))
    env["PATH"] = FAKEBIN + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def tool(root, *args, **kwargs):
    """Run a stand-in tool on the board; returns the CompletedProcess (stdout and stderr together)."""
    return subprocess.run(list(args), env=tool_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=60, **kwargs)  # noqa: UP021 (text= is 3.7+)


def make_jetson_root(root, jetpack=4, modes=NANO, default=None, mode=None, clocks="off"):
    """Build the board under ``root`` in power mode ``mode`` (default: the conf's default) with jetson_clocks
    ``clocks``; returns ``root``."""
    root = str(root)
    default = modes[0].id if default is None else default
    mode = default if mode is None else mode
    _write(root, "etc/nv_tegra_release", RELEASES[jetpack] + "\n")
    _write(root, "proc/device-tree/model", MODELS[jetpack] + "\x00")
    _write(root, "etc/nvpmodel.conf", conf_text(modes, default))
    cpu = "sys/devices/system/cpu"
    _write(root, cpu + "/online", "0-%d\n" % (CPUS - 1))
    for i in range(CPUS):
        base = "%s/cpu%d/cpufreq/" % (cpu, i)
        _write(root, "%s/cpu%d/online" % (cpu, i), "1\n")
        _write(root, base + "scaling_available_frequencies", " ".join(map(str, CPU_TABLE)) + " \n")
        _write(root, base + "scaling_governor", "schedutil\n")
        for name in ("scaling_min_freq", "scaling_cur_freq"):
            _write(root, base + name, "%d\n" % CPU_TABLE[0])
        _write(root, base + "scaling_max_freq", "%d\n" % CPU_TABLE[-1])
    _write(root, GPU_DIR + "/available_frequencies", " ".join(map(str, GPU_TABLE)) + "\n")
    for name in ("min_freq", "cur_freq"):
        _write(root, "%s/%s" % (GPU_DIR, name), "%d\n" % GPU_TABLE[0])
    _write(root, GPU_DIR + "/max_freq", "%d\n" % GPU_TABLE[-1])
    _write(root, "sys/devices/gpu.0/of_node/name", "gpu\x00")
    os.symlink("../..", os.path.join(root, GPU_DIR, "device"))
    os.makedirs(os.path.join(root, "sys/class/devfreq"))
    os.symlink("../../devices/gpu.0/devfreq/57000000.gpu", os.path.join(root, "sys/class/devfreq/57000000.gpu"))
    start = [m for m in modes if m.id == mode][0]
    if start.tpc_mask is not None:  # the mask the board booted with
        _write(root, "sys/devices/gpu.0/tpc_pg_mask", "%d\n" % start.tpc_mask)
    applied = tool(root, "nvpmodel", "-m", str(mode))
    assert applied.returncode == 0, applied.stdout
    if clocks == "on":
        raised = tool(root, "jetson_clocks")
        assert raised.returncode == 0, raised.stdout
    return root


def board_state(root):
    """(mode id, GPU min_freq == max_freq) as the files say: what a test checks was restored."""
    with open(os.path.join(str(root), "var/lib/nvpmodel/status")) as fh:
        mode = int(fh.read().strip().split(":")[1])
    with open(os.path.join(str(root), GPU_DIR, "min_freq")) as fh:
        low = fh.read().strip()
    with open(os.path.join(str(root), GPU_DIR, "max_freq")) as fh:
        high = fh.read().strip()
    return mode, "on" if low == high else "off"
