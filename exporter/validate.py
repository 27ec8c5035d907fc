"""Schema checks for the profiler's write API: every field typed, bounded and label-safe.

Anything that fails raises :class:`BadRequest` with a one-line reason that the
HTTP layer turns into a 4xx; nothing a client sends reaches a metric label
unless it passed through here.
"""

import json
import math
import re
from typing import Any, Dict, List

from .layers import LayerResult

MAX_BODY_BYTES = 64 * 1024
MAX_LABEL_CHARS = 128
MAX_DEPTH = 4  # {"layers": [{...}]} is three deep; one level of slack
LABEL_RE = re.compile(r"^[A-Za-z0-9_.:/+\-\[\]() ]+$")
STATES = ("begin", "end")


class BadRequest(ValueError):
    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.status = status


def parse_json(body: bytes) -> Dict[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest("body is %d bytes; the limit is %d" % (len(body), MAX_BODY_BYTES), 413)
    if _depth_exceeds(body, MAX_DEPTH):
        raise BadRequest("JSON nested deeper than %d levels" % MAX_DEPTH)
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("body is not valid UTF-8 JSON: %s" % str(exc).splitlines()[0]) from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
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


def _only_keys(obj: Dict[str, Any], allowed: tuple, where: str) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise BadRequest("%s: unknown field %r (allowed: %s)" % (where, extra[0], ", ".join(allowed)))


def label(obj: Dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest("%s: %r must be a non-empty string" % (where, key))
    if len(value) > MAX_LABEL_CHARS:
        raise BadRequest("%s: %r is longer than %d characters" % (where, key, MAX_LABEL_CHARS))
    if not LABEL_RE.match(value):
        raise BadRequest("%s: %r may only use letters, digits, space and _ . : / + - [ ] ( )" % (where, key))
    return value


def index(obj: Dict[str, Any], where: str) -> int:
    value = obj.get("index")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest("%s: 'index' must be a non-negative integer" % where)
    return value


def number(obj: Dict[str, Any], key: str, where: str, signed: bool = False) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest("%s: %r must be a finite number" % (where, key))
    if value < 0 and not signed:
        raise BadRequest("%s: %r must not be negative" % (where, key))
    return float(value)


def layer_event(data: Dict[str, Any]) -> Dict[str, Any]:
    where = "layer event"
    _only_keys(data, ("model", "index", "layer", "op", "state"), where)
    state = data.get("state")
    if state not in STATES:
        raise BadRequest("%s: 'state' must be \"begin\" or \"end\"" % where)
    return {
        "model": label(data, "model", where),
        "index": index(data, where),
        "layer": label(data, "layer", where),
        "op": label(data, "op", where),
        "state": state,
    }


def results(data: Dict[str, Any]) -> Dict[str, Any]:
    _only_keys(data, ("model", "layers", "replace"), "results")
    model = label(data, "model", "results")
    layers = data.get("layers")
    if not isinstance(layers, list):
        raise BadRequest("results: 'layers' must be a list")
    replace = data.get("replace", True)
    if not isinstance(replace, bool):
        raise BadRequest("results: 'replace' must be true or false")
    parsed: List[LayerResult] = []
    for n, item in enumerate(layers):
        where = "results.layers[%d]" % n
        if not isinstance(item, dict):
            raise BadRequest("%s must be an object" % where)
        _only_keys(item, ("index", "layer", "op", "energy_j", "dynamic_energy_j", "duration_s", "power_w"), where)
        parsed.append(LayerResult(
            index=index(item, where),
            layer=label(item, "layer", where),
            op=label(item, "op", where),
            energy_j=number(item, "energy_j", where),
            dynamic_energy_j=number(item, "dynamic_energy_j", where, signed=True),
            duration_s=number(item, "duration_s", where),
            power_w=number(item, "power_w", where),
        ))
    return {"model": model, "layers": parsed, "replace": replace}
