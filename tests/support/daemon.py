"""Run the real daemon as a subprocess on a free loopback port, and talk to it over HTTP."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Daemon:
    """``python -m exporter`` with the given flags; a context manager that always cleans up."""

    def __init__(self, *args: str, env: Optional[Dict[str, str]] = None, host: str = "127.0.0.1",
                 port: Optional[int] = None, wait_healthy: bool = True):
        self.host = host
        self.port = port or free_port(host)
        self.url = "http://%s:%d" % (host, self.port)
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONPATH", ROOT)
        self.args = [sys.executable, "-m", "exporter", "--listen", "%s:%d" % (host, self.port)] + list(args)
        # A file, not a pipe: a chatty daemon must never block on a full pipe buffer.
        self._log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=full_env, stdout=self._log, stderr=self._log,
                                     text=True)
        self.wait_healthy = wait_healthy
        self._output: Optional[str] = None

    def __enter__(self) -> "Daemon":
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited %s: %s" % (self.proc.returncode, self.stop()[1]))
            try:
                status, _, _ = self.get("/healthz")
                if status == 200 or (not self.wait_healthy and status == 503):
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("daemon did not become healthy on %s" % self.url)

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> Tuple[int, str]:
        """Stop the daemon (idempotent); returns its exit code and everything it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._output is None:
            self._log.seek(0)
            self._output = self._log.read()
            self._log.close()
        return self.proc.returncode, self._output

    def get(self, path: str, headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], str]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read().decode()

    def post(self, path: str, data, headers: Optional[Dict[str, str]] = None) -> Tuple[int, dict]:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        request = urllib.request.Request(self.url + path, data=body, method="POST",
                                         headers=dict({"Content-Type": "application/json"}, **(headers or {})))
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read().decode())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read().decode() or "{}")

    def metrics(self) -> str:
        status, _, text = self.get("/metrics")
        assert status == 200, text
        return text

    def values(self, name: str) -> List[Tuple[Dict[str, str], float]]:
        """Samples of one metric from a live scrape, parsed by prometheus_client's own parser."""
        from prometheus_client.parser import text_string_to_metric_families

        out = []
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name:
                    out.append((sample.labels, sample.value))
        return out

    def value(self, name: str, **labels: str) -> Optional[float]:
        for sample_labels, value in self.values(name):
            if all(sample_labels.get(k) == v for k, v in labels.items()):
                return value
        return None


def run_cli(*args: str, env: Optional[Dict[str, str]] = None) -> "subprocess.CompletedProcess":
    """``python -m exporter`` run to completion (for flags that must fail before anything starts)."""
    return subprocess.run([sys.executable, "-m", "exporter"] + list(args), cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env=env)


def assert_one_line_error(result: "subprocess.CompletedProcess", code: int, *fragments: str) -> None:
    """Bad input ends as one line on stderr naming what to fix, with exit ``code`` and no traceback."""
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_trace(path: str, rows: List[Tuple[float, float]], rails: Optional[Dict[str, List[float]]] = None) -> str:
    """A replay CSV: ``time_s,total_w`` plus ``<RAIL>_w`` columns."""
    rails = rails or {}
    with open(path, "w") as handle:
        handle.write(",".join(["time_s", "total_w"] + ["%s_w" % r for r in rails]) + "\n")
        for n, (t, watts) in enumerate(rows):
            handle.write(",".join(["%r" % t, "%r" % watts] + ["%r" % rails[r][n] for r in rails]) + "\n")
    return path
