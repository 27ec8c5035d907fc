"""What the stack tests share.  Plain Python 3.6 and pytest 7.0 (JetPack 4.6's stack runs these too).

The daemon and the profiler are run as the board user runs them: the console scripts installed beside this
Python (tests/support/daemon.py starts ``python -m exporter`` from the source tree, with 3.7+ subprocess arguments).
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
FAKEBIN = os.path.join(TESTS, "fakebin")
BIN = os.path.dirname(sys.executable)


def command(script, module):
    """The installed console script; in a development checkout without one (no JPE_STACK), ``python -m``."""
    path = os.path.join(BIN, script)
    if os.path.isfile(path) or os.environ.get("JPE_STACK"):
        assert os.path.isfile(path), "%s is not installed beside %s" % (script, sys.executable)
        return [path]
    return [sys.executable, "-m", module]


def board_env(**extra):
    """The environment of a Jetson: nvpmodel, jetson_clocks (and tegrastats) stand-ins first on PATH."""
    env = dict(os.environ)
    if os.environ.get("JPE_STACK"):
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = os.path.dirname(TESTS)
    env["PATH"] = FAKEBIN + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def run(args, cwd, env=None, timeout=300):
    # capture_output= and text= are Python 3.7+
    return subprocess.run(args, cwd=str(cwd), env=env or board_env(), stdout=subprocess.PIPE,  # noqa: UP022
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)  # noqa: UP021


def load_tests_module(name):
    """A stdlib-only helper of the main suite, imported by path (the repository itself is not on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(TESTS, "support", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Exporter:
    """The installed ``jetson-power-exporter`` on a free loopback port; a context manager."""

    def __init__(self, *args):
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self._log = tempfile.TemporaryFile(mode="w+")
        args = command("jetson-power-exporter", "exporter") + ["--listen", "127.0.0.1:%d" % self.port] + list(args)
        self.proc = subprocess.Popen(args, env=board_env(), stdout=self._log, stderr=self._log)

    def __enter__(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("exporter exited %s: %s" % (self.proc.returncode, self.output()))
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.__exit__()
        raise AssertionError("exporter never became healthy: %s" % self.output())

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self):
        self._log.seek(0)
        return self._log.read()

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.read().decode("utf-8")

    def json(self, path):
        return json.loads(self.get(path))

    def samples(self, name):
        """(labels, value) of every sample of one metric, parsed by prometheus_client's own parser."""
        from prometheus_client.parser import text_string_to_metric_families

        return [(s.labels, s.value) for family in text_string_to_metric_families(self.get("/metrics"))
                for s in family.samples if s.name == name]
