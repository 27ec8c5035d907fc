"""HTTP front of the daemon: /metrics, the landing page, health, the window API and the write API.

Reads are open; writes (the profiler's layer events and results) are taken
from loopback clients, or from remote ones that present the bearer token of
``--write-token-file``.  Every client error is a 4xx with a one-line JSON
reason; a handler never lets an exception escape as a traceback.

The sampler thread shares the GIL with the handlers, and a CPython thread
that gives up the GIL for a syscall (every sensor file read does) waits for
it behind every other runnable thread.  So however many clients there are,
one handler thread runs Python at a time, and never while the sampler reads:
a handler holds the turn (:class:`_Turn`) while it works and gives it back
while it waits on its client or on the sampler.  Scrapes share one rendered
body until something it shows changes.
"""

import hmac
import html
import io
import ipaddress
import json
import logging
import math
import socket
import socketserver
import ssl
import threading
import time
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Dict, Iterator, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import choose_encoder

from . import validate
from .alarms import AlarmWatch
from .collector import PowerCollector
from .layers import LayerBoard, LayerLimitError
from .sampler import Sampler, WindowError

log = logging.getLogger(__name__)

SOCKET_TIMEOUT_S = 10.0  # a client that stalls mid-request frees its thread after this
MAX_CONNECTIONS = 128  # one thread each: beyond this a new connection is closed at once
MAX_SAMPLES_PER_RESPONSE = 20000
METRICS_MAX_AGE_S = 1.0  # a cached /metrics body is re-rendered at least this often (stuck-layer expiry)
DRAIN_MAX_BYTES = 8 * 1024 * 1024  # unread request bytes discarded before a close, so the 4xx is not lost
DRAIN_S = 5.0  # ...for at most this long


class _Turn:
    """The right to run Python in a handler: one handler at a time, and not while the sampler reads.

    Handlers queue on their own lock, so the sampler, which takes ``Sampler.turn`` around each read,
    waits for at most the one handler that holds it, never for all the waiting ones.  A read that
    holds it longer than a sample period has hung: the handler goes ahead rather than wait for it.
    """

    def __init__(self, sampler: Sampler):
        self._handlers = threading.Lock()
        self._sampler_turn = sampler.turn
        self._patience_s = sampler.period_s
        self._shared = False  # the holder of _handlers could not get the sampler's turn

    def __enter__(self) -> None:
        self._handlers.acquire()
        self._shared = not self._sampler_turn.acquire(timeout=self._patience_s)

    def __exit__(self, *exc) -> None:
        if not self._shared:
            self._sampler_turn.release()
        self._handlers.release()


@contextmanager
def _turn_given_up(turn: _Turn) -> Iterator[None]:
    """Let the sampler or another handler run while this one waits (client I/O, the sampler)."""
    turn.__exit__()
    try:
        yield
    finally:
        turn.__enter__()


class _Connection(io.RawIOBase):
    """The client socket as rfile/wfile, giving up the handler's turn for every wait on the client."""

    def __init__(self, sock: socket.socket, turn: _Turn):
        super().__init__()
        self._sock = sock
        self._turn = turn

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with _turn_given_up(self._turn):
            return self._sock.recv_into(buffer)

    def write(self, data) -> int:
        with _turn_given_up(self._turn):
            self._sock.sendall(data)
        return len(data)


class _MetricsCache:
    """One rendered /metrics body per format, shared by every scrape until what it shows changes.

    It changes with a sample, a sensor error, the sensor going stale, a write, or age (an active
    layer expires with time alone); 20 clients scraping back to back then cost one render per sample.
    """

    def __init__(self, render, sampler: Sampler):
        self._render = render
        self._sampler = sampler
        self._lock = threading.Lock()
        self._writes = 0
        self._bodies: Dict[str, Tuple[Any, float, bytes]] = {}

    def written(self) -> None:
        with self._lock:
            self._writes += 1

    def get(self, content_type: str, accept: str) -> bytes:
        """The body for ``content_type``, rendered from ``accept`` (which negotiated it) when stale."""
        with self._lock:  # one render at a time; whoever waited for it takes its body
            key = (self._sampler.state_key(), self._writes)
            now = time.monotonic()
            cached = self._bodies.get(content_type)
            if cached is None or cached[0] != key or now - cached[1] > METRICS_MAX_AGE_S:
                cached = (key, now, self._render(accept))
                self._bodies[content_type] = cached
            return cached[2]


class ExporterServer(socketserver.ThreadingMixIn, HTTPServer):
    """One thread per connection (what http.server.ThreadingHTTPServer is on 3.7+; spelled out for 3.6)."""

    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], sampler: Sampler, layers: LayerBoard,
                 write_token: Optional[str] = None, tls: Optional[ssl.SSLContext] = None):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Handler)
        self.sampler = sampler
        self.layers = layers
        self.alarms = AlarmWatch(sampler.source)
        self.collector = PowerCollector(sampler, layers, self.alarms)
        self.write_token = write_token
        self.tls = tls
        self.turn = _Turn(sampler)
        self.metrics_cache = _MetricsCache(self.render_metrics, sampler)
        self._connection_slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address):
        # Bounded threads: a flood of idle (slow-loris) connections cannot exhaust the board's memory.
        if not self._connection_slots.acquire(blocking=False):
            log.warning("refusing a connection from %s: %d connections open", client_address[0], MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_slots.release()

    def finish_request(self, request, client_address):
        # TLS handshake in the request's own thread, so a slow client cannot stall accept().
        if self.tls is not None:
            request.settimeout(SOCKET_TIMEOUT_S)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        log.debug("connection from %s ended abnormally", client_address[0], exc_info=True)

    def render_metrics(self, accept: str) -> bytes:
        """The /metrics body in the format ``accept`` asks for (Prometheus text or OpenMetrics)."""
        return self.collector.render(accept)[0]


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class Handler(BaseHTTPRequestHandler):
    server: ExporterServer
    server_version = "jetson-power-exporter"
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S
    # Headers and body go out in two writes: with Nagle on, the body waits for the client's
    # delayed ACK, 40 ms per keep-alive response.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        log.debug("%s %s", self.client_address[0], format % args)

    def setup(self):
        super().setup()
        self.rfile.close()
        connection = _Connection(self.connection, self.server.turn)
        self.rfile = io.BufferedReader(connection)
        self.wfile = connection

    def handle(self):
        with self.server.turn:
            super().handle()

    def finish(self):
        super().finish()
        _close_gracefully(self.connection)

    # -- plumbing --------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, headers: Optional[Dict[str, str]] = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")  # so a keep-alive client does not reuse it
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any):
        self._send(status, (json.dumps(data, separators=(",", ":")) + "\n").encode(), "application/json")

    def _error(self, status: int, reason: str):
        if status == 401:
            self._send(status, (json.dumps({"error": reason}) + "\n").encode(), "application/json",
                       {"WWW-Authenticate": 'Bearer realm="jetson-power-exporter"'})
            return
        self._json(status, {"error": reason})

    def send_error(self, code, message=None, explain=None):
        """What the stdlib parser refuses (request line, headers, method) as a one-line JSON 4xx.

        An unknown method is the client's mistake (405), and so is a request
        line that claims an HTTP version we do not speak (400): a 5xx would
        say the exporter is broken, and alert on it.
        """
        headers = {}
        if code == HTTPStatus.NOT_IMPLEMENTED:
            code, message = HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed; use GET, HEAD or POST"
            headers["Allow"] = "GET, HEAD, POST"
        elif code == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
            code = HTTPStatus.BAD_REQUEST
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            # the request line did not parse: answer with a status line a client can read
            self.request_version = self.protocol_version
        reason = " ".join(str(message or HTTPStatus(code).phrase).split())[:200]
        self._send(int(code), (json.dumps({"error": reason}) + "\n").encode(), "application/json", headers)

    def _dispatch(self, routes: Dict[str, Any]):
        path = urlsplit(self.path).path
        route = routes.get(path)
        reads_body = self.command == "POST" and route is not None
        if not reads_body and (self.headers.get("Transfer-Encoding")
                               or self.headers.get("Content-Length", "0").strip() not in ("", "0")):
            self.close_connection = True  # an unread body must never be parsed as the next request
        if route is None:
            self._error(404, "no such endpoint %s (see / for the list)" % path[:100])
            return
        try:
            route()
        except validate.BadRequest as exc:
            if self.command == "POST":
                self.close_connection = True  # the body may be unread: never parse it as a request
            self._error(exc.status, str(exc))
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception:
            log.exception("internal error on %s %s", self.command, path)
            self.close_connection = True
            self._error(500, "internal error; see the exporter log")

    def do_GET(self):
        self._dispatch({
            "/metrics": self.metrics,
            "/": self.landing,
            "/healthz": self.healthz,
            "/api/v1/energy": self.api_energy,
            "/api/v1/samples": self.api_samples,
            "/api/v1/source": self.api_source,
            "/api/v1/alarms": self.api_alarms,
        })

    do_HEAD = do_GET

    def do_POST(self):
        self._dispatch({"/api/v1/layer": self.api_layer, "/api/v1/results": self.api_results,
                        "/api/v1/inference": self.api_inference})

    # -- reads -----------------------------------------------------------
    def metrics(self):
        accept = self.headers.get("Accept") or ""
        _, content_type = choose_encoder(accept)
        self._send(200, self.server.metrics_cache.get(content_type, accept), content_type)

    def healthz(self):
        snap = self.server.sampler.snapshot()
        if snap.up:
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        else:
            reason = snap.last_error or "no sample yet"
            self._send(503, ("sensor down: %s\n" % reason).encode(), "text/plain; charset=utf-8")

    def landing(self):
        sampler = self.server.sampler
        source = sampler.source
        snap = sampler.snapshot()
        watts = "%.3f W" % snap.reading.total_watts if snap.up and snap.reading else "sensor down"
        banner = ""
        if source.simulated:
            banner = ('<p style="background:#b00;color:#fff;padding:1em;font-size:1.4em">'
                      "SIMULATED / REPLAYED DATA &mdash; these are not measurements of real hardware "
                      "(source %s)</p>" % html.escape(source.name))
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='2'>"
            "<title>jetson-power-exporter</title></head><body><h1>jetson-power-exporter</h1>%s"
            "<p>Source: <b>%s</b> &middot; board: <b>%s</b> &middot; sample period %.1f ms</p>"
            "<p style='font-size:2em'>%s</p>"
            "<ul><li><a href='/metrics'>/metrics</a></li><li><a href='/healthz'>/healthz</a></li>"
            "<li><a href='/api/v1/source'>/api/v1/source</a></li>"
            "<li>/api/v1/energy?start=T0&amp;end=T1 (monotonic seconds)</li>"
            "<li>/api/v1/samples?since=T</li></ul></body></html>"
        ) % (banner, html.escape(source.name), html.escape(source.board), sampler.period_s * 1e3, watts)
        self._send(200, page.encode(), "text/html; charset=utf-8")

    def _query_float(self, name: str, default: Optional[float] = None) -> float:
        values = parse_qs(urlsplit(self.path).query).get(name)
        if not values:
            if default is not None:
                return default
            raise validate.BadRequest("missing query parameter %r (monotonic seconds of this host)" % name)
        try:
            value = float(values[0])
        except ValueError:
            raise validate.BadRequest("query parameter %r must be a number" % name) from None
        if not math.isfinite(value):
            raise validate.BadRequest("query parameter %r must be finite" % name)
        return value

    def api_energy(self):
        start, end = self._query_float("start"), self._query_float("end")
        try:
            with _turn_given_up(self.server.turn):
                window = self.server.sampler.energy(start, end, wait_s=2 * self.server.sampler.period_s + 0.5)
        except WindowError as exc:
            raise validate.BadRequest(str(exc), 422) from None
        self._json(200, {
            "start": window.start,
            "end": window.end,
            "total_joules": window.total_joules,
            "rails": window.rail_joules,
            "samples": window.samples,
            "mean_watts": window.mean_watts if window.covered_s > 0 else None,
            "covered_seconds": window.covered_s,
            "calibration": _calibration(self.server.sampler),
        })

    def api_samples(self):
        since = self._query_float("since", default=0.0)
        sampler = self.server.sampler
        rows = sampler.samples(since, limit=MAX_SAMPLES_PER_RESPONSE)
        self._json(200, {
            "source": sampler.source.name,
            "simulated": sampler.source.simulated,
            "update_interval_s": sampler.source.update_interval_s,
            "samples": [{"t": s.timestamp, "total_w": s.total_watts, "rails": s.rails} for s in rows],
        })

    def api_source(self):
        sampler = self.server.sampler
        info = dict(sampler.source.describe())
        info["sample_period_s"] = sampler.period_s
        info["simulated"] = sampler.source.simulated
        info["update_interval_s"] = sampler.source.update_interval_s
        info["calibration"] = _calibration(sampler)
        self._json(200, info)

    def api_alarms(self):
        snap = self.server.alarms.read()
        if snap.error:
            self._error(503, "alarm files unreadable: " + snap.error)
            return
        self._json(200, {
            "active": [{"name": a.name, "rail": a.rail, "kind": a.kind, "since": a.since} for a in snap.active],
            "throttle": snap.throttle(),
            "available": snap.board is not None,
        })

    # -- writes ----------------------------------------------------------
    def _authorized_body(self) -> Dict[str, Any]:
        if not is_loopback(self.client_address[0]):
            token = self.server.write_token
            if token is None:
                raise validate.BadRequest(
                    "writes from remote hosts are refused; start the daemon with --write-token-file "
                    "and send 'Authorization: Bearer <token>'", 403)
            scheme, _, offered = self.headers.get("Authorization", "").strip().partition(" ")
            # the scheme name is case-insensitive (RFC 7235); the token is compared in constant time
            if not (scheme.lower() == "bearer"
                    and hmac.compare_digest(offered.strip().encode("utf-8", "replace"), token.encode())):
                raise validate.BadRequest("missing or wrong bearer token", 401)
        if self.headers.get("Transfer-Encoding"):
            raise validate.BadRequest("Transfer-Encoding is not supported; send Content-Length", 411)
        if len(self.headers.get_all("Content-Length") or []) > 1:
            raise validate.BadRequest("more than one Content-Length")
        length = self.headers.get("Content-Length")
        if length is None:
            raise validate.BadRequest("Content-Length is required", 411)
        try:
            size = int(length)
        except ValueError:
            raise validate.BadRequest("Content-Length must be an integer") from None
        if size < 0:
            raise validate.BadRequest("Content-Length must not be negative")
        if size > validate.MAX_BODY_BYTES:
            self.close_connection = True
            raise validate.BadRequest("body is %d bytes; the limit is %d" % (size, validate.MAX_BODY_BYTES), 413)
        try:
            body = self.rfile.read(size)
        except socket.timeout:
            self.close_connection = True
            raise validate.BadRequest("the body did not arrive within %.0f s" % SOCKET_TIMEOUT_S, 408) from None
        if len(body) < size:
            self.close_connection = True
            raise validate.BadRequest("the body ended after %d of %d bytes" % (len(body), size))
        return validate.parse_json(body)

    def api_layer(self):
        event = validate.layer_event(self._authorized_body())
        try:
            self.server.layers.layer_event(**event)
        except LayerLimitError as exc:
            raise validate.BadRequest(str(exc), 422) from None
        self.server.metrics_cache.written()
        self._json(200, {"ok": True})

    def api_results(self):
        data = validate.results(self._authorized_body())
        try:
            self.server.layers.set_results(data["model"], data["layers"], replace=data["replace"])
        except LayerLimitError as exc:
            raise validate.BadRequest(str(exc), 422) from None
        self.server.metrics_cache.written()
        self._json(200, {"ok": True, "layers": len(data["layers"])})

    def api_inference(self):
        data = validate.inference(self._authorized_body())
        self.server.layers.set_inference(data["model"], data["result"])
        self.server.metrics_cache.written()
        self._json(200, {"ok": True})


def _calibration(sampler: Sampler) -> Optional[Dict[str, Any]]:
    """What the window and source APIs say of the calibration applied to their watts and joules."""
    return sampler.calibration.describe() if sampler.calibration is not None else None


def _close_gracefully(sock: socket.socket) -> None:
    """Half-close, then discard what the client still sends, so its unread request cannot make the
    kernel answer with a reset that destroys the response (a 413 for a body never read) in flight."""
    deadline = time.monotonic() + DRAIN_S
    drained = 0
    try:
        sock.shutdown(socket.SHUT_WR)
        while drained < DRAIN_MAX_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass  # the client went first: nothing left to protect
