"""Energy per inference against batch size: the whole model measured at several batch sizes in one schedule.

Only the whole-model pass is measured at each size, not every layer: a
layer-wise profile per batch size would multiply the run by the number of
sizes, and the question a sweep answers -- how many joules a sample costs at
batch 1, 2, 4, 8 -- is a whole-model figure.  Every size is a unit of the
same :class:`profiler.measure.Schedule`, so their windows are shuffled
together between the same idle references and a drifting idle cancels
between sizes as it does between layers.
"""

from typing import Any, Dict, List, Optional, Sequence

import torch

from .capture import LayerCall, as_call, detached, op_name
from .errors import ProfilerError
from .measure import Schedule, Unit
from .result import inference_figures, unit_result


def check_batch_sizes(sizes: Optional[Sequence[int]]) -> Optional[List[int]]:
    """The sizes as a list of distinct positive integers in the given order; ProfilerError otherwise."""
    if sizes is None:
        return None
    if isinstance(sizes, (str, bytes)) or not sizes:
        raise ProfilerError("batch_sizes must be a non-empty list of positive integers, got %r" % (sizes,))
    out: List[int] = []
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ProfilerError("batch sizes must be positive integers, got %r" % (size,))
        if size in out:
            raise ProfilerError("batch size %d is given twice" % size)
        out.append(size)
    return out


def parse_batch_sizes(text: str) -> List[int]:
    """``1,2,4,8`` -> [1, 2, 4, 8] (the CLI's --batch-sizes)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise ProfilerError("--batch-sizes must be positive integers separated by commas, like 1,2,4,8, "
                            "got %r" % text) from None
    return check_batch_sizes(sizes)


def rebatch(value: Any, size: int) -> Any:
    """The example input with every tensor's first dimension made ``size``: its own samples, cycled.

    Every input tensor of one or more dimensions is taken as batch-first (what
    the CLI's --batch sets); scalars and non-tensors are passed as they are.
    """
    if isinstance(value, torch.Tensor):
        if not value.dim() or not value.shape[0]:
            return value
        index = torch.arange(size, device=value.device) % value.shape[0]
        return value.index_select(0, index)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(rebatch(v, size) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(rebatch(v, size) for v in value)
    if isinstance(value, dict):
        return {k: rebatch(v, size) for k, v in value.items()}
    return value


def sweep_units(model: Any, example_input: Any, sizes: List[int]) -> List[Unit]:
    """One whole-model unit per batch size, labelled ``batch_<size>``."""
    units = []
    for position, size in enumerate(sizes):
        args, kwargs = as_call(rebatch(example_input, size))
        call = LayerCall(position, "batch_%d" % size, "", op_name(model), model, detached(args), detached(kwargs))
        units.append(Unit(call, whole_model=True))
    return units


def sweep_rows(schedule: Schedule, sizes: List[int]) -> List[Dict[str, Any]]:
    """Per batch size measured: its energy per inference and per sample (profiler.result.inference_figures)."""
    peak_w = max((s.total_w for s in schedule.samples), default=float("nan"))
    rows = []
    for position, size in enumerate(sizes):
        figures = inference_figures(unit_result(schedule, position, peak_w).to_dict(), size)
        if figures is not None:
            rows.append(figures)
    return rows
