"""Certificates from the ``openssl`` CLI, and the daemon served over HTTPS.

:func:`make_pki` writes a CA, a server certificate for the given IPs plus
loopback, a client certificate, and a second ("rogue") CA with a client
certificate of its own -- ``<name>.pem`` and ``<name>.key`` in one folder.
"""

import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Optional, Tuple

from tests.support.daemon import Daemon
from tests.support.netns import run


def make_pki(d: Path, server_ips=()) -> Path:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def ca(name):
        run("openssl", "req", "-x509", *ec, "-keyout", str(d / (name + ".key")), "-out", str(d / (name + ".pem")),
            "-days", "2", "-subj", "/CN=%s" % name)

    def leaf(name, issuer, ext):
        (d / (name + ".ext")).write_text(ext + "\nbasicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\n"
                                         "authorityKeyIdentifier=keyid\n")
        run("openssl", "req", *ec, "-keyout", str(d / (name + ".key")), "-out", str(d / (name + ".csr")),
            "-subj", "/CN=%s" % name)
        run("openssl", "x509", "-req", "-in", str(d / (name + ".csr")), "-CA", str(d / (issuer + ".pem")),
            "-CAkey", str(d / (issuer + ".key")), "-CAcreateserial", "-days", "2", "-out", str(d / (name + ".pem")),
            "-extfile", str(d / (name + ".ext")))

    ca("ca")
    ca("rogue-ca")
    names = ",".join(["IP:%s" % ip for ip in server_ips] + ["IP:127.0.0.1", "DNS:localhost"])
    leaf("server", "ca", "subjectAltName=%s\nextendedKeyUsage=serverAuth" % names)
    leaf("client", "ca", "extendedKeyUsage=clientAuth")
    leaf("rogue-client", "rogue-ca", "extendedKeyUsage=clientAuth")
    return d


def host_context(pki: Path, client: bool = True) -> ssl.SSLContext:
    """How this host talks to the TLS daemon: trusts the CA, and shows the client certificate for mTLS."""
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if client:
        context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    return context


class TlsDaemon(Daemon):
    """The daemon serving HTTPS; the test host talks to it with ``context``."""

    def __init__(self, *args, context: ssl.SSLContext, **kwargs):
        self.context = context
        super().__init__(*args, **kwargs)
        self.url = "https://%s:%d" % (self.host, self.port)

    def get(self, path: str, headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], str]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read().decode()
