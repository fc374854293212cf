"""Prometheus metrics and health checks, served on `admin.http`: /metrics, /healthz, /readyz.

- One hook per finished call (`Metrics.observe_call`, called where the access line is written, so
  one access line is one count): a counter by function, decision, status class and error kind, and
  histograms of the latency the gate added and of the upstream's. Label children are cached per
  label tuple, so a call pays for the value updates only (bench/test_micro_metrics.py).
- Labels are bounded: function names come from the config, decisions and status classes are small
  fixed sets, error kinds are the contract's codes (anything else is `other`). Nothing a caller
  sends (paths, subjects, request ids, headers, keys) ever becomes a label.
- With `--workers N` counts must add up: prometheus_client's multiprocess mode. The supervisor makes
  a private directory before fork (`multiprocess_dir`), each worker writes its own mmap files there,
  a scrape merges them (`MultiProcessCollector`), a reaped worker's live gauges are dropped
  (`process_exited`; its counts stay, counters never go back) and the directory goes on exit.
  A single worker keeps plain in-process values.
- What is read at scrape time (readiness, approvals pending, store) comes from the scraping
  process: the single worker or worker 0, which also serves the admin socket; the store is shared.
- The listener is small and strict: h11, one request per connection, a head of at most 8 KiB
  answered within 5 s or the connection is closed, GET only.
"""
from __future__ import annotations

import asyncio
import http
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import h11
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Gate time is ~0.2 ms of CPU plus a durable commit (~0.6 ms); upstreams are the caller's business.
GATEWAY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# The contract's error codes (HTTP bodies, MCP in-band kinds, protocol errors): the only values the
# `error` label takes besides "" (no error) and "other" (free text, e.g. a client that went away).
ERROR_KINDS = frozenset({
    "bad_request", "unauthenticated", "unauthorized", "denied", "unknown_function", "unknown_tool",
    "unknown_session", "not_found", "method_not_allowed", "unavailable", "internal", "invalid_json",
    "pending", "approval_pending", "approval_denied", "approval_expired", "too_many_pending",
    "bad_request_state", "upstream_unavailable", "upstream_timeout", "unsupported_transport",
    "request_timeout", "payload_too_large", "uri_too_long", "expectation_failed", "headers_too_large",
    "not_implemented", "http_version_not_supported",
})
_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def error_kind(error: str | None) -> str:
    """The `error` label for a call's error: a contract code, "" or "other"; never free text."""
    if not error:
        return ""
    return error if error in ERROR_KINDS else "other"


def status_class(status: int) -> str:
    """`2xx`..`5xx`, or `none` when nothing was answered (the client went away first)."""
    return _STATUS_CLASS.get(status // 100, "none")


# -- multiprocess mode (the supervisor's side) ------------------------------------------------------

def multiprocess_dir() -> str:
    """A private directory for the workers' metric files, exported to the workers through the
    environment (set before fork). Never an inherited one: stale files would add to the counts."""
    path = tempfile.mkdtemp(prefix="fastgate-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def process_exited(pid: int, path: str) -> None:
    """A reaped worker: its live gauges (open connections) go; its counters stay in the sum."""
    mark_process_dead(pid, path)


def remove_multiprocess_dir(path: str) -> None:
    if os.environ.get(MULTIPROC_ENV) == path:
        del os.environ[MULTIPROC_ENV]
    shutil.rmtree(path, ignore_errors=True)


_VALUE_CLASSES: dict[tuple[int, str], Any] = {}


def _value_class(path: str | None) -> Any:
    """prometheus_client chooses its value class from the environment when it is first imported;
    here that is before the supervisor decides, so choose explicitly. One multiprocess class per
    process and directory: two would keep two write positions in the same mmap file."""
    if path is None:
        return values.MutexValue
    key = (os.getpid(), path)
    cls = _VALUE_CLASSES.get(key)
    if cls is None:
        os.environ[MULTIPROC_ENV] = path  # the value class finds its directory there
        cls = _VALUE_CLASSES[key] = values.MultiProcessValue()
    return cls


# -- the metrics ------------------------------------------------------------------------------------

class Metrics:
    """This process's metric objects, and the registry a scrape renders (merged across workers
    when `multiprocess_dir` is given)."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        values.ValueClass = _value_class(multiprocess_dir)
        disable_created_metrics()  # as in multiprocess mode: one shape of output, and a quicker scrape
        self.multiprocess_dir = multiprocess_dir
        own = None if multiprocess_dir else CollectorRegistry()
        self.calls = Counter(
            "fastgate_calls", "Calls answered (one per access-log line), by function, policy decision, "
            "status class and error kind", ("function", "decision", "status_class", "error"), registry=own)
        self.gateway_seconds = Histogram(
            "fastgate_gateway_duration_seconds", "Time the gate added to a call: total minus the upstream's "
            "time to its answer head and any wait for approval", ("function",), buckets=GATEWAY_BUCKETS,
            registry=own)
        self.upstream_seconds = Histogram(
            "fastgate_upstream_duration_seconds", "Time from forwarding a call to the upstream's answer head",
            ("function",), buckets=UPSTREAM_BUCKETS, registry=own)
        self.connections = Gauge("fastgate_open_connections", "Client connections open now",
                                 multiprocess_mode="livesum", registry=own)
        if multiprocess_dir:
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=multiprocess_dir)
        else:
            assert own is not None
            self.registry = own
        self._series: dict[tuple, tuple[Any, Any, Any]] = {}

    def observe_call(self, function: str | None, decision: str | None, status: int, error: str | None,
                     gateway_ms: float | None, upstream_ms: float | None) -> None:
        """Once per finished call (the hot path: a few dict lookups and the value updates).

        `error` is the gate's refusal code or the call's error text (mapped by `error_kind`);
        `gateway_ms` None for requests that never became a call (their time is not measured)."""
        key = (function, decision, _STATUS_CLASS.get(status // 100, "none"),  # status_class, error_kind
               (error if error in ERROR_KINDS else "other") if error else "")  # inlined: ~0.1 µs less
        series = self._series.get(key)
        if series is None:
            series = self._add_series(key)
        series[0].inc()
        if gateway_ms is not None:
            series[1].observe(gateway_ms * 0.001)
        if upstream_ms is not None:
            series[2].observe(upstream_ms * 0.001)

    def _add_series(self, key: tuple) -> tuple[Any, Any, Any]:
        function, decision, klass, kind = key
        fn = function or ""
        series = (self.calls.labels(fn, decision or "", klass, kind), self.gateway_seconds.labels(fn),
                  self.upstream_seconds.labels(fn))
        self._series[key] = series
        return series

    def set_connections(self, n: int) -> None:
        self.connections.set(n)

    def serve_state(self, read: Callable[[], dict[str, Any]]) -> None:
        """In the scraping process: also expose what `read()` returns at each scrape (see StateCollector)."""
        self.registry.register(StateCollector(read))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (text format, or OpenMetrics when the scraper asks for it) and its type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class StateCollector:
    """Gauges read at scrape time, in the scraping process only. `read()` returns any of:
    ready (bool), approvals_pending (int), store_writable (bool), store_used_bytes, store_map_size_bytes."""

    _GAUGES = (
        ("ready", "fastgate_ready", "1 when /readyz answers 200"),
        ("approvals_pending", "fastgate_approvals_pending", "Open approvals, store-wide"),
        ("store_writable", "fastgate_store_writable", "1 when the record store takes appends"),
        ("store_used_bytes", "fastgate_store_used_bytes", "Bytes of the LMDB map in use"),
        ("store_map_size_bytes", "fastgate_store_map_size_bytes", "LMDB map size (store.map_size)"),
    )

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def describe(self) -> list:
        return []  # no names to reserve; keeps register() from collecting

    def collect(self):
        import fastgate
        from fastgate._core import CORES, IMPLEMENTATIONS, load

        for core in CORES:  # a core loads on first use (redact: the first redactor); load them all
            load(core)

        build = GaugeMetricFamily("fastgate_build_info", "fastgate version and Python; always 1",
                                  labels=("version", "python"))
        build.add_metric((fastgate.__version__, platform.python_version()), 1)
        yield build
        cores = GaugeMetricFamily("fastgate_core_info", "Which implementation of each hot-path core is "
                                  "loaded (compiled or the pure-Python reference); always 1",
                                  labels=("core", "implementation"))
        for name, impl in sorted(IMPLEMENTATIONS.items()):
            cores.add_metric((name, impl), 1)
        yield cores
        state = self.read()
        for key, name, doc in self._GAUGES:
            value = state.get(key)
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value))


# -- the HTTP listener --------------------------------------------------------------------------------

MAX_HEAD_BYTES = 8192
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 64
PATHS = (b"/metrics", b"/healthz", b"/readyz")
_ERRORS = {400: "bad_request", 408: "request_timeout", 431: "headers_too_large", 505: "http_version_not_supported"}


def _json(status: int, body: dict, extra: tuple[tuple[bytes, bytes], ...] = ()) -> tuple[int, list, bytes]:
    return status, [(b"content-type", b"application/json"), *extra], orjson.dumps(body)


class AdminHttp:
    """The `admin.http` endpoints. `answer()` is the sans-IO part; `start(sock)` serves it.

    `not_ready()` returns None when the gateway takes calls, or why not (starting, draining, store)."""

    def __init__(self, metrics: Metrics | None, not_ready: Callable[[], str | None], log: Any = None) -> None:
        self.metrics = metrics
        self.not_ready = not_ready
        self.log = log
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[_HttpConnection] = set()

    def answer(self, method: bytes, target: bytes, accept: str = "") -> tuple[int, list, bytes]:
        path = target.split(b"?", 1)[0]
        if path not in PATHS:
            return _json(404, {"error": "not_found"})
        if method != b"GET":
            return _json(405, {"error": "method_not_allowed"}, ((b"allow", b"GET"),))
        if path == b"/healthz":
            return _json(200, {"status": "ok"})
        if path == b"/readyz":
            reason = self.not_ready()
            if reason is None:
                return _json(200, {"status": "ready"})
            return _json(503, {"status": "not_ready", "reason": reason})
        if self.metrics is None:
            return _json(404, {"error": "not_found"})
        try:
            body, content_type = self.metrics.render(accept)
        except Exception as exc:  # a damaged metrics file must not take the listener down
            if self.log is not None:
                self.log.error("metrics not rendered", error=f"{type(exc).__name__}: {exc}")
            return _json(500, {"error": "internal"})
        return 200, [(b"content-type", content_type.encode())], body

    async def start(self, sock) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _HttpConnection(self, loop), sock=sock, backlog=64)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.connections):
                conn.abort()
            await self.server.wait_closed()
            self.server = None


class _HttpConnection(asyncio.Protocol):
    """One request, one answer, then close. More than MAX_HEAD_BYTES received gets 431 (a GET has
    no body to read), a broken head 400, a head not complete within REQUEST_TIMEOUT 408."""

    def __init__(self, server: AdminHttp, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.done = False
        self.received = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        if len(self.server.connections) >= MAX_CONNECTIONS:
            self.done = True
            transport.abort()
            return
        self.server.connections.add(self)
        self.timer = self.loop.call_later(REQUEST_TIMEOUT, self._raw_reply, 408)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.received += len(data)
        if self.received > MAX_HEAD_BYTES:  # h11 caps only a head still incomplete; no body is read
            self._raw_reply(431)
            return
        self.conn.receive_data(data)
        self._next()

    def eof_received(self):
        if not self.done:
            self.conn.receive_data(b"")
            self._next()
        return False

    def _next(self) -> None:
        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError as exc:
            self._raw_reply(exc.error_status_hint)
            return
        if type(event) is h11.Request:
            accept = b",".join(v for n, v in event.headers if n == b"accept").decode("latin-1")
            status, headers, body = self.server.answer(event.method, event.target, accept)
            headers.append((b"content-length", b"%d" % len(body)))
            headers.append((b"connection", b"close"))
            out = self.conn.send(h11.Response(status_code=status, headers=headers,
                                              reason=http.HTTPStatus(status).phrase.encode()))
            if event.method != b"HEAD":
                out += self.conn.send(h11.Data(data=body))
            out += self.conn.send(h11.EndOfMessage())
            self._finish(out)
        elif type(event) is h11.ConnectionClosed:
            self._finish(b"")

    def _raw_reply(self, status: int) -> None:
        if self.done:
            return
        body = orjson.dumps({"error": _ERRORS.get(status, "bad_request")})
        self._finish(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (status, http.HTTPStatus(status).phrase.encode(),
                                                       len(body), body))

    def _finish(self, out: bytes) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        transport = self.transport
        assert transport is not None
        if out:
            transport.write(out)
        transport.close()

    def abort(self) -> None:
        self.done = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.server.connections.discard(self)
