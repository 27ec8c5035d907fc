"""The landing page: served from the daemon alone, fed by its JSON API, and live in a real headless Chromium."""

import json
import math
import os
import re
import threading
import time

import pytest

from exporter import contract
from exporter.sampler import Sampler
from exporter.sources.base import PowerSource, Reading, SensorReadError
from tests.support.browser import browser_problem, chromium
from tests.support.daemon import ROOT, Daemon
from tests.support.sysfs_boards import build_board

ASSETS = {"/": "text/html; charset=utf-8", "/landing.js": "text/javascript; charset=utf-8",
          "/landing.css": "text/css; charset=utf-8"}
PAGE_BUDGET_BYTES = 32 * 1024  # page, script and style together: a Nano serves that without noticing
ARTIFACTS = os.path.join(ROOT, "tests", "artifacts")
WAIT_S = 60  # generous: the suite runs beside a CPU hog
INFERENCE = {"model": "vgg11", "power_mode": "MAXN", "batch_size": 1, "latency_s": 0.0123, "energy_j": 0.0871,
             "dynamic_energy_j": 0.0312, "power_w": 7.08}


def _wait_for(condition, what, timeout=WAIT_S):
    """Poll until ``condition()`` is truthy; its value, or a failure naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.1)


def _json(daemon, path):
    status, _, body = daemon.get(path)
    assert status == 200, (path, body)
    return json.loads(body)


def test_page_and_assets_come_from_the_daemon_with_validators_and_a_self_only_policy(tmp_path):
    with Daemon("--source", "sim") as daemon:
        total = 0
        for path, content_type in ASSETS.items():
            status, headers, body = daemon.get(path)
            assert status == 200 and headers["Content-Type"] == content_type, (path, headers)
            assert headers["Cache-Control"] == "no-cache" and headers["X-Content-Type-Options"] == "nosniff"
            policy = headers["Content-Security-Policy"]
            assert "default-src 'none'" in policy and "script-src 'self'" in policy and "http" not in policy
            assert headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in policy
            # nothing is loaded from another host, and the script talks to this daemon's API only
            assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:[a-z]+:)?//""", body), path
            assert "url(" not in body and "@import" not in body and "<script>" not in body, path
            for target in re.findall(r"""fetch\(\s*([^,)]+)""", body):
                assert target.startswith('"/api/v1/') or target == "path", (path, target)
            status, again, rest = daemon.get(path, {"If-None-Match": headers["ETag"]})
            assert status == 304 and rest == "" and again["ETag"] == headers["ETag"], (path, status)
            total += len(body.encode())
        assert total < PAGE_BUDGET_BYTES
        page = daemon.get("/")[2]
        assert re.search(r'<p id="simulated" class="banner">SIMULATED', page), "shown before any script runs"
        assert '<meta name="viewport"' in page
        print("page weight: %d bytes (page, script and style, uncompressed)" % total)

    board = build_board(tmp_path / "sys", "orin_nano")
    with Daemon("--source", "hwmon", "--sysfs-root", str(board.root)) as daemon:
        assert '<p id="simulated" class="banner" hidden>' in daemon.get("/")[2], "real hardware: no banner"


def test_samples_with_a_step_are_grid_slots_whose_means_are_the_window_energy():
    step = 0.25
    with Daemon("--source", "sim") as daemon:
        first = _wait_for(lambda: _json(daemon, "/api/v1/samples?since=0&step=%r" % step)["samples"][4:],
                          "five slots in the buffer")
        first = _json(daemon, "/api/v1/samples?since=0&step=%r" % step)
        assert first["step_s"] == step and first["simulated"] is True
        rows = first["samples"]
        times = [row["t"] for row in rows]
        assert times == sorted(set(times))
        for t in times:
            assert t / step == pytest.approx(round(t / step), abs=1e-6), "slots end on the clock's grid"
        for row in rows[1:4]:  # the first slot may begin before the oldest sample: the window API refuses it
            window = _json(daemon, "/api/v1/energy?start=%r&end=%r" % (row["t"] - step, row["t"]))
            assert window["covered_seconds"] == pytest.approx(step, rel=1e-6)
            assert row["total_w"] == pytest.approx(window["total_joules"] / window["covered_seconds"], rel=1e-9)
            for rail, watts in row["rails"].items():
                assert watts == pytest.approx(window["rails"][rail] / window["covered_seconds"], rel=1e-9)

        last = times[-1]
        newer = _wait_for(lambda: _json(daemon, "/api/v1/samples?since=%r&step=%r" % (last, step))["samples"],
                          "a new slot")
        assert newer[0]["t"] == pytest.approx(last + step) and all(row["t"] > last for row in newer)
        raw = _json(daemon, "/api/v1/samples?since=%r" % (last - step))
        assert "step_s" not in raw and len(raw["samples"]) > 1, "without a step: the samples themselves"

        for bad in ("0", "-1", "nan", "abc"):
            status, _, body = daemon.get("/api/v1/samples?since=0&step=" + bad)
            error = json.loads(body)["error"]
            assert status == 400 and "'step'" in error and "\n" not in error, (bad, body)


class _Steps(PowerSource):
    """A sensor at a set power that can be told to fail."""

    name = "steps"
    board = "test bench"

    def __init__(self, watts):
        self.watts = watts
        self.failing = threading.Event()

    def read(self):
        if self.failing.is_set():
            raise SensorReadError("injected fault: Input/output error")
        return Reading(time.monotonic(), self.watts, {"VDD_IN": self.watts})


def test_slot_means_leave_out_the_time_the_sensor_was_away():
    step = 0.1
    source = _Steps(2.0)
    sampler = Sampler(source, sample_hz=200).start()
    try:
        _wait_for(lambda: len(sampler.means(0.0, step)) >= 5, "five slots")
        source.failing.set()
        fault = time.monotonic()
        _wait_for(lambda: time.monotonic() - fault > 6 * step and not sampler.snapshot().up, "a fault of six slots")
        source.watts = 6.0
        source.failing.clear()
        back = _wait_for(lambda: sampler.snapshot().up and time.monotonic(), "the sensor back")
        _wait_for(lambda: sampler.means(back, step)[4:], "five slots after the fault")
        slots = sampler.means(0.0, step)
    finally:
        sampler.stop()
    ends = [s.timestamp for s in slots]
    missed = [n for n in range(1, len(ends)) if ends[n] - ends[n - 1] > 1.5 * step]
    assert len(missed) == 1 and ends[missed[0]] - ends[missed[0] - 1] > 5 * step, "the fault's slots, and only those"
    for n, s in enumerate(slots):  # a slot the fault cuts is the mean of what the sensor covered: 2 W or 6 W
        expected = 2.0 if n < missed[0] else 6.0
        assert s.total_watts == pytest.approx(expected) and s.rails["VDD_IN"] == pytest.approx(expected)


def test_layers_api_has_the_active_layers_and_each_models_last_results():
    rows = [{"index": n, "layer": "features.%d" % n, "op": "Conv2d", "energy_j": 0.01 * (n + 1),
             "dynamic_energy_j": 0.004 * (n + 1), "duration_s": 0.002, "power_w": 5.0 + n} for n in range(6)]
    with Daemon("--source", "sim") as daemon:
        empty = _json(daemon, "/api/v1/layers")
        assert empty == {"active": [], "models": []}
        assert daemon.post(contract.LAYER_PATH, contract.layer_event("net_a", 2, "features.2", "Conv2d",
                                                                     "begin"))[0] == 200
        for body in contract.results_bodies("net_a", rows):
            assert daemon.post(contract.RESULTS_PATH, body)[0] == 200
        for body in contract.results_bodies("net_b", rows[:2]):
            assert daemon.post(contract.RESULTS_PATH, body)[0] == 200
        assert daemon.post(contract.INFERENCE_PATH, contract.inference_body(dict(INFERENCE, model="net_a")))[0] == 200
        assert daemon.post(contract.INFERENCE_PATH, contract.inference_body(
            dict(INFERENCE, model="net_c", power_mode="15W")))[0] == 200

        status, headers, body = daemon.get("/api/v1/layers")
        data = json.loads(body)
        assert status == 200 and headers["Content-Type"] == "application/json"
        (active,) = data["active"]
        assert (active["model"], active["index"], active["layer"], active["op"]) == ("net_a", 2, "features.2",
                                                                                      "Conv2d")
        assert active["since"] <= _json(daemon, "/api/v1/status")["now"]
        assert [m["model"] for m in data["models"]] == ["net_c", "net_a", "net_b"], "most recently updated first"
        net_c, net_a, net_b = data["models"]
        assert net_a["layers"] == rows and net_b["layers"] == rows[:2]
        assert net_a["layer_sums"]["layers"] == len(rows)
        assert net_a["layer_sums"]["energy_j"] == pytest.approx(math.fsum(r["energy_j"] for r in rows))
        assert net_a["layer_sums"]["duration_s"] == pytest.approx(0.002 * len(rows))
        expected = {k: v for k, v in INFERENCE.items() if k != "model"}
        assert net_a["inference"] == [expected] and net_b["inference"] == []
        assert net_c == {"model": "net_c", "layers": [], "layer_sums": {},
                         "inference": [dict(expected, power_mode="15W")]}, "an inference alone is a profile too"

        status, _, rest = daemon.get("/api/v1/layers", {"If-None-Match": headers["ETag"]})
        assert status == 304 and rest == "", "unchanged: no body"
        daemon.post(contract.LAYER_PATH, contract.layer_event("net_a", 2, "features.2", "Conv2d", "end"))
        status, changed, body = daemon.get("/api/v1/layers", {"If-None-Match": headers["ETag"]})
        assert status == 200 and changed["ETag"] != headers["ETag"] and json.loads(body)["active"] == []


@pytest.fixture(scope="module")
def browser():
    problem = browser_problem()
    if problem:
        pytest.skip(problem)
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def _attribute(browser, element_id, name):
    return browser.find_element("id", element_id).get_attribute(name)


@pytest.mark.system
@pytest.mark.slow
def test_live_page_in_headless_chromium_draws_moves_and_shows_the_profiler(browser):
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.1)
    rows = [{"index": n, "layer": "features.%d" % n, "op": op, "energy_j": 0.004 * (n + 1) ** 1.5,
             "dynamic_energy_j": 0.0025 * (n + 1) ** 1.5, "duration_s": 0.0008 * (n + 1), "power_w": 5.2 + 0.1 * n}
            for n, op in enumerate(["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU"])]
    with Daemon("--source", "sim") as daemon:
        browser.get(daemon.url + "/")
        wait.until(lambda b: b.find_element("id", "simulated").is_displayed())
        assert "SIMULATED" in browser.find_element("id", "simulated").text

        wait.until(lambda b: int(_attribute(b, "chart", "data-points") or 0) >= 2)
        before = (int(_attribute(browser, "chart", "data-points")), float(_attribute(browser, "chart", "data-end")),
                  browser.find_element("css selector", "#chart path.total").get_attribute("d"))
        assert before[2].startswith("M") and before[2].count("L") >= 1, "the total is drawn as a line"
        wait.until(lambda b: int(_attribute(b, "chart", "data-points")) > before[0]
                   and float(_attribute(b, "chart", "data-end")) > before[1])
        after = browser.find_element("css selector", "#chart path.total").get_attribute("d")
        assert after != before[2], "the line moves"
        rails = {p.get_attribute("data-series") for p in browser.find_elements("css selector", "#chart path")}
        assert rails == {"total", "POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}
        wait.until(lambda b: b.find_element("id", "energy").text.endswith(" J")
                   and b.find_element("id", "rate").text.endswith(" Hz"))

        daemon.post(contract.LAYER_PATH, contract.layer_event("vgg11", 3, "features.3", "Conv2d", "begin"))
        wait.until(lambda b: "vgg11: layer 3 features.3 (Conv2d)" in b.find_element("id", "active").text)
        for body in contract.results_bodies("vgg11", rows):
            daemon.post(contract.RESULTS_PATH, body)
        wait.until(lambda b: len(b.find_elements("css selector", "#bars .track")) == len(rows))
        names = [e.text for e in browser.find_elements("css selector", "#bars .name")]
        assert names == ["%d %s %s" % (r["index"], r["layer"], r["op"]) for r in rows]
        widths = [e.size["width"] for e in browser.find_elements("css selector", "#bars .fill")]
        assert widths == sorted(widths) and widths[0] < widths[-1], "bars scale with each layer's energy"
        whole = browser.find_element("id", "whole").text
        assert whole.startswith("Sum over layers") and re.search(r"layers\s+%d" % len(rows), whole), whole
        daemon.post(contract.INFERENCE_PATH, contract.inference_body(INFERENCE))
        wait.until(lambda b: "Per inference" in b.find_element("id", "whole").text)
        whole = browser.find_element("id", "whole").text
        for figure in ("power mode\nMAXN", "batch size\n1", "latency\n12.3 ms", "energy\n87.1 mJ",
                       "dynamic energy\n31.2 mJ", "power\n7.08 W"):
            assert re.search(figure.replace("\n", r"\s+"), whole), (figure, whole)

        os.makedirs(ARTIFACTS, exist_ok=True)
        shot = os.path.join(ARTIFACTS, "landing.png")
        browser.save_screenshot(shot)
        print("screenshot: %s" % shot)

        browser.set_window_size(390, 844)  # a phone: nothing wider than the screen
        wait.until(lambda b: b.execute_script(
            "return document.documentElement.scrollWidth <= document.documentElement.clientWidth"))
        browser.save_screenshot(os.path.join(ARTIFACTS, "landing-phone.png"))
        browser.set_window_size(1100, 1300)

        daemon.post(contract.LAYER_PATH, contract.layer_event("vgg11", 3, "features.3", "Conv2d", "end"))
        wait.until(lambda b: b.find_element("id", "active").text == "No layer is being measured.")

    log = browser.get_log("browser")
    assert not [e for e in log if "Content Security Policy" in e["message"] or e["source"] == "javascript"], log


@pytest.mark.system
@pytest.mark.slow
def test_live_page_shows_an_active_alarm_and_over_current_throttling(browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.1)
    tree = build_board(tmp_path / "sys", "agx_orin")
    with Daemon("--source", "hwmon:" + str(tree.root)) as daemon:
        browser.get(daemon.url + "/")
        wait.until(lambda b: int(_attribute(b, "chart", "data-points") or 0) >= 1)
        assert not browser.find_element("id", "simulated").is_displayed(), "real hardware: no banner"
        assert not browser.find_element("id", "alarms").is_displayed()

        tree.set_alarm("VDD_CPU_CV", "curr_crit_alarm", True)
        tree.set_oc_events("oc3", 12)
        wait.until(lambda b: b.find_element("id", "alarms").is_displayed())
        text = browser.find_element("id", "alarms").text
        assert text.startswith("ALARM") and "VDD_CPU_CV" in text and "(curr_crit)" in text, text
        wait.until(lambda b: b.find_element("id", "throttle").text.endswith("oc3 \u00d7 12"))
        os.makedirs(ARTIFACTS, exist_ok=True)
        browser.save_screenshot(os.path.join(ARTIFACTS, "landing-alarm.png"))

        tree.set_alarm("VDD_CPU_CV", "curr_crit_alarm", False)
        wait.until(lambda b: not b.find_element("id", "alarms").is_displayed())
    log = browser.get_log("browser")
    assert not [e for e in log if "Content Security Policy" in e["message"] or e["source"] == "javascript"], log
