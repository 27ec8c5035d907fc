"""The jtop source against the real jetson-stats service in its testing mode.

The service (``jtop --force`` with JTOP_SERVICE=1 and JTOP_TESTING=1) reads
its INA3221 from ``/fake_sys`` and puts its socket in ``/run``.  To leave the
host untouched, the whole scenario runs in a child process started with
``unshare --mount --pid``: this file, run as a script, builds a private root
(tests/support/jtop_fake_sys.py), chroots into it, drives the service and the source,
and prints what it saw as JSON for the tests below to check.  The PID
namespace makes sure no service process outlives the scenario.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.jtop_fake_sys import (
    SERVICE_LOG,
    build_fake_sys,
    private_root,
    sandbox_problem,
    set_rail,
    start_service,
    stop_service,
)
from tests.support.sysfs_boards import build_board

REPO = Path(__file__).resolve().parent.parent
INTERVAL_S = 0.2
SCENARIO_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    problem = sandbox_problem()
    if problem:
        print("test_jtop skipped:", problem)
        pytest.skip(problem)
    work = tmp_path_factory.mktemp("jtop")
    had_socket = os.path.exists("/run/jtop.sock")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("JTOP_TESTING", None)
    try:
        proc = subprocess.run(
            ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
             sys.executable, __file__, str(work)],
            cwd=str(REPO), env=env, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail("scenario timed out:\n%s%s" % (exc.stderr or "", _service_log(work)))
    if proc.returncode != 0:
        pytest.fail("scenario failed (rc %d):\n%s%s" % (proc.returncode, proc.stderr[-4000:], _service_log(work)))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["host_fake_sys"] = os.path.exists("/fake_sys")
    result["host_socket_changed"] = os.path.exists("/run/jtop.sock") != had_socket
    return result


def _service_log(work: Path) -> str:
    log = work / "tmp" / Path(SERVICE_LOG).name
    return "\n--- service log ---\n" + log.read_text()[-3000:] if log.exists() else ""


@pytest.mark.system
@pytest.mark.slow
def test_watts_are_the_values_in_the_fake_ina3221(scenario):
    first = scenario["reads"][0]
    assert first["total"] == pytest.approx(7.5)
    assert first["rails"] == pytest.approx({"VDD_IN": 7.5, "VDD_CPU_GPU_CV": 2.0, "VDD_SOC": 1.5})
    assert first["volts"] == pytest.approx({"VDD_IN": 5.0, "VDD_CPU_GPU_CV": 5.0, "VDD_SOC": 5.0})
    assert first["amperes"] == pytest.approx({"VDD_IN": 1.5, "VDD_CPU_GPU_CV": 0.4, "VDD_SOC": 0.3})
    assert scenario["board"] == "jtop-test-board"
    assert scenario["interval"] == pytest.approx(INTERVAL_S)


@pytest.mark.system
@pytest.mark.slow
def test_each_read_is_a_new_sample_and_never_blocks_long(scenario):
    stamps = [read["t"] for read in scenario["reads"]]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(gap > INTERVAL_S / 2 for gap in gaps), gaps
    assert max(read["took"] for read in scenario["reads"]) < 1.5 * INTERVAL_S + 0.2


@pytest.mark.system
@pytest.mark.slow
def test_readings_follow_the_sensor_files(scenario):
    changed = scenario["changed"]
    assert changed is not None, "the new current never showed up"
    assert changed["rails"]["VDD_CPU_GPU_CV"] == pytest.approx(4.5)
    assert changed["amperes"]["VDD_CPU_GPU_CV"] == pytest.approx(0.9)
    assert changed["total"] == pytest.approx(7.5)


@pytest.mark.system
@pytest.mark.slow
def test_second_client_reports_the_rate_in_force(scenario):
    assert scenario["second_interval"] == pytest.approx(INTERVAL_S)
    assert any("not the requested 1 s" in line for line in scenario["warnings"]), scenario["warnings"]


@pytest.mark.system
@pytest.mark.slow
def test_service_killed_gives_sensor_errors_then_recovers(scenario):
    assert scenario["no_service"] and "not found" in scenario["no_service"]
    killed = scenario["after_kill"]
    assert len(killed) >= 2 and all(kind == "SensorReadError" for kind, _ in killed), killed
    assert "lost the jtop service" in killed[0][1]
    recovered = scenario["recovered"]
    assert recovered is not None, "no reading after the service restarted"
    assert recovered["total"] == pytest.approx(7.5)
    assert recovered["rails"]["VDD_CPU_GPU_CV"] == pytest.approx(2.0)
    assert recovered["t"] > scenario["reads"][-1]["t"]


@pytest.mark.system
@pytest.mark.slow
def test_hung_service_repeats_then_errors_without_blocking(scenario):
    seen = scenario["while_stopped"]
    assert max(took for _, _, took in seen) < 1.5 * INTERVAL_S + 0.2, seen
    # nothing new once the service hangs: at most the one sample it had in flight when SIGSTOP landed
    late = {stamp for kind, stamp, _ in seen if kind == "reading" and stamp >= scenario["stopped_at"]}
    assert len(late) <= 1, seen
    errors = [message for kind, message, _ in seen if kind == "error"]
    assert any("no new sample" in message for message in errors), seen
    assert scenario["resumed"] is not None, "no new sample after the service resumed"


@pytest.mark.system
@pytest.mark.slow
def test_auto_prefers_readable_monitors_over_a_running_service(scenario):
    name, skipped = scenario["auto_with_monitors"]
    assert name == "hwmon" and skipped == []


@pytest.mark.system
@pytest.mark.slow
def test_auto_uses_the_service_where_sysfs_is_unreadable(scenario):
    name, skipped = scenario["auto_without_sysfs"]
    assert name == "jtop"
    assert len(skipped) == 1 and skipped[0].startswith("hwmon: "), skipped


@pytest.mark.system
@pytest.mark.slow
def test_host_is_left_untouched(scenario):
    assert not scenario["host_fake_sys"]
    assert not scenario["host_socket_changed"]


def test_missing_package_is_source_unavailable():
    # -S leaves site-packages (and so jetson-stats) off the path: a really missing package.
    code = (
        "from exporter.sources import SourceUnavailable, open_source\n"
        "try:\n    open_source('jtop')\n"
        "except SourceUnavailable as exc:\n    print('unavailable:', exc)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=str(REPO), env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=30).stdout
    assert "unavailable: jetson-stats is not installed: install the jtop extra" in out, out


def test_argument_is_rejected():
    from exporter.sources import jtop as jtop_source

    with pytest.raises(ValueError, match="takes no argument"):
        jtop_source.make_source("something")


# ---------------------------------------------------------------------------
# The scenario itself: runs as PID 1 of its own mount + PID namespace.


def _timed_read(source):
    start = time.monotonic()
    reading = source.read()
    return {"t": reading.timestamp, "took": time.monotonic() - start, "total": reading.total_watts,
            "rails": reading.rails, "volts": reading.volts, "amperes": reading.amperes}


def _reads_for(source, seconds):
    """[kind, timestamp or message, seconds the call took] for every read in ``seconds``."""
    from exporter.sources import SensorReadError

    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            seen.append(["reading", source.read().timestamp, time.monotonic() - start])
        except SensorReadError as exc:
            seen.append(["error", str(exc), time.monotonic() - start])
            time.sleep(0.05)  # as the sampler would, instead of spinning
    return seen


def _read_until(source, predicate, seconds):
    from exporter.sources import SensorReadError

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            read = _timed_read(source)
        except SensorReadError:
            time.sleep(0.1)
            continue
        if predicate(read):
            return read
    return None


def _scenario(work: Path) -> dict:
    from exporter.sources import SensorReadError, SourceUnavailable, open_source
    from exporter.sources import jtop as jtop_source

    warnings = []

    class Collect(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    logging.getLogger("exporter").addHandler(Collect(logging.WARNING))

    build_fake_sys(work / "fake_sys")
    root = private_root(work, work / "fake_sys")
    os.chroot(str(root))
    os.chdir(str(REPO))
    out = {"warnings": warnings}
    try:
        jtop_source.make_source(None)
    except SourceUnavailable as exc:
        out["no_service"] = str(exc)
    service = start_service()
    try:
        source = jtop_source.make_source(None, interval_s=INTERVAL_S)
        out["interval"] = source.update_interval_s
        out["board"] = source.board
        out["reads"] = [_timed_read(source) for _ in range(5)]

        set_rail(Path("/fake_sys"), 2, 5000, 900)
        out["changed"] = _read_until(source, lambda r: r["rails"]["VDD_CPU_GPU_CV"] > 2.0, 5)

        second = jtop_source.make_source(None, interval_s=1.0)
        out["second_interval"] = second.update_interval_s
        second.close()

        build_board("/tmp/orin-sys", "orin_nano")
        os.mkdir("/tmp/no-sys")
        for key, sysfs_root in (("auto_with_monitors", "/tmp/orin-sys"), ("auto_without_sysfs", "/tmp/no-sys")):
            with open_source("auto", sysfs_root=sysfs_root, interval_s=INTERVAL_S) as chosen:
                out[key] = [chosen.name, list(chosen.auto_skipped)]

        out["stopped_at"] = time.monotonic()
        os.killpg(service.pid, signal.SIGSTOP)
        out["while_stopped"] = _reads_for(source, 3.5)
        os.killpg(service.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        out["resumed"] = _read_until(source, lambda r: r["t"] > resumed_at, 10)

        set_rail(Path("/fake_sys"), 2, 5000, 400)
        stop_service(service)
        out["after_kill"] = []
        for _ in range(3):
            try:
                source.read()
            except SensorReadError as exc:
                out["after_kill"].append([type(exc).__name__, str(exc)])
            time.sleep(0.2)
        service = start_service()
        out["recovered"] = _read_until(source, lambda r: True, 10)
        source.close()
    finally:
        stop_service(service)
    return out


if __name__ == "__main__":
    print(json.dumps(_scenario(Path(sys.argv[1]))))
