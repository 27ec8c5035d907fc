"""The fleet setup for real: deploy/prometheus/remote-write.yml scraping a daemon and remote-writing
to a second Prometheus started with its remote-write receiver, as a central store would run.

The energy counter must arrive intact: the receiver holds exactly the samples
the scraper took (timestamps, values, labels plus the sender's external
labels), and their increase over the window equals the daemon's own window
API within what the scrape instants allow.
"""

import json
import subprocess
import time

import pytest
import yaml

from tests.support import prom
from tests.support.daemon import Daemon

pytestmark = [pytest.mark.system, pytest.mark.slow]

COUNTERS = ("jetson_energy_joules_total", "jetson_energy_rail_joules_total")
SCRAPES = 12


def test_promtool_accepts_the_remote_write_config():
    result = subprocess.run([prom.binary("promtool"), "check", "config", prom.REMOTE_WRITE_YML],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    with open(prom.REMOTE_WRITE_YML) as handle:
        config = yaml.safe_load(handle)
    assert config["remote_write"][0]["url"].endswith("/api/v1/write"), "a real, uncommented remote_write block"
    assert config["scrape_configs"][0]["file_sd_configs"], "boards come from file_sd"


def _series(server, name, at):
    """{labels without __name__: [(t, v), ...]} of ``name`` over the last 10 minutes at ``at``."""
    return {tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")): s["values"]
            for s in server.samples(name, "10m", at)}


def test_the_energy_counter_arrives_intact_through_remote_write():
    receiver_config = {"global": {"scrape_interval": "1s"}}
    with Daemon("--source", "sim") as daemon, \
            prom.Prometheus(receiver_config, extra_args=["--web.enable-remote-write-receiver"]) as receiver:
        config = prom.derive_remote_write_config("127.0.0.1:%d" % daemon.port, receiver.url + "/api/v1/write")
        external = config["global"]["external_labels"]
        with prom.Prometheus(config) as scraper:
            scraper.wait_for('count_over_time(jetson_energy_joules_total[10m])', timeout=60, minimum=SCRAPES)
            at = time.time()
            sent = {name: _series(scraper, name, at) for name in COUNTERS}
            wanted = sum(len(v) for v in sent[COUNTERS[0]].values())
            deadline = time.monotonic() + 60
            while True:  # until the receiver holds as many samples as the scraper had at ``at``
                received = {name: _series(receiver, name, at) for name in COUNTERS}
                if sum(len(v) for v in received[COUNTERS[0]].values()) >= wanted:
                    break
                assert time.monotonic() < deadline, "the receiver did not catch up:\n" + scraper.log()
                time.sleep(0.5)
            durations = dict(next(iter(_series(scraper, "scrape_duration_seconds", at).values())))
        clock_offset = time.time() - time.monotonic()  # scrape times are wall clock, the window API monotonic

        for name in COUNTERS:
            expected = {tuple(sorted(dict(labels, **external).items())): values
                        for labels, values in sent[name].items()}
            assert received[name] == expected, "%s: samples or labels changed on the way" % name
        rails = {dict(labels)["rail"] for labels in received["jetson_energy_rail_joules_total"]}
        assert rails == {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}
        (labels, values), = received["jetson_energy_joules_total"].items()
        assert dict(labels)["job"] == prom.JOB and dict(labels)["site"] == external["site"]
        assert len(values) >= SCRAPES

        # increase() over the received samples against the daemon's own integral of the same window.
        (t_a, e_a), (t_b, e_b) = values[0], values[-1]
        start, end = t_a - clock_offset, t_b - clock_offset
        status, _, body = daemon.get("/api/v1/energy?start=%r&end=%r" % (start, end))
        assert status == 200, body
        window = json.loads(body)
        status, _, body = daemon.get("/api/v1/samples?since=%r" % (start - 1.0))
        peak_w = max(s["total_w"] for s in json.loads(body)["samples"])
    # The counter in a scrape was integrated up to the daemon's newest sample, taken at most a gap limit
    # (0.1 s) before the scrape began or during the scrape: that much of each end may differ.
    slack_s = durations[t_a] + durations[t_b] + 2 * 0.1 + ((end - start) - window["covered_seconds"])
    print("received increase %.3f J over %.1f s, daemon window %.3f J, tolerance %.3f J"
          % (e_b - e_a, end - start, window["total_joules"], peak_w * slack_s))
    assert abs((e_b - e_a) - window["total_joules"]) <= peak_w * slack_s
