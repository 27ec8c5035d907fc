"""Load: 20 concurrent scrapers for 60 s on loopback; no failed scrape, sampler jitter <= 2 periods.

One test, 60 s, run once per test session (it is not parametrized and has no
retries; deselect it with ``-k 'not load'`` for a quick run).  The daemon
reads a kernel-shaped AGX Orin sysfs tree at 100 Hz; each scraper is a
keep-alive client scraping /metrics back to back, the worst case for the
sampler thread, which competes with the handler threads for the GIL.
Jitter is measured from the sample timestamps the daemon buffered
(/api/v1/samples): the deviation of every interval from the nominal period.
"""

import http.client
import json
import threading
import time

import pytest

from tests.support.daemon import Daemon
from tests.support.prom import promtool_check
from tests.support.sysfs_boards import build_board

pytestmark = [pytest.mark.system, pytest.mark.slow]

SCRAPERS = 20
SECONDS = 60.0
HZ = 100.0


def test_load_twenty_scrapers_for_sixty_seconds(tmp_path):
    build_board(str(tmp_path), "agx_orin")
    ok = [0] * SCRAPERS
    failed = []
    latencies = []
    lock = threading.Lock()
    stop = threading.Event()

    with Daemon("--source", "hwmon", "--sysfs-root", str(tmp_path), "--sample-hz", str(HZ),
                "--log-level", "warning") as daemon:
        period = json.loads(daemon.get("/api/v1/source")[2])["sample_period_s"]
        assert period == 1.0 / HZ

        def scraper(n):
            conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
            mine = []
            while not stop.is_set():
                started = time.monotonic()
                try:
                    conn.request("GET", "/metrics")
                    response = conn.getresponse()
                    body = response.read()
                    if response.status == 200 and b"\njetson_power_up 1.0\n" in body:
                        ok[n] += 1
                        mine.append(time.monotonic() - started)
                    else:
                        failed.append((n, response.status, body[-200:]))
                except (OSError, http.client.HTTPException) as exc:
                    failed.append((n, repr(exc)))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
            conn.close()
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=scraper, args=(n,)) for n in range(SCRAPERS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(SECONDS)
        stop.set()
        for thread in threads:
            thread.join(15)
        ended = time.monotonic()
        stamps = [s["t"] for s in json.loads(daemon.get("/api/v1/samples?since=%r" % started)[2])["samples"]
                  if s["t"] <= ended]
        jitter_metric = daemon.value("jetson_power_sample_jitter_seconds")
        gap = daemon.value("jetson_power_gap_seconds_total")
        errors = daemon.value("jetson_power_sensor_errors_total")
        assert promtool_check(daemon.metrics()) == ""
        code, log = daemon.stop()

    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    jitter = sorted(abs(d - period) for d in intervals)
    p99 = jitter[int(0.99 * (len(jitter) - 1))]
    latencies.sort()
    scrapes = sum(ok)
    print("\nload: %d scrapers x %.0f s: %d scrapes (%.0f/s), %d failed; scrape latency p50 %.1f ms, p99 %.1f ms; "
          "%d samples (expected %d); interval jitter p50 %.2f ms, p99 %.2f ms, max %.2f ms (limit %.0f ms); "
          "daemon's jetson_power_sample_jitter_seconds %.2f ms; gap %.3f s"
          % (SCRAPERS, SECONDS, scrapes, scrapes / SECONDS, len(failed),
             latencies[len(latencies) // 2] * 1e3, latencies[int(0.99 * (len(latencies) - 1))] * 1e3,
             len(stamps), int((ended - started) / period), jitter[len(jitter) // 2] * 1e3, p99 * 1e3,
             jitter[-1] * 1e3, 2 * period * 1e3, (jitter_metric or 0) * 1e3, gap))
    assert not failed, failed[:5]
    assert all(count > 0 for count in ok), ok
    assert p99 <= 2 * period, "sampler jitter p99 %.1f ms > 2 periods" % (p99 * 1e3)
    assert gap == 0 and errors == 0
    assert len(stamps) >= 0.95 * (ended - started) / period
    assert code == 0 and "Traceback" not in log
