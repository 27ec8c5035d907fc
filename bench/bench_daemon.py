"""Daemon cost at 100 Hz against a sysfs tree: CPU, RSS, /metrics latency, sampling jitter.

Targets (issue 2, on a 2-core machine): CPU <= 2 % of one core, RSS <= 50 MB,
/metrics p99 <= 10 ms, sampling-interval jitter p99 <= 2 ms.

    .venv/bin/python bench/bench_daemon.py [--board agx_orin] [--seconds 30]

Phases: (1) idle sampling, CPU and RSS read from /proc while nothing scrapes;
(2) /metrics latency over sequential scrapes; jitter from the timestamps of
the buffered samples (deviation of each interval from the nominal period).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.daemon import Daemon  # noqa: E402
from tests.support.sysfs_boards import build_board  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="agx_orin", help="sysfs tree to read (tests/support/sysfs_boards.py)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the idle phase")
    parser.add_argument("--scrapes", type=int, default=1000, help="sequential /metrics requests")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as root:
        build_board(root, args.board)
        with Daemon("--source", "hwmon", "--sysfs-root", root, "--sample-hz", "100",
                    "--log-level", "warning") as daemon:
            pid = daemon.proc.pid
            time.sleep(3.0)  # warm-up: imports done, buffers allocated
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            time.sleep(args.seconds)
            cpu1, wall1 = cpu_seconds(pid), time.monotonic()
            cpu_pct = 100.0 * (cpu1 - cpu0) / (wall1 - wall0)
            rss = rss_mb(pid)

            latencies = []
            for _ in range(args.scrapes):
                start = time.perf_counter()
                with urllib.request.urlopen(daemon.url + "/metrics", timeout=10) as response:
                    response.read()
                latencies.append(time.perf_counter() - start)

            since = time.monotonic() - args.seconds
            with urllib.request.urlopen(daemon.url + "/api/v1/samples?since=%r" % since, timeout=10) as response:
                samples = json.loads(response.read())["samples"]
            stamps = [s["t"] for s in samples]
            deviations = [abs((b - a) - 0.01) for a, b in zip(stamps, stamps[1:])]
            rss_after = rss_mb(pid)

    print("board tree: %s, 100 Hz, %.0f s idle phase, %d scrapes" % (args.board, args.seconds, args.scrapes))
    print("daemon CPU (idle sampling):   %.2f %% of one core   (target <= 2 %%)" % cpu_pct)
    print("daemon RSS:                   %.1f MB (%.1f MB after scrapes)   (target <= 50 MB)" % (rss, rss_after))
    print("/metrics latency:             p50 %.2f ms, p99 %.2f ms   (target p99 <= 10 ms)"
          % (1e3 * statistics.median(latencies), 1e3 * percentile(latencies, 0.99)))
    print("sampling-interval jitter:     p50 %.3f ms, p99 %.3f ms, max %.3f ms over %d intervals"
          "   (target p99 <= 2 ms)"
          % (1e3 * statistics.median(deviations), 1e3 * percentile(deviations, 0.99), 1e3 * max(deviations),
             len(deviations)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
