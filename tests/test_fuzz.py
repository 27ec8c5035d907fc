"""Fuzzing: the sysfs readers, the tegrastats parser, the write API, and raw HTTP against a live daemon.

Property-based (hypothesis) where the input has structure worth shrinking;
a seeded random generator for the bulk HTTP run (>= 10,000 requests), which
must stay fast: keep-alive raw sockets for well-framed requests, a fresh
socket for each malformed one.  Nothing may crash, nothing may answer 5xx,
and /metrics must stay clean under ``promtool check metrics``.
"""

import json
import math
import os
import random
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import contract, validate
from exporter.collector import PowerCollector
from exporter.layers import LayerBoard, LayerLimitError
from exporter.sampler import Sampler
from exporter.sources import SensorReadError, SourceUnavailable, hwmon, open_source
from exporter.sources.tegrastats import NO_POWER_FIELDS, NotTegrastatsLine, parse_line
from tests.support.daemon import Daemon
from tests.support.prom import promtool_check
from tests.support.sysfs_boards import build_board

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tegrastats-samples.tsv"
HTTP_REQUESTS = 10000
SEED = int(os.environ.get("FUZZ_SEED", "20251128"))


def _finite_reading(reading):
    assert math.isfinite(reading.total_watts)
    for table in (reading.rails, reading.volts, reading.amperes):
        assert all(math.isfinite(v) for v in table.values()), table


# --- sysfs readers ---------------------------------------------------------------------------------

# numbers as a driver might print them, and as a broken one might
_NUMERIC = st.from_regex(r"\A[ \t]*[-+]?[0-9_]{0,70}(\.[0-9]{0,5})?(e[-+]?[0-9]{1,4})?[ \t\n\x00]*\Z")
_CONTENTS = st.one_of(st.binary(max_size=96), _NUMERIC.map(str.encode), st.integers().map(lambda i: b"%d\n" % i))


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    """One board per layout: mainline ina3221 (AGX Orin), L4T IIO ina3221x (Nano), ina238 (Thor)."""
    built = {}
    for key in ("agx_orin", "nano", "thor"):
        tree = build_board(str(tmp_path_factory.mktemp(key)), key)
        built[key] = (tree, hwmon.make_source(None, sysfs_root=str(tree.root)))
    return built


def _value_files(tree):
    return [(rail, kind) for rail in tree.rails for kind in ("volts", "amps", "watts")
            if kind in tree._rails[rail].paths()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), content=_CONTENTS)
def test_sysfs_value_files_with_any_content_give_a_read_error_or_a_finite_reading(boards, data, content):
    key = data.draw(st.sampled_from(sorted(boards)))
    tree, source = boards[key]
    rail, kind = data.draw(st.sampled_from(_value_files(tree)))
    path = tree.rail_file(rail, kind)
    try:
        path.write_bytes(content)
        try:
            reading = source.read()
        except SensorReadError as exc:
            assert path.name in str(exc)
        else:
            _finite_reading(reading)
    finally:
        tree.set_rail(rail, amps=tree.amperes[rail])
    _finite_reading(source.read())


_ATTRS = ["in1_label", "in2_label", "in1_enable", "update_interval", "samples", "name"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attr=st.sampled_from(_ATTRS), content=st.one_of(st.binary(max_size=64), st.text(max_size=40).map(
    lambda s: s.encode("utf-8", "surrogatepass"))))
def test_sysfs_attributes_read_at_open_never_raise_anything_but_unavailable(boards, attr, content):
    tree = boards["agx_orin"][0]
    hwmon_dir = tree.rail_file("VDD_GPU_SOC", "amps").parent
    path = hwmon_dir / attr
    saved = path.read_bytes()
    try:
        path.write_bytes(content)
        try:
            source = hwmon.make_source(None, sysfs_root=str(tree.root))
        except SourceUnavailable:
            return
        try:
            _finite_reading(source.read())
        except SensorReadError:
            pass
        assert source.update_interval_s is None or source.update_interval_s > 0
        assert all(isinstance(name, str) and name for name in source.rail_names)
    finally:
        path.write_bytes(saved)


# --- tegrastats parser -----------------------------------------------------------------------------
# tests/test_tegrastats.py fuzzes random text and token soups; here real lines are mutated.

with FIXTURE.open() as _handle:
    _LINES = [row.split("\t")[-1].strip() for row in _handle.read().splitlines()[1:] if row.strip()]


@settings(max_examples=400, deadline=None)
@given(line=st.sampled_from(_LINES), edits=st.lists(
    st.tuples(st.integers(0, 400), st.integers(0, 8), st.text(max_size=6)), max_size=6))
def test_mutated_real_tegrastats_lines_parse_to_finite_watts_or_say_no_power(line, edits):
    for position, cut, insert in edits:
        position %= len(line) + 1
        line = line[:position] + insert + line[position + cut:]
    try:
        total, rails = parse_line(line)
    except NotTegrastatsLine:  # the edits broke the RAM field too: skipped, like any other stray line
        assert not re.search(r"(?<!\S)RAM \d+/\d+MB(?!\S)", line)
        return
    except ValueError as exc:
        assert str(exc) == NO_POWER_FIELDS
        return
    assert rails and math.isfinite(total) and total >= 0
    assert all(math.isfinite(w) and w >= 0 for w in rails.values())


# --- the write API, in process ---------------------------------------------------------------------

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                     st.text(max_size=20))
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=5)), max_leaves=20)
_GOOD_LABEL = st.from_regex(r"\A[A-Za-z0-9_]{1,10}\Z")
_LABELISH = st.one_of(_GOOD_LABEL, _GOOD_LABEL, _GOOD_LABEL, st.text(max_size=140),
                      st.from_regex(r"\A[A-Za-z0-9_.:/+\-\[\]() ]{1,130}\Z"),
                      st.sampled_from(["Conv2d_1", "x" * 128, "x" * 129, 'a"b', "a\nb", "é", ""]))
_NUMBERISH = st.one_of(st.floats(), st.integers(), st.booleans(), st.none(), st.text(max_size=4))
_GOODNUM = st.one_of(st.floats(0, 1e6), st.floats(0, 1e6), _NUMBERISH)
_LAYER_EVENT = st.fixed_dictionaries(
    {"model": _LABELISH, "index": st.one_of(st.integers(0, 60), st.integers(-2, 1100), _NUMBERISH),
     "layer": _LABELISH, "op": _LABELISH, "state": st.sampled_from(["begin", "end", "begin", "end", "middle", 1])},
    optional={"extra": _SCALARS})
_RESULT = st.fixed_dictionaries(
    {"index": st.one_of(st.integers(0, 60), st.integers(-1, 1100)), "layer": _LABELISH, "op": _LABELISH,
     "energy_j": _GOODNUM, "dynamic_energy_j": _GOODNUM, "duration_s": _GOODNUM, "power_w": _GOODNUM})
_RESULTS = st.fixed_dictionaries({"model": _LABELISH, "layers": st.one_of(st.lists(_RESULT, max_size=4), _JSON)},
                                 optional={"replace": _SCALARS})
_INFERENCE = st.fixed_dictionaries(
    {"model": _LABELISH, "power_mode": _LABELISH, "batch_size": st.one_of(st.integers(-1, 64), _NUMBERISH),
     "latency_s": _GOODNUM, "energy_j": _GOODNUM, "dynamic_energy_j": _GOODNUM, "power_w": _GOODNUM},
    optional={"extra": _SCALARS})
_BODIES = st.one_of(_LAYER_EVENT, _RESULTS, _INFERENCE, _JSON)


def _encode(obj):
    """JSON text of ``obj``, with NaN/Infinity where floats hold them (json.dumps writes those)."""
    return json.dumps(obj).encode()


class _InProcess:
    def __init__(self):
        self.layers = LayerBoard(max_models=3, max_layers=50, active_timeout_s=300.0)
        self.collector = PowerCollector(Sampler(open_source("sim")), self.layers)
        self.accepted = 0

    def apply(self, path, body):
        """What the daemon does with a body: parse, validate, store; BadRequest/LayerLimitError are 4xx."""
        data = validate.parse_json(body)
        if path == "layer":
            self.layers.layer_event(**validate.layer_event(data))
        elif path == "inference":
            self.layers.set_inference(**validate.inference(data))
        else:
            parsed = validate.results(data)
            self.layers.set_results(parsed["model"], parsed["layers"], replace=parsed["replace"])
        self.accepted += 1


_STATE = {}


@settings(max_examples=600, deadline=None)
@given(path=st.sampled_from(["layer", "results", "inference"]),
       body=st.one_of(_BODIES.map(_encode), st.binary(max_size=200)))
def test_any_write_body_is_accepted_or_refused_with_a_reason_and_metrics_stay_parseable(path, body):
    board = _STATE.setdefault("board", _InProcess())
    try:
        board.apply(path, body)
    except validate.BadRequest as exc:
        assert 400 <= exc.status < 500 and str(exc) and "\n" not in str(exc)
    except LayerLimitError as exc:
        assert "limit" in str(exc)
    text = generate_latest(board.collector).decode()
    families = list(text_string_to_metric_families(text))
    models = {s.labels["model"] for f in families for s in f.samples if "model" in s.labels}
    assert len(models) <= 3
    for family in families:
        for sample in family.samples:
            for value in sample.labels.values():
                assert contract.LABEL_RE.match(value) and len(value) <= contract.MAX_LABEL_CHARS, value


@pytest.mark.system
def test_in_process_write_fuzz_left_clean_metrics():
    board = _STATE.get("board")
    if board is None:
        pytest.skip("runs after the write-body property test")
    assert promtool_check(generate_latest(board.collector).decode()) == ""
    print("\nwrite API in process: %d accepted bodies, metrics promtool-clean" % board.accepted)


# --- the write API and raw HTTP, against a live daemon -------------------------------------------


def _read_response(stream, head):
    """(status, headers, body) of one response from a buffered socket file; None at EOF."""
    while True:
        line = stream.readline(65537)
        if not line:
            return None
        match = re.match(rb"HTTP/1\.[01] (\d{3}) ", line)
        assert match, "not a status line: %r" % line[:100]
        headers = {}
        while True:
            h = stream.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if match.group(1) != b"100":  # an interim answer to "Expect: 100-continue"
            break
    length = int(headers.get("content-length", "0"))
    body = b"" if head else stream.read(length)
    return int(match.group(1)), headers, body


class KeepAlive:
    """One raw keep-alive connection; reconnects when the server closes it."""

    def __init__(self, port):
        self.port = port
        self.sock = self.stream = None
        self.previous = None

    def _connect(self):
        self.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.stream = self.sock.makefile("rb")

    def close(self):
        if self.sock is not None:
            self.stream.close()
            self.sock.close()
        self.sock = self.stream = None

    def request(self, method, target, headers, body):
        if self.sock is None:
            self._connect()
        lines = ["%s %s HTTP/1.1" % (method, target), "Host: 127.0.0.1"]
        lines += ["%s: %s" % h for h in headers]
        lines.append("Content-Length: %d" % len(body))
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        response = _read_response(self.stream, method == "HEAD")
        if response is None:
            raise AssertionError("connection closed without an answer to %s %s (after %r)"
                                 % (method, target[:80], self.previous))
        if response[1].get("connection", "").lower() == "close":
            self.close()
        self.previous = (method, target[:80], headers, body[:80], response[0], response[1])
        return response


def one_shot(port, payload, wait_s=5.0):
    """Send raw bytes on a fresh connection, half-close, read to EOF; every status code in the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may refuse and close before we finish (431, 414)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    data = b"".join(chunks)
    return [int(code) for code in re.findall(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3}) ", data)], data


@pytest.fixture(scope="module")
def live():
    with Daemon("--source", "sim", "--max-models", "3", "--max-layers", "50") as daemon:
        yield daemon
        code, log = daemon.stop()
    assert code == 0, log
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/api/v1/layer", "/api/v1/results", "/api/v1/inference"]), body=_BODIES.map(_encode))
def test_live_write_api_answers_random_json_with_2xx_or_a_one_line_4xx(live, path, body):
    conn = _STATE.get("keepalive")
    if conn is None or conn.port != live.port:
        conn = _STATE["keepalive"] = KeepAlive(live.port)
    status, headers, answer = conn.request("POST", path, [("Content-Type", "application/json")], body)
    assert status in (200, 400, 413, 422), (status, answer)
    data = json.loads(answer)
    if status != 200:
        assert data["error"] and "\n" not in data["error"] and "Traceback" not in data["error"]


_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "PROPFIND",
            "get", "G\x7fT", "BREW"]
_PATHS = ["/", "/metrics", "/healthz", "/api/v1/energy", "/api/v1/samples", "/api/v1/source", "/api/v1/layer",
          "/api/v1/status", "/api/v1/layers", "/landing.js", "/landing.css",
          "/api/v1/results", "/api/v1/", "/api", "//metrics", "/metrics/", "/%2e%2e/etc/passwd", "/../../etc/passwd",
          "*", "http://127.0.0.1/metrics", "/api/v1/layer?x=1", "/\u00e9", "/%00", "/" + "a" * 3000]
_QUERY_KEYS = ["start", "end", "since", "step", "x", "", "start[]", "%00"]


def _number(rng, now):
    return rng.choice([
        "%r" % (now - rng.uniform(0, 5)), "%r" % (now - rng.uniform(0, 1e6)), "nan", "inf", "-inf", "1e400",
        "-0", "0x10", "", "abc", "1" * 400, "%r" % rng.uniform(-1e308, -1e300), "1_000", " 5 ", "%E2%82%AC",
    ])


def _random_target(rng, now):
    path = rng.choice(_PATHS)
    if rng.random() < 0.6:
        pairs = ["%s=%s" % (rng.choice(_QUERY_KEYS), _number(rng, now)) for _ in range(rng.randrange(0, 4))]
        if rng.random() < 0.002:  # a window that ends in the future: the daemon waits for it, briefly
            pairs.append("end=%r" % (now + 0.2))
        path += ("&" if "?" in path else "?") + "&".join(pairs)
    return path.encode("utf-8").decode("latin-1")


def _random_body(rng):
    kind = rng.random()
    if kind < 0.3:
        return b""
    if kind < 0.6:
        event = {"model": rng.choice(["m%d" % rng.randrange(8), "x" * 200, "a\"b"]), "index": rng.randrange(-1, 60),
                 "layer": "L%d" % rng.randrange(80), "op": "Conv2d", "state": rng.choice(["begin", "end", "x"])}
        if rng.random() < 0.3:
            del event[rng.choice(list(event))]
        return json.dumps(event).encode()
    if kind < 0.8:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    return (rng.choice(["[", "{", '{"a":']) * rng.randrange(1, 50)).encode()


def _random_headers(rng):
    pool = [("Accept", "application/openmetrics-text;version=1.0.0"), ("Accept", "*/*"), ("Accept", "\x01\x02"),
            ("Authorization", "Bearer " + "x" * rng.randrange(0, 200)), ("Content-Type", "text/plain"),
            ("X-Forwarded-For", "127.0.0.1"), ("Expect", "100-continue"), ("Accept-Encoding", "gzip"),
            ("Cookie", "a=" + "b" * 500), ("Connection", "keep-alive"), ("Range", "bytes=0-10")]
    return [rng.choice(pool) for _ in range(rng.randrange(0, 4))]


_MALFORMED = [
    lambda rng: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))),
    lambda rng: b"GET /metrics HTTP/2.0\r\n\r\n",
    lambda rng: b"GET /metrics HTTP/1.1.1\r\n\r\n",
    lambda rng: b"GET /metrics HTTP/9\r\n\r\n",
    lambda rng: b"GET /metrics FOO/1.1\r\n\r\n",
    lambda rng: b"GET /metrics\r\n\r\n",  # HTTP/0.9
    lambda rng: b"GET\r\n\r\n",
    lambda rng: b"\r\n\r\n",
    lambda rng: b"GET /metrics HTTP/1.1\r\nHost x\r\n\r\n",
    lambda rng: b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * rng.choice([99, 101, 500]) + b"\r\n",
    lambda rng: b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * rng.choice([60000, 70000]) + b"\r\n\r\n",
    lambda rng: b"GET /" + b"a" * rng.choice([65000, 70000]) + b" HTTP/1.1\r\n\r\n",
    lambda rng: b"POST /api/v1/layer HTTP/1.1\r\nContent-Length: -5\r\n\r\n{}",
    lambda rng: b"POST /api/v1/layer HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}",
    lambda rng: b"POST /api/v1/layer HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n{}",
    lambda rng: b"POST /api/v1/layer HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"model\":",  # short body, then EOF
    lambda rng: b"POST /api/v1/layer HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
    lambda rng: b"POST /api/v1/layer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    lambda rng: b"POST /api/v1/results HTTP/1.1\r\nContent-Length: 7\r\n\r\n\xff\xfe\x00{}\x00\x00",
    lambda rng: b"GET /metrics HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\nBREW /pot HTTP/1.1\r\n\r\n",
    lambda rng: b"GET /metrics HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
    lambda rng: b"GET /metrics HTTP/1.1\r\nExpect: teapot\r\n\r\n",
    lambda rng: b"GET /\x00metrics HTTP/1.1\r\n\r\n",
    lambda rng: b"GET /metrics HTTP/1.1\r\n\x00\x01: \x02\r\n\r\n",
    lambda rng: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(rng.randrange(256) for _ in range(80)),
    lambda rng: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    lambda rng: b"GET /metrics HTTP/1.1\r\nHost: a\r\n",  # headers never end: EOF instead
    lambda rng: b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]


@pytest.mark.system
@pytest.mark.slow
def test_http_fuzz_ten_thousand_requests_no_crash_no_5xx_clean_metrics(live):
    import psutil

    rss_before = psutil.Process(live.proc.pid).memory_info().rss
    statuses = {}
    lock = threading.Lock()
    failures = []
    malformed_share = 0.3
    workers = 4
    per_worker = HTTP_REQUESTS // workers
    sent = [0] * workers

    def worker(n):
        rng = random.Random(SEED * 100 + n)
        conn = KeepAlive(live.port)
        local = {}
        try:
            for _ in range(per_worker):
                sent[n] += 1
                if rng.random() < malformed_share:
                    codes, data = one_shot(live.port, rng.choice(_MALFORMED)(rng))
                    codes = codes or [0]  # 0: closed without an HTTP answer (HTTP/0.9, empty request)
                    bad = [c for c in codes if c >= 500]
                    if bad or b"Traceback" in data:
                        failures.append(("raw", codes, data[:300]))
                else:
                    method = rng.choice(_METHODS) if rng.random() < 0.25 else rng.choice(["GET", "HEAD", "POST"])
                    target = _random_target(rng, time.monotonic())
                    status, headers, body = conn.request(method, target, _random_headers(rng), _random_body(rng))
                    codes = [status]
                    if status >= 500 or b"Traceback" in body:
                        failures.append((method, target[:120], status, body[:300]))
                for code in codes:
                    local[code] = local.get(code, 0) + 1
        except Exception as exc:  # surfaces in the assertion below with the request counts
            failures.append(("exception", repr(exc)))
        finally:
            conn.close()
            with lock:
                for code, count in local.items():
                    statuses[code] = statuses.get(code, 0) + count

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    took = time.monotonic() - started
    tried = sum(sent)
    for failure in failures[:5]:
        print("fuzz failure:", failure)
    assert not failures, failures[:5]
    assert tried >= HTTP_REQUESTS and sum(statuses.values()) >= tried, statuses
    assert live.proc.poll() is None, "the daemon died"
    assert live.get("/healthz")[0] == 200
    assert promtool_check(live.metrics()) == ""
    rss_after = psutil.Process(live.proc.pid).memory_info().rss
    print("\nHTTP fuzz (seed %d): %d requests in %.1f s (%d workers, %.0f%% malformed on fresh sockets); "
          "status counts (0: closed without a status line, 100: interim) %s; RSS %.1f -> %.1f MB; "
          "/metrics promtool-clean"
          % (SEED, tried, took, workers, malformed_share * 100, dict(sorted(statuses.items())),
             rss_before / 2**20, rss_after / 2**20))


# --- cardinality bound and active-layer expiry, through the live daemon -----------------------------


@pytest.mark.system
def test_layer_series_are_bounded_evicted_lru_and_stuck_layers_expire():
    models, layers, timeout = 3, 10, 0.5
    with Daemon("--source", "sim", "--max-models", str(models), "--max-layers", str(layers),
                "--active-layer-timeout", str(timeout)) as daemon:
        for m in range(6):
            name = "net%d" % m
            for i in range(layers):
                event = {"model": name, "index": i, "layer": "L%d" % i, "op": "Conv2d"}
                assert daemon.post("/api/v1/layer", dict(event, state="begin"))[0] == 200
                assert daemon.post("/api/v1/layer", dict(event, state="end"))[0] == 200
            rows = [{"index": i, "layer": "L%d" % i, "op": "Conv2d", "energy_j": 1.0, "dynamic_energy_j": 0.5,
                     "duration_s": 0.1, "power_w": 10.0} for i in range(layers)]
            assert daemon.post("/api/v1/results", {"model": name, "layers": rows})[0] == 200
        text = daemon.metrics()
        kept = {s.labels["model"] for f in text_string_to_metric_families(text) for s in f.samples
                if "model" in s.labels}
        assert kept == {"net3", "net4", "net5"}, "the least recently updated models go first"
        per_model = 4 * layers + 2 * layers  # result gauges + energy/active-seconds counters
        assert daemon.value("jetson_exporter_layer_series_evicted_total") == 3 * per_model
        series = sum(1 for f in text_string_to_metric_families(text) for s in f.samples if "model" in s.labels)
        assert series == models * per_model

        status, body = daemon.post("/api/v1/layer", {"model": "net5", "index": layers, "layer": "X",
                                                     "op": "Conv2d", "state": "begin"})
        assert status == 422 and "limit" in body["error"]
        status, body = daemon.post("/api/v1/layer", {"model": "net5", "index": 0, "layer": "new_name",
                                                     "op": "Conv2d", "state": "begin"})
        assert status == 422 and "layer names" in body["error"], "new names are bounded like indices"
        assert daemon.value("jetson_exporter_layer_series_evicted_total") == 3 * per_model, "a refusal evicts nothing"

        # A profiler that dies mid-layer: nobody scrapes until well after the timeout.
        assert daemon.post("/api/v1/layer", {"model": "net5", "index": 1, "layer": "L1", "op": "Conv2d",
                                             "state": "begin"})[0] == 200
        before = daemon.value("jetson_layer_active_seconds_total", model="net5", layer="L1")
        time.sleep(3 * timeout)
        assert daemon.value("jetson_profiler_active_layer", model="net5") is None
        charged = daemon.value("jetson_layer_active_seconds_total", model="net5", layer="L1") - before
        assert charged == pytest.approx(timeout, abs=0.05), "charged only up to the expiry, not until the scrape"
        assert promtool_check(daemon.metrics()) == ""
    print("\ncardinality: 6 models x %d layers pushed, %d kept, %d series evicted; stuck layer charged %.3f s "
          "of a %.1f s timeout" % (layers, models, 3 * per_model, charged, timeout))
