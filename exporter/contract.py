"""The daemon's profiler API, written once: paths, fields, types, limits and how results are chunked.

The daemon checks every write with these tables (``exporter/validate.py``) and
the profiler builds its bodies and reads the window API's answers with the same
ones (``profiler/push.py``, ``profiler/meter.py``), so the two sides cannot
drift apart.  Anything that fails raises :class:`ContractError` with a one-line
reason and the HTTP status the daemon answers with.  Standard library only:
the profiler imports it without the daemon's dependencies.
"""

import json
import math
import re
from typing import Any, Dict, List, Sequence, Tuple

LAYER_PATH = "/api/v1/layer"
RESULTS_PATH = "/api/v1/results"
INFERENCE_PATH = "/api/v1/inference"
ENERGY_PATH = "/api/v1/energy"
SAMPLES_PATH = "/api/v1/samples"
SOURCE_PATH = "/api/v1/source"

MAX_BODY_BYTES = 64 * 1024
MAX_LABEL_CHARS = 128
MIN_TOKEN_CHARS = 16  # the bearer token of --write-token-file, which the profiler's --token-file holds too
MAX_DEPTH = 4  # {"layers": [{...}]} is three deep; one level of slack
LABEL_RE = re.compile(r"^[A-Za-z0-9_.:/+\-\[\]() ]+\Z")  # \Z: "$" would let a final newline through
STATES = ("begin", "end")

# Field kinds.
LABEL = "label"  # non-empty string of at most MAX_LABEL_CHARS from LABEL_RE: it becomes a metric label
COUNT = "count"  # non-negative integer (not a bool)
SIZE = "size"  # positive integer (not a bool)
AMOUNT = "amount"  # finite number >= 0
SIGNED = "signed"  # finite number (dynamic energy may be slightly negative)
STATE = "state"  # one of STATES
FLAG = "flag"  # true or false

Fields = Sequence[Tuple[str, str]]
LAYER_EVENT_FIELDS = (("model", LABEL), ("index", COUNT), ("layer", LABEL), ("op", LABEL), ("state", STATE))
RESULT_ROW_FIELDS = (("index", COUNT), ("layer", LABEL), ("op", LABEL), ("energy_j", AMOUNT),
                     ("dynamic_energy_j", SIGNED), ("duration_s", AMOUNT), ("power_w", AMOUNT))
# Energy per inference (one forward pass of a batch of batch_size samples), the last profile of the model in
# that power mode (nvpmodel's name, "unknown" off-Jetson); the daemon derives inferences per joule.
INFERENCE_FIELDS = (("model", LABEL), ("power_mode", LABEL), ("batch_size", SIZE), ("latency_s", AMOUNT),
                    ("energy_j", AMOUNT), ("dynamic_energy_j", SIGNED), ("power_w", AMOUNT))
RESULTS_FIELDS = ("model", "layers", "replace")  # "replace" defaults to true: drop the model's older rows
# What the profiler needs from GET /api/v1/energy; the answer carries more (start, end, rails, mean_watts).
ENERGY_ANSWER_FIELDS = (("total_joules", SIGNED), ("samples", COUNT), ("covered_seconds", AMOUNT))


class ContractError(ValueError):
    """A body or answer outside the contract; ``status`` is the HTTP status the daemon answers with."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.status = status


def _value(obj: Dict[str, Any], key: str, kind: str, where: str) -> Any:
    value = obj.get(key)
    if kind == LABEL:
        if not isinstance(value, str) or not value:
            raise ContractError("%s: %r must be a non-empty string" % (where, key))
        if len(value) > MAX_LABEL_CHARS:
            raise ContractError("%s: %r is longer than %d characters" % (where, key, MAX_LABEL_CHARS))
        if not LABEL_RE.match(value):
            raise ContractError("%s: %r may only use letters, digits, space and _ . : / + - [ ] ( )" % (where, key))
        return value
    if kind == COUNT:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ContractError("%s: %r must be a non-negative integer" % (where, key))
        return value
    if kind == SIZE:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ContractError("%s: %r must be a positive integer" % (where, key))
        return value
    if kind in (AMOUNT, SIGNED):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ContractError("%s: %r must be a finite number" % (where, key))
        if value < 0 and kind == AMOUNT:
            raise ContractError("%s: %r must not be negative" % (where, key))
        return float(value)
    if kind == STATE:
        if value not in STATES:
            raise ContractError("%s: %r must be %s" % (where, key, " or ".join('"%s"' % s for s in STATES)))
        return value
    if kind == FLAG:
        if not isinstance(value, bool):
            raise ContractError("%s: %r must be true or false" % (where, key))
        return value
    raise AssertionError("unknown field kind %r" % kind)


def _only_keys(obj: Dict[str, Any], allowed: Sequence[str], where: str) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise ContractError("%s: unknown field %r (allowed: %s)" % (where, extra[0], ", ".join(allowed)))


def check(obj: Any, fields: Fields, where: str, extra_ok: bool = False) -> Dict[str, Any]:
    """Every field of ``fields`` present and of its kind (numbers as float); unknown keys refused
    unless ``extra_ok``."""
    if not isinstance(obj, dict):
        raise ContractError("%s must be an object" % where)
    if not extra_ok:
        _only_keys(obj, [name for name, _ in fields], where)
    return {name: _value(obj, name, kind, where) for name, kind in fields}


def parse_body(body: bytes) -> Dict[str, Any]:
    """A write's body: at most MAX_BODY_BYTES of UTF-8 JSON, an object, nested at most MAX_DEPTH."""
    if len(body) > MAX_BODY_BYTES:
        raise ContractError("body is %d bytes; the limit is %d" % (len(body), MAX_BODY_BYTES), 413)
    if _depth_exceeds(body, MAX_DEPTH):
        raise ContractError("JSON nested deeper than %d levels" % MAX_DEPTH)
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ContractError("body is not valid UTF-8 JSON: %s" % str(exc).splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ContractError("body must be a JSON object")
    return data


def _depth_exceeds(body: bytes, limit: int) -> bool:
    """Bracket depth outside strings, checked before json.loads can recurse."""
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def check_layer_event(data: Dict[str, Any]) -> Dict[str, Any]:
    return check(data, LAYER_EVENT_FIELDS, "layer event")


def check_results(data: Dict[str, Any]) -> Tuple[str, List[Dict[str, Any]], bool]:
    """(model, checked rows, replace) of a POST /api/v1/results body."""
    _only_keys(data, RESULTS_FIELDS, "results")
    model = _value(data, "model", LABEL, "results")
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise ContractError("results: 'layers' must be a list")
    replace = _value(data, "replace", FLAG, "results") if "replace" in data else True
    rows = [check(item, RESULT_ROW_FIELDS, "results.layers[%d]" % n) for n, item in enumerate(layers)]
    return model, rows, replace


def check_inference(data: Dict[str, Any]) -> Dict[str, Any]:
    return check(data, INFERENCE_FIELDS, "inference")


def inference_body(figures: Dict[str, Any]) -> bytes:
    """The body of an energy-per-inference write (INFERENCE_FIELDS), refused here when outside the contract."""
    return _dump(check_inference(figures))


def layer_event(model: str, index: int, layer: str, op: str, state: str) -> bytes:
    """The body of a layer event, refused here (not by the daemon) when outside the contract."""
    body = {"model": model, "index": index, "layer": layer, "op": op, "state": state}
    check_layer_event(body)
    return _dump(body)


def results_bodies(model: str, rows: Sequence[Dict[str, Any]]) -> List[bytes]:
    """The bodies that post ``rows`` (RESULT_ROW_FIELDS each), every one under MAX_BODY_BYTES.

    The first replaces the model's earlier results and the rest add to it
    (``"replace": false``), so the daemon ends up with exactly ``rows``; no
    rows still gives one body, which clears them.
    """
    _value({"model": model}, "model", LABEL, "results")
    encoded = [_dump(check(row, RESULT_ROW_FIELDS, "results.layers[%d]" % n)) for n, row in enumerate(rows)]
    bodies: List[bytes] = []
    chunk: List[bytes] = []
    size = len(_results_body(model, chunk, True))
    for row in encoded:
        if chunk and size + 1 + len(row) > MAX_BODY_BYTES:  # +1: the comma before it
            bodies.append(_results_body(model, chunk, not bodies))
            chunk, size = [], len(_results_body(model, [], False))
        size += len(row) + (1 if chunk else 0)
        chunk.append(row)
    if chunk or not bodies:
        bodies.append(_results_body(model, chunk, not bodies))
    return bodies


def _dump(obj: Dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _results_body(model: str, rows: List[bytes], replace: bool) -> bytes:
    return b"".join([b'{"model":', json.dumps(model).encode("utf-8"), b',"layers":[', b",".join(rows),
                     b'],"replace":', b"true" if replace else b"false", b"}"])


def read_token(path: str) -> str:
    """The bearer token in a token file (surrounding whitespace and the final newline stripped)."""
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ContractError(getattr(exc, "strerror", None) or str(exc)) from None
    if len(token) < MIN_TOKEN_CHARS:
        raise ContractError("the token must be at least %d characters" % MIN_TOKEN_CHARS)
    return token


def energy_answer(data: Any) -> Tuple[float, int, float]:
    """(joules, samples, covered seconds) of a GET /api/v1/energy answer; every one must be there.

    A missing ``covered_seconds`` is not taken as full coverage: the profiler
    drops windows the sensor did not cover, and could not tell.
    """
    answer = check(data, ENERGY_ANSWER_FIELDS, "energy answer", extra_ok=True)
    return answer["total_joules"], answer["samples"], answer["covered_seconds"]
