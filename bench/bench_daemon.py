"""Daemon cost against a bare read loop, and the sampler under 20 unthrottled scrapers.

    .venv/bin/python bench/bench_daemon.py [--board agx_orin] [--seconds 30] [--load-seconds 30]

Phases, each printing its figures:

1. Cost, side by side: the daemon sampling the sysfs tree at its default rate (the sensor's update rate,
   at most 200 Hz) while nothing scrapes, and beside it, in its own process and over the same wall-clock
   window, a bare Python loop that ``pread``s the same value files at the same rate.  CPU of each from
   /proc, and their ratio (target <= 1.5).  Sampling-interval jitter at rest from the buffered samples'
   timestamps (target p99 <= 2 ms); RSS.
2. /metrics latency over sequential scrapes.
3. Load: 20 keep-alive clients scraping /metrics back to back; samples kept (target >= 99 %), the longest
   pause in sample periods (target <= 5), gap seconds (target 0), interval jitter.

Figures from a shared machine move with its load: compare the figures of one run with each other.
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.daemon import Daemon  # noqa: E402
from tests.support.sysfs_boards import build_board  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SCRAPERS = 20


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS for pid %d" % pid)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bare_loop(hz: float, paths) -> None:
    """The floor: read every value file at the daemon's rate, parse it, nothing else (runs until killed)."""
    fds = [os.open(path, os.O_RDONLY) for path in paths]
    period = 1.0 / hz
    next_t = time.monotonic()
    while True:
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sum(int(os.pread(fd, 64, 0)) for fd in fds)
        next_t += period


def buffered_stamps(daemon: Daemon, since: float, until: float):
    body = daemon.get("/api/v1/samples?since=%r" % since)[2]
    return [s["t"] for s in json.loads(body)["samples"] if s["t"] <= until]


def intervals_report(stamps, period: float) -> str:
    deviations = [abs((b - a) - period) for a, b in zip(stamps, stamps[1:])]
    return "p50 %.3f ms, p99 %.3f ms, max %.3f ms over %d intervals" % (
        1e3 * statistics.median(deviations), 1e3 * percentile(deviations, 0.99), 1e3 * max(deviations),
        len(deviations))


def cost_phase(daemon: Daemon, board, period: float, seconds: float) -> None:
    paths = []
    for rail in board.rails:
        paths += [str(board.rail_file(rail, "volts")), str(board.rail_file(rail, "amps"))]
    bare = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--bare-loop", repr(1.0 / period)] + paths)
    try:
        time.sleep(3.0)  # warm-up: imports done, buffers allocated
        pids = (daemon.proc.pid, bare.pid)
        cpu0, wall0 = [cpu_seconds(pid) for pid in pids], time.monotonic()
        time.sleep(seconds)
        cpu1, wall1 = [cpu_seconds(pid) for pid in pids], time.monotonic()
    finally:
        bare.kill()
        bare.wait()
    daemon_pct, bare_pct = (100.0 * (b - a) / (wall1 - wall0) for a, b in zip(cpu0, cpu1))
    print("sampling at %.1f Hz (%d value files per sample), %.0f s, nothing scraping:" % (1.0 / period, len(paths),
                                                                                     seconds))
    print("  daemon CPU:                 %.2f %% of one core" % daemon_pct)
    print("  bare pread loop CPU:        %.2f %% of one core   (same files, same rate, same window)" % bare_pct)
    print("  ratio daemon / bare loop:   %.2f   (target <= 1.5)" % (daemon_pct / bare_pct))
    print("  sampling-interval jitter:   %s   (target p99 <= 2 ms)"
          % intervals_report(buffered_stamps(daemon, wall0, wall1), period))
    print("  daemon RSS:                 %.1f MB" % rss_mb(daemon.proc.pid))


def latency_phase(daemon: Daemon, scrapes: int) -> None:
    latencies = []
    for _ in range(scrapes):
        start = time.perf_counter()
        with urllib.request.urlopen(daemon.url + "/metrics", timeout=10) as response:
            response.read()
        latencies.append(time.perf_counter() - start)
    print("/metrics latency, %d sequential scrapes: p50 %.2f ms, p99 %.2f ms; RSS after %.1f MB"
          % (scrapes, 1e3 * statistics.median(latencies), 1e3 * percentile(latencies, 0.99), rss_mb(daemon.proc.pid)))


def load_phase(daemon: Daemon, period: float, seconds: float) -> None:
    stop = threading.Event()
    done = [0] * SCRAPERS
    failed = []

    def scraper(n):
        conn = http.client.HTTPConnection(daemon.host, daemon.port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("GET", "/metrics")
                response = conn.getresponse()
                response.read()
                done[n] += 1
                if response.status != 200:
                    failed.append(response.status)
            except (OSError, http.client.HTTPException) as exc:
                failed.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(daemon.host, daemon.port, timeout=10)
        conn.close()

    gap0 = daemon.value("jetson_power_gap_seconds_total")
    threads = [threading.Thread(target=scraper, args=(n,)) for n in range(SCRAPERS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    ended = time.monotonic()
    stamps = buffered_stamps(daemon, started, ended)
    gap = daemon.value("jetson_power_gap_seconds_total") - gap0
    longest = max(b - a for a, b in zip(stamps, stamps[1:]))
    expected = (ended - started) / period
    print("%d scrapers x %.0f s: %d scrapes (%.0f/s), %d failed" % (SCRAPERS, seconds, sum(done),
                                                                   sum(done) / seconds, len(failed)))
    print("  samples kept:               %d of %.0f (%.2f %%)   (target >= 99 %%)"
          % (len(stamps), expected, 100.0 * len(stamps) / expected))
    print("  longest pause:              %.1f ms = %.1f sample periods   (target <= 5)" % (longest * 1e3,
                                                                                       longest / period))
    print("  gap counted:                %.3f s   (target 0)" % gap)
    print("  sampling-interval jitter:   %s" % intervals_report(stamps, period))


def main() -> int:
    if sys.argv[1:2] == ["--bare-loop"]:
        bare_loop(float(sys.argv[2]), sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="agx_orin", help="sysfs tree to read (tests/support/sysfs_boards.py)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the cost phase")
    parser.add_argument("--scrapes", type=int, default=1000, help="sequential /metrics requests")
    parser.add_argument("--load-seconds", type=float, default=30.0, help="length of the 20-scraper phase")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        board = build_board(root, args.board)
        with Daemon("--source", "hwmon", "--sysfs-root", root, "--log-level", "warning") as daemon:
            period = json.loads(daemon.get("/api/v1/source")[2])["sample_period_s"]
            print("board tree: %s (machine: %d CPUs, load average %.2f at start)"
                  % (args.board, os.cpu_count(), os.getloadavg()[0]))
            cost_phase(daemon, board, period, args.seconds)
            latency_phase(daemon, args.scrapes)
            load_phase(daemon, period, args.load_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
