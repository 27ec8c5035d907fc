"""What the landing page costs the daemon, and (optionally) its screenshot from the simulated board.

    .venv/bin/python bench/bench_landing.py [--viewers 5] [--seconds 30]
    .venv/bin/python bench/bench_landing.py --screenshot docs/landing.png [--model resnet18]
                                            [--running mobilenet_v3_small]

1. Page weight: the bytes of the page, its script and its style (what a first visit loads).
2. Polling cost: the daemon's CPU over ``--seconds`` with no viewer, then with ``--viewers`` clients doing
   what an open page does every second (status, the new half-second slots of /api/v1/samples, the layers
   answer revalidated by its ETag, alarms where the daemon has them), and the bytes a viewer reads per second;
   then the first answer a page opening asks for (the last ten minutes of slots: run with ``--seconds 300``
   or more for a full buffer).
3. ``--screenshot PATH``: headless Chromium on the page while the profiler runs ``--model`` against the
   daemon, then ``--running`` (children granularity, 90 s and 20 s budgets): the shot shows the first profile
   (picked in the page's model list) while the second one's active layer moves.  The board is the
   simulated one, whose power follows this host's CPU load.

Figures from a shared machine move with its load: compare the figures of one run with each other.
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_daemon import cpu_seconds  # noqa: E402
from tests.support.browser import browser_problem, chromium  # noqa: E402
from tests.support.daemon import ROOT, Daemon  # noqa: E402

STEP_S = 0.5  # as exporter/web/landing.js asks
FIRST_ANSWERS = 10


def page_weight(daemon: Daemon) -> int:
    total = 0
    for path in ("/", "/landing.js", "/landing.css"):
        status, _, body = daemon.get(path)
        assert status == 200, path
        total += len(body.encode())
        print("  %-12s %6d bytes" % (path, len(body.encode())))
    return total


def viewer(port: int, stop: threading.Event, read: list) -> None:
    """One open page: the same requests landing.js makes, once a second, on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    etag, last, alarm_support = "", None, True
    while not stop.is_set():
        started = time.monotonic()
        conn.request("GET", "/api/v1/status")
        status = conn.getresponse().read()
        now = json.loads(status)["now"]
        conn.request("GET", "/api/v1/samples?since=%r&step=%r" % (now - 600 if last is None else last, STEP_S))
        samples = conn.getresponse().read()
        rows = json.loads(samples)["samples"]
        last = rows[-1]["t"] if rows else last
        conn.request("GET", "/api/v1/layers", headers={"If-None-Match": etag})
        answer = conn.getresponse()
        layers = answer.read()
        etag = answer.getheader("ETag", etag)
        alarms = b""
        if alarm_support:
            conn.request("GET", "/api/v1/alarms")
            answer = conn.getresponse()
            alarms = answer.read()
            alarm_support = answer.status != 404  # the page stops asking a daemon without alarms
        read.append(len(status) + len(samples) + len(layers) + len(alarms))
        stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))
    conn.close()


def polling_cost(daemon: Daemon, viewers: int, seconds: float) -> None:
    pid = daemon.proc.pid
    before = cpu_seconds(pid)
    time.sleep(seconds)
    idle = (cpu_seconds(pid) - before) / seconds
    stop = threading.Event()
    reads = [[] for _ in range(viewers)]
    threads = [threading.Thread(target=viewer, args=(daemon.port, stop, reads[n])) for n in range(viewers)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # past the first answers, which carry up to ten minutes of slots
    for r in reads:
        del r[:]
    before = cpu_seconds(pid)
    time.sleep(seconds)
    busy = (cpu_seconds(pid) - before) / seconds
    stop.set()
    for thread in threads:
        thread.join()
    polls = sum(len(r) for r in reads)
    per_second = sum(sum(r) for r in reads) / seconds / viewers
    print("daemon CPU, %.0f s each: no viewer %.1f %% of a core; %d viewers %.1f %% (%+.2f %% per viewer)"
          % (seconds, 100 * idle, viewers, 100 * busy, 100 * (busy - idle) / viewers))
    print("polls: %d in %.0f s (%.2f per viewer-second); a viewer reads %.0f bytes/s"
          % (polls, seconds, polls / seconds / viewers, per_second))

    # what a page opening now asks for first: up to ten minutes of slots (all of them once the daemon ran that long)
    status = json.loads(daemon.get("/api/v1/status")[2])
    target = "/api/v1/samples?since=%r&step=%r" % (status["now"] - 600, STEP_S)
    before, started = cpu_seconds(pid), time.monotonic()
    answers = [daemon.get(target)[2] for _ in range(FIRST_ANSWERS)]
    took, cpu = (time.monotonic() - started) / FIRST_ANSWERS, (cpu_seconds(pid) - before) / FIRST_ANSWERS
    slots = json.loads(answers[-1])["samples"]
    print("first answer: %d slots (%.0f s), %d bytes; %.1f ms wall, %.1f ms daemon CPU (mean of %d)"
          % (len(slots), slots[-1]["t"] - slots[0]["t"] + STEP_S, len(answers[-1]), 1e3 * took, 1e3 * cpu,
             FIRST_ANSWERS))


def screenshot(daemon: Daemon, path: str, model: str, running: str) -> None:
    problem = browser_problem()
    if problem:
        raise SystemExit("no screenshot: " + problem)
    from selenium.webdriver.support.ui import Select

    def profile(name, budget_s):
        return [sys.executable, "-m", "profiler", "--model", name, "--weights", "none", "--granularity", "children",
                "--trials", "3", "--budget-s", str(budget_s), "--exporter", daemon.url,
                "--out", os.path.join(ROOT, "results", "landing-shot")]

    browser = chromium(1100, 1350)
    try:
        browser.get(daemon.url + "/")
        time.sleep(20)  # idle before the first profile, so the chart shows the step up
        with open(os.devnull, "w") as devnull:
            subprocess.run(profile(model, 90), cwd=ROOT, check=True, stdout=devnull)
            second = subprocess.Popen(profile(running, 20), cwd=ROOT, stdout=devnull)
        try:
            # the second profile pushes its rows as it goes and becomes the newest: pick the finished one
            deadline = time.monotonic() + 120
            while True:
                if time.monotonic() > deadline or second.poll() is not None:
                    raise SystemExit("the second profile never showed an active layer")
                options = [o.get_attribute("value") for o in browser.find_elements("css selector", "#model option")]
                if running in options and Select(browser.find_element("id", "model")).first_selected_option \
                        .get_attribute("value") != model:
                    Select(browser.find_element("id", "model")).select_by_value(model)
                shown = browser.find_element("css selector", "#model").get_attribute("value") == model and \
                    browser.find_element("id", "bars").text.count("\n") > 2
                if shown and ("Measuring " + running) in browser.find_element("id", "active").text:
                    break
                time.sleep(0.05)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            browser.save_screenshot(path)
            print("screenshot: %s (simulated board; %s profiled, %s running)" % (path, model, running))
        finally:
            second.terminate()
            second.wait()
    finally:
        browser.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--screenshot", metavar="PATH")
    parser.add_argument("--model", default="resnet18", help="the profile the screenshot shows")
    parser.add_argument("--running", default="mobilenet_v3_small", help="the profile running in the screenshot")
    args = parser.parse_args()
    with Daemon("--source", "sim") as daemon:
        print("page weight: %d bytes uncompressed" % page_weight(daemon))
        if args.screenshot:
            screenshot(daemon, args.screenshot, args.model, args.running)
        else:
            polling_cost(daemon, args.viewers, args.seconds)


if __name__ == "__main__":
    main()
