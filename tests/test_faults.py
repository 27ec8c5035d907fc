"""Sensor faults injected for real into a running daemon; it must notice, say so, recover, lose nothing.

Every fault is a real failure of the thing the source reads, not a mock:

==========  ===========================================  =====================================
fault       how it is made here                          the kernel/hardware failure it is
==========  ===========================================  =====================================
vanish      the rail's ``curr`` file is unlinked          ENOENT: attribute gone (driver unbound)
rename      the whole ``hwmonN`` directory is renamed     ENOENT on every rail: the chip went away
garbage     the file holds bytes that are no number       a driver printing an error string
empty       the file is empty (read(2) returns 0 bytes)   a ``show()`` that prints nothing
eio         symlink to ``/proc/self/mem`` (read at       EIO from read(2): what an INA3221 whose
            offset 0 faults in the reader's own memory)   I2C transfer fails returns
eisdir      a directory in place of the file             read(2) fails with another errno
hang        a FIFO with no writer: open(2) blocks         a hung I2C bus: a read that never ends
tegrastats  the fake tegrastats exits after N lines       tegrastats dying (and being restarted)
jtop        the real jetson-stats service SIGKILLed,      a jtop.service restart
            then started again
nvml        pynvml raises NVMLError_GPUIsLost, and the    an NVML error; a driver reload that
            energy counter restarts from 0                restarts the energy counter
rebind      every ``hwmonN`` renumbered under the         a driver unbind/bind: the chip is
            running daemon                                back under another hwmon index
==========  ===========================================  =====================================

For each: ``jetson_power_up`` is 0 within two sample periods (a hang has no
error to see, so it is caught by staleness: two periods plus 50 ms of
slack), ``/healthz`` answers 503 meanwhile, ``up`` is back within 5 s of the
sensor, energy counters never decrease, the skipped time is in
``jetson_power_gap_seconds_total`` to the microsecond, and the window API
finds no joule inside the gap.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from exporter.sampler import HANG_SLACK_S
from tests.support.daemon import ROOT, Daemon
from tests.support.jtop_fake_sys import sandbox_problem
from tests.support.sysfs_boards import build_board, hang_reads, release_reads

HZ = 100.0
PERIOD = 1.0 / HZ
RECOVERY_LIMIT_S = 5.0
OUTAGE_S = 0.6
FAKEBIN = Path(__file__).resolve().parent / "fakebin"
FIXTURE = Path(ROOT) / "tests" / "fixtures" / "tegrastats-samples.tsv"
SUMMARY = {}  # fault -> figures, printed at the end of the module


def energies(daemon):
    """(up, total J, {rail: J}, gap s) from one scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    up = total = gap = None
    rails = {}
    for family in text_string_to_metric_families(daemon.metrics()):
        for s in family.samples:
            if s.name == "jetson_power_up":
                up = s.value
            elif s.name == "jetson_energy_joules_total":
                total = s.value
            elif s.name == "jetson_energy_rail_joules_total":
                rails[s.labels["rail"]] = s.value
            elif s.name == "jetson_power_gap_seconds_total":
                gap = s.value
    return up, total, rails, gap


class Watch:
    """Scrapes the daemon and checks, scrape after scrape, that no energy counter goes back."""

    def __init__(self, daemon):
        self.daemon = daemon
        self.last = None
        self.scrapes = 0

    def scrape(self):
        up, total, rails, gap = energies(self.daemon)
        self.scrapes += 1
        if self.last is not None:
            _, last_total, last_rails, last_gap = self.last
            assert total >= last_total, "jetson_energy_joules_total went back: %r -> %r" % (last_total, total)
            for rail, joules in last_rails.items():
                assert rails.get(rail, joules) >= joules, "rail %s energy went back" % rail
            assert gap >= last_gap
        self.last = (up, total, rails, gap)
        return up, total, rails, gap

    def until(self, want_up, limit_s, poll_s=0.01):
        """Seconds until ``up`` equals ``want_up`` (fails after ``limit_s``)."""
        started = time.monotonic()
        while True:
            up = self.scrape()[0]
            waited = time.monotonic() - started
            if up == want_up:
                return waited
            assert waited < limit_s, "jetson_power_up still %r after %.1f s" % (up, waited)
            time.sleep(poll_s)


def samples_since(daemon, since):
    return [s["t"] for s in json.loads(daemon.get("/api/v1/samples?since=%r" % since)[2])["samples"]]


def check_gap_accounting(daemon, since, gap_before, gap_after, min_gap_s, threshold_s):
    """The gap counter grew by exactly the skipped intervals, none of which holds energy."""
    stamps = samples_since(daemon, since)
    gaps = [(a, b) for a, b in zip(stamps, stamps[1:]) if b - a > threshold_s]
    assert gaps, "no gap in the buffered samples"
    skipped = sum(b - a for a, b in gaps)
    assert gap_after - gap_before == pytest.approx(skipped, abs=1e-6)
    assert max(b - a for a, b in gaps) >= min_gap_s
    for a, b in gaps:
        window = json.loads(daemon.get("/api/v1/energy?start=%r&end=%r" % (a, b))[2])
        assert window["total_joules"] == pytest.approx(0.0, abs=1e-9), "energy integrated across a gap"
        assert window["covered_seconds"] == pytest.approx(0.0, abs=1e-9)
    return skipped


# --- hwmon: the sysfs files themselves fail -------------------------------------------------------


@pytest.fixture(scope="module")
def orin(tmp_path_factory):
    root = tmp_path_factory.mktemp("sys")
    board = build_board(str(root), "agx_orin")
    with Daemon("--source", "hwmon", "--sysfs-root", str(root), "--sample-hz", str(HZ)) as daemon:
        yield board, daemon, Watch(daemon)
        code, log = daemon.stop()
    assert code == 0 and "Traceback" not in log, log
    print("\nfault injection summary (hwmon at %g Hz):" % HZ)
    for fault, figures in SUMMARY.items():
        print("  %-10s %s" % (fault, figures))


RAIL = "VDD_GPU_SOC"


def _restore_rail(board):
    board.set_rail(RAIL, amps=board.amperes[RAIL])


def _fifo_release(board, path):
    release_reads(path, lambda: _restore_rail(board), b"%d\n" % int(board.amperes[RAIL] * 1000))


def _rename_chip(board, path):
    hwmon = path.parent
    hwmon.rename(hwmon.with_name(hwmon.name + ".gone"))


def _unrename_chip(board, path):
    hwmon = path.parent
    hwmon.with_name(hwmon.name + ".gone").rename(hwmon)


def _dir_in_place(path):
    path.unlink()
    path.mkdir()


def _undir(board, path):
    path.rmdir()
    _restore_rail(board)


FAULTS = {
    # name: (inject(path), restore(board, path), is_a_hang)
    "vanish": (lambda p: p.unlink(), lambda b, p: _restore_rail(b), False),
    "rename": (lambda p: _rename_chip(None, p), _unrename_chip, False),
    "garbage": (lambda p: p.write_bytes(b"\xffN/A garbage\x00"), lambda b, p: _restore_rail(b), False),
    "empty": (lambda p: p.write_bytes(b""), lambda b, p: _restore_rail(b), False),
    "eio": (lambda p: (p.unlink(), p.symlink_to("/proc/self/mem")), lambda b, p: (p.unlink(), _restore_rail(b)),
            False),
    "eisdir": (_dir_in_place, _undir, False),
    "hang": (hang_reads, _fifo_release, True),
}


def test_eio_injection_is_a_real_eio():
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as err:
            os.read(fd, 64)
    finally:
        os.close(fd)
    assert err.value.errno == 5  # EIO


@pytest.mark.parametrize("fault", list(FAULTS))
def test_hwmon_fault_is_seen_reported_and_recovered(orin, fault):
    board, daemon, watch = orin
    inject, restore, is_hang = FAULTS[fault]
    path = board.rail_file(RAIL, "amps")
    up, _, _, gap_before = watch.scrape()
    errors_before = daemon.value("jetson_power_sensor_errors_total")
    assert up == 1.0
    since = time.monotonic() - 0.2

    injected = time.monotonic()
    inject(path)
    try:
        # A failing read is down at once; a hung one once it has run a period plus HANG_SLACK_S.  Either
        # starts at most a period after the fault.  The hang's deadline is the sampler's own, so the
        # scrape that checks it gets a scheduling margin of half a period.
        limit = 2 * PERIOD + (HANG_SLACK_S + PERIOD / 2 if is_hang else 0.0)
        time.sleep(max(0.0, injected + limit - time.monotonic()))
        assert watch.scrape()[0] == 0.0, "jetson_power_up still 1 %.0f ms after the fault" % (limit * 1e3)
        detected = time.monotonic() - injected  # an upper bound: the scrape's own time is included
        status, _, body = daemon.get("/healthz")
        assert status == 503 and "sensor down" in body, body
        assert daemon.value("jetson_power_total_watts") is None, "no stale watts while down"
        time.sleep(OUTAGE_S)
        assert watch.scrape()[0] == 0.0
    finally:  # repaired even when an assertion failed, so the next fault starts from a healthy board
        restore(board, path)
    back = watch.until(1.0, RECOVERY_LIMIT_S)
    assert daemon.get("/healthz")[0] == 200
    time.sleep(3 * PERIOD)
    _, _, _, gap_after = watch.scrape()
    skipped = check_gap_accounting(daemon, since, gap_before, gap_after, OUTAGE_S, max(5 * PERIOD, 0.1))
    errors = daemon.value("jetson_power_sensor_errors_total") - errors_before
    if is_hang:
        assert errors == 0, "a hung read is not an error, only a stale sensor"
    else:
        assert errors >= 1
    assert daemon.value("jetson_power_total_watts") == pytest.approx(board.expected_total_w, rel=1e-6)
    SUMMARY[fault] = "down seen <= %.0f ms, back %.2f s after repair, gap %.3f s counted, %d errors" % (
        detected * 1e3, back, skipped, errors)


def test_hwmon_chip_rebound_under_a_new_index_is_found_again(orin):
    # A driver unbind/bind (module reload, I2C recovery) brings the chip back as another hwmonN:
    # the old files are gone for good, and no restart of the daemon may be needed.
    board, daemon, watch = orin
    up, _, _, gap_before = watch.scrape()
    assert up == 1.0
    errors_before = daemon.value("jetson_power_sensor_errors_total")
    board.renumber_hwmon(20)
    rebound = time.monotonic()
    while daemon.value("jetson_power_sensor_errors_total") == errors_before:
        assert time.monotonic() - rebound < RECOVERY_LIMIT_S, "the vanished chip was never noticed"
        time.sleep(0.002)
    back = watch.until(1.0, RECOVERY_LIMIT_S)
    watts = board.set_rail(RAIL, amps=board.amperes[RAIL] + 0.25)  # written to the new hwmonN only
    deadline = time.monotonic() + RECOVERY_LIMIT_S
    while daemon.value("jetson_power_rail_watts", rail=RAIL) != pytest.approx(watts, rel=1e-6):
        assert time.monotonic() < deadline, "the daemon still reads the old files"
        time.sleep(0.01)
    assert daemon.value("jetson_power_total_watts") == pytest.approx(board.expected_total_w, rel=1e-6)
    _, _, _, gap_after = watch.scrape()
    assert gap_after > gap_before, "the time between the last old and the first new sample is a gap"
    _restore_rail(board)
    SUMMARY["rebind"] = "found again under hwmon20/21 %.2f s after the old chip vanished, gap %.3f s counted" % (
        back, gap_after - gap_before)


# --- tegrastats: the child process dies, again and again ------------------------------------------


def test_tegrastats_that_dies_is_restarted_and_every_gap_accounted(tmp_path):
    starts = tmp_path / "starts.log"
    env = {"PATH": "%s:%s" % (FAKEBIN, os.environ["PATH"]), "FAKE_TEGRASTATS_FIXTURE": str(FIXTURE),
           "FAKE_TEGRASTATS_EXIT_AFTER": "30", "FAKE_TEGRASTATS_LOG": str(starts)}
    interval = 0.05
    with Daemon("--source", "tegrastats", "--sensor-interval", str(interval), env=env) as daemon:
        watch = Watch(daemon)
        since = time.monotonic()
        _, _, _, gap_before = watch.scrape()
        deaths, latencies, recoveries = 0, [], []
        deadline = time.monotonic() + 20
        while deaths < 2 and time.monotonic() < deadline:
            watch.until(1.0, RECOVERY_LIMIT_S)
            watch.until(0.0, 3.0, poll_s=0.005)
            seen_down = time.monotonic()
            last_good = samples_since(daemon, since)[-1]
            latencies.append(seen_down - last_good)
            assert daemon.get("/healthz")[0] == 503
            deaths += 1
            recoveries.append(watch.until(1.0, RECOVERY_LIMIT_S))
        assert deaths == 2, "tegrastats did not die twice in 20 s"
        time.sleep(0.2)
        _, _, _, gap_after = watch.scrape()
        stamps_from = since
        skipped = check_gap_accounting(daemon, stamps_from, gap_before, gap_after, 0.5, max(5 * interval, 0.1))
        code, log = daemon.stop()
    assert code == 0 and "Traceback" not in log
    assert len(starts.read_text().splitlines()) >= 3, "the daemon restarted tegrastats"
    # The last line is followed by the exit; the next read (one period later) sees it.
    assert max(latencies) <= 2 * interval + 0.03, latencies
    print("\ntegrastats died %d times: down seen %.0f ms after its last line (max), back %.2f s later "
          "(restart backoff 1 s), %.2f s of gaps counted" % (deaths, max(latencies) * 1e3, max(recoveries), skipped))


# --- NVML: the library raises, and the energy counter restarts --------------------------------------


def test_nvml_error_and_counter_reset(monkeypatch):
    from exporter.layers import LayerBoard
    from exporter.server import ExporterServer
    from exporter.sources import open_source
    from tests.support.nvml_fake import FakeGpu, FakeNvml

    gpu = FakeGpu("NVIDIA H100 80GB HBM3", 250.0)
    FakeNvml([gpu]).install(monkeypatch)
    from exporter.sampler import Sampler

    sampler = Sampler(open_source("nvml"), sample_hz=HZ)
    server = ExporterServer(("127.0.0.1", 0), sampler, LayerBoard())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    sampler.start()
    thread.start()

    class InProcess(Daemon):
        def __init__(self, port):  # the same HTTP client, pointed at the in-process server
            self.url = "http://127.0.0.1:%d" % port

    daemon = InProcess(server.server_address[1])
    try:
        assert sampler.wait_ready(2)
        watch = Watch(daemon)
        time.sleep(0.3)
        since = time.monotonic() - 0.2
        _, _, _, gap_before = watch.scrape()
        injected = time.monotonic()
        gpu.lost = True  # every NVML call now raises NVMLError_GPUIsLost
        time.sleep(max(0.0, injected + 2 * PERIOD - time.monotonic()))
        assert watch.scrape()[0] == 0.0
        assert daemon.get("/healthz")[0] == 503 and "GPU is lost" in daemon.get("/healthz")[2]
        time.sleep(OUTAGE_S)
        gpu.lost = False
        gpu._mj = 0.0  # the driver came back: its counter starts again from zero
        back = watch.until(1.0, RECOVERY_LIMIT_S)
        time.sleep(0.3)
        _, total, _, gap_after = watch.scrape()
        skipped = check_gap_accounting(daemon, since, gap_before, gap_after, OUTAGE_S, max(5 * PERIOD, 0.1))
        # after the outage the counter is integrated again: 250 W
        window_start = samples_since(daemon, injected + OUTAGE_S)[0]
        window = json.loads(daemon.get("/api/v1/energy?start=%r&end=%r" % (window_start, window_start + 0.25))[2])
        assert window["total_joules"] == pytest.approx(250.0 * 0.25, rel=0.05)

        gpu._mj = 0.0  # a driver reload with no read error: the counter restarts from zero
        reset = time.monotonic()
        time.sleep(0.3)
        _, after_reset, _, gap_reset = watch.scrape()  # Watch fails if the counter went back
        assert 0 < gap_reset - gap_after < 5 * PERIOD, "the reset interval is skipped, not integrated"
        start = samples_since(daemon, reset + 2 * PERIOD)[0]
        window = json.loads(daemon.get("/api/v1/energy?start=%r&end=%r" % (start, start + 0.2))[2])
        assert window["total_joules"] == pytest.approx(250.0 * 0.2, rel=0.05)
        assert after_reset > total
    finally:
        server.shutdown()
        server.server_close()
        sampler.stop()
    print("\nnvml: GPU lost for %.1f s: down within 2 periods, back %.2f s after, %.3f s gap counted; "
          "counter reset to 0: %.1f ms skipped, energy never went back" % (OUTAGE_S, back, skipped,
                                                                        (gap_reset - gap_after) * 1e3))


# --- jtop: the real jetson-stats service is killed and started again ------------------------------


@pytest.mark.system
@pytest.mark.slow
def test_jtop_service_restart(tmp_path):
    problem = sandbox_problem()
    if problem:
        print("jtop restart test skipped:", problem)
        pytest.skip(problem)
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("JTOP_TESTING", None)
    proc = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
         sys.executable, __file__, str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["down_after_kill_s"] <= 2 * result["period_s"] + 0.05, result
    assert result["healthz_while_down"] == 503
    assert result["back_after_restart_s"] < RECOVERY_LIMIT_S, result
    assert result["energy_monotonic"], result
    assert result["gap_grew_s"] >= result["outage_s"] - 0.5, result
    assert result["traceback"] is False
    print("\njtop: service SIGKILLed: up=0 after %.2f s (the client notices the lost socket), "
          "back %.2f s after the service socket reappeared, %.2f s gap counted"
          % (result["down_after_kill_s"], result["back_after_restart_s"], result["gap_grew_s"]))


def _jtop_scenario(work: Path) -> dict:
    """Runs as PID 1 of a private mount+PID namespace, chrooted (see tests/test_jtop.py)."""
    from tests.support.jtop_fake_sys import build_fake_sys, private_root, start_service, stop_service

    build_fake_sys(work / "fake_sys")
    root = private_root(work, work / "fake_sys")
    os.chroot(str(root))
    os.chdir(ROOT)
    service = start_service()
    out = {}
    try:
        with Daemon("--source", "jtop", "--sensor-interval", "0.2") as daemon:
            watch = Watch(daemon)
            period = json.loads(daemon.get("/api/v1/source")[2])["sample_period_s"]
            out["period_s"] = period
            time.sleep(1.0)
            gap_before = watch.scrape()[3]
            killed = time.monotonic()
            stop_service(service)
            out["down_after_kill_s"] = watch.until(0.0, 10.0)
            out["healthz_while_down"] = daemon.get("/healthz")[0]
            time.sleep(1.0)
            service = start_service()  # returns once the socket exists
            restarted = time.monotonic()
            out["outage_s"] = restarted - killed
            out["back_after_restart_s"] = watch.until(1.0, 30.0, poll_s=0.05)
            time.sleep(3 * period)
            out["gap_grew_s"] = watch.scrape()[3] - gap_before
            out["energy_monotonic"] = True  # Watch.scrape asserts it on every scrape
            _, log = daemon.stop()
            out["traceback"] = "Traceback" in log
    finally:
        stop_service(service)
    return out


if __name__ == "__main__":
    print(json.dumps(_jtop_scenario(Path(sys.argv[1]))))
