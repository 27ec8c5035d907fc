"""tegrastats source: the parser on real published lines, a live fake child, replayed logs."""

import csv
import logging
import math
import os
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.sources import SensorReadError, SourceUnavailable, TraceEnded, open_source, tegrastats
from exporter.sources.rails import total_of
from exporter.sources.tegrastats import NO_POWER_FIELDS, NotTegrastatsLine, board_from_rails, parse_line

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "tegrastats-samples.tsv"
FAKEBIN = Path(__file__).resolve().parent / "fakebin"

with FIXTURE.open(newline="") as _handle:
    ROWS = list(csv.DictReader(_handle, delimiter="\t"))
LINES = {row["board"]: row["line"] for row in ROWS}
POWERED = [row for row in ROWS if row["board"] != "Nano 2GB"]

# What else lands in a log recorded as people record it (``date; nvpmodel -q; tegrastats``) or in the pipe.
OTHER_LINES = ["Wed Dec  2 13:31:30 UTC 2026", "NV Power Mode: MAXN", "0", "", "   ",
               "nvidia@jetson-nano:~$ sudo tegrastats --interval 100 --logfile run.log",
               "NV Fan Mode:quiet"]


# Totals worked out by hand from the lines in the fixture (first value of each rail).
HAND_TOTALS = {
    "Xavier NX 8GB": 2.763,  # VDD_IN 2763mW
    "Nano 4GB": 1.750,  # POM_5V_IN 1750 (the average 1628 is not used)
    "TX2 8GB": 1.649,  # VDD_IN 1649
    "AGX Xavier 16GB": 3.113,  # 0 + 216 + 864 + 0 + 144 + 1889 (parallel rails)
    "AGX Orin 64GB": 7.737,  # 2801 + 400 + 4536; VDDQ_VDD2_1V8AO (604) is inside VIN_SYS_5V0
    "Orin Nano 8GB": 12.479,  # VDD_IN 12479mW
    "AGX Thor (Dev Kit, 128GB)": 16.802,  # VIN 16802mW
}


def test_fixture_has_every_board_we_expect():
    assert set(HAND_TOTALS) | {"Nano 2GB"} == set(LINES)


@pytest.mark.parametrize("board", sorted(HAND_TOTALS))
def test_total_by_hand(board):
    total, _ = parse_line(LINES[board])
    assert total == pytest.approx(HAND_TOTALS[board], abs=1e-9)


def _first_value_mw(line, name):
    """An independent reading of one rail: the token after NAME, up to the first '/'."""
    tokens = line.split()
    values = [nxt for tok, nxt in zip(tokens, tokens[1:]) if tok == name and nxt[:1].isdigit()]
    assert len(values) == 1
    return float(values[0].split("/")[0].replace("mW", ""))


@pytest.mark.parametrize("row", POWERED, ids=[row["board"] for row in POWERED])
def test_every_fixture_line_structurally(row):
    line = row["line"]
    total, rails = parse_line(line)
    assert rails
    for name, watts in rails.items():
        assert math.isfinite(watts) and watts >= 0
        assert watts * 1000 == pytest.approx(_first_value_mw(line, name))
        # never a memory, frequency or temperature field
        assert name not in {"RAM", "SWAP", "IRAM", "EMC_FREQ", "GR3D_FREQ", "APE", "NC"}
        assert "@" not in name
    assert math.isfinite(total) and total > 0
    assert total == pytest.approx(total_of(rails))
    # the input rail, where there is one, carries every other rail
    assert total >= max(rails.values()) - 1e-12
    assert board_from_rails(rails) != "unknown"


@pytest.mark.parametrize(
    "board, expected",
    [
        ("Nano 4GB", "jetson-nano (from tegrastats rails)"),
        ("TX2 8GB", "jetson-tx2 (from tegrastats rails)"),
        ("AGX Xavier 16GB", "jetson-agx-xavier (from tegrastats rails)"),
        ("AGX Orin 64GB", "jetson-agx-orin (from tegrastats rails)"),
        ("AGX Thor (Dev Kit, 128GB)", "jetson-thor (from tegrastats rails)"),
        ("Orin Nano 8GB", "jetson-xavier-nx/orin-nx/orin-nano (from tegrastats rails)"),
    ],
)
def test_board_from_rails(board, expected):
    assert board_from_rails(parse_line(LINES[board])[1]) == expected


def test_board_unknown_for_unfamiliar_rails():
    assert board_from_rails({"FOO": 1.0}) == "unknown"


def test_nano_uses_current_value_not_average():
    _, rails = parse_line(LINES["Nano 4GB"])
    assert rails == {"POM_5V_IN": 1.75, "POM_5V_GPU": 0.0, "POM_5V_CPU": 0.366}


def test_agx_orin_with_nc_channel():
    line = (
        "VDD_GPU_SOC 3986mW/3986mW VDD_CPU_CV 797mW/797mW VIN_SYS_5V0 3530mW/3530mW "
        "NC 0mW/0mW VDDQ_VDD2_1V8AO 496mW/496mW"
    )
    total, rails = parse_line(line)
    assert "NC" not in rails
    assert rails["VDDQ_VDD2_1V8AO"] == pytest.approx(0.496)
    assert total == pytest.approx(3.986 + 0.797 + 3.530)


def test_l4t28_tx2_rails():
    line = (
        "RAM 2586/7846MB (lfb 1x1MB) CPU [0%@960,0%@499,off,off,0%@960,0%@960] EMC_FREQ 10%@665 "
        "GR3D_FREQ 53%@140 APE 150 MTS fg 0% bg 0% BCPU@41C MCPU@41C GPU@39C PLL@41C Tboard@35C "
        "Tdiode@37.75C PMIC@100C thermal@40.2C VDD_IN 3177/3102 VDD_CPU 536/501 VDD_GPU 383/390 "
        "VDD_SOC 536/530 VDD_WIFI 0/0 VDD_DDR 575/570"
    )
    total, rails = parse_line(line)
    assert total == pytest.approx(3.177)
    assert set(rails) == {"VDD_IN", "VDD_CPU", "VDD_GPU", "VDD_SOC", "VDD_WIFI", "VDD_DDR"}
    assert board_from_rails(rails) == "jetson-tx2 (from tegrastats rails)"


def test_jetpack_72_three_values_uses_the_first():
    # JetPack 7.2 prints current/average/peak per rail and current/max per temperature.
    line = (
        "03-02-2026 09:14:07 RAM 2210/62841MB CPU [3%@729,off] GR3D_FREQ 0% cpu@44.125C/45.0C "
        "tj@44.5C/46.25C VDD_GPU_SOC 2810mW/2745mW/3120mW VDD_CPU_CV 402mW/380mW/655mW "
        "VIN_SYS_5V0 3920mW/3950mW/4020mW"
    )
    total, rails = parse_line(line)
    assert rails == {"VDD_GPU_SOC": 2.81, "VDD_CPU_CV": 0.402, "VIN_SYS_5V0": 3.92}
    assert total == pytest.approx(2.81 + 0.402 + 3.92)


def test_vdd_name_without_power_values_is_not_a_rail():
    with pytest.raises(ValueError, match="no power fields"):
        parse_line("RAM 100/200MB VDD_IN off VDD_CPU 45% VDD_SOC@40C")


def test_no_power_fields_is_a_clear_error_never_zero():
    with pytest.raises(ValueError) as info:
        parse_line(LINES["Nano 2GB"])
    assert str(info.value) == NO_POWER_FIELDS
    assert "no power fields in tegrastats line (this board has no power monitor?)" in NO_POWER_FIELDS


@pytest.mark.parametrize("line", OTHER_LINES)
def test_other_lines_are_not_tegrastats_lines(line):
    with pytest.raises(NotTegrastatsLine):
        parse_line(line)


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row["board"])
def test_every_fixture_line_is_a_tegrastats_line(row):
    try:
        parse_line(row["line"])
    except NotTegrastatsLine:
        pytest.fail("a real tegrastats line was taken for another line")
    except ValueError as exc:  # only the board without a power monitor
        assert row["board"] == "Nano 2GB" and str(exc) == NO_POWER_FIELDS


_TOKENS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["VDD_IN", "POM_5V_IN", "VIN", "NC", "RAM", "GPU", "VDDQ_VDD2_1V8AO", "VIN_SYS_5V0", "CPU"]),
    st.builds(
        lambda a, b, unit: "%s%s/%s%s" % (a, unit, b, unit),
        st.integers(min_value=0, max_value=10**12),
        st.integers(min_value=0, max_value=10**12),
        st.sampled_from(["", "mW", "MB", "%", "kB"]),
    ),
    st.from_regex(r"\d{1,3}(\.\d{1,8})?(mW)?/\d{1,3}(mW)?(/\d{1,3}(mW)?)?", fullmatch=True),
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(_TOKENS, max_size=14).map(" ".join)))
def test_garbage_never_crashes(line):
    try:
        total, rails = parse_line(line)
    except NotTegrastatsLine:
        assert not re.search(r"(?<!\S)RAM \d+/\d+MB(?!\S)", line)  # tegrastats' own first field
        return
    except ValueError as exc:
        assert str(exc) == NO_POWER_FIELDS
        return
    assert rails
    assert math.isfinite(total) and total >= 0
    assert all(math.isfinite(w) and w >= 0 for w in rails.values())


# --- live mode, with tests/fakebin/tegrastats on PATH -----------------------------------------------


@pytest.fixture
def fake_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", "%s%s%s" % (FAKEBIN, os.pathsep, os.environ.get("PATH", "")))
    monkeypatch.setenv("FAKE_TEGRASTATS_FIXTURE", str(FIXTURE))
    starts = tmp_path / "starts.log"
    monkeypatch.setenv("FAKE_TEGRASTATS_LOG", str(starts))
    return starts


def test_live_not_on_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SourceUnavailable, match="tegrastats not found on PATH"):
        tegrastats.make_source(None)


def _read_until(source, predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reading = source.read()
            if predicate(reading):
                return reading
        except SensorReadError:
            if time.monotonic() > deadline:
                raise
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_live_reads_latest_line(fake_path):
    with open_source("tegrastats", interval_s=0.02, unknown_option=1) as source:
        assert source.name == "tegrastats"
        assert source.update_interval_s == pytest.approx(0.02)
        assert source.board == "jetson-agx-orin (from tegrastats rails)"
        assert source.simulated is False
        first = source.read()
        assert first.total_watts == pytest.approx(HAND_TOTALS["AGX Orin 64GB"])
        assert first.timestamp <= time.monotonic()
        later = _read_until(source, lambda r: r.timestamp > first.timestamp)
        # stamped on arrival, about one interval apart
        assert 0.005 < later.timestamp - first.timestamp < 1.0
        assert source.describe()["source"] == "tegrastats"
    assert fake_path.read_text().split("\n")[0] == "--interval 20"


def test_live_skips_and_counts_lines_that_are_not_tegrastats(fake_path, monkeypatch):
    monkeypatch.setenv("FAKE_TEGRASTATS_PREAMBLE", "|".join(OTHER_LINES))
    with tegrastats.make_source(None, interval_s=0.02) as source:
        assert source.read().total_watts == pytest.approx(HAND_TOTALS["AGX Orin 64GB"])
        assert source.describe()["skipped_lines"] == str(len(OTHER_LINES))


def test_live_default_interval(fake_path):
    with tegrastats.make_source(None) as source:
        assert source.update_interval_s == pytest.approx(0.1)
    assert fake_path.read_text().strip() == "--interval 100"


def test_live_close_terminates_child(fake_path):
    source = tegrastats.make_source(None, interval_s=0.02)
    child = source._child
    source.close()
    assert child.proc.poll() is not None
    source.close()  # twice is fine
    with pytest.raises(SensorReadError):
        source.read()


def test_live_board_without_monitor_is_unavailable(fake_path, monkeypatch):
    monkeypatch.setenv("FAKE_TEGRASTATS_BOARD", "Nano 2GB")
    with pytest.raises(SourceUnavailable, match="no power fields"):
        tegrastats.make_source(None, interval_s=0.02)


def test_live_child_that_exits_at_once_is_unavailable(fake_path, monkeypatch):
    monkeypatch.setenv("FAKE_TEGRASTATS_BOARD", "no such board")
    with pytest.raises(SourceUnavailable, match=r"exited with code 1: fake tegrastats: no fixture row"):
        tegrastats.make_source(None, interval_s=0.02)


def test_live_death_and_restart(fake_path, monkeypatch):
    monkeypatch.setenv("FAKE_TEGRASTATS_EXIT_AFTER", "3")
    monkeypatch.setenv("FAKE_TEGRASTATS_EXIT_CODE", "7")
    with tegrastats.make_source(None, interval_s=0.02, restart_backoff_s=0.5) as source:
        source.read()
        deadline = time.monotonic() + 5
        while True:
            try:
                source.read()
            except SensorReadError as exc:
                assert "tegrastats exited with code 7" in str(exc)
                died = time.monotonic()
                break
            assert time.monotonic() < deadline
            time.sleep(0.005)
        # within the backoff it stays down and says so
        with pytest.raises(SensorReadError, match="exited with code 7.*restarting in"):
            source.read()
        assert fake_path.read_text().count("--interval 20") == 1
        reading = _read_until(source, lambda r: True)
        assert reading.timestamp > died
        assert time.monotonic() - died >= 0.5
        assert fake_path.read_text().count("--interval 20") == 2


def test_live_hung_child_is_killed_and_restarted(fake_path, monkeypatch):
    monkeypatch.setenv("FAKE_TEGRASTATS_EXIT_AFTER", "2")
    monkeypatch.setenv("FAKE_TEGRASTATS_HANG", "1")
    with tegrastats.make_source(None, interval_s=0.02, restart_backoff_s=0.05) as source:
        hung = source._child.proc
        messages = []
        deadline = time.monotonic() + 6
        while fake_path.read_text().count("--interval") < 2:
            try:
                source.read()
            except SensorReadError as exc:
                messages.append(str(exc))
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert any("printed no line for" in m and "killed it" in m for m in messages)
        assert any("exited with code -9" in m for m in messages)
        assert hung.poll() is not None
        assert _read_until(source, lambda r: True).total_watts > 0


# --- replay mode -----------------------------------------------------------------------------------


def _undated(line):
    """The line without its leading ``MM-DD-YYYY HH:MM:SS``."""
    return line.split(" ", 2)[2]


def test_replay_undated_log_at_interval(tmp_path):
    log = tmp_path / "nano.log"
    log.write_text("\n".join([LINES["Nano 4GB"], LINES["Nano 4GB"].replace("POM_5V_IN 1750", "POM_5V_IN 2500")]) + "\n")
    source = open_source("tegrastats:%s" % log, interval_s=0.25)
    assert source.simulated is True
    assert source.describe()["simulated"] == "true"
    assert source.describe()["replay_file"] == str(log)
    assert source.board == "jetson-nano (from tegrastats rails)"
    assert source.update_interval_s == pytest.approx(0.25)
    first = source.read()
    assert first.total_watts == pytest.approx(1.75)
    second = _read_until(source, lambda r: r.timestamp > first.timestamp)
    assert second.total_watts == pytest.approx(2.5)
    assert second.timestamp - first.timestamp == pytest.approx(0.25)
    time.sleep(0.5)
    with pytest.raises(TraceEnded):
        source.read()


def test_replay_undated_default_is_one_second(tmp_path):
    log = tmp_path / "xavier.log"
    log.write_text(LINES["AGX Xavier 16GB"] + "\n")
    source = tegrastats.make_source(str(log))
    assert source.update_interval_s == 1.0
    assert source.read().total_watts == pytest.approx(3.113)


def test_replay_dated_log_takes_interval_from_dates(tmp_path):
    body = _undated(LINES["Orin Nano 8GB"])
    # 11 lines over one second: tegrastats --interval 100 --logfile
    dated = ["11-22-2023 10:31:0%d %s" % (2 if k < 10 else 3, body) for k in range(11)]
    log = tmp_path / "orin.log"
    log.write_text("\n".join(dated) + "\n\n")
    source = tegrastats.make_source(str(log), interval_s=5.0)
    assert source.update_interval_s == pytest.approx(0.1)
    assert source.read().total_watts == pytest.approx(12.479)
    time.sleep(1.15)
    with pytest.raises(TraceEnded, match="ended after 11 lines"):
        source.read()


def test_replay_line_without_power_is_a_read_error(tmp_path):
    log = tmp_path / "mixed.log"
    log.write_text("%s\n%s\n" % (LINES["Nano 2GB"], LINES["Nano 4GB"]))
    source = tegrastats.make_source(str(log), interval_s=0.3)
    with pytest.raises(SensorReadError, match="no power fields") as info:
        source.read()
    assert not isinstance(info.value, TraceEnded)
    assert _read_until(source, lambda r: True).total_watts == pytest.approx(1.75)


def test_replay_skips_and_counts_lines_that_are_not_tegrastats(tmp_path, caplog):
    # date; nvpmodel -q; tegrastats --interval 500 --logfile (JetPack 5 lines carry their own date)
    body = _undated(LINES["Xavier NX 8GB"])
    dated = ["07-09-2024 13:31:%02d %s" % (30 + k // 2, body) for k in range(5)]
    log = tmp_path / "recorded.log"
    log.write_text("\n".join(OTHER_LINES[:2] + dated[:3] + OTHER_LINES[2:] + dated[3:]) + "\n")
    with caplog.at_level(logging.INFO, logger="exporter.sources.tegrastats"):
        source = tegrastats.make_source(str(log))
    assert "skipped %d lines" % len(OTHER_LINES) in caplog.text
    assert source.describe()["skipped_lines"] == str(len(OTHER_LINES))
    assert source.board == "jetson-xavier-nx/orin-nx/orin-nano (from tegrastats rails)"
    assert source.update_interval_s == pytest.approx(0.5)  # from the dates of the tegrastats lines only
    assert source.read().total_watts == pytest.approx(HAND_TOTALS["Xavier NX 8GB"])
    time.sleep(2.6)
    with pytest.raises(TraceEnded, match="ended after 5 lines"):
        source.read()


def test_replay_of_other_lines_only_is_unavailable(tmp_path):
    log = tmp_path / "prompt.log"
    log.write_text("\n".join(OTHER_LINES) + "\n")
    with pytest.raises(SourceUnavailable, match="no tegrastats lines"):
        tegrastats.make_source(str(log))


def test_replay_unusable_logs(tmp_path):
    with pytest.raises(SourceUnavailable, match="cannot read"):
        tegrastats.make_source(str(tmp_path / "missing.log"))
    empty = tmp_path / "empty.log"
    empty.write_text("\n")
    with pytest.raises(SourceUnavailable, match="no lines"):
        tegrastats.make_source(str(empty))
    nano2 = tmp_path / "nano2gb.log"
    nano2.write_text(LINES["Nano 2GB"] + "\n")
    with pytest.raises(SourceUnavailable, match="no power fields"):
        tegrastats.make_source(str(nano2))
