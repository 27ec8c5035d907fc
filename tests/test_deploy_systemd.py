"""The systemd side: the unit under systemd-analyze, install.sh into a temporary root, and sd_notify
from the real daemon to a real notify socket.
"""

import glob
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile

import pytest

from exporter import sdnotify
from tests.support.daemon import Daemon, write_trace
from tests.support.prom import ROOT

UNIT_NAME = "jetson-power-exporter.service"
UNIT = os.path.join(ROOT, "systemd", UNIT_NAME)
INSTALL = os.path.join(ROOT, "deploy", "install.sh")
DEFAULT_CONFIG = os.path.join(ROOT, "deploy", "config.yaml")
MAX_EXPOSURE = 1.5


def systemd_analyze(*args):
    return subprocess.run(["systemd-analyze"] + list(args), capture_output=True, text=True, timeout=60)


def install(*args, env=None):
    full_env = dict(os.environ)
    full_env.pop("DESTDIR", None)
    full_env.update(env or {})
    result = subprocess.run(["sh", INSTALL] + list(args), capture_output=True, text=True, timeout=120, env=full_env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def tree(root):
    """Relative path -> (mode, sha256) of every file under root."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            out[os.path.relpath(path, root)] = (oct(os.stat(path).st_mode & 0o7777), digest)
    return out


# -- the unit --------------------------------------------------------------------------------


@pytest.mark.system
def test_exposure_score_is_at_most_1_5():
    result = systemd_analyze("security", "--offline=true", UNIT)
    match = re.search(r"Overall exposure level for %s: (\d+\.\d+)" % re.escape(UNIT_NAME), result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    assert score <= MAX_EXPOSURE, result.stdout
    print("\nsystemd-analyze security --offline=true: exposure %.1f" % score)


def test_unit_declares_notify_watchdog_and_identity():
    with open(UNIT) as handle:
        lines = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    settings = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["WatchdogSec"] and settings["WatchdogSec"][0] != "0"
    assert settings["DynamicUser"] == ["yes"]
    assert settings["SupplementaryGroups"] == ["jtop"]
    assert settings["CapabilityBoundingSet"] == [""]
    assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "PrivateUsers" not in settings, "PrivateUsers= would cut the service off the jtop group"
    assert settings["ExecStart"] == [
        "/opt/jetson-power-exporter/venv/bin/jetson-power-exporter --config /etc/jetson-power-exporter/config.yaml"]


def build_wheel(tmp_path):
    """A wheel of this checkout, built offline from a copy (the checkout itself stays clean)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "setup.py", "exporter", "profiler", "systemd", "deploy"):
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, str(src / name), ignore=shutil.ignore_patterns("__pycache__"))
        elif os.path.exists(path):
            shutil.copy(path, str(src / name))
    readme = os.path.join(ROOT, "README.md")
    if os.path.exists(readme):
        shutil.copy(readme, str(src / "README.md"))
    else:  # setup.cfg names it; its text does not matter to the install
        (src / "README.md").write_text("jetson-power-exporter\n")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, timeout=120)
    (wheel,) = wheels.glob("*.whl")
    return str(wheel)


def verify_root(root):
    """systemd-analyze verify on the installed unit, resolved inside ``root``.

    The root gets copies of the host's own system units (the targets the unit is ordered
    against); aliases are left out, their absolute links would point outside the root.
    """
    units = os.path.join(root, "usr", "lib", "systemd", "system")
    if not os.path.isdir(units):
        os.makedirs(units)
        for entry in os.scandir("/usr/lib/systemd/system"):
            if entry.is_file(follow_symlinks=False):
                shutil.copy(entry.path, units)
    return systemd_analyze("verify", "--root=" + root, os.path.join(root, "etc", "systemd", "system", UNIT_NAME))


@pytest.mark.system
def test_install_into_a_venv_then_systemd_analyze_verify_is_silent(tmp_path):
    """A real venv with the real entry point, pip offline with a wheel of this checkout."""
    wheel = build_wheel(tmp_path)
    root = str(tmp_path / "root")
    out = install("--destdir", root, "--python", sys.executable, "--jtop", "no", "--package", wheel,
                  "--pip-args", "--no-index --no-deps")
    assert "installed %s" % os.path.basename(wheel) in out
    entry = os.path.join(root, "opt", "jetson-power-exporter", "venv", "bin", "jetson-power-exporter")
    assert os.access(entry, os.X_OK)
    venv_python = os.path.join(os.path.dirname(entry), "python")
    with open(entry) as handle:
        assert handle.readline().strip() == "#!" + venv_python
    # The package is in the venv (its dependencies are not: pip ran offline with --no-deps).
    found = subprocess.run([venv_python, "-c", "import exporter.sdnotify as m; print(m.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert found.stdout.startswith(os.path.join(root, "opt")), found.stdout + found.stderr
    result = verify_root(root)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr
    # The same check catches a unit whose binary is missing: it is not silent by accident.
    shutil.rmtree(os.path.join(root, "opt"))
    broken = verify_root(root)
    assert "is not executable" in broken.stderr, broken.stderr


# -- install.sh ------------------------------------------------------------------------------


def test_install_writes_exactly_the_documented_files(tmp_path):
    root = str(tmp_path / "root")
    install("--destdir", root, "--no-venv", "--jtop", "no")
    files = tree(root)
    assert set(files) == {
        "etc/systemd/system/jetson-power-exporter.service",
        "etc/systemd/system/jetson-power-exporter.service.d/10-no-jtop.conf",
        "etc/jetson-power-exporter/config.yaml",
    }
    assert all(mode == "0o644" for mode, _ in files.values())
    with open(DEFAULT_CONFIG, "rb") as handle:
        assert files["etc/jetson-power-exporter/config.yaml"][1] == hashlib.sha256(handle.read()).hexdigest()
    with open(UNIT, "rb") as handle:
        assert files["etc/systemd/system/" + UNIT_NAME][1] == hashlib.sha256(handle.read()).hexdigest()
    with open(os.path.join(root, "etc/systemd/system/jetson-power-exporter.service.d/10-no-jtop.conf")) as handle:
        dropin = handle.read()
    assert "[Service]\nSupplementaryGroups=\n" in dropin


def test_install_with_jtop_has_no_dropin_and_prefix_rewrites_execstart(tmp_path):
    root = str(tmp_path / "root")
    install("--destdir", root, "--no-venv", "--jtop", "yes", "--prefix", "/srv/jpe")
    files = tree(root)
    assert not any(".service.d" in path for path in files)
    with open(os.path.join(root, "etc/systemd/system", UNIT_NAME)) as handle:
        unit = handle.read()
    assert "ExecStart=/srv/jpe/venv/bin/jetson-power-exporter --config " in unit
    assert "/opt/jetson-power-exporter" not in unit.split("[Service]")[1]
    # Switching to a board without jetson-stats adds the reset; back again removes it.
    install("--destdir", root, "--no-venv", "--jtop", "no", "--prefix", "/srv/jpe")
    assert os.path.exists(os.path.join(root, "etc/systemd/system", UNIT_NAME + ".d", "10-no-jtop.conf"))
    install("--destdir", root, "--no-venv", "--jtop", "yes", "--prefix", "/srv/jpe")
    assert not os.path.exists(os.path.join(root, "etc/systemd/system", UNIT_NAME + ".d"))


def test_install_is_idempotent_and_keeps_an_edited_config(tmp_path):
    root = str(tmp_path / "root")
    install("--destdir", root, "--no-venv", "--jtop", "no")
    first = tree(root)
    again = install("--destdir", root, "--no-venv", "--jtop", "no")
    assert "wrote" not in again and "removed" not in again, again
    assert tree(root) == first

    conf = os.path.join(root, "etc", "jetson-power-exporter", "config.yaml")
    with open(conf, "a") as handle:
        handle.write("sample_hz: 50\n")
    with open(conf, "rb") as handle:
        edited = handle.read()
    out = install("--destdir", root, "--no-venv", "--jtop", "no")
    assert "kept edited /etc/jetson-power-exporter/config.yaml" in out
    with open(conf, "rb") as handle:
        assert handle.read() == edited
    with open(conf + ".dist", "rb") as dist, open(DEFAULT_CONFIG, "rb") as default:
        assert dist.read() == default.read()
    assert "wrote" not in install("--destdir", root, "--no-venv", "--jtop", "no")

    out = install("--destdir", root, "--uninstall")
    assert "kept edited" in out
    assert set(tree(root)) == {"etc/jetson-power-exporter/config.yaml"}
    install("--destdir", root, "--uninstall", "--purge")
    assert tree(root) == {}


def test_uninstall_removes_an_unedited_install_completely(tmp_path):
    root = str(tmp_path / "root")
    install("--no-venv", "--jtop", "no", env={"DESTDIR": root})
    assert tree(root)
    install("--uninstall", env={"DESTDIR": root})
    assert tree(root) == {}
    assert not os.path.exists(os.path.join(root, "etc", "jetson-power-exporter"))
    install("--uninstall", env={"DESTDIR": root})  # again: nothing to do, no error


def test_install_rejects_bad_options(tmp_path):
    for args in (["--bogus"], ["--jtop", "maybe"], ["--prefix", "relative/dir"]):
        result = subprocess.run(["sh", INSTALL, "--destdir", str(tmp_path)] + args, capture_output=True,
                                text=True, timeout=30)
        assert result.returncode != 0 and result.stderr.startswith("install.sh: "), args


# -- on a Jetson: NVIDIA's torch is kept ---------------------------------------------------------

# /etc/nv_tegra_release as each JetPack writes it, and the JetPack jetson.sh names for it.
TEGRA_RELEASES = {
    "R32.7.1": ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
                "DATE: Sat Feb 19 17:05:08 UTC 2022", "JetPack 4.6.1"),
    "R35.4.1": ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
                "DATE: Tue Aug  1 19:57:35 UTC 2023", "JetPack 5.1.2"),
    "R36.4.3": ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
                "DATE: Wed Jan  8 01:49:37 UTC 2025", "JetPack 6.1/6.2"),
}
JETSON_SH = os.path.join(ROOT, "deploy", "jetson.sh")


def jetson_root(tmp_path, release="R32.7.1", model=None):
    """A stand-in board root: etc/nv_tegra_release (when ``release``), proc/device-tree/model (when ``model``)."""
    root = tmp_path / "board"
    (root / "etc").mkdir(parents=True)
    if release:
        (root / "etc" / "nv_tegra_release").write_text(TEGRA_RELEASES[release][0] + "\n")
    if model:
        (root / "proc" / "device-tree").mkdir(parents=True)
        (root / "proc" / "device-tree" / "model").write_bytes(model.encode() + b"\0")
    return str(root)


def system_python(tmp_path, torch_version=None):
    """A stand-in for the board's python3: its own site-packages holds the exporter's dependencies
    and, with ``torch_version``, a marker torch installed as NVIDIA's wheel would be (with its dist-info).

    The interpreter is a copy of this one's base binary next to links to its standard library, so
    ``sys.prefix`` (and the site-packages a ``--system-site-packages`` venv sees) is the stand-in's own.
    """
    base = sys.base_prefix
    version = "python%d.%d" % sys.version_info[:2]
    prefix = tmp_path / "system"
    (prefix / "bin").mkdir(parents=True)
    site = prefix / "lib" / version / "site-packages"
    site.mkdir(parents=True)
    shutil.copy(os.path.join(base, "bin", version), str(prefix / "bin" / "python3"))
    stdlib = sysconfig.get_paths()["stdlib"]
    for entry in os.scandir(stdlib):
        if entry.name != "site-packages":
            os.symlink(entry.path, str(prefix / "lib" / version / entry.name))
    for library in glob.glob(os.path.join(base, "lib", "libpython*")):
        os.symlink(library, str(prefix / "lib" / os.path.basename(library)))
    import prometheus_client
    import yaml

    for module in (prometheus_client, yaml):
        where = os.path.dirname(os.path.dirname(module.__file__))
        names = {"prometheus_client": ["prometheus_client"], "yaml": ["yaml", "_yaml"]}[module.__name__]
        dist = {"prometheus_client": "prometheus_client-*.dist-info", "yaml": "[Pp]y[Yy][Aa][Mm][Ll]-*.dist-info"}
        paths = [os.path.join(where, name) for name in names] + glob.glob(os.path.join(where, dist[module.__name__]))
        for path in paths:
            if os.path.exists(path):
                os.symlink(path, str(site / os.path.basename(path)))
    if torch_version:
        (site / "torch").mkdir()
        (site / "torch" / "__init__.py").write_text("__version__ = %r\n" % torch_version)
        info = site / ("torch-%s.dist-info" % torch_version)
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: %s\n" % torch_version)
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    return str(prefix / "bin" / "python3"), str(site)


def offline_env(board_root):
    """pip with no index and no local wheels: anything not already installed (a torch) cannot be had."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env.update(JETSON_ROOT=board_root, PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


@pytest.mark.parametrize("release", sorted(TEGRA_RELEASES))
def test_jetson_sh_names_the_l4t_release_and_jetpack(tmp_path, release):
    out = subprocess.run(["sh", JETSON_SH, "release"], env=dict(os.environ, JETSON_ROOT=jetson_root(tmp_path, release)),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "L4T %s, %s\n" % (release, TEGRA_RELEASES[release][1])


def test_jetson_sh_knows_a_jetson_by_its_device_tree_model(tmp_path):
    def release(root):
        return subprocess.run(["sh", JETSON_SH, "release"], env=dict(os.environ, JETSON_ROOT=root),
                              capture_output=True, text=True, timeout=30)

    nano = release(jetson_root(tmp_path / "nano", None, "NVIDIA Jetson Nano Developer Kit"))
    assert nano.returncode == 0 and nano.stdout.startswith("L4T release unknown")
    pi = release(jetson_root(tmp_path / "pi", None, "Raspberry Pi 4 Model B Rev 1.4"))
    assert pi.returncode == 1 and pi.stdout == ""


def test_the_wheel_names_no_torch_in_any_extra(tmp_path):
    """An extra naming torch or torchvision would let pip replace NVIDIA's torch with PyPI's."""
    with zipfile.ZipFile(build_wheel(tmp_path)) as wheel:
        (metadata,) = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
        requires = [line for line in wheel.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
    assert any(line.startswith("Requires-Dist: prometheus_client") for line in requires), requires
    assert not [line for line in requires if re.match(r"Requires-Dist: torch", line)], requires


def test_install_on_a_jetson_keeps_the_system_torch(tmp_path):
    wheel = build_wheel(tmp_path)
    python, site = system_python(tmp_path, torch_version="1.10.0")
    board = jetson_root(tmp_path)
    env = offline_env(board)
    venv_python = os.path.join(tmp_path, "root", "opt", "jetson-power-exporter", "venv", "bin", "python")
    # pip resolves dependencies here, offline: a torch it wanted would be an error, not a download.
    result = subprocess.run(["sh", INSTALL, "--destdir", str(tmp_path / "root"), "--python", python, "--jtop", "no",
                             "--package", wheel], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Jetson: L4T R32.7.1, JetPack 4.6.1; the venv uses the system site-packages" in result.stdout
    assert "using torch 1.10.0 from %s" % site in result.stdout
    found = subprocess.run([venv_python, "-c", "import torch, exporter; print(torch.__version__, torch.__file__)"],
                           capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert found.stdout.split() == ["1.10.0", os.path.join(site, "torch", "__init__.py")], found.stderr
    # The check above is not silent by accident: this pip cannot fetch a torch.
    fetch = subprocess.run([venv_python, "-m", "pip", "install", "torch==2.14.1"], capture_output=True, text=True,
                           timeout=120, env=env)
    assert fetch.returncode != 0 and "No matching distribution found for torch" in fetch.stderr, fetch.stderr


def test_install_on_a_jetson_without_torch_installs_the_exporter_and_says_where_to_get_it(tmp_path):
    wheel = build_wheel(tmp_path)
    python, _ = system_python(tmp_path)
    env = offline_env(jetson_root(tmp_path, "R35.4.1"))
    result = subprocess.run(["sh", INSTALL, "--destdir", str(tmp_path / "root"), "--python", python, "--jtop", "no",
                             "--package", wheel], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    hint = [line for line in result.stdout.splitlines() if "no torch importable" in line]
    assert len(hint) == 1, result.stdout
    assert "JetPack 5.1.2 (R35.4.1, Python %d.%d)" % sys.version_info[:2] in hint[0]
    assert "https://docs.nvidia.com/deeplearning/frameworks/install-pytorch-jetson-platform" in hint[0]
    entry = os.path.join(tmp_path, "root", "opt", "jetson-power-exporter", "venv", "bin", "jetson-power-exporter")
    ran = subprocess.run([entry, "--version"], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr


def test_install_off_a_jetson_keeps_the_venv_isolated(tmp_path):
    board = tmp_path / "pc"
    board.mkdir()
    python, _ = system_python(tmp_path, torch_version="1.10.0")
    result = subprocess.run(["sh", INSTALL, "--destdir", str(tmp_path / "root"), "--python", python, "--jtop", "no",
                             "--package", build_wheel(tmp_path), "--pip-args", "--no-deps"],
                            capture_output=True, text=True, timeout=300, env=offline_env(str(board)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Jetson" not in result.stdout and "torch" not in result.stdout
    with open(os.path.join(tmp_path, "root", "opt", "jetson-power-exporter", "venv", "pyvenv.cfg")) as handle:
        assert "include-system-site-packages = false" in handle.read()


def test_reinstall_on_a_jetson_opens_an_isolated_venv_to_the_system_site(tmp_path):
    """A venv an older install.sh made without the system site-packages is switched over, not rebuilt."""
    wheel = build_wheel(tmp_path)
    python, site = system_python(tmp_path, torch_version="1.10.0")
    (tmp_path / "pc").mkdir()
    args = ["sh", INSTALL, "--destdir", str(tmp_path / "root"), "--python", python, "--jtop", "no", "--package", wheel]
    first = subprocess.run(args + ["--pip-args", "--no-deps"], capture_output=True, text=True, timeout=300,
                           env=offline_env(str(tmp_path / "pc")))
    assert first.returncode == 0, first.stdout + first.stderr
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, env=offline_env(jetson_root(tmp_path)))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "venv /opt/jetson-power-exporter/venv now uses the system site-packages" in again.stdout
    assert "creating venv" not in again.stdout
    assert "using torch 1.10.0 from %s" % site in again.stdout


def test_make_on_a_jetson_uses_the_system_site_and_installs_no_torch(tmp_path):
    """What `make demo`/`make test` would run to set up the venv (make -n: nothing is installed)."""
    def plan(board):
        venv = str(tmp_path / "venv")
        out = subprocess.run(["make", "-n", "-C", ROOT, "VENV=" + venv, venv + "/.installed"],
                             env=dict(os.environ, JETSON_ROOT=board), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    jetson = plan(jetson_root(tmp_path))
    assert "-m venv --system-site-packages" in jetson
    assert "sh deploy/jetson.sh torch" in jetson
    assert "torch==" not in jetson and "torchvision==" not in jetson
    (tmp_path / "pc").mkdir()
    desktop = plan(str(tmp_path / "pc"))
    assert "--system-site-packages" not in desktop and "install -q torch==" in desktop


# -- sd_notify -------------------------------------------------------------------------------


def notify_socket(tmp_path, abstract):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = "jpe-test-%d-%d" % (os.getpid(), time.monotonic_ns())
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    sock.settimeout(5)
    return sock, address


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_sends_one_datagram(tmp_path, monkeypatch, abstract):
    sock, address = notify_socket(tmp_path, abstract)
    with sock:
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        assert sdnotify.notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"
        assert sdnotify.notify("STATUS=sampling at 100 Hz\nWATCHDOG=1") is True
        assert sock.recv(4096) == b"STATUS=sampling at 100 Hz\nWATCHDOG=1"


def test_notify_without_systemd_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize("usec, pid, expected", [
    ("30000000", None, 15.0),
    ("30000000", "self", 15.0),
    ("30000000", "1", None),  # inherited from a parent systemd watches, not us
    ("0", None, None),
    ("", None, None),
    ("abc", None, None),
    ("30000000", "x", None),
])
def test_watchdog_period(monkeypatch, usec, pid, expected):
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert sdnotify.watchdog_period_s() == expected


def test_daemon_sends_ready_watchdog_and_stopping(tmp_path):
    """The real daemon under a test NOTIFY_SOCKET, as systemd would run it with WatchdogSec=0.6s."""
    trace = write_trace(str(tmp_path / "trace.csv"), [(0.01 * k, 5.0) for k in range(3001)])
    sock, address = notify_socket(tmp_path, abstract=True)
    messages = []
    with sock:
        daemon = Daemon("--source", "replay:" + trace, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "600000"})
        with daemon:
            deadline = time.monotonic() + 10
            while messages.count("WATCHDOG=1") < 3 and time.monotonic() < deadline:
                messages.append(sock.recv(4096).decode())
            rc, stderr = daemon.stop(signal.SIGTERM)
            assert rc == 0, stderr
            while "STOPPING=1" not in messages:
                messages.append(sock.recv(4096).decode())
    assert messages[0] == "READY=1", messages
    assert messages.count("READY=1") == 1
    assert messages.count("WATCHDOG=1") >= 3
    assert messages[-1] == "STOPPING=1", messages


def test_watchdog_ping_is_withheld_while_a_sensor_read_hangs(tmp_path):
    """A read stuck in the kernel (here: open(2) of a FIFO with no writer) stops WATCHDOG=1; it resumes after."""
    from tests.support.sysfs_boards import build_board, hang_reads, release_reads

    board = build_board(str(tmp_path / "sys"), "agx_orin")
    rail = board.rail_file("VDD_GPU_SOC", "amps")
    sock, address = notify_socket(tmp_path, abstract=True)
    pings = []  # arrival times of WATCHDOG=1

    def receive_until(deadline):
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = sock.recv(4096).decode()
            except socket.timeout:
                return
            if message == "WATCHDOG=1":
                pings.append(time.monotonic())

    with sock, Daemon("--source", "hwmon", "--sysfs-root", str(board.root), "--sample-hz", "100",
                      env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "600000"}) as daemon:
        assert sock.recv(4096) == b"READY=1"
        receive_until(time.monotonic() + 0.7)
        assert len(pings) >= 2, pings
        hang_reads(rail)
        hung = time.monotonic()
        receive_until(hung + 1.5)
        late = [t - hung for t in pings if t > hung + 0.35]  # a ping may already be on its way at 0.3 s
        assert late == [], "WATCHDOG=1 sent while the read hung: %r" % late
        release_reads(rail, lambda: board.set_rail("VDD_GPU_SOC", amps=board.amperes["VDD_GPU_SOC"]), b"1000\n")
        released = time.monotonic()
        receive_until(released + 1.0)
        assert [t for t in pings if t > released], "no WATCHDOG=1 after the read returned"
        assert daemon.value("jetson_power_up") == 1.0
