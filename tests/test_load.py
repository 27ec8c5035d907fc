"""Load: 20 unthrottled scrapers for 60 s on loopback; the sampler is never starved, bad writes get their 4xx.

One test, 60 s, run once per test session (it is not parametrized and has no
retries; deselect it with ``-k 'not load'`` for a quick run).  The daemon
reads a kernel-shaped AGX Orin sysfs tree at 100 Hz; each scraper is a
keep-alive client scraping /metrics back to back, the worst case for the
sampler thread, which shares the GIL with the handler threads.  Meanwhile a
writer posts oversized, malformed and slow bodies: each must get its 4xx,
never a reset.  What the sampler kept is read from the samples the daemon
buffered (/api/v1/samples), measured in sample periods: at least 99 % of the
samples the period allows, no pause longer than the 5 periods that would
make a gap, and no gap counted.  What the scrapes cost the sampler is told
apart from what the machine costs any thread: beside the daemon, a bare
sleep loop in its own process (no GIL to share) keeps the same grid.  While
handlers are busy the sampler sleeps twice per sample (it queues for its
turn a millisecond early), so a machine that delays the bare loop's one
wake-up delays the sampler's two: it may lose at most twice the samples the
bare loop lost, plus 1 %, and pause at most twice as long (5 periods and no
gap on a machine that leaves the bare loop alone).
"""

import http.client
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from exporter.sampler import GAP_PERIODS, MIN_GAP_S
from tests.support.daemon import Daemon
from tests.support.prom import promtool_check
from tests.support.sysfs_boards import build_board

pytestmark = [pytest.mark.system, pytest.mark.slow]

SCRAPERS = 20
SECONDS = 60.0
HZ = 100.0
OVERSIZED_BYTES = 1 << 20  # 16 x the write API's body limit

# The control: the sampler's own timing loop with nothing to read and no GIL to share; prints its wake-ups.
BARE_LOOP = """
import sys, time
period, seconds = float(sys.argv[1]), float(sys.argv[2])
stamps, next_t = [], time.monotonic()
end = next_t + seconds
while next_t < end:
    delay = next_t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    now = time.monotonic()
    stamps.append(now)
    next_t += period
    if next_t < now:
        next_t = now + period
print(" ".join(repr(t) for t in stamps))
"""


def _kept_and_longest(stamps, seconds, period):
    """(fraction of the samples the period allows, longest interval in periods)."""
    return len(stamps) * period / seconds, max(b - a for a, b in zip(stamps, stamps[1:])) / period


def _post(port, body, length=None):
    """(status, reason) of one POST /api/v1/layer on a fresh connection; a reset is the failure we look for."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("POST", "/api/v1/layer")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)) if length is None else length)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return None, repr(exc)
    finally:
        conn.close()


def _slow_post(port):
    """Headers, a tenth of the announced body, then silence: the daemon's read timeout must answer 408."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /api/v1/layer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"{" * 10)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            return None, repr(exc)
    status = data.split(b" ", 2)[1] if data.startswith(b"HTTP/1.") else b""
    return (int(status) if status.isdigit() else None), data[:200]


def test_load_twenty_scrapers_for_sixty_seconds(tmp_path):
    build_board(str(tmp_path), "agx_orin")
    ok = [0] * SCRAPERS
    failed = []
    down = []  # answered, but with the sensor down: what a gap in the sampling shows a scraper
    latencies = []
    writes = []  # (what, expected status, status, body)
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
                    elif response.status == 200:
                        down.append(n)
                    else:
                        failed.append((n, response.status, body[-200:]))
                except (OSError, http.client.HTTPException) as exc:
                    failed.append((n, repr(exc)))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
            conn.close()
            with lock:
                latencies.extend(mine)

        def writer():
            while not stop.is_set():
                writes.append(("oversized", 413) + _post(daemon.port, b"[" * OVERSIZED_BYTES))
                writes.append(("not JSON", 400) + _post(daemon.port, b'{"model": '))
                writes.append(("bad Content-Length", 400) + _post(daemon.port, b"{}", length="12abc"))
                stop.wait(0.5)

        def slow_writer():
            while not stop.is_set():
                writes.append(("slow body", 408) + _slow_post(daemon.port))

        threads = [threading.Thread(target=scraper, args=(n,)) for n in range(SCRAPERS)]
        threads += [threading.Thread(target=writer), threading.Thread(target=slow_writer)]
        control = subprocess.Popen([sys.executable, "-c", BARE_LOOP, repr(period), repr(SECONDS)],
                                   stdout=subprocess.PIPE, text=True)
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(SECONDS)
        stop.set()
        control_stamps = [float(t) for t in control.communicate(timeout=30)[0].split()]
        for thread in threads:
            thread.join(40)
        ended = time.monotonic()
        stamps = [s["t"] for s in json.loads(daemon.get("/api/v1/samples?since=%r" % started)[2])["samples"]
                  if s["t"] <= ended]
        gap = daemon.value("jetson_power_gap_seconds_total")
        errors = daemon.value("jetson_power_sensor_errors_total")
        assert promtool_check(daemon.metrics()) == ""
        code, log = daemon.stop()

    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    jitter = sorted(abs(d - period) for d in intervals)
    latencies.sort()
    scrapes = sum(ok)
    kept, longest = _kept_and_longest(stamps, ended - started, period)
    bare_kept, bare_longest = _kept_and_longest(control_stamps, SECONDS, period)
    wrong = [w for w in writes if w[2] != w[1]]
    print("\nload: %d scrapers x %.0f s: %d scrapes (%.0f/s), %d failed, %d with the sensor down; scrape latency "
          "p50 %.1f ms, p99 %.1f ms; samples kept %.2f %%, longest pause %.1f periods (bare loop beside it: "
          "%.2f %%, %.1f periods); interval jitter p50 %.2f ms, p99 %.2f ms; gap %.3f s; %d bad writes "
          "(oversized, not JSON, bad length, slow) answered, %d not with their 4xx"
          % (SCRAPERS, SECONDS, scrapes, scrapes / SECONDS, len(failed), len(down),
             latencies[len(latencies) // 2] * 1e3, latencies[int(0.99 * (len(latencies) - 1))] * 1e3,
             100 * kept, longest, 100 * bare_kept, bare_longest, jitter[len(jitter) // 2] * 1e3,
             jitter[int(0.99 * (len(jitter) - 1))] * 1e3, gap, len(writes), len(wrong)))
    assert not failed, failed[:5]
    assert all(count > 0 for count in ok), ok
    assert 1 - kept <= 2 * max(0.0, 1 - bare_kept) + 0.01, "the sampler lost samples"
    assert longest <= max(5, 2 * bare_longest), "the sampler paused %.1f periods" % longest
    assert errors == 0
    if 2 * bare_longest * period <= max(GAP_PERIODS * period, MIN_GAP_S):
        assert gap == 0 and not down, (gap, len(down))
    assert not wrong, wrong[:5]
    assert {w[0] for w in writes} == {"oversized", "not JSON", "bad Content-Length", "slow body"}
    assert code == 0 and "Traceback" not in log
