"""Deployment files checked by the real tools: promtool, the Compose Specification schema, the daemon's
own config loader and CLI parser; the Grafana dashboard against the metric contract and the compose mounts.
"""

import glob
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import yaml

from exporter import cli, config
from tests.support import prom

ROOT = prom.ROOT
COMPOSE = os.path.join(ROOT, "docker-compose.yml")
RULES_TEST = os.path.join(ROOT, "deploy", "prometheus", "rules_test.yml")
DATASOURCE = os.path.join(ROOT, "grafana", "provisioning", "datasources", "prometheus.yml")
DASH_PROVIDER = os.path.join(ROOT, "grafana", "provisioning", "dashboards", "jetson-power.yml")
PROMETHEUS_SERIES = prom.PROMETHEUS_SERIES
contract_metrics = prom.contract_metrics
queried_metrics = prom.queried_metrics


def load_yaml(path):
    with open(path) as handle:
        return yaml.safe_load(handle)


def compose():
    return load_yaml(COMPOSE)


def mounts(service):
    """Container path -> host path (absolute) of the service's bind mounts, and their options."""
    out = {}
    for volume in compose()["services"][service]["volumes"]:
        parts = volume.split(":")
        if not parts[0].startswith("./"):
            continue  # a named volume
        out[parts[1]] = (os.path.normpath(os.path.join(ROOT, parts[0])), parts[2:] if len(parts) > 2 else [])
    return out


def host_path(service, container_path):
    """Where a path inside the container comes from on the host, through the compose mounts."""
    for target, (source, _) in sorted(mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source + container_path[len(target):]
    raise AssertionError("%s is not mounted into %s" % (container_path, service))


def promtool(*args, cwd=ROOT):
    return subprocess.run([prom.binary("promtool")] + list(args), cwd=cwd, capture_output=True, text=True,
                          timeout=60)


# -- Prometheus ------------------------------------------------------------------------------


@pytest.mark.system
def test_prometheus_yml_passes_promtool_with_the_compose_mounts(tmp_path):
    """The file as the container sees it: its rule and file_sd paths resolved through the mounts."""
    conf = load_yaml(prom.PROMETHEUS_YML)
    assert host_path("prometheus", "/etc/prometheus/prometheus.yml") == prom.PROMETHEUS_YML
    conf["rule_files"] = [host_path("prometheus", path) for path in conf["rule_files"]]
    for job in conf["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [host_path("prometheus", path) for path in sd["files"]]
            for pattern in sd["files"]:
                assert os.path.isdir(os.path.dirname(pattern)), pattern
    for path in conf["rule_files"]:
        assert os.path.isfile(path), path
    mapped = tmp_path / "prometheus.yml"
    mapped.write_text(yaml.safe_dump(conf))
    result = promtool("check", "config", str(mapped))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_prometheus_yml_content():
    conf = load_yaml(prom.PROMETHEUS_YML)
    with open(prom.PROMETHEUS_YML) as handle:
        text = handle.read()
    assert conf["global"]["scrape_interval"] == "5s"
    jobs = {job["job_name"]: job for job in conf["scrape_configs"]}
    assert jobs["jetson-power"]["static_configs"][0]["targets"] == ["host.docker.internal:8000"]
    assert jobs["jetson-power"]["file_sd_configs"], "fleet example missing"
    assert jobs["jetson-power-sim"]["static_configs"][0]["targets"] == ["exporter-sim:8000"]
    assert "remote_write" not in conf, "remote_write must stay a commented example"
    for store in ("Thanos", "Mimir", "VictoriaMetrics"):
        assert re.search(r"^\s*#.*%s" % store, text, re.M), store
    assert re.search(r"^\s*#.*jetson_energy_joules_total", text, re.M), "no comment on the energy counter"
    # The fleet example file parses as file_sd targets.
    for example in glob.glob(os.path.join(ROOT, "deploy", "prometheus", "targets", "*.example")):
        groups = load_yaml(example)
        assert all(group["targets"] for group in groups)


@pytest.mark.system
def test_rules_pass_promtool_check_and_unit_tests():
    check = promtool("check", "rules", prom.RULES_YML)
    assert check.returncode == 0, check.stdout + check.stderr
    test = promtool("test", "rules", os.path.basename(RULES_TEST), cwd=os.path.dirname(RULES_TEST))
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def test_rules_use_only_contract_metrics():
    names = set()
    for group in load_yaml(prom.RULES_YML)["groups"]:
        for rule in group["rules"]:
            names |= queried_metrics(rule["expr"])
    assert names - PROMETHEUS_SERIES <= contract_metrics(), names - contract_metrics()
    assert {"jetson_energy_joules_total", "jetson_power_up", "up"} <= names


@pytest.mark.system
def test_power_budget_override_per_board(tmp_path):
    """The documented way to give one board its own budget, run through promtool test rules."""
    (tmp_path / "budgets.yml").write_text(textwrap.dedent("""\
        groups:
          - name: jetson-power-budgets
            rules:
              - record: jetson:power_budget_watts:override
                expr: vector(15)
                labels: {instance: "nano:8000"}
        """))
    (tmp_path / "test.yml").write_text(textwrap.dedent("""\
        rule_files: [%s, budgets.yml]
        evaluation_interval: 15s
        tests:
          - interval: 15s
            input_series:
              - series: 'jetson_energy_joules_total{instance="nano:8000", job="jetson-power"}'
                values: '0+300x60'
              - series: 'jetson_power_up{instance="nano:8000", job="jetson-power"}'
                values: '1x60'
              - series: 'jetson_energy_joules_total{instance="orin:8000", job="jetson-power"}'
                values: '0+300x60'
              - series: 'jetson_power_up{instance="orin:8000", job="jetson-power"}'
                values: '1x60'
            promql_expr_test:
              - expr: instance:jetson_power_budget_watts
                eval_time: 5m
                exp_samples:
                  - labels: 'instance:jetson_power_budget_watts{instance="nano:8000"}'
                    value: 15
                  - labels: 'instance:jetson_power_budget_watts{instance="orin:8000"}'
                    value: 25
            alert_rule_test:
              - alertname: JetsonPowerOverBudget
                eval_time: 10m
                exp_alerts:
                  - exp_labels: {severity: warning, instance: "nano:8000", job: jetson-power}
                    exp_annotations:
                      summary: "nano:8000 draws 20.0 W, above its power budget"
                      description: >-
                        Mean power over 1 minute has been above the budget
                        (instance:jetson_power_budget_watts) for 5 minutes. Budgets are set in
                        rules.yml (default) or per board with jetson:power_budget_watts:override rules.
        """ % json.dumps(prom.RULES_YML)))
    result = promtool("test", "rules", "test.yml", cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


# -- docker compose --------------------------------------------------------------------------


def check_compose_schema(path):
    """The Compose Specification schema vendored by check-jsonschema (no Docker engine here)."""
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=60)


def test_compose_file_matches_the_compose_specification(tmp_path):
    result = check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    # The schema is strict enough to catch a misspelt key.
    broken = compose()
    broken["services"]["grafana"]["helthcheck"] = broken["services"]["grafana"].pop("healthcheck")
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    assert check_compose_schema(tmp_path / "docker-compose.yml").returncode != 0


def test_compose_services():
    doc = compose()
    services = doc["services"]
    for name, service in services.items():
        assert "healthcheck" in service, name
        if "image" in service and "build" not in service:
            repo, _, tag = service["image"].rpartition(":")
            assert re.match(r"v?\d+\.\d+\.\d+$", tag), "%s: image %s is not pinned" % (name, service["image"])
    for volume in ("prometheus-data", "grafana-data"):
        assert volume in doc["volumes"]
    assert "host.docker.internal:host-gateway" in services["prometheus"]["extra_hosts"]
    env = services["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "${GRAFANA_ANONYMOUS_VIEWER:-false}"
    for target, (source, options) in mounts("grafana").items():
        assert "ro" in options, "grafana mount %s must be read-only" % target
        assert os.path.isdir(source), source
    for target, (source, options) in mounts("prometheus").items():
        assert "ro" in options and os.path.exists(source), target
    sim = services["exporter-sim"]
    assert sim["profiles"] == ["sim"]
    assert os.path.isfile(os.path.join(ROOT, sim["build"]["context"], sim["build"]["dockerfile"]))
    cli.build_parser().parse_args(sim["command"])  # flags the daemon accepts


def test_dockerfile_copies_what_exists_and_runs_the_daemon():
    path = os.path.join(ROOT, "deploy", "Dockerfile")
    with open(path) as handle:
        text = handle.read()
    assert re.search(r"^FROM python:3\.\d+-slim-\w+$", text, re.M), "base image not pinned"
    with open(path + ".dockerignore") as handle:
        ignore = handle.read().split()
    sources = [source for line in re.findall(r"^COPY (.+)$", text, re.M) for source in line.split()[:-1]]
    assert {"pyproject.toml", "setup.cfg", "setup.py", "exporter"} <= set(sources), sources  # what pip builds from
    for source in sources:
        if source != "README.md" or os.path.exists(os.path.join(ROOT, "README.md")):
            assert os.path.exists(os.path.join(ROOT, source)), source
        # the build context holds only what the dockerignore lets through
        assert "!" + source + ("/" if os.path.isdir(os.path.join(ROOT, source)) else "") in ignore, source
    assert re.search(r'^ENTRYPOINT \["jetson-power-exporter"\]$', text, re.M)
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    cli.build_parser().parse_args(command)
    assert re.search(r"^USER nobody$", text, re.M)


def test_default_config_is_valid_for_the_daemon():
    path = os.path.join(ROOT, "deploy", "config.yaml")
    settings = config.load(path, {}, {})
    assert settings["source"] == "auto"
    assert config.parse_listen(settings["listen"]) == ("0.0.0.0", 8000)
    assert set(load_yaml(path)) <= set(config.SETTINGS)


# -- Grafana ---------------------------------------------------------------------------------


def test_provisioning_paths_match_compose_mounts():
    provisioning = host_path("grafana", "/etc/grafana/provisioning")
    assert os.path.samefile(provisioning, os.path.join(ROOT, "grafana", "provisioning"))
    for provider in load_yaml(DASH_PROVIDER)["providers"]:
        folder = host_path("grafana", provider["options"]["path"])
        assert os.path.samefile(folder, os.path.dirname(prom.DASHBOARD_JSON)), folder
    home = compose()["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert os.path.samefile(host_path("grafana", home), prom.DASHBOARD_JSON)
    # The datasource reaches Prometheus by its compose service name and port.
    source = load_yaml(DATASOURCE)["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose()["services"]
    # $__rate_interval is built from timeInterval: it must be the scrape interval.
    assert source["jsonData"]["timeInterval"] == load_yaml(prom.PROMETHEUS_YML)["global"]["scrape_interval"]


def test_every_panel_uses_the_provisioned_datasource_and_has_a_unit():
    uid = load_yaml(DATASOURCE)["datasources"][0]["uid"]
    dashboard = prom.load_dashboard()
    panels = prom.dashboard_panels(dashboard)
    assert panels
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["fieldConfig"]["defaults"].get("unit"), "%s has no unit" % panel["title"]
    for var in dashboard["templating"]["list"]:
        assert var["datasource"]["uid"] == uid, var["name"]


def test_dashboard_queries_only_contract_metrics_and_covers_the_issue():
    dashboard = prom.load_dashboard()
    queries = prom.dashboard_queries(dashboard)
    exprs = [q["expr"] for q in queries] + list(prom.variable_queries(dashboard).values())
    names = set().union(*(queried_metrics(e) for e in exprs))
    assert names - PROMETHEUS_SERIES <= contract_metrics(), names - contract_metrics()

    by_type = {}
    for panel in prom.dashboard_panels(dashboard):
        by_type.setdefault(panel["type"], []).extend(t["expr"] for t in panel["targets"])
    joined = "\n".join(exprs)
    assert "increase(jetson_energy_joules_total{instance=~\"$instance\"}[$__range])" in joined
    assert re.search(r"rate\(jetson_energy_joules_total\{[^}]*\}\[\$__rate_interval\]\)", joined)
    assert "jetson_power_rail_watts" in joined and "jetson_power_total_watts" in joined
    assert any("jetson_power_up" in e for e in by_type["stat"])
    assert any('simulated="true"' in e for e in by_type["stat"]), "no simulated banner"
    assert any("jetson_power_source_info" in e for e in by_type["table"])
    assert any("jetson_profiler_active_layer" in e for e in by_type["state-timeline"])
    timelines = set().union(*(queried_metrics(e) for e in by_type["state-timeline"]))
    assert {"jetson_power_alarm", "jetson_throttle_active", "jetson_throttle_events_total"} <= timelines
    assert any("jetson_layer_call_energy_joules{" in e for e in by_type["barchart"])
    layer_table = {m for e in by_type["table"] for m in queried_metrics(e)}
    assert {"jetson_layer_call_energy_joules", "jetson_layer_call_dynamic_energy_joules",
            "jetson_layer_call_duration_seconds", "jetson_layer_call_power_watts"} <= layer_table
    # energy per inference, and the last profiles of a model compared across power modes
    assert any("jetson_inference_energy_joules{" in e for e in by_type["barchart"])
    assert any("jetson_inference_latency_seconds{" in e for e in by_type["barchart"])
    mode_table = [p for p in prom.dashboard_panels(dashboard) if p["type"] == "table"
                  and "jetson_inference_energy_joules" in {m for t in p["targets"] for m in queried_metrics(t["expr"])}]
    assert len(mode_table) == 1 and {"jetson_inference_latency_seconds", "jetson_inference_per_joule"} <= {
        m for t in mode_table[0]["targets"] for m in queried_metrics(t["expr"])}
    assert set(prom.variable_queries(dashboard)) == {"instance", "model"}
    for q in queries:
        assert "$instance" in q["expr"], "%s ignores the instance variable" % q["panel"]


@pytest.mark.parametrize("expr, expected", [
    ('rate(jetson_energy_joules_total{instance=~"$i"}[$__rate_interval])', {"jetson_energy_joules_total"}),
    ("instance:jetson_power_watts:rate1m > on (instance) group_left () instance:jetson_power_budget_watts",
     set()),
    ('count_over_time(up{job=~"jetson-power.*"}[5m])', {"up"}),
    ('label_values(jetson_layer_call_energy_joules{instance=~"$instance"}, model)',
     {"jetson_layer_call_energy_joules"}),
])
def test_metric_name_extraction(expr, expected):
    assert queried_metrics(expr) == expected
