"""Wall time of an isolated profile of real torchvision models on a given sensor period (issue 10, item 5).

Targets: VGG11 on a 1 s sensor (jetson-stats' default) <= 10 min; MobileNetV3-small on the 6.6 ms
INA3221 <= 2 min, with the profiler's defaults (``--budget-s auto``).  The board is the simulated Nano
(its power follows this machine's CPU load) at the requested update period; the figures that matter
here are the wall time and how many layers reached their CI target, not the energies.

    .venv/bin/python bench/bench_speed.py [--runs mobilenet_v3_small:0.0066,vgg11:1] [--budget-s S]
"""

import argparse
import os
import statistics
import sys
import time
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import profiler  # noqa: E402
from profiler.cli import parse_budget  # noqa: E402
from profiler.models import load_model  # noqa: E402


def run(model_name: str, period_s: float, budget_s: Optional[float], seed: int) -> str:
    model, _ = load_model(model_name, "none")
    example = torch.randn(1, 3, 224, 224)
    last = [0.0]

    def progress(done: int, total: int, text: str) -> None:
        now = time.monotonic()
        if now - last[0] >= 30:
            last[0] = now
            print("  %s: %d/%d %s" % (model_name, done, total, text), file=sys.stderr, flush=True)

    start = time.monotonic()
    result = profiler.profile(model, example, source="sim", source_options={"interval_s": period_s},
                              budget_s=budget_s, seed=seed, progress=progress)
    wall = time.monotonic() - start
    layers = result.layers
    target = result.meta["target_ci"]
    whole_dyn = abs((result.whole_model or {}).get("dynamic_energy_j") or 0.0)
    reached, rel = 0, []
    for layer in layers:
        ci = layer.dynamic_energy_ci95_j
        if ci is None or layer.flag:
            continue
        goal = target * max(abs(layer.dynamic_energy_j), 0.01 * whole_dyn)
        reached += ci <= goal
        if layer.dynamic_energy_j:
            rel.append(ci / abs(layer.dynamic_energy_j))
    windows = [w for w in result.windows if w.resolved]
    refs = sum(1 for w in windows if w.kind == "idle")
    return ("%s, %g s sensor: wall %.1f s (%.1f min), %d layers + whole model, %d windows (%d references), "
            "%d flagged, %d/%d layers reached the CI target, median CI +/-%.2f %% of dynamic energy, "
            "budget hit: %s, coverage %s"
            % (model_name, period_s, wall, wall / 60, len(layers), len(windows) - refs, refs,
               sum(1 for x in layers if x.flag), reached, len(layers), 100 * statistics.median(rel) if rel else
               float("nan"), result.meta.get("budget_hit"),
               "%.1f %%" % (100 * result.whole_model["coverage"]) if result.whole_model and
               result.whole_model.get("coverage") else "n/a"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="mobilenet_v3_small:0.0066,vgg11:1",
                        help="comma-separated MODEL:SENSOR_PERIOD_S")
    parser.add_argument("--budget-s", default="auto", help="seconds, auto or none (default auto)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    args.budget_s = parse_budget(args.budget_s)
    torch.set_num_threads(1)
    for item in args.runs.split(","):
        name, _, period = item.partition(":")
        print(run(name.strip(), float(period or 0.0066), args.budget_s, args.seed), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
