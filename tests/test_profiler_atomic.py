"""Profiler files: a SIGKILL mid-write never leaves a truncated file under a final name, and
``ProfileResult.write_all`` makes its folder as the command line does."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from profiler import ProfilerError, profile
from tests.support.daemon import ROOT

CHILD = textwrap.dedent("""
    import sys, time
    from profiler.report import atomic_write

    def fill(fh):
        fh.write("time_s,total_w\\n" + "0.0,1.0\\n" * 50000)
        fh.flush()
        print("half-written", flush=True)
        time.sleep(60)  # killed here, with the data on disk under the temporary name
        fh.write("1.0,0.0\\n")

    atomic_write(sys.argv[1], fill)
""")


def kill_mid_write(path: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, path], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert proc.stdout.readline().strip() == "half-written"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_write_leaves_no_final_file(tmp_path):
    final = tmp_path / "vgg11_layerwise_energy_full.csv"
    kill_mid_write(str(final))
    assert not final.exists()
    leftovers = [name for name in os.listdir(tmp_path) if name != final.name]
    assert leftovers and all(name.startswith(".") and name.endswith(".tmp") for name in leftovers)


def test_sigkill_mid_write_keeps_the_previous_complete_file(tmp_path):
    final = tmp_path / "vgg11_layerwise_summary.csv"
    final.write_text("index,label\n0,Conv2d_0\n")
    kill_mid_write(str(final))
    assert final.read_text() == "index,label\n0,Conv2d_0\n"


def test_write_all_makes_a_missing_folder_like_the_cli(tmp_path):
    """README's API example, on a folder that does not exist yet."""
    result = profile(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.zeros(1, 4), source="sim",
                     min_window_s=0.05, trials=1, model_name="tiny")
    out = tmp_path / "new" / "results"
    paths = result.write_all(str(out))
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths.values())
    assert sorted(paths) == ["full_csv", "inference_csv", "json", "plot", "summary_csv"]

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    with pytest.raises(ProfilerError, match="output directory .*a-file/results is not writable") as info:
        result.write_all(str(blocker / "results"))
    assert "\n" not in str(info.value)
