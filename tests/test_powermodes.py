"""Power-mode sweeps against the nvpmodel / jetson_clocks stand-ins (tests/fakebin) on a stand-in board root.

The stand-ins keep the board's state in files (tests/support/jetson_root.py), so each test reads what the
sweep changed and whether it was put back: the mode in var/lib/nvpmodel/status, jetson_clocks in the GPU's
devfreq floor.  The boards start with jetson_clocks on, so a restore must bring back the stored floors too.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from profiler import powermodes
from profiler.errors import ProfilerError
from tests.support.jetson_root import Mode, board_state, make_jetson_root, tool, tool_env
from tests.support.models import write_tiny_model
from tests.support.profiler_cli import env as cli_env

TINY = ["--model", "kwnet:build", "--input-shape", "1,3,8,8", "--weights", "none", "--source", "sim",
        "--min-window-s", "0.05", "--trials", "2", "--seed", "1"]
# JetPack 5 board: modes 0 and 1 share the GPU gating mask; mode 2 gates TPCs, so it needs a reboot.
ORIN = (Mode(0, "MAXN", 4, -1, -1, 0), Mode(1, "MODE_15W", 2, 918000, 640000000, 0),
        Mode(2, "MODE_7W", 2, 918000, 384000000, 5))
WAIT_S = 120  # a deadline for the loaded machine, not a speed requirement: the loops end when the condition holds


@pytest.fixture
def board(tmp_path, monkeypatch):
    """A JetPack 5 board found in mode 0 with jetson_clocks on; the stand-ins first on PATH for this process."""
    root = make_jetson_root(tmp_path / "board", 5, modes=ORIN, default=1, mode=0, clocks="on")
    for key, value in tool_env(root).items():
        if key in ("PATH", "JETSON_ROOT", "HOME"):
            monkeypatch.setenv(key, value)
    return root


def cli(board_root, tmp_path, *args):
    """argv and environment of ``python -m profiler`` on the stand-in board, run from a folder holding kwnet.py."""
    env = cli_env()
    env.update({k: v for k, v in tool_env(board_root).items() if k in ("PATH", "JETSON_ROOT", "HOME")})
    write_tiny_model(tmp_path)
    return [sys.executable, "-m", "profiler"] + TINY + list(args), env


def start(board_root, tmp_path, *args):
    argv, env = cli(board_root, tmp_path, *args)
    # a suite started in the background inherits SIGINT ignored; the CLI under test must see it as a user's would
    return subprocess.Popen(argv, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_line(proc, needle):
    """stderr lines up to the first holding ``needle`` (a deadline loop; the process must still be running)."""
    seen = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    proc.kill()
    pytest.fail("never saw %r; stderr: %s" % (needle, "".join(seen)))


@pytest.mark.slow
def test_api_sweep_of_two_modes_writes_every_file_and_restores_the_board(board, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    out, state = tmp_path / "out", tmp_path / "state" / "sweep.json"
    notes = []
    sweep = powermodes.sweep_power_modes(
        model, torch.randn(1, 3, 8, 8), modes="1,0", jetson_clocks="off", settle_s=0, state_file=str(state),
        out_dir=str(out), model_name="tiny", notice=notes.append, source="sim", min_window_s=0.05, trials=2, seed=1)
    assert board_state(board) == (0, "on")  # mode and the stored clock floors are back
    assert not state.exists() and not os.listdir(str(state.parent))  # state file and the clocks store are gone
    assert notes[-1] == "power mode 0 (MAXN) and jetson_clocks (on) restored"
    assert sweep.complete and [(r.mode, r.jetson_clocks, r.stem) for r in sweep.runs] == [
        (1, "off", "tiny_mode1"), (0, "off", "tiny_mode0")]
    for run in sweep.runs:
        meta = json.loads((out / (run.stem + "_layerwise_summary.json")).read_text())["meta"]
        assert (meta["nvpmodel_id"], meta["nvpmodel"]) == (run.mode, run.name)
        assert meta["jetson_clocks"] == "off" and meta["cpu_governor"] == "schedutil"
        assert meta["power_mode_sweep"]["found"] == {"nvpmodel_id": 0, "nvpmodel": "MAXN", "jetson_clocks": "on"}
        assert meta["simulated"] is True
        for suffix in ("_layerwise_energy_plot.png", "_layerwise_summary.csv", "_inference.csv"):
            assert (out / (run.stem + suffix)).stat().st_size > 0
    with open(str(out / "tiny_power_modes.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["mode"], r["name"], r["jetson_clocks"]) for r in rows] == [("1", "MODE_15W", "off"),
                                                                          ("0", "MAXN", "off")]
    for row, run in zip(rows, sweep.runs):
        figures = run.result.inference
        assert float(row["latency_s"]) == figures["latency_s"] > 0
        assert float(row["energy_per_inference_j"]) == figures["energy_per_inference_j"]
        assert float(row["mean_power_w"]) == figures["mean_power_w"]
    # the front: the unflagged runs that no other run beats on both latency and energy
    assert any(r["pareto"] for r in sweep.rows() if not r["flag"])
    assert (out / "tiny_power_modes.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("sig, when", [(signal.SIGINT, "settling"), (signal.SIGTERM, "progress:")])
def test_a_signal_mid_sweep_restores_the_board(board, tmp_path, sig, when):
    """Ctrl-C while the second mode settles, SIGTERM while it measures: exit 130 and the board as found."""
    state = tmp_path / "sweep.json"
    proc = start(board, tmp_path, "--power-modes", "1", "--settle-s", "600" if when == "settling" else "0",
                 "--state-file", str(state), "--out", str(tmp_path / "out"))
    wait_for_line(proc, when)
    assert board_state(board) == (1, "off") and state.exists()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 130, err
    assert board_state(board) == (0, "on") and not state.exists()
    assert "restored" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_killed_sweep_leaves_its_state_file_and_restore_puts_the_board_back(board, tmp_path):
    state = tmp_path / "sweep.json"
    proc = start(board, tmp_path, "--power-modes", "1", "--jetson-clocks", "on", "--settle-s", "600",
                 "--state-file", str(state))
    wait_for_line(proc, "settling")
    proc.kill()  # SIGKILL: nothing of the sweep runs after this
    proc.wait(timeout=WAIT_S)
    assert board_state(board) == (1, "on")
    saved = json.loads(state.read_text())
    assert (saved["nvpmodel_id"], saved["nvpmodel"], saved["jetson_clocks"]) == (0, "MAXN", "on")

    argv, env = cli(board, tmp_path, "--power-modes", "0", "--state-file", str(state))
    refused = subprocess.run(argv, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert refused.returncode == 2 and "run jetson-power-profile --restore first" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    restore = [sys.executable, "-m", "profiler", "--restore", "--state-file", str(state)]
    done = subprocess.run(restore, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    assert "power mode 0 (MAXN) and jetson_clocks (on) restored" in done.stdout
    assert board_state(board) == (0, "on") and not state.exists() and not os.path.exists(saved["jetson_clocks_store"])
    again = subprocess.run(restore, env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert again.returncode == 0 and "nothing to restore" in again.stdout


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv is not installed")
@pytest.mark.parametrize("args", [["--power-modes", "0,1"], ["--restore"]])
def test_without_root_one_line_and_exit_2(board, tmp_path, args):
    argv, env = cli(board, tmp_path, *args)
    if os.geteuid() == 0:  # drop to nobody, for real
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + argv
    proc = subprocess.run(argv, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "run it as root" in proc.stderr, proc.stderr
    assert board_state(board) == (0, "on")


def test_a_mode_that_needs_a_reboot_is_refused_with_the_reason(board, tmp_path):
    argv, env = cli(board, tmp_path, "--power-modes", "0,2", "--state-file", str(tmp_path / "s.json"))
    proc = subprocess.run(argv, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("jetson-power-profile: error: power mode 2 (MODE_7W) needs a reboot: its GPU "
                                   "power gating TPC_POWER_GATING TPC_PG_MASK is 5, the current mode's 0 (gating "
                                   "changes take effect at boot)")
    assert board_state(board) == (0, "on") and not (tmp_path / "s.json").exists()
    modes, default = powermodes.read_conf()
    assert default == 1 and {i: m.name for i, m in modes.items()} == {0: "MAXN", 1: "MODE_15W", 2: "MODE_7W"}
    ids, skipped = powermodes.select_modes("all", modes, 0)
    assert ids == [0, 1] and len(skipped) == 1 and skipped[0].startswith("power mode 2 (MODE_7W) needs a reboot")


def test_nvpmodels_own_reboot_prompt_is_answered_no(board):
    """A mode the conf does not mark (the live mask differs from the conf's): nvpmodel prompts; never rebooted."""
    with open(os.path.join(board, "sys/devices/gpu.0/tpc_pg_mask"), "w") as fh:
        fh.write("1\n")
    with pytest.raises(ProfilerError, match=r"power mode 1 \(MODE_15W\) needs a reboot \(nvpmodel: NVPM WARN: "
                                            r"Reboot required for changing to this power mode: 1\)"):
        powermodes.set_mode(1, "MODE_15W")
    assert board_state(board) == (0, "on")
    assert not os.path.exists(os.path.join(board, "var/lib/nvpmodel/reboot-requested"))


@pytest.mark.parametrize("jetpack", [4, 5, 6])
def test_stand_ins_print_each_generations_format(tmp_path, jetpack):
    root = make_jetson_root(tmp_path / "b", jetpack)
    query = tool(root, "nvpmodel", "-q").stdout
    assert query == ("" if jetpack == 4 else "NV Fan Mode:quiet\n") + "NV Power Mode: MAXN\n0\n"
    verbose = tool(root, "nvpmodel", "-q", "--verbose").stdout.splitlines()
    assert verbose[:2] == ["NVPM VERB: Config file: /etc/nvpmodel.conf",
                           "NVPM VERB: parsing done for /etc/nvpmodel.conf"]
    assert "NVPM VERB: Current mode: NV Power Mode: MAXN" in verbose
    assert ("NVPM VERB: PARAM GPU: ARG MAX_FREQ: PATH /sys/devices/gpu.0/devfreq/57000000.gpu/max_freq: "
            "REAL_VAL: 921600000 CONF_VAL: -1") in verbose
    parsed = tool(root, "nvpmodel", "-p", "--verbose").stdout.splitlines()
    assert "NVPM VERB: PM_CONFIG: DEFAULT=MAXN(0)" in parsed and "NVPM VERB: POWER_MODEL: ID=1 NAME=5W" in parsed
    show = tool(root, "jetson_clocks", "--show").stdout.splitlines()
    assert show[0].startswith("SOC family:tegra") and show[1] == "Online CPUs: 0-3"
    assert show[-1] == "NV Power Mode: MAXN"
    assert show[-2] == {4: "Fan: PWM=0", 5: "FAN Dynamic Speed control=active hwmon2_pwm1=55",
                        6: "FAN Dynamic Speed Control=nvfancontrol hwmon0_pwm1=69"}[jetpack]
    store = str(tmp_path / "clocks.conf")
    stored = tool(root, "jetson_clocks", "--store", store).stdout
    assert stored == ("" if jetpack == 4 else "Storing system configuration in %s\n" % store)
    again = tool(root, "jetson_clocks", "--store", store, stdin=subprocess.DEVNULL)
    assert again.returncode == 1 and again.stdout.endswith("Error: file %s already exists!\n" % store)
    missing = tool(root, "jetson_clocks", "--restore", store + ".missing")
    assert missing.returncode == 1 and missing.stdout == "Error: %s.missing file not found !\n" % store
