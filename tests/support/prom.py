"""Run a real Prometheus on a free loopback port, configured from the repository's prometheus.yml.

The config is derived, not invented: the ``jetson-power`` job of prometheus.yml
(with its rule files) is kept, its targets replaced by the one under test, the
intervals shortened, and everything that needs the compose network (file_sd,
the simulated board's job) dropped.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Sequence

import yaml

from tests.support.daemon import ROOT, free_port

PROMETHEUS_YML = os.path.join(ROOT, "prometheus.yml")
RULES_YML = os.path.join(ROOT, "deploy", "prometheus", "rules.yml")
REMOTE_WRITE_YML = os.path.join(ROOT, "deploy", "prometheus", "remote-write.yml")
JOB = "jetson-power"


def binary(name: str) -> str:
    """Path of a Prometheus tool (Debian package ``prometheus``; `make system-deps` installs it)."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError("%s not found: install the Debian package 'prometheus' (make system-deps)" % name)
    return path


def derive_config(target: str, scrape_interval: str = "1s", rule_files: Optional[List[str]] = None,
                  source: str = PROMETHEUS_YML) -> Dict[str, Any]:
    """prometheus.yml's ``jetson-power`` job pointed at ``target``, scraping every ``scrape_interval``."""
    with open(source) as handle:
        base = yaml.safe_load(handle)
    jobs = [job for job in base["scrape_configs"] if job["job_name"] == JOB]
    if len(jobs) != 1:
        raise ValueError("%s has no single scrape job %r" % (source, JOB))
    job = copy.deepcopy(jobs[0])
    job.pop("file_sd_configs", None)
    job["static_configs"] = [{"targets": [target]}]
    job["scrape_interval"] = scrape_interval
    job["scrape_timeout"] = scrape_interval
    config = {
        "global": dict(base.get("global", {}), scrape_interval=scrape_interval,
                       evaluation_interval=scrape_interval),
        "rule_files": list(rule_files if rule_files is not None else [RULES_YML]),
        "scrape_configs": [job],
    }
    return config


def derive_remote_write_config(target: str, receiver_url: str, scrape_interval: str = "1s",
                               source: str = REMOTE_WRITE_YML) -> Dict[str, Any]:
    """remote-write.yml with its job scraping ``target`` and its first remote_write queue sending to
    ``receiver_url`` (a batch every second); everything else, relabelling included, as shipped."""
    with open(source) as handle:
        config = yaml.safe_load(handle)
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    if len(jobs) != 1:
        raise ValueError("%s has no single scrape job %r" % (source, JOB))
    job = jobs[0]
    job.pop("file_sd_configs", None)
    job["static_configs"] = [{"targets": [target]}]
    job["scrape_interval"] = job["scrape_timeout"] = scrape_interval
    config["global"].update(scrape_interval=scrape_interval, evaluation_interval=scrape_interval)
    queue = config["remote_write"][0]
    queue["url"] = receiver_url
    queue.setdefault("queue_config", {})["batch_send_deadline"] = "1s"
    return config


def promtool_check(text: str) -> str:
    """``promtool check metrics`` on an exposition: its complaints, or "" when the text is clean."""
    result = subprocess.run([binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    return (result.stdout + result.stderr).strip()


class Prometheus:
    """``prometheus`` as a subprocess with a throw-away TSDB; a context manager that always cleans up."""

    def __init__(self, config: Dict[str, Any], host: str = "127.0.0.1", extra_args: Sequence[str] = ()):
        self.dir = tempfile.mkdtemp(prefix="prom-test-")
        self.config_path = os.path.join(self.dir, "prometheus.yml")
        with open(self.config_path, "w") as handle:
            yaml.safe_dump(config, handle)
        self.port = free_port(host)
        self.url = "http://%s:%d" % (host, self.port)
        self.log_path = os.path.join(self.dir, "prometheus.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary("prometheus"), "--config.file=" + self.config_path,
             "--storage.tsdb.path=" + os.path.join(self.dir, "data"),
             "--web.listen-address=%s:%d" % (host, self.port),
             "--storage.tsdb.retention.time=1h", "--log.level=warn"] + list(extra_args),
            stdout=self._log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "Prometheus":
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.close()
                raise RuntimeError("prometheus exited %s:\n%s" % (self.proc.returncode, self.log()))
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.close()
        raise RuntimeError("prometheus did not become ready:\n" + self.log())

    def __exit__(self, *exc) -> None:
        self.close()

    def log(self) -> str:
        with open(self.log_path) as handle:
            return handle.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; returns ``data`` or raises with Prometheus's error message."""
        url = "%s/api/v1/%s?%s" % (self.url, path, urllib.parse.urlencode(params))
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read().decode())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read().decode() or "{}")
        if body.get("status") != "success":
            raise ValueError("%s: %s" % (body.get("errorType"), body.get("error")))
        return body["data"]

    def query(self, expr: str, at: Optional[float] = None) -> List[Dict[str, Any]]:
        """Instant query: a list of ``{"metric": {...}, "value": float}`` (scalars as one unlabelled item)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = "%.3f" % at
        data = self.api("query", **params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": float(data["result"][1])}]
        if data["resultType"] != "vector":
            raise ValueError("%s returned a %s" % (expr, data["resultType"]))
        return [{"metric": item["metric"], "value": float(item["value"][1])} for item in data["result"]]

    def samples(self, selector: str, window: str, at: float) -> List[Dict[str, Any]]:
        """The raw samples of ``selector[window]`` ending at ``at``: ``{"metric", "values": [(t, v)]}``."""
        data = self.api("query", query="%s[%s]" % (selector, window), time="%.3f" % at)
        if data["resultType"] != "matrix":
            raise ValueError("%s[%s] returned a %s" % (selector, window, data["resultType"]))
        return [{"metric": item["metric"], "values": [(float(t), float(v)) for t, v in item["values"]]}
                for item in data["result"]]

    def wait_for(self, expr: str, timeout: float = 20.0, minimum: Optional[float] = None) -> List[Dict[str, Any]]:
        """Poll ``expr`` until it returns data (and its first value is >= ``minimum``)."""
        deadline = time.monotonic() + timeout
        result: List[Dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result and (minimum is None or result[0]["value"] >= minimum):
                return result
            time.sleep(0.2)
        raise AssertionError("%s gave %r after %.0f s\n%s" % (expr, result, timeout, self.log()))

    def wait_for_scrapes(self, count: int, job: str = JOB, timeout: float = 20.0) -> None:
        """Wait until ``count`` scrapes of ``job`` succeeded."""
        self.wait_for('sum(sum_over_time(up{job="%s"}[10m]))' % job, timeout=timeout, minimum=count)


DASHBOARD_JSON = os.path.join(ROOT, "grafana", "dashboards", "jetson-power.json")


def load_dashboard(path: str = DASHBOARD_JSON) -> Dict[str, Any]:
    with open(path) as handle:
        return json.load(handle)


def dashboard_panels(dashboard: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_queries(dashboard: Dict[str, Any]) -> List[Dict[str, str]]:
    """``{"panel", "refId", "expr"}`` for every PromQL target of every panel."""
    queries = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            queries.append({"panel": panel["title"], "refId": target["refId"], "expr": target["expr"]})
    return queries


def variable_queries(dashboard: Dict[str, Any]) -> Dict[str, str]:
    """Template variable name -> its ``label_values(...)`` query."""
    out = {}
    for var in dashboard["templating"]["list"]:
        query = var["query"]
        out[var["name"]] = query["query"] if isinstance(query, dict) else query
    return out


def label_values_as_promql(query: str) -> str:
    """``label_values(SELECTOR, LABEL)`` -> ``count by (LABEL) (SELECTOR)``, which Prometheus can run."""
    body = query.strip()
    if not (body.startswith("label_values(") and body.endswith(")")):
        raise ValueError("not a label_values() query: %r" % query)
    selector, _, label = body[len("label_values("):-1].rpartition(",")
    return "count by (%s) (%s)" % (label.strip(), selector.strip())


def substitute(expr: str, variables: Dict[str, str], range_s: int, scrape_interval_s: int) -> str:
    """Replace Grafana's template variables the way Grafana would for a ``range_s`` dashboard range.

    ``$__rate_interval`` is max(4 x scrape interval, $__interval + scrape interval) with
    $__interval taken as the scrape interval (a narrow live panel).
    """
    builtins = {
        "$__rate_interval": "%ds" % max(4 * scrape_interval_s, 2 * scrape_interval_s),
        "$__range_s": str(range_s),
        "$__range": "%ds" % range_s,
        "$__interval": "%ds" % scrape_interval_s,
    }
    for name, value in builtins.items():
        expr = expr.replace(name, value)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("$" + name, variables[name])
    if "$" in expr:
        raise ValueError("unsubstituted variable in %r" % expr)
    return expr


# Series Prometheus makes itself for every target, not the exporter.
PROMETHEUS_SERIES = {"up"}

# Documented metrics that only a source with alarm files (hwmon) exports, the read-error counter only
# after a failed read: tests/test_alarms.py sees each of them exported.
ALARM_METRICS = {"jetson_power_alarm", "jetson_power_rail_current_limit_amperes",
                 "jetson_power_alarm_read_errors_total", "jetson_throttle_events_total", "jetson_throttle_enabled",
                 "jetson_throttle_active"}


def contract_metrics():
    """The metrics the README documents (the rows of its "## Metrics" table, not the renamed ones below it)."""
    with open(os.path.join(ROOT, "README.md")) as handle:
        text = handle.read()
    section = text.split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(jetson_[a-z_]+)", section, re.MULTILINE))


def queried_metrics(expr):
    """Metric names in a PromQL expression (recording-rule names have colons and are not matched)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    names = set(re.findall(r"(?<![\w:])(jetson_[a-z_]+|up)(?![\w:(])", without_ranges))
    return names
