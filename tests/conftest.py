"""Fixtures shared by the test modules (their helpers live in ``tests/support``)."""

import shutil
import subprocess

import pytest

from tests.support.netns import Netns, netns_problem, run
from tests.support.pki import make_pki


@pytest.fixture(scope="module")
def netns():
    """A network namespace on a veth pair: a remote client with its own address (needs root)."""
    problem = netns_problem()
    if problem:
        print("network-namespace tests skipped:", problem)
        pytest.skip(problem)
    ns = Netns()
    try:
        ns.up()
    except subprocess.CalledProcessError as exc:
        ns.down()
        reason = "cannot create a network namespace here: %s" % (exc.stderr or exc).strip()
        print(reason)
        pytest.skip(reason)
    try:
        code, _, rc = ns.curl("http://%s:1/" % ns.host_ip)
        assert rc == 7, "the namespace cannot reach the host's veth end (curl rc %d)" % rc  # 7: refused
        yield ns
    finally:
        ns.down()
        assert ns.name not in run("ip", "netns", "list").stdout


@pytest.fixture(scope="module")
def pki(tmp_path_factory, netns):
    """CA, server cert (host veth IP, 127.0.0.1, localhost), client cert, and a rogue CA's client cert."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return make_pki(tmp_path_factory.mktemp("pki"), [netns.host_ip])
