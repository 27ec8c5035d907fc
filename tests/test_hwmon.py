"""The hwmon source against sysfs trees of every Jetson generation."""

import os
import shutil
import threading
import time

import pytest

from exporter.sources import SensorReadError, SourceUnavailable, hwmon, open_source
from tests.support.sysfs_boards import BOARD_NAMES, BOARDS, EXPECTED_TOTALS, build_board

MONITORED = tuple(k for k in BOARD_NAMES if BOARDS[k].monitors)


@pytest.fixture
def board(tmp_path, request):
    return build_board(tmp_path / "sys", request.param)


def _open(tree):
    return hwmon.make_source(None, sysfs_root=str(tree.root))


@pytest.mark.parametrize("board", MONITORED, indirect=True)
def test_every_board_reports_its_rails_total_and_interval(board):
    before = time.monotonic()
    with _open(board) as source:
        reading = source.read()
    assert before <= reading.timestamp <= time.monotonic()
    assert list(reading.rails) == list(board.rails)
    assert reading.rails == pytest.approx(board.rails)
    assert reading.volts == pytest.approx(board.volts)
    assert reading.amperes == pytest.approx(board.amperes)
    assert reading.total_watts == pytest.approx(EXPECTED_TOTALS[board.key])
    assert reading.total_watts == pytest.approx(board.expected_total_w)
    assert reading.energy_joules is None
    assert source.update_interval_s == pytest.approx(board.expected_update_interval_s)
    assert source.board == board.model
    assert source.name == "hwmon" and source.simulated is False
    facts = source.describe()
    assert facts["source"] == "hwmon" and facts["board"] == board.model
    if len(board.total_rails) == 1:
        assert facts["total"] == source.input_rail == board.total_rails[0]
    else:
        assert facts["total"] == "sum of parallel rails" and source.input_rail is None


def test_agx_orin_skips_nc_disabled_shunt_and_summation_channels(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_orin")
    hw41 = tree.hwmon_dirs["1-0041"]
    assert (hw41 / "in1_label").read_text().strip() == "NC"
    assert (hw41 / "in3_enable").read_text().strip() == "0"
    with _open(tree) as source:
        reading = source.read()
    assert set(reading.rails) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    # VDDQ_VDD2_1V8AO hangs off VIN_SYS_5V0: reported, not added twice.
    expected = sum(v for k, v in reading.rails.items() if k != "VDDQ_VDD2_1V8AO")
    assert reading.total_watts == pytest.approx(expected)
    assert reading.total_watts < sum(reading.rails.values())


def test_agx_xavier_sums_its_six_parallel_rails(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_xavier")
    with _open(tree) as source:
        reading = source.read()
    assert list(reading.rails) == ["GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"]
    assert reading.total_watts == pytest.approx(sum(reading.rails.values()))


def test_tx2_reports_carrier_rails_but_totals_the_module_input(tmp_path):
    tree = build_board(tmp_path / "sys", "tx2")
    with _open(tree) as source:
        reading = source.read()
    assert len(reading.rails) == 12
    assert reading.rails["VDD_MUX"] == pytest.approx(3.448)
    assert reading.total_watts == pytest.approx(reading.rails["VDD_IN"])
    assert source.describe()["monitors"] == (
        "ina3221x@0-0040, ina3221x@0-0041, ina3221x@0-0042, ina3221x@0-0043")


def test_read_touches_only_value_files(tmp_path):
    """Shunt, summation, label and limit files may hold anything once open."""
    tree = build_board(tmp_path / "sys", "agx_orin")
    source = _open(tree)
    for hw in tree.hwmon_dirs.values():
        for name in os.listdir(str(hw)):
            if name.startswith(("in4", "in5", "in6", "in7", "curr4", "shunt", "samples", "update")) \
                    or name.endswith(("_label", "_enable", "_crit", "_max", "_alarm")):
                (hw / name).write_text("garbage\n")
    assert source.read().rails == pytest.approx(tree.rails)


def test_hwmon_renumbering_between_boots_changes_nothing(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_orin")
    with _open(tree) as source:
        first = source.read()
        first_interval = source.update_interval_s
    old = {d: p.name for d, p in tree.hwmon_dirs.items()}
    tree.renumber_hwmon(5, reverse=True)
    new = {d: p.name for d, p in tree.hwmon_dirs.items()}
    assert old != new and new["1-0041"] < new["1-0040"]
    assert sorted(os.listdir(str(tree.root / "class" / "hwmon"))) == sorted(new.values())
    with _open(tree) as source:
        second = source.read()
        assert source.update_interval_s == first_interval
    assert list(second.rails) == list(first.rails)
    assert second.rails == pytest.approx(first.rails)
    assert second.total_watts == pytest.approx(first.total_watts)


def test_chip_rebound_under_another_index_is_found_again_while_open(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_orin")
    with _open(tree) as source:
        first = source.read()
        tree.renumber_hwmon(9)  # the driver was unbound and bound again: hwmonN is new
        with pytest.raises(SensorReadError, match="No such file"):
            source.read()
        tree.set_rail("VDD_GPU_SOC", watts=4.0)
        again = source.read()
        assert list(again.rails) == list(first.rails)
        assert again.rails["VDD_GPU_SOC"] == pytest.approx(tree.rails["VDD_GPU_SOC"])
        assert again.total_watts == pytest.approx(tree.expected_total_w)


def test_chip_back_with_other_rails_stays_down_and_says_why(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_orin")
    with _open(tree) as source:
        source.read()
        tree.renumber_hwmon(9)
        label = tree.hwmon_dirs["1-0040"] / "in1_label"
        label.write_text("VDD_SOMETHING_ELSE\n")
        with pytest.raises(SensorReadError, match="No such file"):
            source.read()
        for _ in range(2):
            with pytest.raises(SensorReadError, match="monitors under .* changed: rails now .*VDD_SOMETHING_ELSE"):
                source.read()


def test_only_hwmonN_directories_are_monitors(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_orin")
    chip = tree.hwmon_dirs["1-0041"]
    chip.rename(chip.with_name(chip.name + ".old"))  # a leftover, not a kernel hwmon directory
    with _open(tree) as source:
        assert source.describe()["monitors"] == "ina3221@1-0040"


def test_found_through_class_hwmon_alone(tmp_path):
    tree = build_board(tmp_path / "sys", "thor")
    shutil.rmtree(str(tree.root / "bus" / "i2c" / "drivers"))
    with _open(tree) as source:
        assert source.describe()["monitors"] == "ina3221@1-0040, ina238@1-0044"
        assert source.read().total_watts == pytest.approx(tree.expected_total_w)


def test_l4t_found_through_bus_iio_alone(tmp_path):
    tree = build_board(tmp_path / "sys", "nano")
    shutil.rmtree(str(tree.root / "bus" / "i2c" / "drivers"))
    with _open(tree) as source:
        assert source.describe()["monitors"] == "ina3221x@6-0040"
        assert source.read().rails == pytest.approx(tree.rails)


@pytest.mark.parametrize("key,rail", [
    ("nano", "POM_5V_IN"), ("xavier_nx", "VDD_IN"), ("agx_orin", "VIN_SYS_5V0"), ("thor", "VIN")])
def test_live_value_changes_are_picked_up(tmp_path, key, rail):
    tree = build_board(tmp_path / "sys", key)
    with _open(tree) as source:
        before = source.read()
        watts = tree.set_rail(rail, watts=9.5)
        after = source.read()
        assert watts == pytest.approx(9.5, abs=0.03)
        assert after.rails[rail] == pytest.approx(watts)
        assert after.total_watts == pytest.approx(tree.expected_total_w)
        assert after.total_watts - before.total_watts == pytest.approx(watts - before.rails[rail])
        tree.set_rail(rail, volts=tree.volts[rail] * 1.1)
        assert source.read().volts[rail] == pytest.approx(tree.volts[rail])


def _held(paths):
    """The paths among this process's open descriptors."""
    fd_dir = "/proc/self/fd"
    targets = set()
    for fd in os.listdir(fd_dir):
        try:
            targets.add(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:
            pass
    return [p for p in paths if os.path.realpath(str(p)) in targets]


def test_value_files_are_held_open_once_still_and_every_change_is_seen_on_the_next_read(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_orin")
    rail = "VDD_GPU_SOC"
    files = [tree.rail_file(r, kind) for r in tree.rails for kind in ("volts", "amps")]
    with _open(tree) as source:
        time.sleep(2 * hwmon._ValueFiles.SETTLED_S)  # the tree was just written
        source.read()
        assert _held(files) == files, "a still tree is read through held descriptors, one pread per file"
        path = tree.rail_file(rail, "amps")
        path.write_text("%d\n" % 2000)  # rewritten in place, as sysfs values change
        assert source.read().amperes[rail] == pytest.approx(2.0)
        watts = tree.set_rail(rail, watts=7.0)  # replaced by rename: the held file is the old one
        assert source.read().rails[rail] == pytest.approx(watts)
        assert _held(files) == [], "a changed directory is read by path until it is still again"
        time.sleep(2 * hwmon._ValueFiles.SETTLED_S)
        source.read()
        assert _held(files) == files
        path.unlink()
        with pytest.raises(SensorReadError, match=path.name):
            source.read()
    assert _held(files) == [], "close() lets go of the files"


def test_fed_rail_changes_do_not_move_the_agx_orin_total(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_orin")
    with _open(tree) as source:
        total = source.read().total_watts
        tree.set_rail("VDDQ_VDD2_1V8AO", watts=3.0)
        reading = source.read()
    assert reading.rails["VDDQ_VDD2_1V8AO"] == pytest.approx(3.0, abs=0.01)
    assert reading.total_watts == pytest.approx(total)


@pytest.mark.parametrize("key,rail,kind", [
    ("agx_orin", "VDD_CPU_CV", "amps"), ("nano", "POM_5V_GPU", "watts"), ("thor", "VIN", "volts")])
def test_vanished_file_is_a_read_error_not_zero_watts(tmp_path, key, rail, kind):
    tree = build_board(tmp_path / "sys", key)
    source = _open(tree)
    path = tree.rail_file(rail, kind)
    saved = path.read_text()
    path.unlink()
    with pytest.raises(SensorReadError, match=path.name):
        source.read()
    path.write_text(saved)  # transient: the next read works again
    assert source.read().rails == pytest.approx(tree.rails)


@pytest.mark.parametrize("content", ["", "n/a\n", "12.5.1\n", "\x00\x00"])
def test_garbage_is_a_read_error(tmp_path, content):
    tree = build_board(tmp_path / "sys", "orin_nano")
    source = _open(tree)
    tree.rail_file("VDD_SOC", "volts").write_text(content)
    with pytest.raises(SensorReadError, match="in3_input"):
        source.read()


def test_io_error_is_a_read_error(tmp_path):
    # A path that can no longer be read as a file (EISDIR here, EIO/ENODEV on
    # a device that went away) fails the same way.
    tree = build_board(tmp_path / "sys", "xavier_nx")
    source = _open(tree)
    path = tree.rail_file("VDD_IN", "amps")
    path.unlink()
    path.mkdir()
    with pytest.raises(SensorReadError, match="cannot read"):
        source.read()


def test_negative_current_offset_is_a_value(tmp_path):
    # An idle rail can read a few mA below zero (shunt offset): keep the sign.
    tree = build_board(tmp_path / "sys", "thor")
    tree.set_rail("VDD_GPU", amps=-0.02)
    with _open(tree) as source:
        assert source.read().rails["VDD_GPU"] == pytest.approx(-0.384)


def test_board_without_monitor_is_unavailable(tmp_path):
    tree = build_board(tmp_path / "sys", "nano_2gb")
    with pytest.raises(SourceUnavailable) as info:
        _open(tree)
    assert str(info.value) == "no INA3221/INA238 power monitor under %s" % tree.root
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceUnavailable, match="no INA3221/INA238 power monitor under"):
        hwmon.make_source(None, sysfs_root=str(empty))


def test_monitor_with_only_unconnected_channels_is_unavailable(tmp_path):
    tree = build_board(tmp_path / "sys", "xavier_nx")
    hw = tree.hwmon_dirs["7-0040"]
    for ch in (1, 2, 3):
        (hw / ("in%d_label" % ch)).write_text("NC\n")
    with pytest.raises(SourceUnavailable, match="no connected channel"):
        _open(tree)


def test_unreadable_at_open_is_unavailable(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_xavier")
    tree.rail_file("SOC", "amps").write_text("oops\n")
    with pytest.raises(SourceUnavailable, match="curr3_input"):
        _open(tree)


def test_unlabelled_enabled_channel_keeps_its_power(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_orin")
    (tree.hwmon_dirs["1-0041"] / "in3_enable").write_text("1\n")
    with _open(tree) as source:
        assert "ina3221_1-0041_ch3" in source.read().rails


def test_ina238_label_is_used_when_the_device_tree_gives_one(tmp_path):
    tree = build_board(tmp_path / "sys", "thor")
    (tree.hwmon_dirs["1-0044"] / "label").write_text("VIN\n")
    with _open(tree) as source:
        assert source.rail_names[-1] == "VIN"
    (tree.hwmon_dirs["1-0044"] / "label").write_text("CARRIER_IN\n")
    with _open(tree) as source:
        assert "CARRIER_IN" in source.read().rails


def test_update_interval_comes_from_the_driver_when_published(tmp_path):
    tree = build_board(tmp_path / "sys", "xavier_nx")
    tree.set_update_interval("7-0040", 105)
    with _open(tree) as source:
        assert source.update_interval_s == pytest.approx(0.105)
        assert source.describe()["update_interval_from"] == "driver update_interval"
        assert source.describe()["update_interval_s"] == "0.105"


def test_update_interval_falls_back_to_the_documented_default(tmp_path):
    nano = build_board(tmp_path / "nano", "nano")
    with _open(nano) as source:
        assert source.update_interval_s == pytest.approx(0.0066)
        assert "default" in source.describe()["update_interval_from"]
    thor = build_board(tmp_path / "thor", "thor")
    with _open(thor) as source:
        assert source.update_interval_s == pytest.approx(0.007)
        assert source.describe()["update_interval_from"] == "driver update_interval"
    (thor.hwmon_dirs["1-0040"] / "update_interval").unlink()
    with _open(thor) as source:
        # INA3221 3 x 2.2 ms beats the INA238's 16 x 3 x 1.052 ms.
        assert source.update_interval_s == pytest.approx(0.0066)


def test_board_name_from_devicetree_model(tmp_path):
    tree = build_board(tmp_path / "sys", "orin_nano")
    model = tree.root / "firmware" / "devicetree" / "base" / "model"
    assert model.read_bytes().endswith(b"\x00")
    with _open(tree) as source:
        assert source.board == "NVIDIA Jetson Orin Nano Developer Kit"
    model.unlink()
    with _open(tree) as source:
        assert source.board == "unknown"


def test_open_source_spec_and_unknown_options(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_orin")
    with open_source("hwmon", sysfs_root=str(tree.root), interval_s=0.01, sample_hz=5) as source:
        assert source.read().total_watts == pytest.approx(tree.expected_total_w)
    with open_source("hwmon:" + str(tree.root)) as source:
        assert source.board == tree.model


def test_default_root_is_sys():
    # On this machine /sys has no Jetson monitor (or, on a Jetson, has one).
    try:
        source = hwmon.make_source(None)
    except SourceUnavailable as exc:
        assert str(exc).endswith("under /sys") or "no connected channel" in str(exc)
    else:
        assert source.root == "/sys"


def test_agx_orin_read_is_fast(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_orin")
    source = _open(tree)
    durations = []
    for _ in range(300):
        start = time.perf_counter()
        source.read()
        durations.append(time.perf_counter() - start)
    durations.sort()
    assert durations[len(durations) // 2] < 0.5e-3


def test_tree_uses_relative_symlinks_like_the_kernel(tmp_path):
    tree = build_board(tmp_path / "sys", "agx_orin")
    root = tree.root
    links = [
        root / "bus" / "i2c" / "devices" / "1-0040",
        root / "bus" / "i2c" / "drivers" / "ina3221" / "1-0041",
        root / "class" / "hwmon" / tree.hwmon_dirs["1-0040"].name,
        tree.hwmon_dirs["1-0040"] / "device",
    ]
    for link in links:
        assert link.is_symlink() and not os.path.isabs(os.readlink(str(link)))
        assert link.resolve().is_dir()
    assert (root / "class" / "hwmon" / tree.hwmon_dirs["1-0041"].name).resolve() == \
        (root / "devices" / "platform" / "bus@0" / "c240000.i2c" / "i2c-1" / "1-0041" / "hwmon"
         / tree.hwmon_dirs["1-0041"].name).resolve()
    nano = build_board(tmp_path / "nano", "nano")
    iio = nano.root / "bus" / "i2c" / "drivers" / "ina3221x" / "6-0040" / "iio:device0"
    assert (iio / "rail_name_0").read_text().strip() == "POM_5V_IN"
    assert (iio / "name").read_text().strip() == "ina3221x"
    assert os.path.realpath(str(iio)).endswith("50000000.host1x/546c0000.i2c/i2c-6/6-0040/iio:device0")


def test_rail_changes_while_reading_never_show_half_written_files(tmp_path):
    tree = build_board(tmp_path / "sys", "orin_nano")
    source = _open(tree)
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set():
            tree.set_rail("VDD_IN", watts=5.0 + (n % 10))
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        totals = {round(source.read().total_watts) for _ in range(500)}
    finally:
        stop.set()
        thread.join()
    assert totals <= set(range(5, 15))
