"""End to end: the real daemon replays a trace, a real Prometheus scrapes it with the repository's config.

Two more daemons read sysfs trees (a replay has no alarm files): an AGX Orin
(alarm flags, over-current counters) and a Nano (thermal throttles), so that
after a few scrapes every PromQL expression of the Grafana dashboard
(template variables substituted, both boards selected) and every recording rule
of rules.yml returns data; once the trace has ended, the energy Prometheus holds
matches the trace's exact energy within 1 %, and an alarm flag raised in the
tree fires its alert.  Also `promtool check metrics` on the live exposition.
"""

import math
import re
import subprocess
import time

import pytest
import yaml

from exporter import contract
from exporter.sources.replay import trace_energy_joules
from tests.support import prom
from tests.support.daemon import Daemon, write_trace
from tests.support.sysfs_boards import build_board

pytestmark = [pytest.mark.system, pytest.mark.slow]

TRACE_S = 14.0  # long enough for >= 6 scrapes while the sensor is up
ROW_S = 0.02
SCRAPE_S = 1
MODEL = "resnet18"
RESULTS = [
    {"index": i, "layer": name, "op": op, "energy_j": 0.01 * (i + 1), "dynamic_energy_j": 0.004 * (i + 1),
     "duration_s": 0.002 * (i + 1), "power_w": 5.0 + i}
    for i, (name, op) in enumerate([("conv1", "Conv2d"), ("bn1", "BatchNorm2d"), ("relu", "ReLU"),
                                    ("layer1.0.conv1", "Conv2d"), ("fc", "Linear")])
]


def make_trace(path):
    """A board whose power wanders between ~4 and ~14 W across two rails, one row every 20 ms."""
    rows, gpu, cpu = [], [], []
    n = int(TRACE_S / ROW_S)
    for k in range(n + 1):
        t = k * ROW_S
        g = 6.0 + 4.0 * math.sin(2 * math.pi * t / 5.0) + (1.5 if int(t) % 3 == 0 else 0.0)
        c = 2.5 + 0.5 * math.cos(2 * math.pi * t / 3.0)
        gpu.append(g)
        cpu.append(c)
        rows.append((t, g + c + 0.8))
    return write_trace(str(path), rows, {"VDD_GPU_SOC": gpu, "VDD_CPU_CV": cpu})


def rule_records():
    with open(prom.RULES_YML) as handle:
        groups = yaml.safe_load(handle)["groups"]
    return [rule["record"] for group in groups for rule in group["rules"] if "record" in rule]


def test_dashboard_rules_and_energy_against_real_prometheus(tmp_path, record_property):
    trace = make_trace(tmp_path / "trace.csv")
    exact_total, exact_rails = trace_energy_joules(trace)
    port = prom.free_port()
    target = "127.0.0.1:%d" % port
    orin, nano = (build_board(tmp_path / key, key) for key in ("agx_orin", "nano"))
    ports = [prom.free_port(), prom.free_port()]
    board_targets = ["127.0.0.1:%d" % p for p in ports]
    config = prom.derive_config(target, scrape_interval="%ds" % SCRAPE_S)
    config["scrape_configs"][0]["static_configs"][0]["targets"].extend(board_targets)

    with prom.Prometheus(config) as prometheus, \
            Daemon("--source", "hwmon:" + str(orin.root), port=ports[0]) as orin_daemon, \
            Daemon("--source", "hwmon:" + str(nano.root), port=ports[1]) as nano_daemon:
        # Prometheus syncs its targets a few seconds after start: start the replay only once it
        # scrapes (and fails), so the counter is first scraped within a scrape interval of its birth.
        prometheus.wait_for('up{job="%s", instance="%s"}' % (prom.JOB, target), timeout=15)
        with Daemon("--source", "replay:" + trace, "--sample-hz", "100", port=port) as daemon:
            started = time.monotonic()
            check_live(prometheus, [daemon, orin_daemon, nano_daemon], [target] + board_targets, started)
            total, rails, window = check_after_trace(prometheus, daemon, target, started)
        check_alarm_fires(prometheus, orin, board_targets[0])

    error = (total - exact_total) / exact_total
    record_property("trace_energy_j", exact_total)
    record_property("promql_energy_j", total)
    record_property("relative_error", error)
    print("\ntrace energy %.3f J, PromQL jetson_energy_joules_total %.3f J (%+.3f %%), "
          "increase()[5m] %.3f J (%+.3f %%)"
          % (exact_total, total, 100 * error, window, 100 * (window - exact_total) / exact_total))
    assert total == pytest.approx(exact_total, rel=0.01)
    assert set(rails) == set(exact_rails)
    for rail, joules in exact_rails.items():
        assert rails[rail] == pytest.approx(joules, rel=0.01), rail


def check_live(prometheus, daemons, targets, started):
    """While the trace plays: lint, scrapes, recording rules, variables and every dashboard query."""
    daemon, target = daemons[0], targets[0]
    assert daemon.post("/api/v1/results", {"model": MODEL, "layers": RESULTS})[0] == 200
    assert daemon.post("/api/v1/layer", {"model": MODEL, "index": 3, "layer": "layer1.0.conv1",
                                         "op": "Conv2d", "state": "begin"})[0] == 200
    for mode, scale in (("MAXN", 1.0), ("MODE_15W", 0.8)):  # the power-mode panels compare the two
        assert daemon.post(contract.INFERENCE_PATH, {
            "model": MODEL, "power_mode": mode, "batch_size": 4, "latency_s": 0.02 / scale, "energy_j": 0.3 * scale,
            "dynamic_energy_j": 0.1 * scale, "power_w": 15.0 * scale * scale})[0] == 200

    # promtool's own linter on what Prometheus is scraping.
    for each in daemons:
        lint = subprocess.run([prom.binary("promtool"), "check", "metrics"], input=each.metrics(),
                              capture_output=True, text=True, timeout=30)
        assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), \
            lint.stdout + lint.stderr

    prometheus.wait_for_scrapes(5 * len(targets))  # five of each target
    for record in rule_records():
        prometheus.wait_for(record, timeout=10)
    assert time.monotonic() - started < TRACE_S - 2, "too slow: the trace ended before the checks"

    dashboard = prom.load_dashboard()
    # Every metric the dashboard and the rules query is one these daemons export.
    from prometheus_client.parser import text_string_to_metric_families

    exported = {sample.name for each in daemons for family in text_string_to_metric_families(each.metrics())
                for sample in family.samples}
    with open(prom.RULES_YML) as handle:
        rule_exprs = [r["expr"] for g in yaml.safe_load(handle)["groups"] for r in g["rules"]]
    exprs = [q["expr"] for q in prom.dashboard_queries(dashboard)] + rule_exprs \
        + list(prom.variable_queries(dashboard).values())
    queried = set().union(*(prom.queried_metrics(e) for e in exprs)) - prom.PROMETHEUS_SERIES
    assert queried <= exported, "queried but not exported: %s" % sorted(queried - exported)

    # Every board selected, as Grafana sends several values of a variable: a regex alternation.
    variables = {"instance": "(%s)" % "|".join(targets), "model": MODEL}
    for name, query in prom.variable_queries(dashboard).items():
        expr = prom.substitute(prom.label_values_as_promql(query), variables, 60, SCRAPE_S)
        label = re.search(r",\s*(\w+)\s*\)\s*$", query).group(1)
        found = {item["metric"].get(label) for item in prometheus.query(expr)}
        assert {"instance": target, "model": MODEL}[name] in found, (name, expr, found)
    assert set(targets) == {item["metric"].get("instance") for item in prometheus.query("up")}

    range_s = max(int(time.monotonic() - started) + 2, 5)
    empty = []
    for query in prom.dashboard_queries(dashboard):
        expr = prom.substitute(query["expr"], variables, range_s, SCRAPE_S)
        if not prometheus.query(expr):
            empty.append("%s/%s: %s" % (query["panel"], query["refId"], expr))
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

    rules = prometheus.api("rules")["groups"]
    unhealthy = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    firing = [r["name"] for g in rules for r in g["rules"] if r["type"] == "alerting" and r["state"] != "inactive"]
    assert not firing, "alerts pending or firing on a healthy board: %s" % firing


def check_alarm_fires(prometheus, tree, target):
    """An alarm flag raised in the board's tree: the dashboard's series turns 1 and its alert fires."""
    tree.set_alarm("VDD_GPU_SOC", "curr_crit_alarm", True)
    sel = '{instance="%s", rail="VDD_GPU_SOC", kind="curr_crit"}' % target
    prometheus.wait_for("jetson_power_alarm%s == 1" % sel, timeout=60)
    deadline = time.monotonic() + 60
    firing = []
    while time.monotonic() < deadline:
        firing = [a["labels"] for a in prometheus.api("alerts")["alerts"] if a["state"] == "firing"]
        if any(a["alertname"] == "JetsonPowerMonitorAlarm" for a in firing):
            break
        time.sleep(0.2)
    alarms = [a for a in firing if a["alertname"] == "JetsonPowerMonitorAlarm"]
    assert [(a["instance"], a["rail"], a["kind"]) for a in alarms] == [(target, "VDD_GPU_SOC", "curr_crit")], firing


def check_after_trace(prometheus, daemon, target, started):
    """Once the trace has ended and the counter stopped: the energy as Prometheus holds it."""
    # Let the trace end (the sensor goes down and the counter stops), then two more scrapes.
    deadline = started + TRACE_S + 10
    while daemon.get("/healthz")[0] == 200:
        assert time.monotonic() < deadline, "replay did not end"
        time.sleep(0.2)
    time.sleep(2.5 * SCRAPE_S)

    sel = '{instance="%s"}' % target
    total = prometheus.query("jetson_energy_joules_total" + sel)[0]["value"]
    rails = {item["metric"]["rail"]: item["value"]
             for item in prometheus.query("jetson_energy_rail_joules_total" + sel)}
    # The window query a user would write.  It cannot see energy spent before the first scrape
    # (Prometheus extrapolates only half a scrape interval back), so it is reported, not asserted.
    window = prometheus.query("increase(jetson_energy_joules_total%s[5m])" % sel)[0]["value"]
    return total, rails, window

