"""``jetson-power-profile``: per-layer energy of a PyTorch model on this board.

``jetson-power-profile compare A.json B.json [C.json ...] --out DIR`` compares
saved profiles instead (see profiler/compare.py): exit 0, or 2 on bad input.

Exit status: 0 done; 1 measurement stopped by a sensor/daemon failure (what
was measured is written, marked incomplete); 2 bad input (one line on
stderr, no files); 130 interrupted (what was measured is written, marked
incomplete).
"""

import argparse
import logging
import math
import os
import signal
import sys
import warnings
from typing import List, Optional, Union

PROG = "jetson-power-profile"


def parse_budget(text: str) -> Union[float, str, None]:
    """--budget-s: seconds, ``auto`` or ``none`` (no limit)."""
    from .errors import ProfilerError

    word = text.strip().lower()
    if word in ("auto", "none"):
        return None if word == "none" else word
    try:
        seconds = float(word)
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ProfilerError("--budget-s must be a positive number of seconds, auto or none, not %r" % text)
    return seconds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Layer-wise energy profiling of a PyTorch model.",
                                epilog="To compare saved profiles: %s compare A.json B.json [...] --out DIR "
                                       "(see %s compare --help)." % (PROG, PROG))
    p.add_argument("--model", default="vgg11",
                   help="torchvision classification model name, TorchScript file, or package.module:factory "
                        "(default vgg11)")
    p.add_argument("--weights", default="DEFAULT",
                   help="none, DEFAULT (torchvision weights already in the torch cache; random otherwise) or a "
                        "state-dict file (default DEFAULT)")
    p.add_argument("--input-shape", default="1,3,224,224", help="example input shape (default 1,3,224,224)")
    p.add_argument("--batch", type=int, default=None, help="batch size (replaces the first dimension)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--granularity", default="leaf", help="leaf, children or depth:N (default leaf)")
    p.add_argument("--source", default="auto", help="power source spec for in-process sampling (default auto)")
    p.add_argument("--sensor-interval-s", type=float, default=None,
                   help="requested sensor update interval, for sources that accept one")
    p.add_argument("--calibration", metavar="FILE", default=None,
                   help="calibration YAML (jetson-power-calibrate) for in-process sampling; a daemon applies its own")
    p.add_argument("--exporter", metavar="URL", default=None,
                   help="running jetson-power-exporter: read windows from it and push live progress")
    p.add_argument("--token-file", metavar="FILE", default=None,
                   help="file holding the daemon's write token (--write-token-file), for pushing from another host")
    p.add_argument("--cacert", metavar="FILE", default=None,
                   help="CA certificate to trust for an https:// exporter (default: the system's CAs)")
    p.add_argument("--cert", metavar="FILE", default=None,
                   help="client certificate for a daemon that requires one (mTLS); needs --key")
    p.add_argument("--key", metavar="FILE", default=None, help="private key of --cert")
    p.add_argument("--min-window-s", type=float, default=None,
                   help="shortest measurement window (default from the sensor's update interval)")
    p.add_argument("--trials", type=int, default=5,
                   help="least windows per layer, in shuffled rounds between idle reference windows (default 5)")
    p.add_argument("--target-ci", type=float, default=0.01,
                   help="add windows until each layer's 95 %% CI of dynamic energy is within this fraction "
                        "(tiny layers: of 1 %% of the whole model's; default 0.01)")
    p.add_argument("--budget-s", default="auto",
                   help="stop adding windows after this many seconds; auto (default): when the run has lasted "
                        "1.5x its planned rounds, and not before 100 s or 300 sensor updates; none: only the targets "
                        "and the window cap end it")
    p.add_argument("--estimator", choices=("robust", "settled", "shifted", "window"), default="robust",
                   help="window energy estimator (default robust; see profiler/estimate.py)")
    p.add_argument("--seed", type=int, default=None, help="seed for the shuffled layer order")
    p.add_argument("--method", choices=("isolate", "in-situ", "both"), default="isolate",
                   help="isolate: replay each layer alone; in-situ: run the whole model and solve for each "
                        "layer; both: in-situ next to isolated (default isolate; see profiler/insitu.py)")
    p.add_argument("--insitu-s", type=float, default=None,
                   help="length of the in-situ run in seconds (default from the sensor's update interval)")
    p.add_argument("--power-modes", metavar="IDS", default=None,
                   help="profile under each nvpmodel power mode: 'all' or ids like 0,2 (needs root; the board is "
                        "returned to the mode and clocks it was found in)")
    p.add_argument("--jetson-clocks", choices=("on", "off", "both"), default=None,
                   help="with --power-modes: profile each mode with jetson_clocks off, on or both (default off; "
                        "alone: the current mode)")
    p.add_argument("--settle-s", type=float, default=None,
                   help="seconds to wait after a mode or clocks change before measuring (default 5)")
    p.add_argument("--state-file", default=None,
                   help="where a sweep records the state it found, for --restore (default "
                        "/var/lib/jetson-power-exporter/sweep-state.json)")
    p.add_argument("--restore", action="store_true",
                   help="return the board to the mode and clocks a crashed sweep found it in, then exit")
    p.add_argument("--batch-sizes", metavar="N,N,...", default=None,
                   help="also measure the whole model at each of these batch sizes (e.g. 1,2,4,8): energy per "
                        "inference and per sample against batch size, in <model>_batch_sizes.csv")
    p.add_argument("--out", default="results", help="output directory (default results/)")
    return p


def build_compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG + " compare",
        description="Compare saved profiles layer by layer: the first is the baseline, each other one is "
                    "compared against it. Writes <names>_compare.csv, .md and .png under --out.")
    p.add_argument("profiles", nargs="+", metavar="PROFILE.json",
                   help="summary JSONs written by the profiler (*_layerwise_summary.json)")
    p.add_argument("--energy", choices=("total", "dynamic"), default="total",
                   help="total: all the board drew during a call; dynamic: the part above idle (default total)")
    p.add_argument("--top", type=int, default=10, help="largest significant changes to single out (default 10)")
    p.add_argument("--out", default="results", help="output directory (default results/)")
    return p


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    comparing = argv[:1] == ["compare"]
    args = build_compare_parser().parse_args(argv[1:]) if comparing else build_parser().parse_args(argv)
    warnings.filterwarnings("ignore")  # torch's deprecation chatter would bury the one-line errors
    logging.basicConfig(level=logging.WARNING, format=PROG + ": %(message)s")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _compare(args) if comparing else _run(args)
    except KeyboardInterrupt:
        _stderr("%s: interrupted%s" % (PROG, "" if comparing else " before any measurement; nothing written"))
        return 130
    except Exception as exc:
        from .errors import ProfilerError, one_line

        if isinstance(exc, ProfilerError):
            _stderr("%s: error: %s" % (PROG, exc))
        else:
            _stderr("%s: error: %s: %s" % (PROG, type(exc).__name__, one_line(exc)))
        return 2


def _print_paths(paths) -> None:
    print("Wrote:")
    for path in paths.values():
        shown = os.path.relpath(path)
        print("  " + (path if shown.startswith(os.pardir) else shown))


def _compare(args) -> int:
    from .compare import compare

    comparison = compare(args.profiles, energy=args.energy, top=args.top)
    paths = comparison.write_all(args.out)
    print(comparison.console_summary())
    _print_paths(paths)
    return 0


def _run(args) -> int:
    from .errors import ProfilerError

    if args.trials < 1:
        raise ProfilerError("--trials must be at least 1")
    if args.min_window_s is not None and not args.min_window_s > 0:
        raise ProfilerError("--min-window-s must be positive")
    if not args.target_ci > 0:
        raise ProfilerError("--target-ci must be a positive fraction (0.02 is +/-2 %)")
    if args.insitu_s is not None and not args.insitu_s > 0:
        raise ProfilerError("--insitu-s must be positive")
    args.budget_s = parse_budget(args.budget_s)
    sweep = args.power_modes is not None or args.jetson_clocks is not None
    if args.restore:
        from .powermodes import DEFAULT_STATE_FILE, restore_board

        print(restore_board(args.state_file or DEFAULT_STATE_FILE))
        return 0
    if not sweep and (args.settle_s is not None or args.state_file is not None):
        raise ProfilerError("--settle-s and --state-file are for --power-modes / --jetson-clocks")
    if sweep:
        from .powermodes import require_root

        require_root("--power-modes" if args.power_modes is not None else "--jetson-clocks")
        if args.settle_s is not None and not args.settle_s >= 0:
            raise ProfilerError("--settle-s must be zero or more seconds")
    from .batch import parse_batch_sizes
    from .report import check_writable

    sizes = parse_batch_sizes(args.batch_sizes) if args.batch_sizes is not None else None
    check_writable(args.out)

    import torch

    from .capture import InputRejected, parse_granularity
    from .core import profile
    from .models import DTYPES, load_model, parse_shape, pick_device
    from .report import ProgressBar

    parse_granularity(args.granularity)
    shape = parse_shape(args.input_shape, args.batch)
    device = pick_device(args.device)
    dtype = DTYPES[args.dtype]
    model, name = load_model(args.model, args.weights, notice=_stderr)
    try:
        model = model.to(device=device, dtype=dtype)
    except Exception as exc:
        raise ProfilerError("cannot move %s to %s/%s: %s" % (name, device, args.dtype, exc)) from None
    example = torch.randn(*shape, device=device, dtype=dtype)
    options = {} if args.sensor_interval_s is None else {"interval_s": args.sensor_interval_s}
    bar = ProgressBar(sys.stderr)
    settings = dict(source=args.source, exporter_url=args.exporter, token_file=args.token_file,
                    cacert=args.cacert, cert=args.cert, key=args.key, min_window_s=args.min_window_s,
                    trials=args.trials, granularity=args.granularity, estimator=args.estimator, model_name=name,
                    target_ci=args.target_ci, budget_s=args.budget_s,
                    seed=args.seed, progress=bar, warn=_stderr, source_options=options,
                    method=args.method, insitu_s=args.insitu_s, batch_sizes=sizes, calibration=args.calibration)
    try:
        if sweep:
            return _sweep(args, model, example, settings)
        result = profile(model, example, **settings)
    except InputRejected as exc:
        raise ProfilerError("%s rejects input shape %s: %s" % (name, ",".join(map(str, shape)),
                                                                str(exc).split(": ", 1)[-1])) from None
    finally:
        bar.close()
    # A second Ctrl-C now would only lose the measurements: finish writing first.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        paths = result.write_all(args.out)
    finally:
        signal.signal(signal.SIGINT, previous)
    print(result.console_summary())
    _print_paths(paths)
    if result.complete:
        return 0
    stopped = result.meta.get("stopped_by") or "stopped"
    _stderr("%s: %s; wrote the %d layers measured so far, marked incomplete"
            % (PROG, stopped, sum(1 for layer in result.layers if layer.trials)))
    return 130 if stopped == "interrupted" else 1


def _sweep(args, model, example, settings) -> int:
    """--power-modes / --jetson-clocks: one profile per mode and clocks state, then the sweep's CSV and PNG."""
    from .powermodes import DEFAULT_STATE_FILE, SETTLE_S, sweep_power_modes

    try:
        sweep = sweep_power_modes(
            model, example, modes=args.power_modes if args.power_modes is not None else _current_mode(),
            jetson_clocks=args.jetson_clocks or "off", settle_s=SETTLE_S if args.settle_s is None else args.settle_s,
            state_file=args.state_file or DEFAULT_STATE_FILE, out_dir=args.out, notice=_stderr, **settings)
    except KeyboardInterrupt:
        _stderr("%s: interrupted between runs; the board is back in the state it was found in; the runs measured "
                "so far are in %s" % (PROG, args.out))
        return 130
    print("\n".join(sweep.console_lines()))
    print("Wrote to %s: %s_power_modes.csv and .png; per run %s_*" % (args.out, sweep.model,
                                                                   "_*, ".join(run.stem for run in sweep.runs)))
    if sweep.complete:
        return 0
    stopped = sweep.runs[-1].result.meta.get("stopped_by") if sweep.runs else None
    _stderr("%s: sweep %s after %d run(s); the board is back in the state it was found in"
            % (PROG, stopped or "stopped", len(sweep.runs)))
    return 130 if stopped == "interrupted" else 1


def _current_mode() -> str:
    from .board import nvpmodel_query
    from .errors import ProfilerError

    found = nvpmodel_query()
    if found is None:
        raise ProfilerError("nvpmodel -q reports no power mode: --jetson-clocks needs a Jetson with nvpmodel")
    return str(found[0])
