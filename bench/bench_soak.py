"""Soak: the daemon at 100 Hz for ten minutes with scrapes and profiler pushes; RSS drift and gaps.

Target (issue 5): RSS drift under 1 MB after warm-up, and no sample gap.

    .venv/bin/python bench/bench_soak.py [--minutes 10] [--board agx_orin] [--json FILE]

The daemon reads a kernel-shaped sysfs tree (tests/support/sysfs_boards.py) through
the hwmon source, the path a real board takes.  While it runs:

* ``--scrapers`` Prometheus-like clients GET /metrics every ``--scrape-interval``
  seconds (one of them asks for OpenMetrics);
* a profiler-like client loops over ``--models`` models (more than the
  daemon's ``max_models``, so eviction runs too): for each layer a ``begin``
  then an ``end`` event, after each pass the results, and a window-API
  query for the pass, ``--passes-per-s`` passes a second;
* the daemon's VmRSS is read from /proc every 5 s, and the buffered sample
  timestamps are fetched every 20 s to find every interval longer than the
  sampler's gap threshold.

RSS drift is the mean RSS of the last minute minus that of the first minute
after the warm-up (default: a fifth of the run, at most two minutes); the
end-point difference and the slope of a least-squares line through the
post-warm-up readings are printed too.
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.daemon import Daemon  # noqa: E402
from tests.support.sysfs_boards import build_board  # noqa: E402

GAP_PERIODS = 5  # the sampler's own gap threshold (exporter/sampler.py), in periods


def rss_kb(pid: int) -> int:
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


def slope_per_minute(points):
    """Least-squares slope of (t seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    ts = [t for t, _ in points]
    vs = [v for _, v in points]
    mt, mv = statistics.fmean(ts), statistics.fmean(vs)
    den = sum((t - mt) ** 2 for t in ts)
    return 60.0 * sum((t - mt) * (v - mv) for t, v in points) / den if den else 0.0


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {}
        self.failed = {}
        self.errors = []

    def add(self, kind, good, detail=""):
        with self.lock:
            table = self.ok if good else self.failed
            table[kind] = table.get(kind, 0) + 1
            if not good and len(self.errors) < 20:
                self.errors.append("%s: %s" % (kind, detail))


def request(conn, method, path, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    hdrs = dict(headers or {})
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=hdrs)
    response = conn.getresponse()
    return response.status, response.read()


def scraper(port, interval, stop, counters, openmetrics):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Accept": "application/openmetrics-text;version=1.0.0"} if openmetrics else {}
    next_t = time.monotonic()
    while not stop.is_set():
        try:
            status, body = request(conn, "GET", "/metrics", headers=headers)
            counters.add("scrape", status == 200 and b"jetson_power_up" in body, status)
        except (OSError, http.client.HTTPException) as exc:
            counters.add("scrape", False, exc)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        next_t += interval
        stop.wait(max(0.0, next_t - time.monotonic()))
    conn.close()


def profiler(port, models, layers, passes_per_s, stop, counters):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    period = 1.0 / passes_per_s
    n = 0
    next_t = time.monotonic()
    while not stop.is_set():
        model = "soak_model_%d" % (n % models)
        n += 1
        try:
            began = time.monotonic()
            results = []
            for index in range(layers):
                event = {"model": model, "index": index, "layer": "Conv2d_%d" % index, "op": "Conv2d"}
                status, _ = request(conn, "POST", "/api/v1/layer", dict(event, state="begin"))
                counters.add("push", status == 200, status)
                status, _ = request(conn, "POST", "/api/v1/layer", dict(event, state="end"))
                counters.add("push", status == 200, status)
                results.append({"index": index, "layer": event["layer"], "op": "Conv2d", "energy_j": 0.01,
                                "dynamic_energy_j": 0.004, "duration_s": 0.002, "power_w": 5.0})
            status, _ = request(conn, "POST", "/api/v1/results", {"model": model, "layers": results})
            counters.add("push", status == 200, status)
            status, body = request(conn, "GET", "/api/v1/energy?start=%r&end=%r" % (began, time.monotonic()))
            counters.add("window", status == 200, body[:200])
        except (OSError, http.client.HTTPException) as exc:
            counters.add("push", False, exc)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        next_t += period
        stop.wait(max(0.0, next_t - time.monotonic()))
    conn.close()


def fetch_samples(port, since):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        status, body = request(conn, "GET", "/api/v1/samples?since=%r" % since)
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError("samples API answered %d" % status)
    return [s["t"] for s in json.loads(body)["samples"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    parser.add_argument("--warmup-minutes", type=float, default=None,
                        help="excluded from the drift (default: a fifth of the run, at most 2)")
    parser.add_argument("--board", default="agx_orin", help="sysfs tree to read (tests/support/sysfs_boards.py)")
    parser.add_argument("--hz", type=float, default=100.0, help="--sample-hz of the daemon")
    parser.add_argument("--scrapers", type=int, default=4)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--models", type=int, default=7, help="models pushed (daemon keeps 5)")
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--passes-per-s", type=float, default=5.0)
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    duration = args.minutes * 60.0
    warmup = args.warmup_minutes * 60.0 if args.warmup_minutes is not None else min(120.0, duration / 5)

    counters = Counters()
    stop = threading.Event()
    rss = []
    stamps = []
    with tempfile.TemporaryDirectory() as root:
        build_board(root, args.board)
        with Daemon("--source", "hwmon", "--sysfs-root", root, "--sample-hz", str(args.hz),
                    "--log-level", "warning") as daemon:
            pid = daemon.proc.pid
            period = json.loads(daemon.get("/api/v1/source")[2])["sample_period_s"]
            threads = [threading.Thread(target=scraper, args=(daemon.port, args.scrape_interval, stop, counters,
                                                              n == 0), daemon=True)
                       for n in range(args.scrapers)]
            threads.append(threading.Thread(target=profiler, args=(daemon.port, args.models, args.layers,
                                                                   args.passes_per_s, stop, counters),
                                            daemon=True))
            started = time.monotonic()
            since = started
            for thread in threads:
                thread.start()
            print("soak: %.1f min at %g Hz (period %.1f ms), warm-up %.0f s, daemon pid %d"
                  % (args.minutes, args.hz, period * 1e3, warmup, pid), flush=True)
            next_fetch = started + 20
            while True:
                now = time.monotonic()
                elapsed = now - started
                if elapsed >= duration:
                    break
                rss.append((elapsed, rss_kb(pid)))
                if now >= next_fetch:
                    new = fetch_samples(daemon.port, since)
                    stamps.extend(new)
                    since = new[-1] if new else since
                    next_fetch = now + 20
                    print("  %5.0f s  RSS %.1f MB  samples %d" % (elapsed, rss[-1][1] / 1024, len(stamps)),
                          flush=True)
                time.sleep(min(5.0, duration - elapsed))
            stop.set()
            for thread in threads:
                thread.join(15)
            rss.append((time.monotonic() - started, rss_kb(pid)))  # before the big last fetch below
            stamps.extend(fetch_samples(daemon.port, since))
            gap_s = daemon.value("jetson_power_gap_seconds_total")
            samples_total = daemon.value("jetson_power_samples_total")
            errors_total = daemon.value("jetson_power_sensor_errors_total")
            evicted = daemon.value("jetson_exporter_layer_series_evicted_total")
            code, log = daemon.stop()

    stamps = [t for t in stamps if t >= started]
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    threshold = max(GAP_PERIODS * period, 0.1)
    gaps = [d for d in intervals if d > threshold]
    jitter = sorted(abs(d - period) for d in intervals)
    after = [(t, kb) for t, kb in rss if t >= warmup]
    warm_kb = after[0][1] if after else rss[0][1]
    # The periodic sample fetch makes a sawtooth of ~1 MB: compare minute means as well as end points.
    first_minute = [kb for t, kb in after if t < warmup + 60] or [warm_kb]
    last_minute = [kb for t, kb in after if t >= rss[-1][0] - 60] or [rss[-1][1]]
    mean_drift_mb = (statistics.fmean(last_minute) - statistics.fmean(first_minute)) / 1024
    figures = {
        "minutes": args.minutes,
        "sample_hz": args.hz,
        "period_ms": period * 1e3,
        "warmup_s": warmup,
        "rss_start_mb": rss[0][1] / 1024,
        "rss_after_warmup_mb": warm_kb / 1024,
        "rss_end_mb": rss[-1][1] / 1024,
        "rss_max_after_warmup_mb": max(kb for _, kb in after) / 1024 if after else None,
        "rss_drift_after_warmup_mb": (rss[-1][1] - warm_kb) / 1024,
        "rss_drift_minute_means_mb": mean_drift_mb,
        "rss_slope_after_warmup_kb_per_min": slope_per_minute(after),
        "samples_seen": len(stamps),
        "samples_expected": int(duration / period),
        "samples_total_metric": samples_total,
        "sensor_errors_total": errors_total,
        "gap_seconds_total": gap_s,
        "gaps_over_threshold": len(gaps),
        "gap_threshold_ms": threshold * 1e3,
        "longest_interval_ms": max(intervals) * 1e3 if intervals else None,
        "jitter_p50_ms": jitter[len(jitter) // 2] * 1e3 if jitter else None,
        "jitter_p99_ms": jitter[int(0.99 * (len(jitter) - 1))] * 1e3 if jitter else None,
        "requests_ok": counters.ok,
        "requests_failed": counters.failed,
        "layer_series_evicted_total": evicted,
        "daemon_exit_code": code,
        "traceback_in_log": "Traceback" in log,
    }
    print(json.dumps(figures, indent=2))
    if counters.errors:
        print("first failures:", *counters.errors, sep="\n  ")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    ok = (mean_drift_mb < 1.0 and not gaps and not counters.failed
          and code == 0 and not figures["traceback_in_log"])
    print("soak: %s (target: RSS drift (minute means) < 1 MB after warm-up, no gap, no failed request)"
          % ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
