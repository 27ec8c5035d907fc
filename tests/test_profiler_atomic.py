"""A profiler killed with SIGKILL mid-write never leaves a truncated file under a final name."""

import os
import signal
import subprocess
import sys
import textwrap

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
