"""A real remote client: a network namespace joined to the host by a veth pair.

Each end has its own 10.x address, so a daemon listening on the host's end
sees the namespace's true address; nothing is faked.
"""

import json
import os
import random
import shutil
import subprocess
import sys
from typing import List, Optional, Tuple


def run(*cmd: str, check: bool = True) -> "subprocess.CompletedProcess":
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=check)


def netns_problem() -> Optional[str]:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root: creating network namespaces and veth pairs does"
    for tool, package in (("ip", "iproute2"), ("curl", "curl")):
        if shutil.which(tool) is None:
            return "%s is not installed (Debian package %s)" % (tool, package)
    return None


class Netns:
    """A namespace ``name`` whose veth end has ``peer_ip``; the host's end has ``host_ip``."""

    def __init__(self):
        tag = "%04x%02x" % (os.getpid() & 0xFFFF, random.randrange(256))
        self.name = "jpe-test-" + tag
        self.host_if, self.peer_if = "jpeh" + tag, "jpep" + tag
        a, b = random.randrange(64, 250), random.randrange(0, 250)
        self.host_ip, self.peer_ip = "10.%d.%d.1" % (a, b), "10.%d.%d.2" % (a, b)

    def up(self) -> None:
        run("ip", "netns", "add", self.name)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        run("ip", "link", "set", self.peer_if, "netns", self.name)
        run("ip", "addr", "add", self.host_ip + "/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        inside = ("ip", "netns", "exec", self.name)
        run(*inside, "ip", "addr", "add", self.peer_ip + "/30", "dev", self.peer_if)
        run(*inside, "ip", "link", "set", self.peer_if, "up")
        run(*inside, "ip", "link", "set", "lo", "up")

    def down(self) -> None:
        run("ip", "netns", "del", self.name, check=False)  # takes the peer, and with it the pair
        run("ip", "link", "del", self.host_if, check=False)

    def exec(self, argv: List[str], **kwargs) -> "subprocess.CompletedProcess":
        """``argv`` run inside the namespace (keyword arguments go to subprocess.run)."""
        return subprocess.run(["ip", "netns", "exec", self.name] + list(argv), **kwargs)

    def curl(self, url: str, *args: str) -> Tuple[int, str, int]:
        """``(http status or 0, body, curl exit code)`` of curl run inside the namespace."""
        out = self.exec(["curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"] + list(args) + [url],
                        capture_output=True, text=True, timeout=30)
        body, _, code = out.stdout.rpartition("\n")
        return int(code or 0), body, out.returncode

    def post(self, url: str, data, *args: str) -> Tuple[int, str, int]:
        return self.curl(url, "-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
                         json.dumps(data), *args)

    def python(self, *args: str, **kwargs) -> "subprocess.CompletedProcess":
        """This interpreter run inside the namespace."""
        return self.exec([sys.executable] + list(args), **kwargs)
