"""Replay source: CSV parsing, exact trace energy, real-time playback, end of trace."""

import time

import pytest

from exporter.sources import SensorReadError, SourceUnavailable, TraceEnded, open_source
from exporter.sources.replay import TraceFormatError, load_trace, trace_energy_joules


def write(tmp_path, text, name="trace.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_trace_energy_is_the_step_function_integral(tmp_path):
    path = write(
        tmp_path,
        "time_s,total_w,GPU_w,CPU_w\n"
        "0.0,2.0,0.5,1.0\n"
        "0.5,4.0,1.5,2.0\n"
        "2.0,3.0,1.0,1.0\n"
        "2.5,99.0,99.0,99.0\n",  # the last row only marks the end
    )
    total, rails = trace_energy_joules(path)
    assert total == pytest.approx(2.0 * 0.5 + 4.0 * 1.5 + 3.0 * 0.5)
    assert rails == pytest.approx({"GPU": 0.25 + 2.25 + 0.5, "CPU": 0.5 + 3.0 + 0.5})


def test_profiler_columns_are_ignored(tmp_path):
    path = write(
        tmp_path,
        "trial,time_s,layer,total_w,POM_5V_GPU_w,energy_j\n"
        "0,10.0,conv1,5.0,2.0,x\n"
        "0,10.1,relu,6.0,3.0,\n"
        "0,10.3,fc,1.0,1.0,y\n",
    )
    trace = load_trace(path)
    assert list(trace.rails) == ["POM_5V_GPU"]
    total, rails = trace_energy_joules(path)
    assert total == pytest.approx(5.0 * 0.1 + 6.0 * 0.2)
    assert rails["POM_5V_GPU"] == pytest.approx(2.0 * 0.1 + 3.0 * 0.2)


def test_playback_in_real_time_then_trace_ends(tmp_path):
    path = write(tmp_path, "time_s,total_w,GPU_w\n5.0,2.0,1.0\n5.5,7.0,4.0\n6.5,0.0,0.0\n")
    source = open_source("replay:" + path)
    opened = time.monotonic()
    assert source.simulated is True
    assert source.board == "replay of trace.csv"
    assert source.describe()["simulated"] == "true"
    assert source.describe()["trace_duration_s"] == "1.5"

    first = source.read()  # no previous read: the value at that instant
    assert (first.total_watts, first.rails) == (2.0, {"GPU": 1.0})
    assert first.energy_joules is None
    time.sleep(max(0.0, opened + 0.7 - time.monotonic()))
    crossing = source.read()  # mean over a span that crosses from row 0 into row 1
    assert 2.0 < crossing.total_watts < 7.0
    assert crossing.rails["GPU"] == pytest.approx((crossing.total_watts - 2.0) / 5.0 * 3.0 + 1.0)
    time.sleep(max(0.0, opened + 1.1 - time.monotonic()))
    inside = source.read()  # both ends inside row 1
    assert (inside.total_watts, inside.rails) == (pytest.approx(7.0), {"GPU": pytest.approx(4.0)})
    time.sleep(max(0.0, opened + 1.6 - time.monotonic()))
    last = source.read()  # crosses the end: stamped at the end
    assert last.timestamp == pytest.approx(first.timestamp + 1.5, abs=0.01)
    with pytest.raises(TraceEnded, match="ended after 1.5 s"):
        source.read()
    with pytest.raises(SensorReadError):  # stays down
        source.read()
    source.close()


def test_readings_reproduce_the_trace_energy(tmp_path):
    rows = ["time_s,total_w,CPU_w"] + ["%.3f,%g,%g" % (0.05 * i, 1 + (i * 7) % 5, (i * 3) % 4) for i in range(13)]
    path = write(tmp_path, "\n".join(rows) + "\n")
    total, rails = trace_energy_joules(path)
    source = open_source("replay:" + path)
    readings = [source.read()]
    while True:
        time.sleep(0.013)
        try:
            readings.append(source.read())
        except TraceEnded:
            break
    # The sampler charges reading k over (t_{k-1}, t_k]; the part before the first read is missing.
    head = readings[0].timestamp - (readings[-1].timestamp - 0.6)
    got = sum(b.total_watts * (b.timestamp - a.timestamp) for a, b in zip(readings, readings[1:]))
    got_cpu = sum(b.rails["CPU"] * (b.timestamp - a.timestamp) for a, b in zip(readings, readings[1:]))
    assert 0 <= head < 0.05
    assert got == pytest.approx(total - readings[0].total_watts * head, abs=1e-9)
    assert got_cpu == pytest.approx(rails["CPU"] - readings[0].rails["CPU"] * head, abs=1e-9)


def test_row_spacing_is_the_median(tmp_path):
    path = write(tmp_path, "time_s,total_w\n0,1\n0.01,1\n0.02,1\n0.03,1\n1.0,1\n")
    source = open_source("replay:" + path)
    assert source.row_spacing_s == pytest.approx(0.01)
    assert source.describe()["trace_row_spacing_s"] == "0.01"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "trace.csv: empty file"),
        ("0.0,1.0\n0.1,2.0\n", "trace.csv line 1: header must name time_s and total_w"),
        ("time_s,GPU_w\n0,1\n1,1\n", "line 1: header must name time_s and total_w"),
        ("time_s,total_w\n0.0,1.0\n0.1,abc\n0.2,1.0\n", "trace.csv line 3: total_w 'abc' is not a number"),
        ("time_s,total_w,GPU_w\n0.0,1.0,1\n0.1,2.0,nan\n", "line 3: GPU_w 'nan' is not a finite number"),
        ("time_s,total_w\n0.0,1.0\n0.5,1.0\n0.4,1.0\n", "line 4: time_s 0.4 is not after the previous row's 0.5"),
        ("time_s,total_w\n0.0,1.0\n0.0,1.0\n", "line 3: time_s 0 is not after"),
        ("time_s,total_w\n0.0,1.0\n0.1\n", "line 3: expected 2 columns, got 1"),
        ("time_s,total_w\n0.0,1.0\n", "needs at least two data rows"),
    ],
)
def test_bad_files_name_the_line(tmp_path, text, message):
    path = write(tmp_path, text)
    for call in (load_trace, trace_energy_joules, lambda p: open_source("replay:" + p)):
        with pytest.raises(TraceFormatError) as info:
            call(path)
        assert message in str(info.value)
        assert "\n" not in str(info.value)
        assert isinstance(info.value, SourceUnavailable) and isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(SourceUnavailable, match="cannot read .*nope.csv"):
        open_source("replay:" + str(tmp_path / "nope.csv"))
    with pytest.raises(ValueError):
        trace_energy_joules(str(tmp_path / "nope.csv"))


def test_blank_lines_and_spaces_are_tolerated(tmp_path):
    path = write(tmp_path, "time_s, total_w\n\n0, 1.5\n1, 2\n\n")
    assert trace_energy_joules(path) == (1.5, {})
