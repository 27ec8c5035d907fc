"""One write contract (exporter/contract.py): what the profiler builds, the real daemon accepts, and back."""

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import contract
from tests.support.daemon import Daemon

LABEL_ALPHABET = "ABCXYZabcxyz0189_.:/+-[]() "
labels = st.text(LABEL_ALPHABET, min_size=1, max_size=contract.MAX_LABEL_CHARS).filter(lambda s: s.strip())
finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
rows = st.lists(st.fixed_dictionaries({
    "index": st.integers(0, 9999), "layer": labels, "op": labels, "energy_j": finite,
    "dynamic_energy_j": st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), "duration_s": finite,
    "power_w": finite}), max_size=600)


def _row(n, label_chars=contract.MAX_LABEL_CHARS):
    label = ("L%04d_" % n).ljust(label_chars, "x")
    return {"index": n, "layer": label, "op": "O" * label_chars, "energy_j": 0.001 * (n + 1),
            "dynamic_energy_j": -0.0001 * n, "duration_s": 1e-4, "power_w": 12.5}


@settings(max_examples=150, deadline=None)
@given(model=labels, rows=rows)
def test_results_bodies_fit_the_limit_and_carry_every_row_once_in_order(model, rows):
    bodies = contract.results_bodies(model, rows)
    assert all(len(body) <= contract.MAX_BODY_BYTES for body in bodies)
    parsed = [contract.check_results(contract.parse_body(body)) for body in bodies]
    assert [replace for _, _, replace in parsed] == [True] + [False] * (len(bodies) - 1)
    assert {m for m, _, _ in parsed} == {model}
    assert [row for _, chunk, _ in parsed for row in chunk] == [dict(r, **{k: float(r[k]) for k in (
        "energy_j", "dynamic_energy_j", "duration_s", "power_w")}) for r in rows]
    assert all(chunk for _, chunk, _ in parsed[1:]), "no empty chunk after the first"


def test_a_thousand_layers_with_the_longest_labels_need_several_bodies_each_near_the_limit():
    bodies = contract.results_bodies("m" * contract.MAX_LABEL_CHARS, [_row(n) for n in range(1000)])
    sizes = [len(body) for body in bodies]
    assert len(bodies) > 1 and max(sizes) <= contract.MAX_BODY_BYTES
    row_bytes = max(len(json.dumps(_row(n), separators=(",", ":"))) for n in range(1000))
    assert all(size > contract.MAX_BODY_BYTES - row_bytes - 1 for size in sizes[:-1]), sizes
    print("1000 rows of 128-character labels: %d bodies, %s bytes" % (len(bodies), sizes))


def test_the_profiler_refuses_what_the_daemon_would_refuse():
    with pytest.raises(contract.ContractError, match="'layer' may only use"):
        contract.layer_event("net", 0, "conv\n0", "Conv2d", "begin")
    with pytest.raises(contract.ContractError, match="'state' must be"):
        contract.layer_event("net", 0, "conv", "Conv2d", "started")
    with pytest.raises(contract.ContractError, match=r"results.layers\[1\]: 'power_w' must not be negative"):
        contract.results_bodies("net", [_row(0), dict(_row(1), power_w=-1.0)])
    with pytest.raises(contract.ContractError, match="'duration_s' must be a finite number"):
        contract.results_bodies("net", [dict(_row(0), duration_s=float("nan"))])
    with pytest.raises(contract.ContractError, match="'model' is longer than 128"):
        contract.results_bodies("m" * 129, [])


def test_an_energy_answer_without_covered_seconds_is_refused_not_taken_as_full_coverage():
    whole = {"total_joules": 2.5, "samples": 100, "covered_seconds": 0.4, "start": 1.0, "end": 2.0}
    assert contract.energy_answer(whole) == (2.5, 100, 0.4)
    for field in ("covered_seconds", "total_joules", "samples"):
        partial = {k: v for k, v in whole.items() if k != field}
        with pytest.raises(contract.ContractError, match=field):
            contract.energy_answer(partial)
    with pytest.raises(contract.ContractError, match="covered_seconds"):
        contract.energy_answer(dict(whole, covered_seconds=None))


def test_the_live_daemon_accepts_every_body_the_contract_builds_and_answers_in_it():
    model = "contract_net"
    with Daemon("--source", "sim", "--max-layers", "1000") as daemon:
        layer = json.loads(contract.layer_event(model, 7, "Conv2d_7", "Conv2d", "begin"))
        assert daemon.post(contract.LAYER_PATH, layer) == (200, {"ok": True})
        many = [_row(n) for n in range(1000)]
        bodies = contract.results_bodies(model, many)
        assert len(bodies) > 1
        for body in bodies:
            status, answer = daemon.post(contract.RESULTS_PATH, body)
            assert status == 200, answer
        exported = {labels["index"]: value for labels, value in daemon.values("jetson_layer_call_energy_joules")
                    if labels["model"] == model}
        assert exported == {"%04d" % r["index"]: pytest.approx(r["energy_j"]) for r in many}

        # a new profile's first body replaces the old rows
        for body in contract.results_bodies(model, [_row(0, 10), _row(1, 10)]):
            assert daemon.post(contract.RESULTS_PATH, body)[0] == 200
        assert sorted(labels["index"] for labels, _ in daemon.values("jetson_layer_call_power_watts")
                      if labels["model"] == model) == ["0000", "0001"]

        status, _, text = daemon.get(contract.ENERGY_PATH + "?start=%r&end=%r" % _recent_window(daemon))
        assert status == 200, text
        joules, samples, covered = contract.energy_answer(json.loads(text))
        assert joules > 0 and samples > 0 and covered > 0

        # and the daemon refuses, with the contract's reason, what the contract refuses
        status, answer = daemon.post(contract.LAYER_PATH, dict(layer, state="started"))
        assert status == 400 and "'state' must be" in answer["error"]
        status, answer = daemon.post(contract.RESULTS_PATH, b"{" * (contract.MAX_DEPTH + 1))
        assert status == 400 and "nested deeper" in answer["error"]


def _recent_window(daemon):
    """From the first buffered sample to the last, once there are two."""
    for _ in range(400):
        samples = json.loads(daemon.get(contract.SAMPLES_PATH + "?since=0")[2])["samples"]
        if len(samples) >= 2:
            return samples[0]["t"], samples[-1]["t"]
        time.sleep(0.05)
    raise AssertionError("the daemon took fewer than two samples")
