"""Power-mode sweeps: one model profiled under several nvpmodel modes and jetson_clocks states.

Changing the mode needs root and leaves the board changed until someone changes it back, so:

* before the first change the found state is recorded: the mode from ``nvpmodel -q`` and the clocks with
  ``jetson_clocks --store FILE`` (L4T's own record: every CPU's and the GPU's frequency floor, online CPUs,
  rail gating, fan), named in a JSON state file;
* the board is returned on normal exit, on Ctrl-C and on SIGTERM (the CLI turns it into KeyboardInterrupt):
  ``nvpmodel -m <found>`` first, then ``jetson_clocks --restore FILE`` -- in that order, because a mode change
  rewrites the frequency floors and caps, and the store holds the floors only (the caps are the mode's) -- and
  the state file goes;
* after a crash (SIGKILL) the state file stays; a new sweep refuses to start until
  ``jetson-power-profile --restore`` has restored from it.

Settling: after ``nvpmodel -m`` the mode is read back with ``nvpmodel -q`` until it reports the new id (at
most ``VERIFY_S``), and jetson_clocks' state is checked (GPU floor at its ceiling, or not); then the sweep
waits ``settle_s`` (default 5 s) for the DVFS governors, the fan and the rails to follow the new caps before it
measures.  Slower thermal drift is what the profile's interleaved idle references absorb.  Within a mode
"off" runs first, right after the mode change has reset the floors, then ``jetson_clocks`` for "on".

A mode whose GPU power-gating masks (``TPC_PG_MASK``, ``FBP_PG_MASK``: which GPU units are powered) differ
from the found mode's takes effect only at boot, and nvpmodel asks to reboot for it.  Such modes are refused
before anything changes; nvpmodel's prompt is always answered "no", so a mode it wants a reboot for anyway is
refused with its own words.
"""

import datetime
import json
import math
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import report
from .board import jetson_clocks_state, jetson_root, nvpmodel_query
from .errors import ProfilerError, one_line
from .result import ProfileResult

DEFAULT_STATE_FILE = "/var/lib/jetson-power-exporter/sweep-state.json"
CLOCKS = ("off", "on", "both")
SETTLE_S = 5.0
VERIFY_S = 10.0
TOOL_TIMEOUT_S = 60
GATING = re.compile(r"POWER_GATING")
CSV_COLUMNS = ("mode", "name", "jetson_clocks", "latency_s", "energy_per_inference_j",
               "dynamic_energy_per_inference_j", "inferences_per_joule", "mean_power_w", "pareto", "flag",
               "complete", "profile")


@dataclass
class PowerMode:
    """One ``< POWER_MODEL ID=.. NAME=.. >`` block of nvpmodel.conf; ``settings``: (PARAM, ARG) -> value."""

    id: int
    name: str
    settings: Dict[Tuple[str, str], str]

    def gating(self) -> Dict[Tuple[str, str], str]:
        return {key: value for key, value in self.settings.items() if GATING.search(key[0])}


def read_conf(path: Optional[str] = None) -> Tuple[Dict[int, PowerMode], Optional[int]]:
    """The modes and the default id of the board's nvpmodel.conf (``$JETSON_ROOT/etc/nvpmodel.conf``)."""
    path = path or os.path.join(jetson_root(), "etc", "nvpmodel.conf")
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError as exc:
        raise ProfilerError("cannot read the power modes from %s: %s" % (path, one_line(exc))) from None
    modes, default, current = {}, None, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("<"):
            words = dict(w.split("=", 1) for w in line.strip("<> ").split() if "=" in w)
            current = None
            if line.startswith("< POWER_MODEL") and words.get("ID", "").isdigit():
                current = PowerMode(int(words["ID"]), words.get("NAME", words["ID"]), {})
                modes[current.id] = current
            elif line.startswith("< PM_CONFIG") and words.get("DEFAULT", "").isdigit():
                default = int(words["DEFAULT"])
        elif current is not None and line and not line.startswith("#"):
            parts = line.split()
            if len(parts) >= 3:
                current.settings[(parts[0], parts[1])] = parts[2]
    if not modes:
        raise ProfilerError("%s defines no power mode (no '< POWER_MODEL ID=.. NAME=.. >' block)" % path)
    return modes, default


def select_modes(spec: str, modes: Dict[int, PowerMode], found: int) -> Tuple[List[int], List[str]]:
    """The mode ids ``spec`` names (``all`` or ids like ``0,2``), checked against the conf, and the reasons
    modes were left out: with ``all`` a mode that needs a reboot is left out, naming one is an error."""
    if spec.strip().lower() == "all":
        reasons = {mode: reboot_reason(modes, found, mode) for mode in sorted(modes)}
        return [m for m, reason in reasons.items() if not reason], [r for r in reasons.values() if r]
    wanted = []
    for item in spec.split(","):
        item = item.strip()
        if not item.isdigit():
            raise ProfilerError("--power-modes takes 'all' or mode ids like 0,2, not %r" % item)
        if int(item) not in modes:
            raise ProfilerError("power mode %s is not in nvpmodel.conf (modes: %s)"
                                % (item, ", ".join("%d %s" % (i, m.name) for i, m in sorted(modes.items()))))
        reason = reboot_reason(modes, found, int(item))
        if reason:
            raise ProfilerError(reason)
        if int(item) not in wanted:
            wanted.append(int(item))
    return wanted, []


def reboot_reason(modes: Dict[int, PowerMode], found: int, target: int) -> str:
    """Why ``target`` cannot be entered without a reboot from ``found``, or ""."""
    have, want = modes[found].gating() if found in modes else {}, modes[target].gating()
    for key in sorted(set(have) | set(want)):
        if have.get(key) != want.get(key):
            return ("power mode %d (%s) needs a reboot: its GPU power gating %s %s is %s, the current mode's "
                    "%s (gating changes take effect at boot)"
                    % (target, modes[target].name, key[0], key[1], want.get(key, "unset"), have.get(key, "unset")))
    return ""


def _run_tool(args: Sequence[str], answer: Optional[str] = None) -> Tuple[int, str]:
    """(exit status, stdout and stderr together) of a board tool; stdin is ``answer`` or empty, never a terminal."""
    try:
        proc = subprocess.run(list(args), input=(answer or "").encode(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=TOOL_TIMEOUT_S)
    except FileNotFoundError:
        raise ProfilerError("%s is not on PATH: power-mode sweeps need JetPack's nvpmodel and jetson_clocks"
                            % args[0]) from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProfilerError("%s failed: %s" % (" ".join(args), one_line(exc))) from None
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def set_mode(mode: int, name: str) -> None:
    """``nvpmodel -m``, refusing its reboot prompt, then wait until ``nvpmodel -q`` reports the mode."""
    status, out = _run_tool(["nvpmodel", "-m", str(mode)], answer="no\n")
    for line in out.splitlines():
        if "Reboot required" in line:
            raise ProfilerError("power mode %d (%s) needs a reboot (nvpmodel: %s); not changed"
                                % (mode, name, line.strip()))
    errors = [line.strip() for line in out.splitlines() if "ERROR" in line]
    if status != 0 or errors:
        raise ProfilerError("nvpmodel -m %d failed (exit %d): %s" % (mode, status, "; ".join(errors) or out.strip()))
    deadline = time.monotonic() + VERIFY_S
    while True:
        now = nvpmodel_query()
        if now is not None and now[0] == mode:
            return
        if time.monotonic() > deadline:
            raise ProfilerError("nvpmodel -m %d did not take: nvpmodel -q reports %s after %.0f s"
                                % (mode, "%d (%s)" % now if now else "nothing", VERIFY_S))
        time.sleep(0.2)


def _jetson_clocks(*args: str) -> None:
    status, out = _run_tool(["jetson_clocks"] + list(args))
    errors = [line.strip() for line in out.splitlines() if line.startswith("Error")]
    if status != 0 or errors:  # jetson_clocks exits 0 after some failures: its "Error..." lines tell
        raise ProfilerError("jetson_clocks %s failed (exit %d): %s"
                            % (" ".join(args), status, "; ".join(errors) or out.strip() or "no output"))


def _check_clocks(wanted: str, mode: int) -> None:
    state = jetson_clocks_state()
    if state != wanted:
        raise ProfilerError("jetson_clocks should be %s in power mode %d but the GPU clocks read %s"
                            % (wanted, mode, state or "unknown"))


class BoardState:
    """The found mode and clocks, kept in a state file until the board is returned (see the module doc)."""

    def __init__(self, path: str):
        self.path = path
        self.store = os.path.splitext(path)[0] + "-jetson_clocks.conf"

    def save(self, mode: int, name: str, clocks: Optional[str]) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise ProfilerError("cannot create %s for the sweep's state file: %s"
                                % (directory, one_line(exc))) from None
        if os.path.exists(self.store):  # a leftover without a state file; --store would not overwrite it
            os.unlink(self.store)
        _jetson_clocks("--store", self.store)
        state = {"nvpmodel_id": mode, "nvpmodel": name, "jetson_clocks": clocks, "jetson_clocks_store": self.store,
                 "pid": os.getpid(),
                 "saved_utc": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        report.atomic_write(self.path, lambda fh: fh.write(json.dumps(state, indent=2) + "\n"))

    def load(self) -> Optional[Dict[str, Any]]:
        try:
            with open(self.path) as fh:
                state = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ProfilerError("cannot read the sweep's state file %s: %s" % (self.path, one_line(exc))) from None
        if not isinstance(state.get("nvpmodel_id"), int) or not state.get("jetson_clocks_store"):
            raise ProfilerError("%s is not a sweep state file (no nvpmodel_id / jetson_clocks_store)" % self.path)
        return state

    def restore(self, state: Dict[str, Any]) -> str:
        """Mode first, then the stored clocks; removes the state file.  Returns what was done, in words."""
        set_mode(state["nvpmodel_id"], state.get("nvpmodel") or "?")
        _jetson_clocks("--restore", state["jetson_clocks_store"])
        for path in (state["jetson_clocks_store"], self.path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        return ("power mode %d (%s) and jetson_clocks (%s) restored"
                % (state["nvpmodel_id"], state.get("nvpmodel"), state.get("jetson_clocks") or "unknown"))


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ProfilerError("%s changes the board's power mode and clocks (nvpmodel, jetson_clocks): run it as root, "
                            "e.g. with sudo" % what)


def restore_board(state_file: str = DEFAULT_STATE_FILE) -> str:
    """``jetson-power-profile --restore``: return the board to the state a crashed sweep found it in."""
    require_root("--restore")
    board = BoardState(state_file)
    state = board.load()
    if state is None:
        return "nothing to restore: no sweep state file at %s" % state_file
    pid = state.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and _is_profiler(pid):
        raise ProfilerError("the sweep that wrote %s (pid %d) is still running: stop it (it restores the board "
                            "itself)" % (state_file, pid))
    with _signals_held():
        return board.restore(state)


def _is_profiler(pid: int) -> bool:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            command = fh.read()
    except OSError:
        return False
    return b"profiler" in command or b"jetson-power-profile" in command


class _signals_held:
    """SIGINT/SIGTERM wait while the board is being restored: a second Ctrl-C must not leave it half-restored."""

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclass
class ModeRun:
    """One profile of the sweep: the mode and clocks it ran under and the files' stem."""

    mode: int
    name: str
    jetson_clocks: str
    stem: str
    result: ProfileResult


class SweepResult:
    """What :func:`sweep_power_modes` returns: one :class:`ModeRun` per mode/clocks combination measured."""

    def __init__(self, model: str, found: Dict[str, Any]):
        self.model = model
        self.found = found
        self.runs: List[ModeRun] = []
        self.complete = False

    def rows(self) -> List[Dict[str, Any]]:
        """One row per run (the CSV's columns); ``pareto``: no other run is both faster and cheaper per inference."""
        rows = []
        for run in self.runs:
            figures = run.result.inference or {}
            rows.append({
                "mode": run.mode, "name": run.name, "jetson_clocks": run.jetson_clocks,
                "latency_s": figures.get("latency_s"), "energy_per_inference_j": figures.get("energy_per_inference_j"),
                "dynamic_energy_per_inference_j": figures.get("dynamic_energy_per_inference_j"),
                "inferences_per_joule": figures.get("inferences_per_joule"),
                "mean_power_w": figures.get("mean_power_w"),
                "flag": figures.get("flag", "") if figures else "not measured",
                "complete": run.result.complete, "profile": run.stem,
            })
        usable = [r for r in rows if not r["flag"] and _finite(r["latency_s"]) and _finite(r["energy_per_inference_j"])]
        for row in rows:
            row["pareto"] = row in usable and not any(
                o["latency_s"] <= row["latency_s"] and o["energy_per_inference_j"] <= row["energy_per_inference_j"]
                and (o["latency_s"], o["energy_per_inference_j"]) != (row["latency_s"], row["energy_per_inference_j"])
                for o in usable)
        return rows

    @property
    def simulated(self) -> bool:
        return any(run.result.meta.get("simulated") for run in self.runs)

    def write_csv(self, path: str) -> str:
        return report.write_rows(path, CSV_COLUMNS, self.rows())

    def write_plot(self, path: str) -> str:
        """Latency against energy per inference, one point per run, the Pareto front joined and marked."""
        rows = [r for r in self.rows() if _finite(r["latency_s"]) and _finite(r["energy_per_inference_j"])]
        with report.png_figure(path, figsize=(8, 5.5)) as fig:
            ax = fig.subplots()
            scale, unit = report._energy_unit(max([r["energy_per_inference_j"] for r in rows] + [0.0]))
            for row in rows:
                x, y = row["latency_s"] * 1e3, row["energy_per_inference_j"] * scale
                ax.scatter([x], [y], s=70 if row["pareto"] else 35, zorder=3,
                           color="#d9534f" if row["pareto"] else ("#b0b0b0" if row["flag"] else "#337ab7"))
                ax.annotate("%d %s%s%s" % (row["mode"], row["name"], ", clocks on" if row["jetson_clocks"] == "on"
                                           else "", " (FLAGGED)" if row["flag"] else ""),
                            (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
            front = sorted((r["latency_s"] * 1e3, r["energy_per_inference_j"] * scale) for r in rows if r["pareto"])
            if front:
                ax.plot([p[0] for p in front], [p[1] for p in front], color="#d9534f", linestyle="--", zorder=2,
                        label="Pareto front (no mode both faster and cheaper)")
                ax.legend(loc="best", fontsize=8)
            ax.margins(x=0.2, y=0.15)  # room for the labels
            ax.set_xlabel("latency per inference (ms)")
            ax.set_ylabel("energy per inference (%s)" % unit)
            ax.grid(alpha=0.3)
            title = "%s: power modes" % self.model
            if self.simulated:
                title += " -- SIMULATED SENSOR, not a hardware measurement"
            if not self.complete:
                title += " -- INCOMPLETE"
            ax.set_title(title, fontsize=10)
        return path

    def write_summary(self, out_dir: str) -> Dict[str, str]:
        """``<model>_power_modes.csv`` and ``.png`` under ``out_dir``."""
        base = os.path.join(out_dir, self.model + "_power_modes")
        return {"power_modes_csv": self.write_csv(base + ".csv"), "power_modes_plot": self.write_plot(base + ".png")}

    def write_all(self, out_dir: str) -> Dict[str, str]:
        """Every run's profile files (``<model>_mode<ID>[_clocks-on]_*``) and the sweep's CSV and PNG."""
        report.check_writable(out_dir)
        paths: Dict[str, str] = {}
        for run in self.runs:
            paths.update({"%s %s" % (run.stem, kind): p for kind, p in run.result.write_all(out_dir, run.stem).items()})
        paths.update(self.write_summary(out_dir))
        return paths

    def console_lines(self) -> List[str]:
        lines = ["Power modes (%s%s):" % (self.model, ", SIMULATED sensor" if self.simulated else "")]
        for row in self.rows():
            if row["flag"]:
                lines.append("  mode %d %s, clocks %s: FLAGGED (%s)" % (row["mode"], row["name"], row["jetson_clocks"],
                                                                        row["flag"]))
                continue
            lines.append("  mode %d %s, clocks %s: Latency=%s ms | Energy=%s mJ/inference | Dynamic=%s mJ | "
                         "%s inferences/J | Avg Power=%s W%s"
                         % (row["mode"], row["name"], row["jetson_clocks"], report._fmt(row["latency_s"], 1e3),
                            report._fmt(row["energy_per_inference_j"], 1e3),
                            report._fmt(row["dynamic_energy_per_inference_j"], 1e3),
                            report._fmt(row["inferences_per_joule"], 1, 1), report._fmt(row["mean_power_w"], 1, 3),
                            "  [Pareto]" if row["pareto"] else ""))
        return lines


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plan(modes: Sequence[int], jetson_clocks: str) -> List[Tuple[int, str]]:
    """(mode, clocks) in measuring order: per mode "off" right after the mode change, then "on"."""
    if jetson_clocks not in CLOCKS:
        raise ProfilerError("jetson_clocks must be one of %s, got %r" % (", ".join(CLOCKS), jetson_clocks))
    states = ("off", "on") if jetson_clocks == "both" else (jetson_clocks,)
    return [(mode, state) for mode in modes for state in states]


def sweep_power_modes(model: Any, example_input: Any, *, modes: Any = "all", jetson_clocks: str = "off",
                      settle_s: float = SETTLE_S, state_file: str = DEFAULT_STATE_FILE, out_dir: Optional[str] = None,
                      model_name: Optional[str] = None, notice: Callable[[str], None] = print,
                      **profile_options: Any) -> SweepResult:
    """Profile ``model`` under each power mode (``"all"``, ``"0,2"`` or a list of ids) and jetson_clocks state
    (``off``, ``on`` or ``both``), returning the board to the mode and clocks it was found in.

    Needs root and JetPack's ``nvpmodel``/``jetson_clocks``.  ``profile_options`` go to
    :func:`profiler.profile` for every run.  With ``out_dir`` each run's files and the sweep's CSV/PNG are
    written as soon as it is measured (so an interrupted sweep keeps what it measured); otherwise call
    ``write_all``.  Ctrl-C while a run measures ends the sweep after that run (``complete`` is False); at
    any other point KeyboardInterrupt propagates, after the board is restored.
    """
    from .core import profile
    from .models import safe_name

    require_root("a power-mode sweep")
    if not settle_s >= 0:
        raise ProfilerError("settle_s must be zero or more seconds, got %r" % (settle_s,))
    conf, _ = read_conf()
    found = nvpmodel_query()
    if found is None:
        raise ProfilerError("nvpmodel -q reports no power mode: is this a Jetson with nvpmodel?")
    ids, skipped = select_modes(modes if isinstance(modes, str) else ",".join(str(int(m)) for m in modes),
                                conf, found[0])
    for reason in skipped:
        notice("skipped: " + reason)
    if not ids:
        raise ProfilerError("no power mode left to profile (%s)" % "; ".join(skipped))
    steps = plan(ids, jetson_clocks)
    board = BoardState(state_file)
    if board.load() is not None:
        raise ProfilerError("a previous sweep left the board changed (%s): run jetson-power-profile --restore "
                            "first" % state_file)
    if out_dir is not None:
        report.check_writable(out_dir)
    name = safe_name(model_name or type(model).__name__)
    sweep = SweepResult(name, {"nvpmodel_id": found[0], "nvpmodel": found[1], "jetson_clocks": jetson_clocks_state()})
    board.save(found[0], found[1], sweep.found["jetson_clocks"])
    try:
        current = None
        for mode, clocks in steps:
            if mode != current:
                set_mode(mode, conf[mode].name)
                current = mode
                _check_clocks("off", mode)
            if clocks == "on":
                _jetson_clocks()
                _check_clocks("on", mode)
            notice("power mode %d (%s), jetson_clocks %s: settling %.0f s, then profiling"
                   % (mode, conf[mode].name, clocks, settle_s))
            time.sleep(settle_s)
            result = profile(model, example_input, model_name=name, **profile_options)
            result.meta["power_mode_sweep"] = {"mode": mode, "name": conf[mode].name, "jetson_clocks": clocks,
                                               "found": sweep.found, "settle_s": settle_s}
            run = ModeRun(mode, conf[mode].name, clocks, "%s_mode%d%s" % (name, mode, "_clocks-on" if clocks == "on"
                                                                           else ""), result)
            sweep.runs.append(run)
            if out_dir is not None:
                run.result.write_all(out_dir, run.stem)
                sweep.write_summary(out_dir)
            if not result.complete:
                break
        else:
            sweep.complete = True
    finally:
        with _signals_held():
            state = board.load()
            if state is not None:
                try:
                    notice(board.restore(state))
                except ProfilerError as exc:
                    raise ProfilerError("the board was NOT returned to power mode %d (%s): %s; fix that and run "
                                        "jetson-power-profile --restore --state-file %s"
                                        % (found[0], found[1], exc, state_file)) from None
    if out_dir is not None:
        sweep.write_summary(out_dir)
    return sweep
