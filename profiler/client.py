"""HTTP(S) to a jetson-power-exporter, with the credentials a remote profiler needs (urllib only).

The daemon takes writes from loopback freely; from anywhere else it wants
``Authorization: Bearer <token>`` (``--token-file``).  Over HTTPS the
profiler trusts ``--cacert`` (the system's CAs by default) and, where the
daemon requires client certificates (mTLS), shows ``--cert``/``--key``.
Every setting is checked when the client is made, so a wrong path is bad
input (one line, exit 2) before anything is measured.
"""

import http.client
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional

from exporter import contract

from .errors import ProfilerError, one_line


class DaemonError(ProfilerError):
    """The daemon refused a request or did not answer; the message says which and why."""


class DaemonClient:
    def __init__(self, url: str, token_file: Optional[str] = None, cacert: Optional[str] = None,
                 cert: Optional[str] = None, key: Optional[str] = None):
        self.url = url.rstrip("/")
        scheme = urllib.parse.urlsplit(self.url).scheme
        if scheme not in ("http", "https") or not urllib.parse.urlsplit(self.url).netloc:
            raise ProfilerError("exporter URL %r must look like http://HOST:PORT or https://HOST:PORT" % url)
        if (cert is None) != (key is None):
            raise ProfilerError("cert and key must be given together (the client certificate and its key)")
        if scheme == "http" and (cacert or cert):
            raise ProfilerError("cacert/cert/key need an https:// exporter URL, got %s" % self.url)
        self._token = None
        if token_file:
            try:
                self._token = contract.read_token(token_file)
            except contract.ContractError as exc:
                raise ProfilerError("token file %s: %s" % (token_file, exc)) from None
        self._context = None
        if scheme == "https":
            try:
                self._context = ssl.create_default_context(cafile=cacert)
            except (OSError, ssl.SSLError) as exc:
                raise ProfilerError("cacert %s: %s" % (cacert, one_line(exc))) from None
            if cert:
                try:
                    self._context.load_cert_chain(cert, key)
                except (OSError, ssl.SSLError) as exc:
                    raise ProfilerError("cert/key %s, %s: %s" % (cert, key, one_line(exc))) from None

    def get(self, path: str, query: Optional[Dict[str, str]] = None, timeout: float = 5.0) -> Dict[str, Any]:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        return self._send(urllib.request.Request(url), path, timeout)

    def post(self, path: str, body: bytes, timeout: float = 5.0) -> Dict[str, Any]:
        """A write: the only request that carries the token."""
        headers = {"Content-Type": "application/json"}
        if self._token is not None:
            headers["Authorization"] = "Bearer " + self._token
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method="POST")
        return self._send(request, path, timeout)

    def _send(self, request: urllib.request.Request, path: str, timeout: float) -> Dict[str, Any]:
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._context) as response:
                data = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read().decode("utf-8")).get("error", "")
            except (ValueError, AttributeError):
                reason = ""
            raise DaemonError("exporter %s: HTTP %d %s" % (path, exc.code, reason or exc.reason)) from None
        except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, reset, cut short, not JSON
            raise DaemonError("exporter at %s: %s" % (self.url, one_line(exc))) from None
        if not isinstance(data, dict):
            raise DaemonError("exporter %s: the answer is not a JSON object" % path)
        return data
