"""A profiler on another host: token, HTTPS and mTLS, as README says remote profilers authenticate.

The daemon serves on the host's end of a veth pair (the ``netns`` and ``pki``
fixtures of tests/conftest.py).  The command line runs inside the namespace, a
real remote host; the Python API runs on the host and reaches the daemon
through the veth address, so the daemon sees a non-loopback peer there too.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from profiler import ProfilerError, profile
from tests.support.daemon import ROOT, free_port
from tests.support.models import write_tiny_model
from tests.support.pki import TlsDaemon, host_context

TOKEN = "remote-profiler-token-0123456789"
MODEL = "build"  # kwnet:build
FAST = ["--model", "kwnet:build", "--input-shape", "1,3,8,8", "--source", "sim", "--min-window-s", "0.05",
        "--trials", "2", "--seed", "1"]


@pytest.fixture(scope="module")
def remote_daemon(netns, pki, tmp_path_factory):
    """The daemon on all interfaces over mTLS, with a write token."""
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text(TOKEN + "\n")
    port = free_port()
    args = ("--source", "sim", "--listen", "0.0.0.0:%d" % port, "--write-token-file", str(token),
            "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
            "--tls-client-ca", str(pki / "ca.pem"))
    with TlsDaemon(*args, port=port, context=host_context(pki)) as daemon:
        daemon.remote_url = "https://%s:%d" % (netns.host_ip, port)
        daemon.token_file = token
        yield daemon


def _credentials(pki, token_file):
    return ["--token-file", str(token_file), "--cacert", str(pki / "ca.pem"), "--cert", str(pki / "client.pem"),
            "--key", str(pki / "client.key")]


def _profile_remotely(netns, workdir, *args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return netns.python("-m", "profiler", *FAST, "--out", str(workdir / "o"), *args, cwd=str(workdir), env=env,
                        capture_output=True, text=True, timeout=300)


def _model_series(daemon, metric, model):
    from prometheus_client.parser import text_string_to_metric_families

    status, _, text = daemon.get("/metrics")
    assert status == 200
    return {s.labels["layer"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == metric and s.labels.get("model") == model}


@pytest.mark.system
@pytest.mark.slow
def test_the_cli_on_another_host_pushes_over_mtls_with_the_token(netns, pki, remote_daemon, tmp_path):
    work = write_tiny_model(tmp_path)
    proc = _profile_remotely(netns, work, "--exporter", remote_daemon.remote_url,
                             *_credentials(pki, remote_daemon.token_file))
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr
    meta = json.load(open(work / "o" / "build_layerwise_summary.json"))["meta"]
    assert meta["measured_via"] == "exporter " + remote_daemon.remote_url, "windows read from the daemon"
    energies = _model_series(remote_daemon, "jetson_layer_call_energy_joules", MODEL)
    assert set(energies) == {"Conv2d_0", "ReLU_1", "Flatten_2", "Linear_3"}, "results pushed"
    integrated = _model_series(remote_daemon, "jetson_layer_active_seconds_total", MODEL)
    assert set(integrated) == set(energies) and all(v > 0 for v in integrated.values()), "begin/end pushed"
    print("remote CLI (%s -> %s) over mTLS with the token: %d layers pushed"
          % (netns.peer_ip, netns.host_ip, len(energies)))


@pytest.mark.system
@pytest.mark.slow
def test_without_the_token_or_the_certificate_a_remote_profile_warns_once_and_goes_on(
        netns, pki, remote_daemon, tmp_path):
    work = write_tiny_model(tmp_path)
    creds = _credentials(pki, remote_daemon.token_file)
    no_token = creds[2:]
    proc = _profile_remotely(netns, work, "--exporter", remote_daemon.remote_url, *no_token)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "HTTP 401" in warnings[0] and "bearer token" in warnings[0], proc.stderr
    meta = json.load(open(work / "o" / "build_layerwise_summary.json"))["meta"]
    assert meta["measured_via"] == "exporter " + remote_daemon.remote_url, "reads need no token"

    no_certificate = creds[:4]  # the token and the CA, but no client certificate: the handshake fails
    proc = _profile_remotely(netns, work, "--exporter", remote_daemon.remote_url, *no_certificate)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "measuring in-process" in warnings[0], proc.stderr
    meta = json.load(open(work / "o" / "build_layerwise_summary.json"))["meta"]
    assert meta["measured_via"] == "in-process sampler"


@pytest.mark.system
def test_the_python_api_takes_the_same_credentials(pki, remote_daemon, tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU()).eval()
    result = profile(model, torch.zeros(1, 8), exporter_url=remote_daemon.remote_url,
                     token_file=str(remote_daemon.token_file), cacert=str(pki / "ca.pem"),
                     cert=str(pki / "client.pem"), key=str(pki / "client.key"), model_name="api_net",
                     min_window_s=0.05, trials=2, warn=pytest.fail)
    assert result.meta["measured_via"] == "exporter " + remote_daemon.remote_url
    assert set(_model_series(remote_daemon, "jetson_layer_call_energy_joules", "api_net")) == {"Linear_0", "ReLU_1"}


@pytest.mark.system
def test_bad_credentials_are_bad_input_before_anything_is_measured(pki, tmp_path):
    model = nn.Sequential(nn.ReLU())
    missing = str(tmp_path / "missing")
    short = tmp_path / "short"
    short.write_text("abc\n")
    https, http = "https://127.0.0.1:1", "http://127.0.0.1:1"
    cases = [
        ({"exporter_url": https, "cert": str(pki / "client.pem")}, "cert and key must be given together"),
        ({"exporter_url": https, "key": str(pki / "client.key")}, "cert and key must be given together"),
        ({"exporter_url": https, "token_file": missing}, "token file %s: " % missing),
        ({"exporter_url": https, "token_file": str(short)}, "at least 16 characters"),
        ({"exporter_url": https, "cacert": missing}, "cacert %s" % missing),
        ({"exporter_url": https, "cert": str(pki / "client.pem"), "key": str(pki / "server.key")}, "cert/key"),
        ({"exporter_url": http, "cacert": str(pki / "ca.pem")}, "need an https:// exporter URL"),
        ({"exporter_url": "ftp://x:1"}, "must look like http://HOST:PORT"),
        ({"token_file": str(short)}, "are for exporter_url, which is not given"),
    ]
    for kwargs, fragment in cases:
        with pytest.raises(ProfilerError) as info:
            profile(model, torch.zeros(2), source="sim", **kwargs)
        assert fragment in str(info.value) and "\n" not in str(info.value), (kwargs, str(info.value))


def test_the_cli_turns_bad_credentials_into_one_line_and_exit_2(tmp_path):
    work = write_tiny_model(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "profiler", *FAST, "--out", str(work / "o"),
                           "--exporter", "https://127.0.0.1:1", "--cert", str(tmp_path / "c.pem")],
                          cwd=str(work), env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cert and key must be given together" in lines[0], proc.stderr
    assert not os.listdir(work / "o"), "no file written"
