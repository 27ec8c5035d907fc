"""``python -m profiler`` as a user runs it, from this checkout."""

import os
import subprocess
import sys

from tests.support.daemon import ROOT


def env():
    """The environment for a profiler subprocess: this checkout first on the import path."""
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run_cli(*args, cwd=ROOT, timeout=180):
    return subprocess.run([sys.executable, "-m", "profiler"] + list(args), cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)
