"""One call, from a validated request head to a finished answer.

Stages run in order: resolve (path normalization + catalog), decide (policy), forward
(credential injection, upstream exchange, streamed answer). A stage refuses by raising
`Refusal` with the contract's answer; nothing is forwarded after a refusal.

`Tables` is the compiled form of one config. Reload builds new tables and swaps one
reference; a call keeps the tables it started with.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from fastgate import http1
from fastgate.catalog import Catalog, PathError, normalize_target
from fastgate.http1 import HOP_BY_HOP, CONTINUE_100, LAST_CHUNK, RequestHead, ResponseHead
from fastgate.policy import Policy
from fastgate.upstream import UpstreamConnection, UpstreamError, UpstreamPool

if TYPE_CHECKING:
    from fastgate.listener import ClientConnection

# Headers a client may not pass through: credentials (the upstream gets the gate's own),
# identity and routing claims the upstream might trust, and framing we re-derive.
_ALWAYS_DROP = HOP_BY_HOP | frozenset({
    b"host", b"content-length", b"expect", b"authorization", b"cookie", b"x-api-key",
    b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port",
    b"x-forwarded-prefix", b"x-forwarded-server", b"forwarded", b"x-real-ip", b"x-client-ip",
    b"x-original-url", b"x-rewrite-url", b"x-original-uri", b"x-request-id",
    b"x-user", b"x-forwarded-user", b"x-remote-user", b"x-auth-request-user", b"x-forwarded-email",
})
_IDENTITY_PREFIX = b"x-fastgate-"
_RESPONSE_DROP = HOP_BY_HOP | frozenset({b"x-request-id"})
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})
_PENDING_BODY_LIMIT = 256 * 1024


class Refusal(Exception):
    """A stage's local answer: status plus the contract's JSON body."""

    def __init__(self, status: int, body: dict, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(body.get("error", ""))
        self.status = status
        self.body = body
        self.headers = headers


@dataclass(slots=True)
class UpstreamRoute:
    """How requests leave for one upstream: its pool, what to strip, what to inject."""

    pool: UpstreamPool
    base_path: bytes
    drop: frozenset[bytes]
    static: bytes            # Host line plus injected credentials, serialized once
    proto: bytes


class Tables:
    """Everything a call needs from the config, compiled once."""

    def __init__(self, config, pools: "PoolRegistry", tls: bool = False) -> None:
        self.config = config
        limits = config.limits
        self.limits = http1.Limits(
            max_header_bytes=limits.max_header_bytes, max_header_count=limits.max_header_count,
            max_request_line_bytes=limits.max_request_line_bytes, max_body_bytes=limits.max_body_bytes)
        self.header_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
        self.idle_timeout = limits.idle_timeout
        self.max_pipelined = limits.max_pipelined
        self.catalog = Catalog.from_functions(config.functions)
        self.policy = Policy.from_config(config)
        self.access_log = config.log.access
        strip = frozenset(h.lower().encode() for h in config.identity.strip_headers)
        self.routes: dict[str, UpstreamRoute] = {}
        for name, up in config.upstreams.items():
            injected = [(k.lower().encode(), v.get_secret_value().encode())
                        for k, v in up.inject_headers.items()]
            host = up.host if ":" not in up.host else f"[{up.host}]"
            default_port = 443 if up.scheme == "https" else 80
            authority = host if up.port == default_port else f"{host}:{up.port}"
            static = b"host: " + authority.encode() + b"\r\n" + http1.serialize_headers(injected)
            pool = pools.get(name, up, limits)
            self.routes[name] = UpstreamRoute(
                pool=pool, base_path=up.base_path.encode(),
                drop=_ALWAYS_DROP | strip | frozenset(n for n, _ in injected),
                static=static, proto=b"https" if tls else b"http")


class PoolRegistry:
    """Upstream pools outlive config reloads when the upstream's address is unchanged."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pools: dict[tuple, UpstreamPool] = {}

    def get(self, name: str, up, limits) -> UpstreamPool:
        timeout = up.timeout if up.timeout is not None else limits.upstream_timeout
        key = (name, up.scheme, up.host, up.port, up.tls_verify, up.max_connections,
               limits.connect_timeout, timeout)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = UpstreamPool(
                self.loop, name, up.host, up.port, tls=up.scheme == "https", tls_verify=up.tls_verify,
                max_connections=up.max_connections, connect_timeout=limits.connect_timeout,
                timeout=timeout)
        return pool


def error_body(status: int, error: str, request_id: str, **extra) -> bytes:
    body = {"error": error, "request_id": request_id}
    body.update(extra)
    return orjson.dumps(body)


class Call:
    """One request/response. Implements the upstream `Exchange` sink."""

    __slots__ = ("client", "tables", "head", "request_id", "started", "function", "decision",
                 "path", "upstream", "route", "pending", "pending_bytes", "body_done", "response_started",
                 "rechunk", "status", "bytes_out", "error", "finished", "upstream_started", "upstream_ms",
                 "out", "close_after", "attempts", "task", "_raw_body", "_query", "head_sent")

    def __init__(self, client: "ClientConnection", tables: Tables, head: RequestHead, request_id: str) -> None:
        self.client = client
        self.tables = tables
        self.head = head
        self.request_id = request_id
        self.started = time.perf_counter()
        self.function: str | None = None
        self.decision = None
        self.path = ""
        self.upstream: UpstreamConnection | None = None
        self.route: UpstreamRoute | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.body_done = not head.has_body
        self.response_started = False
        self.rechunk = False
        self.status = 0
        self.bytes_out = 0
        self.error: str | None = None
        self.finished = False
        self.upstream_started = 0.0
        self.upstream_ms = None
        self.out: list[bytes] = []
        self.close_after = not head.keep_alive
        self.attempts = 0
        self.task: asyncio.Task | None = None
        self._raw_body = head.content_length is not None
        self._query = ""
        self.head_sent = False

    # -- stages ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.task = self.client.loop.create_task(self.run())

    async def run(self) -> None:
        try:
            self.resolve()
            self.decide()
            if self.head.expect_continue and not self.body_done:
                self.client.write(CONTINUE_100)
            await self.forward()
        except Refusal as refusal:
            self.refuse(refusal)
        except UpstreamError as exc:
            self.upstream_failed(exc)
        except asyncio.CancelledError:
            self.abandon()
        except Exception as exc:  # fail closed: an internal error is a 500, never a pass-through
            self.error = f"internal: {type(exc).__name__}"
            self.client.log_exception(exc)
            self.refuse(Refusal(500, {"error": "internal"}))

    def resolve(self) -> None:
        head = self.head
        try:
            path, query = normalize_target(head.target)
        except PathError as exc:
            self.close_after = True
            raise Refusal(400, {"error": "bad_request", "detail": f"ambiguous path: {exc}"}) from None
        self.path = path
        match = self.tables.catalog.match(head.method.decode(), path)
        if match is None:
            raise Refusal(404, {"error": "unknown_function"})
        self.function = match.function
        self.route = self.tables.routes[match.upstream]
        self._query = query

    def decide(self) -> None:
        decision = self.decision = self.tables.policy.decide(self.function)
        if decision.effect != "allow":
            raise Refusal(403, {"error": "denied", "rule": decision.rule})

    async def forward(self) -> None:
        route = self.route
        while True:
            self.attempts += 1
            conn = await route.pool.acquire()
            if self.finished:  # the client went away while we connected
                route.pool.release(conn)
                return
            self.upstream = conn
            self.upstream_started = time.perf_counter()
            conn.start(self, self.head.method, self.upstream_head() + self.take_pending())
            if self.body_done and self.head.chunked:
                conn.write(LAST_CHUNK)
            if self.pending_bytes == 0:
                self.client.resume_reading_for_body()
            return

    # -- request toward the upstream --------------------------------------------------------------
    def upstream_head(self) -> bytes:
        head = self.head
        route = self.route
        drop = route.drop
        tokens = head.connection_tokens
        target = route.base_path + self.path.encode()
        if self._query:
            target += b"?" + self._query.encode()
        parts = [b"%s %s HTTP/1.1\r\n" % (head.method, target)]
        for name, value in head.headers:
            if name in drop or name in tokens or name.startswith(_IDENTITY_PREFIX):
                continue
            parts.append(b"%s: %s\r\n" % (name, value))
        parts.append(route.static)
        parts.append(b"x-forwarded-for: %s\r\nx-forwarded-proto: %s\r\nx-request-id: %s\r\n" % (
            self.client.peer_ip, route.proto, self.request_id.encode()))
        if head.host:
            parts.append(b"x-forwarded-host: %s\r\n" % head.host)
        if head.chunked:
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
        elif head.content_length is not None:
            parts.append(b"content-length: %d\r\n\r\n" % head.content_length)
        else:
            parts.append(b"\r\n")
        return b"".join(parts)

    def take_pending(self) -> bytes:
        if not self.pending:
            return b""
        data = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return data

    def on_request_data(self, data: bytes) -> None:
        if not self._raw_body:
            data = http1.chunk(data)
        if self.upstream is not None:
            self.upstream.write(data)
        else:
            self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes > _PENDING_BODY_LIMIT:
                self.client.pause_reading_for_body()

    def on_request_end(self) -> None:
        self.body_done = True
        if self.upstream is not None and self.head.chunked:
            self.upstream.write(LAST_CHUNK)

    def pause_request_body(self) -> None:
        self.client.pause_reading_for_body()

    def resume_request_body(self) -> None:
        self.client.resume_reading_for_body()

    # -- answer toward the client -----------------------------------------------------------------
    def on_response_head(self, rh: ResponseHead) -> None:
        self.upstream_ms = (time.perf_counter() - self.upstream_started) * 1000.0
        self.status = rh.status
        head = self.head
        drop = _RESPONSE_DROP
        tokens = frozenset()
        for name, value in rh.headers:
            if name == b"connection":
                tokens = tokens | frozenset(t.strip().lower() for t in value.split(b","))
        parts = [http1.status_line(rh.status, rh.reason)]
        for name, value in rh.headers:
            if name in drop or name in tokens:
                continue
            parts.append(b"%s: %s\r\n" % (name, value))
        parts.append(b"x-request-id: %s\r\n" % self.request_id.encode())
        if rh.has_body and rh.content_length is None:
            if head.version == b"1.1":
                self.rechunk = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.close_after = True  # HTTP/1.0 client: the close delimits the body
        if not self.body_done:
            self.close_after = True  # answered before the body ended: do not reuse
        if self.close_after or self.client.draining:
            self.close_after = True
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.out.append(b"".join(parts))
        self.response_started = True

    def on_response_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.out.append(http1.chunk(data) if self.rechunk else data)
        if len(self.out) > 8:
            self.flush()

    def flush(self) -> None:
        """Write what one upstream read produced in one go; the head counts as sent from here."""
        if self.out:
            self.client.write(b"".join(self.out))
            self.out.clear()
            self.head_sent = True

    def on_response_end(self) -> None:
        if self.rechunk:
            self.out.append(LAST_CHUNK)
        self.flush()
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            if self.body_done:
                self.route.pool.release(conn)
            else:
                conn.abort()
        self.finish()

    def on_upstream_error(self, error: UpstreamError) -> None:
        conn = self.upstream
        self.upstream = None
        if (conn is not None and not self.response_started and conn.fresh and self.attempts == 1
                and self.head.method in _IDEMPOTENT and not self.head.has_body):
            # A keep-alive connection the upstream closed just before our request: retry once.
            if error.status == 502 and conn.fresh:
                self.task = self.client.loop.create_task(self._retry())
                return
        self.upstream_failed(error)

    async def _retry(self) -> None:
        try:
            await self.forward()
        except UpstreamError as exc:
            self.upstream_failed(exc)
        except asyncio.CancelledError:
            self.abandon()

    def upstream_failed(self, error: UpstreamError) -> None:
        self.error = error.reason
        if self.response_started and not self.head_sent:
            self.response_started = False  # the head never left: a clean 502/504 is still possible
            self.rechunk = False
        if self.response_started:
            # The head is gone; the only honest signal left is a broken connection.
            self.out.clear()
            self.close_after = True
            self.client.abort()
            self.finish()
            return
        self.out.clear()
        code = "upstream_timeout" if error.status == 504 else "upstream_unavailable"
        self.refuse(Refusal(error.status, {"error": code}))

    def refuse(self, refusal: Refusal) -> None:
        if self.finished:
            return
        if self.response_started:
            self.client.abort()
            self.finish()
            return
        self.status = refusal.status
        body = dict(refusal.body)
        body.setdefault("request_id", self.request_id)
        payload = orjson.dumps(body)
        if not self.body_done:
            self.close_after = True
        close = self.close_after or self.client.draining
        self.close_after = close
        head = [http1.status_line(refusal.status),
                b"content-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n" % (
                    len(payload), self.request_id.encode())]
        for name, value in refusal.headers:
            head.append(b"%s: %s\r\n" % (name, value))
        if close:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if self.head.method != b"HEAD":
            head.append(payload)
        self.response_started = True
        self.head_sent = True
        self.client.write(b"".join(head))
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.abort()
        self.finish()

    def abandon(self) -> None:
        """The client is gone: drop the upstream exchange half-way, never reuse it."""
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.abort()
        if not self.finished:
            self.error = self.error or "client disconnected"
            self.close_after = True
            self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.client.call_finished(self)

    def log_record(self) -> dict:
        return {
            "request_id": self.request_id,
            "client": self.client.peer_ip.decode(),
            "method": self.head.method.decode(),
            "path": self.path or None,
            "function": self.function,
            "decision": self.decision.effect if self.decision else None,
            "rule": self.decision.rule if self.decision else None,
            "status": self.status,
            "bytes": self.bytes_out,
            "ms": round((time.perf_counter() - self.started) * 1000.0, 3),
            "upstream_ms": None if self.upstream_ms is None else round(self.upstream_ms, 3),
            "error": self.error,
        }
