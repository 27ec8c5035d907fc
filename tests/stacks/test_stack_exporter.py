"""The installed daemon on this stack: the simulated board, a sysfs hwmon tree, a tegrastats log replay."""

import csv
import os
import sys
import time

import pytest
from stack_helpers import TESTS, Exporter, load_tests_module


def test_the_installed_package_is_tested():
    """.ci/stacks sets JPE_STACK: then the import must come from the venv, not from the source tree."""
    import exporter

    if os.environ.get("JPE_STACK"):
        assert not exporter.__file__.startswith(os.path.dirname(TESTS) + os.sep), exporter.__file__
        assert sys.prefix in exporter.__file__


def source_info(daemon):
    infos = daemon.samples("jetson_power_source_info")
    assert len(infos) == 1, infos
    return infos[0][0]


def total_watts(daemon):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        values = [v for _, v in daemon.samples("jetson_power_total_watts")]
        if values:
            return values[0]
        time.sleep(0.1)
    raise AssertionError("no jetson_power_total_watts: %s" % daemon.output())


def test_simulated_board():
    with Exporter("--source", "sim") as daemon:
        info = source_info(daemon)
        assert info["source"] == "sim" and info["simulated"] == "true"
        assert 0.5 < total_watts(daemon) < 20
        assert daemon.json("/api/v1/source")["source"] == "sim"
        # the landing page's files are package data: the installed package must carry them
        assert "SIMULATED" in daemon.get("/") and "function si(" in daemon.get("/landing.js")
        slots = daemon.json("/api/v1/samples?since=0&step=0.5")
        assert slots["step_s"] == 0.5 and daemon.json("/api/v1/layers") == {"active": [], "models": []}


def test_hwmon_tree_of_a_nano(tmp_path):
    boards = load_tests_module("sysfs_boards")
    tree = boards.build_board(str(tmp_path / "sys"), "nano")
    with Exporter("--source", "hwmon", "--sysfs-root", str(tmp_path / "sys")) as daemon:
        info = source_info(daemon)
        assert info["source"] == "hwmon" and info["simulated"] == "false"
        assert total_watts(daemon) == pytest.approx(tree.expected_total_w, rel=1e-6)
        tree.set_cooling("cpu-balanced", 1)  # the alarm and throttle files are read on this Python too
        assert [(a["name"], a["kind"]) for a in daemon.json("/api/v1/alarms")["active"]] == [
            ("thermal cpu-balanced", "thermal")]


def test_tegrastats_log_replay_as_people_record_it(tmp_path):
    with open(os.path.join(TESTS, "fixtures", "tegrastats-samples.tsv")) as handle:
        lines = [row["line"] for row in csv.DictReader(handle, delimiter="\t")
                 if row["board"].startswith("Nano") and "POM_5V_IN" in row["line"]]
    assert lines
    log = tmp_path / "nano.log"
    log.write_text("Wed Dec  2 13:00:00 UTC 2026\nNV Power Mode: MAXN\n" + "\n".join(lines * 20) + "\n")
    with Exporter("--source", "tegrastats:%s" % log) as daemon:
        info = source_info(daemon)
        assert info["source"] == "tegrastats" and info["simulated"] == "true"
        assert "nano" in info["board"].lower()
        assert 0.5 < total_watts(daemon) < 20
