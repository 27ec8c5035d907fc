"""The energy integrator against a plain model of its rule, over any sequence of instants hypothesis finds.

The integrator has no clock: every instant is a reading's timestamp, so the
tests drive rate changes, pauses around the gap limit, failed reads,
repeated timestamps and counter resets without waiting for any of them.
"""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.integrator import EnergyIntegrator

MAX_GAP_S = 0.05
RAILS = 2

# One event: the time since the previous one (0: a repeated timestamp; beyond MAX_GAP_S: a pause), then
# either a failed read or a reading with its total and rail watts and its hardware counter's increase
# (negative: the counter was reset).
_dt = st.one_of(st.just(0.0), st.floats(1e-6, 0.2), st.sampled_from([MAX_GAP_S, MAX_GAP_S * (1 + 1e-9)]))
_watts = st.lists(st.floats(0.0, 1e3), min_size=1 + RAILS, max_size=1 + RAILS)
_reading = st.tuples(st.just("read"), _watts, st.one_of(st.floats(0.0, 50.0), st.floats(-1e3, -1e-3)))
_event = st.tuples(_dt, st.one_of(_reading, st.just(("fail", None, None))))
_events = st.lists(_event, min_size=1, max_size=60)


def _run(events, with_counter):
    """Feed the events; returns the integrator, what each add returned, and the plain model's figures."""
    integ = EnergyIntegrator(1 + RAILS, MAX_GAP_S)
    t, counter = 100.0, 5000.0
    steps = []
    model = {"energy": [0.0] * (1 + RAILS), "covered": 0.0, "gap": 0.0, "first": None, "last": None}
    previous = None  # (t, counter) of the last reading integration may continue from
    last_seen = None
    history = []  # cumulative total energy after each accepted reading: must never decrease
    for dt, (kind, watts, increase) in events:
        t += dt
        if kind == "fail":
            integ.interrupt()
            previous = None
            continue
        counter += increase
        reading_counter = counter if with_counter else None
        step = integ.add(t, watts, reading_counter)
        steps.append(step)
        if last_seen is not None and t <= last_seen:
            assert step is None, "a reading not newer than the newest is ignored"
            continue
        assert step is not None
        model["first"] = t if model["first"] is None else model["first"]
        model["last"] = t
        continues = previous is not None and (
            (with_counter and reading_counter >= previous[1]) or (not with_counter and t - previous[0] <= MAX_GAP_S))
        if continues:
            span = t - previous[0]
            model["energy"][0] += (reading_counter - previous[1]) if with_counter else watts[0] * span
            for n in range(1, 1 + RAILS):
                model["energy"][n] += watts[n] * span
            model["covered"] += span
            assert step[0] == previous[0]
        else:
            if last_seen is not None:
                model["gap"] += t - last_seen
            assert step == (t, 0.0), "a reading after a break or a pause starts a new stretch"
        history.append(integ.energy[0])
        previous = (t, reading_counter)
        last_seen = t
    return integ, steps, model, history


def _assert_agrees(integ, model, history):
    for got, want in zip(integ.energy, model["energy"]):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert integ.covered_s == pytest.approx(model["covered"], rel=1e-9, abs=1e-12)
    assert integ.gap_s == pytest.approx(model["gap"], rel=1e-9, abs=1e-12)
    assert all(b >= a for a, b in zip(history, history[1:])), "the energy counter never decreases, reset or not"


@settings(max_examples=400, deadline=None)
@given(_events)
def test_power_is_charged_over_the_interval_before_each_reading_and_never_across_a_gap(events):
    integ, steps, model, history = _run(events, with_counter=False)
    _assert_agrees(integ, model, history)
    if model["first"] is not None:  # every second between the first and the last reading is covered or a gap
        assert integ.covered_s + integ.gap_s == pytest.approx(model["last"] - model["first"], rel=1e-9, abs=1e-9)


@settings(max_examples=400, deadline=None)
@given(_events)
def test_a_hardware_counter_is_integrated_from_its_deltas_across_any_pause_and_a_reset_is_a_gap(events):
    integ, steps, model, history = _run(events, with_counter=True)
    _assert_agrees(integ, model, history)
    charged = math.fsum(step[1] for step in steps if step is not None)
    assert charged == pytest.approx(integ.energy[0], rel=1e-9, abs=1e-9), "add() returns what it charged"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(1e-4, MAX_GAP_S / 2), min_size=2, max_size=80), st.floats(0.0, 100.0))
def test_constant_power_at_any_changing_rate_is_power_times_elapsed_time(intervals, watts):
    integ = EnergyIntegrator(1, MAX_GAP_S)
    t = 0.0
    integ.add(t, [watts])
    for dt in intervals:
        t += dt
        integ.add(t, [watts])
    assert integ.gap_s == 0.0
    assert integ.covered_s == pytest.approx(t, rel=1e-12)
    assert integ.energy[0] == pytest.approx(watts * t, rel=1e-9, abs=1e-12)
