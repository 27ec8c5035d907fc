"""Isolated measurement on a busy board: robust levels, local idle, honest flags, and CIs that hold the truth."""

import math
import random
import statistics

import pytest
import torch

from profiler import ProfilerError, profile
from profiler.estimate import BLOCK_K, UpdateGrid, core_blocks, idle_level, robust_level, update_values
from profiler.measure import Window, _fit, _mark_jumps
from profiler.result import plausibility
from tests.support.groundtruth import LAYERS, GroundTruthSensor, Timeline, binomial_floor, build_model, busy_background


def test_a_burst_is_left_out_with_its_edges_but_a_stall_stays():
    sigma = 0.01
    clean = [4.0, 4.01, 3.99, 4.0, 4.0, 4.01, 3.99, 4.0]
    level, kept = robust_level(clean, sigma)
    assert kept == len(clean) and level == pytest.approx(statistics.fmean(clean))
    burst = clean[:3] + [4.03, 4.8, 4.8, 4.03] + clean[7:]  # the sensor smears a burst's edges
    level, kept = robust_level(burst, sigma)
    assert kept == 4 and level == pytest.approx(statistics.fmean([4.0, 4.01, 3.99, 4.0]))
    stalled = clean[:4] + [3.2] + clean[5:]  # the loop stalled: less power, the window's own idle time
    level, kept = robust_level(stalled, sigma)
    assert kept == len(stalled) and level == pytest.approx(statistics.fmean(stalled))
    assert robust_level([4.0, 4.0 + 0.99 * BLOCK_K * sigma], sigma)[1] == 2


def test_core_blocks_hold_whole_calls_and_end_with_the_window():
    start, n = core_blocks(1.0, 2.0, 0.0066, 0.007)  # a 7 ms call: blocks of 4 calls
    assert n == int(1.0 / 0.028) and start == pytest.approx(2.0 - n * 0.028)
    start, n = core_blocks(1.0, 2.0, 0.1, 0.0002)  # short calls: a block is one sensor update of whole calls
    block = (2.0 - start) / n
    assert block >= 0.1 and (block / 0.0002) == pytest.approx(round(block / 0.0002))
    start, n = core_blocks(1.0, 1.05, 0.1, 0.02)  # shorter than a block: whole calls, one block
    assert n == 1 and start == pytest.approx(1.05 - 2 * 0.02)


def reference(t: float, watts: float) -> Window:
    w = Window("idle", None, 0, t - 0.1, t + 0.1, "idle", resolved=True)
    w.level_w = watts
    return w


def test_local_idle_follows_a_curving_drift_and_a_slope_at_the_ends():
    def drift(t):
        return 3.0 + 0.4 * math.sin(2 * math.pi * t / 17.0)

    refs = [reference(t, drift(t)) for t in (0.0, 0.7, 1.4, 2.1)]
    # quadratic through two references each side: the sine's curvature is followed, not averaged
    assert _fit(refs, 1.05) == pytest.approx(drift(1.05), abs=2e-4)
    linear = (refs[1].level_w + refs[2].level_w) / 2
    assert abs(linear - drift(1.05)) > 5 * abs(_fit(refs, 1.05) - drift(1.05))
    assert _fit(refs[2:], 1.75) == pytest.approx((refs[2].level_w + refs[3].level_w) / 2)
    assert _fit(refs[:1], 5.0) == refs[0].level_w
    assert math.isnan(_fit([], 1.0))


def test_references_a_burst_covered_are_marked_but_not_those_at_the_drifts_peaks_and_troughs():
    """The busy board's idle (+/-0.4 W over 17 s) seen by references 0.9 s apart, 8 mW of noise, and 0.8 W
    bursts over some of them -- three in a row, four of seven, and at either end.  Every burst is marked; no
    clean one is, even at a trough, where a running median lies above the curve (marking the trough's
    references would leave the layers there a baseline from its rim)."""
    rng = random.Random(3)
    burst = {0, 9, 10, 23, 31, 40, 41, 42, 55, 60, 61, 63, 64, 79}
    refs = []
    for k in range(80):
        t = 0.9 * k
        w = reference(t, 3.0 + 0.4 * math.sin(2 * math.pi * t / 17.0) + rng.gauss(0.0, 0.008)
                      + (0.8 if k in burst else 0.0))
        w.noise_w = 0.008
        refs.append(w)
    _mark_jumps(refs)
    marked = {k for k, w in enumerate(refs) if w.dirty == "level jump"}
    # 62, alone among four bursts, has no clean neighbour within three to be told from a burst by: it may go
    assert burst <= marked and marked - burst <= {62}


def test_implausible_figures_are_flagged_with_their_reason():
    assert plausibility(0.01, 0.001, 0.004, 0.0005, 0.002, 10.0, 0, 5) == ""
    assert plausibility(-0.001, 0.0005, -0.004, 0.001, 0.002, 10.0, 0, 5).split("; ") == [
        "negative total energy", "dynamic energy below idle beyond its CI"]
    assert "peak reading" in plausibility(0.05, 0.001, 0.04, 0.001, 0.002, 10.0, 0, 5)  # 25 W on a 10 W board
    assert plausibility(0.021, 0.002, 0.01, 0.001, 0.002, 10.0, 0, 5) == ""  # within its CI of the peak
    assert plausibility(float("nan"), None, float("nan"), None, float("nan"), 10.0, 7, 0) == \
        "no clean window (7 disturbed)"


def test_bad_target_and_budget_raise_one_line_errors():
    model = torch.nn.Linear(2, 2)
    for kwargs in ({"target_ci": 0}, {"target_ci": float("nan")}, {"budget_s": -1.0}, {"target_ci": True}):
        with pytest.raises(ProfilerError) as info:
            profile(model, torch.zeros(2), source="sim", **kwargs)
        assert "\n" not in str(info.value)


def test_a_window_shorter_than_the_sensors_reach_is_lengthened_with_a_warning():
    """A window whose core would be empty (the reach of a 20 ms sensor is longer than 20 ms) is never measured
    as such: the profiler says so and measures windows long enough to hold one update after the reach."""
    warnings = []
    result = profile(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval(), torch.zeros(1, 8),
                     source="sim", source_options={"interval_s": 0.02}, min_window_s=0.02, trials=1, seed=1,
                     warn=warnings.append, progress=lambda *args: None)
    assert any("leaves no measurable core" in w for w in warnings), warnings
    assert result.meta["min_window_s"] > 0.02 * 3
    assert all(layer.trials for layer in result.layers)


def test_busy_board_cis_hold_the_truth_and_no_figure_is_dishonest():
    """A drifting idle and 0.8 W bursts of no layer: each layer's 95 % CI of dynamic energy holds the truth.

    Nominal coverage is 95 %; the issue asks for >= 90 %.  With 16 CIs, fewer
    than ``binomial_floor(16, 0.9, 0.001)`` hits would happen less than once in
    a thousand runs if the CIs really covered 90 %: below that, they do not.
    """
    torch.set_num_threads(1)
    timeline = Timeline(keep_s=math.inf)
    model = build_model(timeline, LAYERS).eval()
    sensor = GroundTruthSensor(timeline, 0.0066, seed=5, background=busy_background(5))
    seen = []
    result = profile(model, torch.zeros(1), source=sensor, trials=4, target_ci=0.05, seed=5,
                     progress=lambda done, total, text: seen.append((done, total, text)))
    assert result.complete
    hits = 0
    for position, layer in enumerate(result.layers):
        windows = [w for w in result.windows if w.unit == position and w.usable]
        truth = sum(timeline.dynamic_energy(w.t1) - timeline.dynamic_energy(w.t0) for w in windows) / \
            sum(w.calls for w in windows)
        assert layer.trials >= 2 and layer.dynamic_energy_ci95_j is not None, layer
        hits += abs(layer.dynamic_energy_j - truth) <= layer.dynamic_energy_ci95_j
        assert not layer.flag and layer.energy_j > 0  # no power above the board's peak, nothing negative
    floor = binomial_floor(len(LAYERS), 0.9, 0.001)
    assert 8 <= floor < len(LAYERS)
    assert hits >= floor, "%d of %d CIs held the truth" % (hits, len(LAYERS))
    # bursts were seen and left out, not averaged in
    assert result.meta["windows_disturbed"] >= 1
    # one stable total; the count never passes it; every line carries an ETA
    assert len({total for _, total, _ in seen}) == 1
    counts = [done for done, _, _ in seen]
    assert counts == sorted(counts) and counts[-1] == seen[-1][1] and counts[-2] < counts[-1]
    assert all(text.startswith("ETA ") for _, _, text in seen)


def test_update_grid_is_found_from_value_changes_and_gives_each_update_its_value():
    T, phase = 0.1, 0.037
    reads = [0.0131 * k for k in range(400)]  # reads at a period incommensurate with T

    def value(t):  # update j (at phase + j T) publishes j
        return float(math.floor((t - phase) / T))

    grid = UpdateGrid(T)
    grid.feed([(t, value(t)) for t in reads])
    assert grid.known and grid.slack_s < 0.002
    assert grid.next_update(1.0) == pytest.approx(1.037, abs=grid.slack_s)
    updates = grid.updates_within(1.0, 1.5)  # whole periods inside: (1.037, 1.137] ... (1.337, 1.437]
    assert updates == pytest.approx([1.137, 1.237, 1.337, 1.437], abs=grid.slack_s)
    values = update_values(reads, [value(t) for t in reads], updates, T, grid.slack_s)
    assert values == [11.0, 12.0, 13.0, 14.0]
    # a sensor whose updates stop agreeing with one grid: the old changes are forgotten, not averaged in
    drifted = UpdateGrid(T)
    drifted.feed([(t, value(t)) for t in reads[:200]] + [(t, value(t - 0.05)) for t in reads[200:]])
    assert drifted.known and drifted.next_update(4.0) == pytest.approx(4.087, abs=drifted.slack_s)
    assert not UpdateGrid(T).known


def test_an_idle_reference_is_its_low_cluster_even_when_a_burst_covers_most_of_it():
    sigma = 0.01
    idle = [3.0, 3.01, 2.99]
    level, kept = idle_level(idle + [3.4, 3.8, 3.8, 3.8, 3.8, 3.8], sigma)  # the sensor smears the edge
    assert kept == 2 and level == pytest.approx(3.005)  # the edge's neighbour goes too
    assert idle_level(idle * 3, sigma) == (pytest.approx(3.0), 9)
