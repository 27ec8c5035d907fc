"""Alarm flags, current limits and throttle state: the hwmon source against the drivers' sysfs files,
and the daemon's metrics and /api/v1/alarms after a flag flips in the tree."""

import json
import time

import pytest

from exporter.sources import SensorReadError, hwmon
from tests.support.daemon import Daemon
from tests.support.prom import ALARM_METRICS, contract_metrics, promtool_check
from tests.support.sysfs_boards import BOARD_NAMES, BOARDS, build_board

MONITORED = tuple(k for k in BOARD_NAMES if BOARDS[k].monitors)


def _open(tree):
    return hwmon.make_source(None, sysfs_root=str(tree.root))


def _expected_alarms(tree):
    """(rail or chip, kind) of every alarm flag the board's drivers create for its connected rails."""
    expected = set()
    for monitor in tree.board.monitors:
        chip = "%s@%s" % (monitor.driver, monitor.device)
        rails = [r for r, files in tree._rails.items() if files.monitor is monitor]
        if monitor.driver == "ina3221":
            expected |= {(r, k) for r in rails for k in ("curr_crit", "curr_max")}
            expected.add((chip, "curr_sum_crit"))
        elif monitor.driver == "ina238":
            expected |= {(r, k) for r in rails for k in ("in_min", "in_max", "power_max")}
    return expected


@pytest.mark.parametrize("key", MONITORED)
def test_every_board_exposes_what_its_drivers_have_and_nothing_is_up(tmp_path, key):
    tree = build_board(tmp_path / "sys", key)
    with _open(tree) as source:
        board = source.read_alarms()
    assert {(a.rail or a.chip, a.kind) for a in board.alarms} == _expected_alarms(tree)
    assert not any(a.active for a in board.alarms)
    limit_rails = {r for r, files in tree._rails.items() if files.monitor.driver in ("ina3221", "ina3221x")}
    assert set(board.current_limits) == {(r, k) for r in limit_rails for k in ("crit", "warn")}
    if key in ("nano", "tx2"):  # the L4T IIO driver: limits only, in mA
        assert board.current_limits[("POM_5V_IN" if key == "nano" else "VDD_IN", "crit")] == pytest.approx(3.0)
    oc = {"oc1", "oc2", "oc3"} if BOARDS[key].oc_events else set()
    assert set(board.oc_events) == set(board.oc_throttle_enabled) == oc
    assert not any(board.oc_events.values()) and all(board.oc_throttle_enabled.values())
    throttles = {kind for kind, _ in BOARDS[key].cooling if "fan" not in kind}
    assert set(board.cooling) == throttles and all(cur == 0 for cur, _ in board.cooling.values())


def test_each_flag_is_seen_alone_on_the_next_read(tmp_path):
    tree = build_board(tmp_path / "sys", "thor")
    flags = [("VDD_GPU", "curr_crit_alarm", "curr_crit"), ("VIN_SYS_5V0", "curr_max_alarm", "curr_max"),
             ("VIN", "in_min_alarm", "in_min"), ("VIN", "in_max_alarm", "in_max"),
             ("VIN", "power_max_alarm", "power_max")]
    with _open(tree) as source:
        time.sleep(2 * hwmon._ValueFiles.SETTLED_S)  # held descriptors must see the change too
        source.read_alarms()
        for rail, attribute, kind in flags:
            tree.set_alarm(rail, attribute, True)
            up = [(a.rail, a.kind) for a in source.read_alarms().alarms if a.active]
            assert up == [(rail, kind)]
            tree.set_alarm(rail, attribute, False)
            assert not any(a.active for a in source.read_alarms().alarms)
        tree.set_oc_events("oc3", 41)
        assert source.read_alarms().oc_events == {"oc1": 0, "oc2": 0, "oc3": 41}


def test_files_are_found_again_after_the_chips_come_back_under_new_hwmon_numbers(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_orin")
    with _open(tree) as source:
        source.read_alarms()
        tree.renumber_hwmon(9)
        with pytest.raises(SensorReadError):
            source.read()  # the sampler's read notices first
        source.read()
        tree.set_alarm("VDDQ_VDD2_1V8AO", "curr_max_alarm", True)
        tree.set_oc_events("oc2", 3)
        board = source.read_alarms()
        assert [(a.rail, a.kind) for a in board.alarms if a.active] == [("VDDQ_VDD2_1V8AO", "curr_max")]
        assert board.oc_events["oc2"] == 3


def test_a_garbled_alarm_file_is_a_read_error_not_a_quiet_zero(tmp_path):
    tree = build_board(tmp_path / "sys", "orin_nano")
    with _open(tree) as source:
        tree.alarm_file("VDD_IN", "curr_crit_alarm").write_text("garbage\n")
        with pytest.raises(SensorReadError, match="curr1_crit_alarm"):
            source.read_alarms()


def _exported(text):
    """The alarm metrics in an exposition, each also a row of the README's metrics table."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples} & ALARM_METRICS
    assert names <= contract_metrics()
    return names


def _alarms(daemon):
    status, _, body = daemon.get("/api/v1/alarms")
    assert status == 200, body
    return json.loads(body)


def _scrape_after_next_sample(daemon, since):
    """A scrape rendered after a sample newer than ``since``: scrapes share one body until the next sample."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        samples = json.loads(daemon.get("/api/v1/samples?since=%r" % since)[2])["samples"]
        if samples:
            return
        time.sleep(0.01)
    raise AssertionError("no new sample within 60 s")


def test_daemon_shows_a_flag_within_one_scrape_with_its_since_in_the_samples_clock(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_orin")
    with Daemon("--source", "hwmon:" + str(tree.root)) as daemon:
        assert _alarms(daemon)["active"] == []
        assert daemon.value("jetson_power_alarm", rail="VDD_CPU_CV", kind="curr_crit") == 0
        assert daemon.value("jetson_power_alarm", rail="ina3221@1-0041", kind="curr_sum_crit") == 0

        before = time.monotonic()
        tree.set_alarm("VDD_CPU_CV", "curr_crit_alarm", True)
        tree.set_oc_events("oc3", 12)
        seen = _alarms(daemon)
        after = time.monotonic()
        [active] = seen["active"]
        assert active["name"] == "VDD_CPU_CV curr2_crit_alarm"
        assert (active["rail"], active["kind"]) == ("VDD_CPU_CV", "curr_crit")
        assert before <= active["since"] <= after
        assert seen["throttle"]["over_current"]["oc3"] == {"events": 12, "throttle_enabled": True}
        assert _alarms(daemon)["active"][0]["since"] == active["since"], "since is when it came up"

        _scrape_after_next_sample(daemon, after)
        text = daemon.metrics()
        assert promtool_check(text) == ""
        assert _exported(text) == ALARM_METRICS - {"jetson_throttle_active", "jetson_power_alarm_read_errors_total"}
        assert daemon.value("jetson_power_alarm", rail="VDD_CPU_CV", kind="curr_crit") == 1
        assert daemon.value("jetson_power_alarm", rail="VDD_GPU_SOC", kind="curr_crit") == 0
        assert daemon.value("jetson_throttle_events_total", kind="oc3") == 12
        assert daemon.value("jetson_throttle_enabled", kind="oc1") == 1

        tree.set_alarm("VDD_CPU_CV", "curr_crit_alarm", False)
        assert _alarms(daemon)["active"] == []
        _scrape_after_next_sample(daemon, time.monotonic())
        assert daemon.value("jetson_power_alarm", rail="VDD_CPU_CV", kind="curr_crit") == 0


def test_daemon_on_a_jetpack4_board_shows_limits_and_thermal_throttling(tmp_path):
    tree = build_board(tmp_path / "sys", "nano")
    with Daemon("--source", "hwmon:" + str(tree.root)) as daemon:
        assert daemon.values("jetson_power_alarm") == []  # the ina3221x driver has no flag to read
        assert daemon.value("jetson_power_rail_current_limit_amperes", rail="POM_5V_IN", kind="warn") == 2.0
        assert daemon.value("jetson_throttle_active", kind="gpu-balanced") == 0
        assert daemon.values("jetson_throttle_events_total") == []  # debugfs only on JetPack 4

        before = time.monotonic()
        tree.set_cooling("gpu-balanced", 2)
        seen = _alarms(daemon)
        assert [(a["name"], a["rail"], a["kind"]) for a in seen["active"]] == [
            ("thermal gpu-balanced", None, "thermal")]
        assert before <= seen["active"][0]["since"] <= time.monotonic()
        assert seen["throttle"]["thermal"] == {"cpu-balanced": {"state": 0, "max_state": 3},
                                               "gpu-balanced": {"state": 2, "max_state": 3}}
        _scrape_after_next_sample(daemon, time.monotonic())
        assert daemon.value("jetson_throttle_active", kind="gpu-balanced") == 1
        text = daemon.metrics()
        assert promtool_check(text) == ""
        assert _exported(text) == {"jetson_power_rail_current_limit_amperes", "jetson_throttle_active"}


def test_daemon_without_alarm_files_says_so_and_exports_no_alarm_series():
    with Daemon("--source", "sim") as daemon:
        assert _alarms(daemon) == {"active": [], "throttle": {}, "available": False}
        names = {n for n in ("jetson_power_alarm", "jetson_throttle_active", "jetson_throttle_events_total")
                 if daemon.values(n)}
        assert names == set()


def test_daemon_with_an_unreadable_alarm_file_answers_503_and_counts_it(tmp_path):
    tree = build_board(tmp_path / "sys", "orin_nano")
    with Daemon("--source", "hwmon:" + str(tree.root)) as daemon:
        tree.alarm_file("VDD_SOC", "curr_max_alarm").write_text("garbage\n")
        status, _, body = daemon.get("/api/v1/alarms")
        assert status == 503 and "curr3_max_alarm" in json.loads(body)["error"]
        _scrape_after_next_sample(daemon, time.monotonic())
        assert daemon.values("jetson_power_alarm") == []  # no series rather than a false 0
        assert daemon.value("jetson_power_alarm_read_errors_total") >= 2
        assert _exported(daemon.metrics()) == {"jetson_power_alarm_read_errors_total"}
        assert daemon.value("jetson_power_up") == 1  # power readings go on
