"""``profile()``: capture, measure and summarise one model -- the API the CLI and the benchmark share."""

import datetime
import platform
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch

from exporter import calibration as calibration_file

from .batch import check_batch_sizes, sweep_rows, sweep_units
from .board import cpu_governor, jetson_clocks_state, nvpmodel_query
from .capture import LayerCall, as_call, capture, detached, op_name, parse_granularity
from .client import DaemonClient
from .errors import ProfilerError, one_line
from .estimate import ESTIMATORS, Estimator
from .insitu import METHODS, InSitu, build_insitu_result, compare, default_duration_s
from .measure import AUTO, WINDOW_CAP_S, Schedule, Unit
from .meter import open_meter
from .models import safe_name
from .push import LivePush
from .report import power_mode
from .result import ProfileResult, build_result


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _first_tensor(value: Any) -> Optional[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def profile(model: Any, example_input: Any, *, source: Any = "auto", exporter_url: Optional[str] = None,
            token_file: Optional[str] = None, cacert: Optional[str] = None, cert: Optional[str] = None,
            key: Optional[str] = None, min_window_s: Optional[float] = None, trials: int = 5, granularity: str = "leaf",
            estimator: str = "robust", target_ci: float = 0.01, budget_s: Union[float, str, None] = AUTO,
            model_name: Optional[str] = None, seed: Optional[int] = None,
            progress: Optional[Callable[[int, int, str], None]] = None,
            warn: Callable[[str], None] = _stderr, source_options: Optional[Dict[str, Any]] = None,
            method: str = "isolate", insitu_s: Optional[float] = None,
            batch_sizes: Optional[Sequence[int]] = None, calibration: Optional[str] = None) -> ProfileResult:
    """Measure the energy of every layer call of ``model`` on ``example_input``.

    ``example_input``: a tensor, a tuple/list of positional inputs or a dict
    of keyword inputs, already on the model's device and dtype.
    ``source``: a source spec (``auto``, ``sim``, ``hwmon``, ...) or any object
    with ``read() -> exporter.sources.Reading`` (and ideally
    ``update_interval_s``); ignored when ``exporter_url`` answers, since the
    daemon then measures.  ``token_file`` (the daemon's bearer token, needed
    to push from another host), ``cacert`` (the CA to trust over https) and
    ``cert``/``key`` (a client certificate, for a daemon that requires mTLS):
    how to reach ``exporter_url``.  ``min_window_s`` defaults from the sensor's update
    interval and the estimator (see :mod:`profiler.estimate`).
    ``granularity``: ``leaf``, ``children`` or ``depth:N``.
    ``trials``: windows per layer at least; layers whose 95 % CI of dynamic
    energy is wider than ``target_ci`` (relative; tiny layers: of 1 % of the
    whole model's) get more, the widest first, until ``budget_s`` seconds
    have passed (``"auto"``: 1.5 x the planned rounds' time, at least 100 s and 300 sensor updates;
    None: no limit) or a layer has its cap of windows (4 x trials; default windows: or 6 s of
    them).
    ``method``: ``isolate`` (replay each layer alone), ``in-situ`` (run the
    whole model, solve for each layer; see :mod:`profiler.insitu`) or
    ``both`` (the in-situ result, with ``comparison`` holding both side by
    side).  ``insitu_s``: how long the in-situ run lasts (default from the
    sensor's update interval).
    ``batch_sizes``: also measure the whole model at each of these batch
    sizes (every input tensor's first dimension; see :mod:`profiler.batch`),
    in a second schedule after the profile, into ``result.batch_sizes``.
    ``calibration``: a calibration YAML file (:mod:`exporter.calibration`)
    for the in-process sampler; a daemon applies its own.  Either way
    ``meta["calibration"]`` records what was applied.

    Ctrl-C (KeyboardInterrupt) while measuring does not propagate: the result
    holds what was measured and ``meta["complete"]`` is False.
    Bad input raises :class:`profiler.ProfilerError` with a one-line message.
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ProfilerError("trials must be a positive integer, got %r" % (trials,))
    if min_window_s is not None and not (min_window_s > 0):
        raise ProfilerError("min_window_s must be positive, got %r" % (min_window_s,))
    if isinstance(target_ci, bool) or not isinstance(target_ci, (int, float)) or not target_ci > 0:
        raise ProfilerError("target_ci must be a positive fraction (0.02 is +/-2 %%), got %r" % (target_ci,))
    if budget_s is not None and budget_s != AUTO and (
            isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or not budget_s > 0):
        raise ProfilerError("budget_s must be a positive number of seconds, %r or None, got %r" % (AUTO, budget_s))
    if estimator not in ESTIMATORS:
        raise ProfilerError("unknown estimator %r: use %s" % (estimator, ", ".join(ESTIMATORS)))
    if method not in METHODS:
        raise ProfilerError("unknown method %r: use %s" % (method, ", ".join(METHODS)))
    if insitu_s is not None and not (insitu_s > 0):
        raise ProfilerError("insitu_s must be positive, got %r" % (insitu_s,))
    if method != "isolate" and isinstance(model, torch.jit.ScriptModule):
        raise ProfilerError("in-situ needs an nn.Module: TorchScript runs its layers inside the interpreter, where "
                            "hooks never fire (use method isolate)")
    sizes = check_batch_sizes(batch_sizes)
    parse_granularity(granularity)
    client = DaemonClient(exporter_url, token_file, cacert, cert, key) if exporter_url else None
    if client is None and (token_file or cacert or cert or key):
        raise ProfilerError("token_file, cacert, cert and key are for exporter_url, which is not given")
    try:
        cal = calibration_file.load(calibration) if calibration else None
    except calibration_file.CalibrationError as exc:
        raise ProfilerError(str(exc)) from None
    name = safe_name(model_name or getattr(model, "original_name", None) or type(model).__name__)
    started = time.time()

    calls = capture(model, example_input, granularity)
    args, kwargs = as_call(example_input)
    whole = LayerCall(len(calls), "whole_model", "", op_name(model), model, detached(args), detached(kwargs))
    units = [Unit(c) for c in calls] + [Unit(whole, whole_model=True)]
    sweep = sweep_units(model, example_input, sizes) if sizes else []
    with torch.no_grad():
        for unit in sweep:  # a size the model cannot take is bad input, found before anything is measured
            try:
                unit.call()
            except Exception as exc:
                raise ProfilerError("the model rejects batch size %s: %s: %s"
                                    % (unit.call.label[len("batch_"):], type(exc).__name__, one_line(exc))) from None

    meter, daemon = open_meter(source, client, warn, calibration=cal, **(source_options or {}))
    try:
        est = Estimator(estimator, meter.update_interval_s, meter.sample_period_s)
        window_s = float(min_window_s) if min_window_s is not None else est.default_min_window_s()
        cap_s = WINDOW_CAP_S if min_window_s is None else 0.0  # windows a user sized are capped in number only
        if window_s < est.shortest_window_s():
            warn("min_window_s %.3g s leaves no measurable core after the sensor's reach: using %.3g s"
                 % (window_s, est.shortest_window_s()))
            window_s = est.shortest_window_s()
        tensor = _first_tensor(example_input)
        device = tensor.device if tensor is not None else torch.device("cpu")
        push = LivePush(client if daemon else None, name, warn)
        schedule = insitu = sizing = None
        if method != "in-situ":
            schedule = Schedule(units, meter, est, trials, window_s, device, push, progress, seed,
                                target_ci=float(target_ci), budget_s=budget_s, cap_s=cap_s)
            with torch.no_grad():
                schedule.run()
        if method != "isolate" and (schedule is None or schedule.complete):
            duration = insitu_s if insitu_s is not None else default_duration_s(meter.update_interval_s)
            insitu = InSitu(model, example_input, calls, meter, device, duration, progress, seed)
            with torch.no_grad():
                insitu.run()
        if sweep and (insitu or schedule).complete:
            sizing = Schedule(sweep, meter, est, trials, window_s, device, push, progress, seed,
                              target_ci=float(target_ci), budget_s=budget_s, cap_s=cap_s)
            with torch.no_grad():
                sizing.run()
    finally:
        meter.close()
    result = None
    if schedule is not None:
        meta = _meta(name, meter, est, window_s, trials, granularity, tensor, schedule, started)
        meta["method"] = "isolate"
        result = build_result(name, schedule, meta)
    if insitu is not None:
        meta = _meta(name, meter, est, window_s, trials, granularity, tensor, insitu, started)
        isolated, result = result, build_insitu_result(name, insitu, whole.op, meta)
        if isolated is not None:
            result.meta["method"] = "both"
            result.comparison = compare(isolated, result)
    if sizes:
        result.meta["batch_sizes"] = sizes
        result.batch_sizes = []
    if sizing is not None:
        result.batch_sizes = sweep_rows(sizing, sizes)
        result.samples.extend(sizing.samples)
        result.windows.extend(sizing.windows)
        if not sizing.complete:
            result.meta.update(complete=False, stopped_by=sizing.stopped_by)
    push.results(result.layers)
    push.inference(result.inference, power_mode(result.meta))
    return result


def batch_size(tensor: Optional[torch.Tensor]) -> int:
    """Samples in one inference: the first dimension of the first input tensor (1 for a scalar or none)."""
    return int(tensor.shape[0]) if tensor is not None and tensor.dim() else 1


def _board_meta() -> Dict[str, Any]:
    """The board's performance settings while it measured: power mode (name and id), jetson_clocks, governor."""
    mode = nvpmodel_query()
    return {"nvpmodel": mode[1] if mode else None, "nvpmodel_id": mode[0] if mode else None,
            "jetson_clocks": jetson_clocks_state(), "cpu_governor": cpu_governor()}


def _meta(name: str, meter: Any, est: Estimator, window_s: float, trials: int, granularity: str,
          tensor: Optional[torch.Tensor], schedule: Schedule, started: float) -> Dict[str, Any]:
    info = meter.info
    dropped = sum(1 for w in schedule.windows if w.dropped)
    disturbed = sum(1 for w in schedule.windows if w.resolved and not w.dropped and w.dirty)
    return {
        "model": name,
        "complete": schedule.complete,
        "stopped_by": schedule.stopped_by or None,
        "source": info.get("source"),
        "board": info.get("board"),
        "simulated": info.get("simulated") in (True, "true"),
        "measured_via": info.get("via"),
        "calibration": info.get("calibration"),
        "sensor_update_interval_s": est.update_interval_s,
        "sample_period_s": est.sample_period_s,
        "estimator": est.method,
        "min_window_s": window_s,
        "window_s": getattr(schedule, "window_s", None),
        "layer_windows_per_reference": getattr(schedule, "refs_every", None),
        "cooldown_s": est.cooldown_s,
        "trials": trials,
        "granularity": granularity,
        "windows_dropped": dropped,
        "windows_disturbed": disturbed,
        "target_ci": getattr(schedule, "target_ci", None),
        "budget_s": getattr(schedule, "budget_s", None),
        "budget_auto": getattr(schedule, "auto_budget", False),
        "budget_hit": getattr(schedule, "budget_hit", False),
        **_board_meta(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "host": platform.node(),
        "device": str(tensor.device) if tensor is not None else "cpu",
        "device_name": (torch.cuda.get_device_name(tensor.device)
                        if tensor is not None and tensor.device.type == "cuda" else platform.processor() or None),
        "dtype": str(tensor.dtype).replace("torch.", "") if tensor is not None else None,
        "input_shape": list(tensor.shape) if tensor is not None else None,
        "batch_size": batch_size(tensor),
        "started_utc": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(),
        "wall_s": time.time() - started,
        "samples_time_origin": min((s.t for s in schedule.samples), default=None),
    }

