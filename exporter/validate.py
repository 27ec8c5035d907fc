"""The daemon's side of the write contract (``exporter/contract.py``): checked bodies as LayerBoard input.

Anything that fails raises :class:`BadRequest` with a one-line reason that the
HTTP layer turns into a 4xx; nothing a client sends reaches a metric label
unless it passed through the contract's checks.
"""

from typing import Any, Dict

from . import contract
from .contract import MAX_BODY_BYTES
from .contract import ContractError as BadRequest
from .contract import parse_body as parse_json
from .layers import InferenceResult, LayerResult

__all__ = ["MAX_BODY_BYTES", "BadRequest", "inference", "layer_event", "parse_json", "results"]


def layer_event(data: Dict[str, Any]) -> Dict[str, Any]:
    """Keyword arguments of :meth:`LayerBoard.layer_event`."""
    return contract.check_layer_event(data)


def results(data: Dict[str, Any]) -> Dict[str, Any]:
    """``model``, ``layers`` (LayerResult rows) and ``replace`` for :meth:`LayerBoard.set_results`."""
    model, rows, replace = contract.check_results(data)
    return {"model": model, "layers": [LayerResult(**row) for row in rows], "replace": replace}


def inference(data: Dict[str, Any]) -> Dict[str, Any]:
    """``model`` and ``result`` (an InferenceResult) for :meth:`LayerBoard.set_inference`."""
    row = contract.check_inference(data)
    return {"model": row.pop("model"), "result": InferenceResult(**row)}
