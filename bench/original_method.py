"""The original layer-wise method, reimplemented as the baseline to beat.

For each leaf layer in execution order: replay its captured input ``repeats``
times while a thread polls the power sensor every ``poll_s``; energy =
sum(samples) x poll_s, per call = energy / repeats.  Faithful to its flaws: the
sample count times the nominal interval stands in for elapsed time, the idle
draw of the board is charged to the layer, nothing is synchronised, and the
layer gets whatever (possibly stale) value the sensor holds.
"""

import threading
import time
from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import nn

from exporter.sources.base import PowerSource


@dataclass(frozen=True)
class OriginalLayer:
    label: str
    module: nn.Module
    energy_j: float  # per call
    duration_s: float  # per call (wall clock of the loop / repeats)
    power_w: float  # mean of the samples
    samples: int


def capture(model: nn.Module, example_input) -> List[Tuple[str, nn.Module, tuple, dict]]:
    """Every leaf call of one forward pass: (``<OpType>_<k>``, module, args, kwargs)."""
    calls: List[Tuple[str, nn.Module, tuple, dict]] = []

    def hook(module, args, kwargs):
        label = "%s_%d" % (type(module).__name__, len(calls))
        calls.append((label, module, tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args), kwargs))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules()
               if not list(m.children())]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _poll(source: PowerSource, poll_s: float, samples: List[float], stop: threading.Event) -> None:
    """The original's monitor thread: read, sleep the nominal interval, until told to stop."""
    while not stop.is_set():
        samples.append(source.read().total_watts)
        time.sleep(poll_s)


def profile_original(model: nn.Module, example_input, source: PowerSource, repeats: int = 100,
                     poll_s: float = 0.02) -> List[OriginalLayer]:
    results = []
    for label, module, args, kwargs in capture(model, example_input):
        samples: List[float] = []
        stop = threading.Event()
        thread = threading.Thread(target=_poll, args=(source, poll_s, samples, stop), daemon=True)
        start = time.monotonic()
        thread.start()
        with torch.no_grad():
            for _ in range(repeats):
                module(*args, **kwargs)
        elapsed = time.monotonic() - start
        stop.set()
        thread.join()
        energy = sum(samples) * poll_s
        results.append(OriginalLayer(
            label=label, module=module, energy_j=energy / repeats, duration_s=elapsed / repeats,
            power_w=sum(samples) / len(samples) if samples else 0.0, samples=len(samples)))
    return results
