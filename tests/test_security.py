"""Who may write, who may read, over plain HTTP, HTTPS and mTLS; and config refused before start.

The remote client is real: a network namespace joined to the host by a veth
pair, each end with its own 10.x address, and curl running inside the
namespace.  The daemon sees the peer's true address, nothing is faked.
Certificates come from the ``openssl`` CLI: a CA, a server certificate for
the host's veth address and loopback, a client certificate, and a second
("rogue") CA with a client certificate of its own (the ``netns`` and ``pki``
fixtures of tests/conftest.py).
"""

import os
import socket
import time
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, assert_one_line_error, free_port, run_cli
from tests.support.pki import TlsDaemon, host_context

TOKEN = "s3cr3t-token-0123456789abcdef"
LAYER = {"model": "remote_net", "index": 1, "layer": "Conv2d_1", "op": "Conv2d", "state": "begin"}
RESULTS = {"model": "remote_net", "layers": [{"index": 1, "layer": "Conv2d_1", "op": "Conv2d", "energy_j": 0.5,
                                              "dynamic_energy_j": 0.2, "duration_s": 0.01, "power_w": 50.0}]}


def _all_interfaces(port):
    return ("--listen", "0.0.0.0:%d" % port)


@pytest.mark.system
def test_remote_writes_are_refused_without_a_token_and_reads_stay_open(netns):
    port = free_port()
    with Daemon("--source", "sim", *_all_interfaces(port), port=port) as daemon:
        base = "http://%s:%d" % (netns.host_ip, port)
        for path in ("/metrics", "/healthz", "/", "/api/v1/source", "/api/v1/samples?since=0"):
            code, body, _ = netns.curl(base + path)
            assert code == 200, (path, body)
        assert "jetson_power_up 1.0" in netns.curl(base + "/metrics")[1]
        attempts = [
            netns.post(base + "/api/v1/layer", LAYER),
            netns.post(base + "/api/v1/results", RESULTS),
            netns.post(base + "/api/v1/layer", LAYER, "-H", "Authorization: Bearer " + TOKEN),
            netns.post(base + "/api/v1/layer", LAYER, "-H", "X-Forwarded-For: 127.0.0.1",
                       "-H", "X-Real-IP: 127.0.0.1", "-H", "Forwarded: for=127.0.0.1"),
            netns.post(base + "/api/v1/layer", b"not even json".decode()),
        ]
        for code, body, _ in attempts:
            assert code == 403 and "--write-token-file" in body, body
        assert daemon.values("jetson_profiler_active_layer") == []
        assert daemon.post("/api/v1/layer", dict(LAYER, model="local_net"))[0] == 200, "loopback writes freely"
        assert [labels["model"] for labels, _ in daemon.values("jetson_profiler_active_layer")] == ["local_net"]
        print("remote (%s -> %s): %d write attempts refused with 403, 5 read endpoints open"
              % (netns.peer_ip, netns.host_ip, len(attempts)))


@pytest.mark.system
def test_remote_writes_need_the_bearer_token_from_the_file(netns, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    with Daemon("--source", "sim", "--write-token-file", str(token_file), *_all_interfaces(port),
                port=port) as daemon:
        url = "http://%s:%d/api/v1/layer" % (netns.host_ip, port)
        refused = {
            "no header": [],
            "wrong token": ["-H", "Authorization: Bearer wrong-token-0123456789abcdef"],
            "token prefix": ["-H", "Authorization: Bearer " + TOKEN[:-1]],
            "token plus suffix": ["-H", "Authorization: Bearer " + TOKEN + "x"],
            "other scheme": ["-H", "Authorization: Basic " + TOKEN],
            "bare token": ["-H", "Authorization: " + TOKEN],
        }
        for case, args in refused.items():
            code, body, _ = netns.post(url, LAYER, *args)
            assert code == 401 and "bearer token" in body, (case, code, body)
        code, head, _ = netns.post(url, LAYER, "-i")
        assert code == 401 and 'www-authenticate: bearer realm="jetson-power-exporter"' in head.lower(), head
        assert daemon.values("jetson_profiler_active_layer") == []

        assert netns.post(url, LAYER, "-H", "Authorization: Bearer " + TOKEN)[0] == 200
        assert netns.post(url, dict(LAYER, model="remote_b"), "-H", "Authorization: bearer " + TOKEN)[0] == 200
        results_url = url.replace("/layer", "/results")
        assert netns.post(results_url, RESULTS, "-H", "Authorization: Bearer " + TOKEN)[0] == 200
        assert daemon.value("jetson_profiler_active_layer", model="remote_net") == 1.0
        assert daemon.value("jetson_layer_call_power_watts", model="remote_net", index="0001") == 50.0
        assert daemon.post("/api/v1/layer", dict(LAYER, model="local_net"))[0] == 200, "loopback needs no token"
        print("token: %d wrong/missing credentials refused with 401, right token accepted" % (len(refused) + 1))


@pytest.mark.system
def test_https_scrape_and_plain_http_gets_no_answer(netns, pki):
    port = free_port()
    tls = ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"))
    with TlsDaemon("--source", "sim", *tls, *_all_interfaces(port), port=port,
                   context=host_context(pki, client=False)):
        https = "https://%s:%d" % (netns.host_ip, port)
        code, body, _ = netns.curl(https + "/metrics", "--cacert", str(pki / "ca.pem"))
        assert code == 200 and "jetson_power_up 1.0" in body
        code, _, rc = netns.curl(https + "/metrics", "--cacert", str(pki / "rogue-ca.pem"))
        assert code == 0 and rc == 60, "a client that trusts another CA rejects the server"
        code, _, rc = netns.curl("http://%s:%d/metrics" % (netns.host_ip, port))
        assert code == 0 and rc != 0, "plain HTTP on the TLS port gets no HTTP answer"
        code, body, _ = netns.post(https + "/api/v1/layer", LAYER, "--cacert", str(pki / "ca.pem"))
        assert code == 403, "TLS alone does not let a remote client write"
        code, _, _ = netns.curl(https + "/healthz", "--cacert", str(pki / "ca.pem"))
        assert code == 200


@pytest.mark.system
def test_mtls_refuses_clients_without_a_certificate_from_the_ca(netns, pki):
    port = free_port()
    tls = ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
           "--tls-client-ca", str(pki / "ca.pem"))
    with TlsDaemon("--source", "sim", *tls, *_all_interfaces(port), port=port, context=host_context(pki)) as daemon:
        https = "https://%s:%d" % (netns.host_ip, port)
        trust = ("--cacert", str(pki / "ca.pem"))
        for path in ("/metrics", "/healthz"):
            code, _, rc = netns.curl(https + path, *trust)
            assert code == 0 and rc != 0, "no client certificate: no answer (%s, curl rc %d)" % (path, rc)
            code, _, rc = netns.curl(https + path, *trust, "--cert", str(pki / "rogue-client.pem"),
                                     "--key", str(pki / "rogue-client.key"))
            assert code == 0 and rc != 0, "certificate of another CA: no answer (curl rc %d)" % rc
        mine = ("--cert", str(pki / "client.pem"), "--key", str(pki / "client.key"))
        code, body, _ = netns.curl(https + "/metrics", *trust, *mine)
        assert code == 200 and "jetson_power_up 1.0" in body
        code, _, _ = netns.post(https + "/api/v1/layer", LAYER, *trust, *mine)
        assert code == 403, "a client certificate is not a write token"
        assert daemon.get("/healthz")[0] == 200, "the daemon still serves after the refused handshakes"


@pytest.mark.system
def test_tls_and_token_settings_are_checked_before_anything_starts(pki, tmp_path):
    cert, key, ca = str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem")
    missing = str(tmp_path / "missing.pem")
    short = tmp_path / "short"
    short.write_text("abc\n")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = [
        (["--tls-cert", cert], "tls_cert and tls_key must be given together"),
        (["--tls-key", key], "tls_cert and tls_key must be given together"),
        (["--tls-client-ca", ca], "tls_client_ca needs tls_cert"),
        (["--tls-cert", missing, "--tls-key", key], "tls_cert: cannot read %s" % missing),
        (["--tls-cert", cert, "--tls-key", missing], "tls_key: cannot read %s" % missing),
        (["--tls-cert", cert, "--tls-key", str(pki / "client.key")], "tls_cert/tls_key"),
        (["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", missing], "tls_client_ca: cannot read"),
        (["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", str(not_pem)], "tls_client_ca:"),
        (["--write-token-file", missing], "write_token_file %s" % missing),
        (["--write-token-file", str(short)], "at least 16 characters"),
        (["--write-token-file", str(empty)], "at least 16 characters"),
        (["--max-models", "0"], "max_models"),
        (["--max-layers", "1.5"], "max_layers"),
        (["--active-layer-timeout", "-1"], "active_layer_timeout"),
    ]
    # "Before anything starts": the tegrastats source would log its start, and the port stays free.
    fakebin = Path(__file__).resolve().parent / "fakebin"
    starts = tmp_path / "tegrastats-starts.log"
    env = dict(os.environ, PATH="%s:%s" % (fakebin, os.environ["PATH"]), FAKE_TEGRASTATS_LOG=str(starts))
    port = free_port()
    for args, fragment in cases:
        result = run_cli("--source", "tegrastats", "--listen", "127.0.0.1:%d" % port, *args, env=env)
        assert_one_line_error(result, 2, fragment)
    config = tmp_path / "config.yaml"
    config.write_text("tls_cert: [a, b]\n")
    assert_one_line_error(run_cli("--config", str(config), env=env), 2, "tls_cert must be a string")
    assert not starts.exists(), "a source was opened before the configuration was validated"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # nothing kept it
    print("config: %d bad TLS/token/limit settings refused with exit 2, key named, no source opened"
          % (len(cases) + 1))



def test_idle_connections_are_bounded_and_scrapes_still_answered():
    from exporter.server import MAX_CONNECTIONS

    with Daemon("--source", "sim") as daemon:
        idle = []
        try:
            for _ in range(MAX_CONNECTIONS + 20):  # slow-loris: connect, send nothing
                idle.append(socket.create_connection((daemon.host, daemon.port), timeout=5))
            refused = 0
            for sock in idle[MAX_CONNECTIONS:]:
                sock.settimeout(2)
                try:
                    refused += sock.recv(1) == b""
                except OSError:
                    refused += 1
            assert refused >= 20 - 2
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 5
        while daemon.get("/healthz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.get("/healthz")[0] == 200
