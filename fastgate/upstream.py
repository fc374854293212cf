"""Upstream side: keep-alive connection pools and one exchange at a time per connection.

An `UpstreamConnection` writes a head the pipeline serialized, streams the request body,
and hands the parsed response (`http1.ResponseReader`) to an `Exchange` sink as it arrives. A connection that
saw anything odd (malformed answer, early close, timeout, an aborted exchange) is never
reused: a desynchronised upstream connection is how smuggled responses reach other callers.
"""
from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Protocol

from fastgate.http1 import END, ResponseError, ResponseHead, ResponseReader


class UpstreamError(Exception):
    """The upstream failed; `status` is 502 (unavailable/malformed) or 504 (timed out)."""

    def __init__(self, status: int, reason: str, body: dict | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.body = body  # the answer the caller gets, when it is not the plain 502/504


class Exchange(Protocol):
    """What the pipeline implements to receive one upstream answer."""

    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_data(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...
    def on_upstream_error(self, error: UpstreamError) -> None: ...
    def flush(self) -> None: ...
    def pause_request_body(self) -> None: ...
    def resume_request_body(self) -> None: ...


class Watchdog:
    """One timer per connection; moving the deadline is an attribute write, not a re-arm."""

    __slots__ = ("_loop", "_handle", "_deadline", "_period", "_on_expire")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expire) -> None:
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._period = 0.0
        self._on_expire = on_expire

    def arm(self, seconds: float) -> None:
        self._period = seconds
        self._deadline = deadline = self._loop.time() + seconds
        if self._handle is None or self._handle.when() > deadline:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(deadline, self._fire)

    def touch(self) -> None:
        if self._deadline is not None:
            self._deadline = self._loop.time() + self._period

    def disarm(self) -> None:
        self._deadline = None

    def cancel(self) -> None:
        self._deadline = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        deadline = self._deadline
        if deadline is None:
            return
        if self._loop.time() < deadline:
            self._handle = self._loop.call_at(deadline, self._fire)
            return
        self._deadline = None
        self._on_expire()


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("pool", "transport", "exchange", "parser", "method", "reusable", "closed",
                 "watchdog", "timeout", "head_seen", "_got_bytes", "_counted")

    def __init__(self, pool: "UpstreamPool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.parser: ResponseReader | None = None
        self.method = b"GET"
        self.reusable = False
        self.closed = False
        self.head_seen = False
        self._got_bytes = False
        self._counted = True
        self.timeout = pool.timeout
        self.watchdog = Watchdog(pool.loop, self._on_timeout)

    # -- asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # bytes nobody asked for: the connection is out of step
            self._fail(UpstreamError(502, "unsolicited data from upstream"))
            return
        self._got_bytes = True
        self.watchdog.touch()
        parser.feed(data)
        self._drain_events()

    def eof_received(self):
        if self.parser is not None:
            self.parser.feed_eof()
            self._drain_events()
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.watchdog.cancel()
        self.pool._forget(self)
        if self.exchange is not None:
            self._fail(UpstreamError(502, "upstream closed the connection"))

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.pause_request_body()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.resume_request_body()

    # -- exchange
    def start(self, exchange: Exchange, method: bytes, data: bytes) -> None:
        """Begin one request: `data` is the serialized head plus whatever body is already here."""
        self.exchange = exchange
        self.method = method
        self.parser = ResponseReader(method)
        self.reusable = False
        self.head_seen = False
        self._got_bytes = False
        self.watchdog.arm(self.timeout)
        self.transport.write(data)

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def _drain_events(self) -> None:
        try:
            self._next_events()
        except UpstreamError as exc:
            self._fail(exc)
        except Exception as exc:  # a stage failed on this answer (e.g. it could not be scanned): fail closed
            self._fail(UpstreamError(502, f"response could not be processed: {exc}"))

    def _next_events(self) -> None:
        parser = self.parser
        while self.exchange is not None:
            try:
                event = parser.next_event()
            except ResponseError as exc:  # malformed, or CL with TE, or a 101: never guess the framing
                self._fail(UpstreamError(502, str(exc)))
                return
            kind = type(event)
            if kind is bytes:
                self.exchange.on_response_data(event)
            elif kind is ResponseHead:
                self.head_seen = True
                self.exchange.on_response_head(event)
            elif event is END:
                exchange = self.exchange
                self.exchange = None
                self.watchdog.disarm()
                self.reusable = parser.reusable
                self.parser = None
                exchange.on_response_end()
                return
            else:  # NEED_DATA: what arrived goes out now, streams must not stall
                self.exchange.flush()
                return

    def _on_timeout(self) -> None:
        self._fail(UpstreamError(504, "upstream timed out"))

    def _fail(self, error: UpstreamError) -> None:
        exchange = self.exchange
        self.exchange = None
        self.parser = None
        self.reusable = False
        self.abort()
        if exchange is not None:
            exchange.on_upstream_error(error)

    def abort(self) -> None:
        """Drop the connection now; used when the exchange is abandoned half-way."""
        self.exchange = None
        self.reusable = False
        self.watchdog.cancel()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
        self.pool._forget(self)

    @property
    def fresh(self) -> bool:
        """No byte of an answer was seen: a reused connection that died may be retried."""
        return not self._got_bytes


class UpstreamPool:
    """Idle keep-alive connections to one upstream, LIFO so warm connections stay warm."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, host: str, port: int, *,
                 tls: bool = False, tls_verify: bool = True, max_connections: int = 256,
                 connect_timeout: float = 5.0, timeout: float = 30.0) -> None:
        self.loop = loop
        self.name = name
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.idle: list[UpstreamConnection] = []
        self.open = 0
        self._waiters: deque[asyncio.Future] = deque()
        self.ssl: ssl.SSLContext | None = None
        if tls:
            self.ssl = ssl.create_default_context()
            if not tls_verify:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def acquire(self) -> UpstreamConnection:
        conn = self.take_idle()
        if conn is not None:
            return conn
        deadline = self.loop.time() + self.connect_timeout
        while self.open >= self.max_connections:
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                conn = await asyncio.wait_for(waiter, max(0.0, deadline - self.loop.time()))
            except asyncio.TimeoutError:
                raise UpstreamError(504, "no upstream connection free in time") from None
            if conn is not None and not conn.closed:
                return conn
        self.open += 1
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port,
                                            ssl=self.ssl),
                self.connect_timeout)
        except asyncio.TimeoutError:
            self.open -= 1
            raise UpstreamError(504, "upstream connect timed out") from None
        except OSError as exc:
            self.open -= 1
            raise UpstreamError(502, f"upstream connect failed: {exc.strerror or exc}") from None
        except BaseException:
            self.open -= 1
            raise
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if not conn.reusable or conn.closed:
            conn.abort()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    def _forget(self, conn: UpstreamConnection) -> None:
        if conn._counted:
            conn._counted = False
            self.open -= 1
            if conn in self.idle:
                self.idle.remove(conn)
            while self._waiters:  # a slot opened: let one waiter connect
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

    def close(self) -> None:
        for conn in list(self.idle):
            conn.abort()
        self.idle.clear()
