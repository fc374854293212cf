"""Client side: one asyncio Protocol per connection, one call in flight at a time.

Pipelined requests wait in the parser's buffer (reading pauses) and are answered in order.
Timeouts are per state: `idle_timeout` between requests, `header_timeout` from a head's first
byte to its end, `body_timeout` between body reads. Protocol errors are answered with the
contract's status and the connection is closed: after a framing error nothing that follows
on the connection can be trusted.
"""
from __future__ import annotations

import asyncio
import sys
import time
import traceback
from typing import TYPE_CHECKING

import orjson

from fastgate import http1
from fastgate.http1 import CLOSED, END, NEED_DATA, PAUSED, HTTPError, RequestHead, RequestReader
from fastgate.ids import new_request_id
from fastgate.pipeline import Call, Refusal
from fastgate.upstream import Watchdog

if TYPE_CHECKING:
    from fastgate.metrics import Metrics

_IDLE, _HEAD, _BODY, _WAIT = range(4)


class ServerState:
    """What all connections of one worker share; `tables` is swapped on reload."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tables, log) -> None:
        self.loop = loop
        self.tables = tables
        self.log = log
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.max_connections = tables.config.limits.max_connections
        self.appender = None  # the record store's group-commit writer (fastgate.store.Appender)
        self.approvals = None  # fastgate.approvals.Approvals
        self.metrics: Metrics | None = None  # when admin.http is served

    def drain(self) -> None:
        self.draining = True
        for conn in list(self.connections):
            conn.drain()


class ClientConnection(asyncio.Protocol):
    __slots__ = ("state", "loop", "transport", "reader", "call", "phase", "watchdog", "peer_ip",
                 "closing", "reading_paused", "body_paused", "write_paused", "tables", "served", "wait_bytes")

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = state.loop
        self.tables = state.tables
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(self.tables.limits)
        self.call: Call | None = None
        self.phase = _IDLE
        self.watchdog = Watchdog(self.loop, self._on_timeout)
        self.peer_ip = b"-"
        self.closing = False
        self.reading_paused = False
        self.body_paused = False
        self.write_paused = False
        self.served = 0
        self.wait_bytes = 0

    @property
    def draining(self) -> bool:
        return self.state.draining

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = str(peer[0]).encode()
        state = self.state
        if len(state.connections) >= state.max_connections or state.draining:
            transport.abort()
            self.closing = True
            return
        state.connections.add(self)
        if state.metrics is not None:
            state.metrics.set_connections(len(state.connections))
        self.watchdog.arm(self.tables.idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.phase == _IDLE:
            self.phase = _HEAD
            self.watchdog.arm(self.tables.header_timeout)
        elif self.phase == _BODY:
            self.watchdog.touch()
        elif self.phase == _WAIT:
            # Pipelined bytes wait in the parser; past a bound, stop reading until our turn.
            self.wait_bytes += len(data)
            if self.wait_bytes > self.tables.limits.max_header_bytes * self.tables.max_pipelined:
                self._pause_reading()
        self.reader.feed(data)
        self._process()

    def eof_received(self):
        call = self.call
        if call is not None and call.holding and call.task is not None:
            call.task.cancel()  # the caller left while its call waited for reviewers: withdraw it
        self.reader.feed_eof()
        if self.call is None or not self.call.body_done:
            self._process()  # a body cut short by the close is an error now, not a timeout later
        return True  # keep our side open until the answer in flight is written

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.watchdog.cancel()
        state = self.state
        if self in state.connections:
            state.connections.discard(self)
            if state.metrics is not None:
                state.metrics.set_connections(len(state.connections))
        call = self.call
        if call is not None and not call.finished:
            if call.task is not None and not call.task.done():
                call.task.cancel()
            call.abandon()

    def pause_writing(self) -> None:
        self.write_paused = True
        call = self.call
        if call is not None and call.upstream is not None and call.upstream.transport is not None:
            call.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        call = self.call
        if call is not None and call.upstream is not None and call.upstream.transport is not None:
            call.upstream.transport.resume_reading()

    # -- reading ------------------------------------------------------------------------------
    def _process(self) -> None:
        reader = self.reader
        while not self.closing:
            try:
                event = reader.next_event()
            except HTTPError as exc:
                self._protocol_error(exc)
                return
            if type(event) is RequestHead:
                self._start_call(event)
            elif type(event) is bytes:
                if self.call is not None:
                    self.call.on_request_data(event)
            elif event is END:
                self.phase = _WAIT
                self.watchdog.disarm()
                if self.call is not None:
                    self.call.on_request_end()
            elif event is NEED_DATA:
                return
            elif event is PAUSED:  # a whole request is read; the next waits for its answer
                return
            elif event is CLOSED:
                if self.call is None:
                    self.close()
                elif not self.call.body_done:
                    call = self.call
                    call.error = "client closed mid-request"
                    if call.task is not None and not call.task.done():
                        call.task.cancel()  # it may be waiting for the rest of the body
                    call.abandon()
                return
            else:
                return

    def _start_call(self, head: RequestHead) -> None:
        request_id = new_request_id()
        call = Call(self, self.tables, head, request_id)
        self.call = call
        if head.has_body:
            self.phase = _BODY
            self.watchdog.arm(self.tables.body_timeout)
        else:
            self.phase = _WAIT
            self.watchdog.disarm()
        call.start()

    def _protocol_error(self, exc: HTTPError) -> None:
        call = self.call
        body = {"error": exc.error}
        if exc.detail:
            body["detail"] = exc.detail
        if call is not None and not call.finished:
            call.close_after = True
            call.error = exc.detail or exc.error
            if call.task is not None and not call.task.done():
                call.task.cancel()
            call.refuse(Refusal(exc.status, body))
            return
        self._answer_without_call(exc.status, body, exc.detail or exc.error)

    def _answer_without_call(self, status: int, body: dict, error: str) -> None:
        """Refuse a request that never became a call (bad head, timeout): still gets an id and a log line."""
        request_id = new_request_id()
        body["request_id"] = request_id
        payload = orjson.dumps(body)
        self.write(http1.status_line(status) + (
            b"content-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
            b"connection: close\r\n\r\n" % (len(payload), request_id.encode())) + payload)
        if self.tables.access_log:
            self.state.log.access({"request_id": request_id, "client": self.peer_ip.decode(),
                                   "method": None, "path": None, "function": None, "decision": None,
                                   "rule": None, "status": status, "bytes": 0, "ms": 0.0,
                                   "upstream_ms": None, "error": error})
        if self.state.metrics is not None:
            self.state.metrics.observe_call(None, None, status, body["error"], None, None)
        self.close()

    def _on_timeout(self) -> None:
        if self.closing:
            return
        if self.phase == _IDLE:
            self.close()
        elif self.phase in (_HEAD, _BODY):
            exc = HTTPError(408, "request_timeout", "request not received in time")
            self._protocol_error(exc)

    # -- flow control -------------------------------------------------------------------------
    def _pause_reading(self) -> None:
        if not self.reading_paused and not self.closing:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and not self.body_paused and not self.closing:
            self.reading_paused = False
            self.transport.resume_reading()

    def pause_reading_for_body(self) -> None:
        self.body_paused = True
        self._pause_reading()

    def resume_reading_for_body(self) -> None:
        if self.body_paused:
            self.body_paused = False
            self._resume_reading()

    # -- writing ------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closing:
            self.transport.write(data)

    def abort(self) -> None:
        if not self.closing:
            self.closing = True
            self.transport.abort()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.watchdog.cancel()
            self.transport.close()

    def drain(self) -> None:
        """Stop taking new requests: idle connections close now, busy ones after their answer."""
        if self.call is None and self.phase == _IDLE:
            self.close()

    def call_finished(self, call: Call) -> None:
        if self.tables.access_log:
            self.state.log.access(call.log_record())
        metrics = self.state.metrics
        if metrics is not None:  # one count per access line; the gate's time as the record has it
            up = call.upstream_ms
            metrics.observe_call(call.function, call.decision.effect if call.decision else None, call.status,
                                 call.refusal_error or call.error,
                                 (time.perf_counter() - call.started) * 1000.0 - (up or 0.0) - call.approval_wait_ms,
                                 up)
        self.served += 1
        if call is not self.call:
            return
        self.call = None
        if call.close_after or self.closing or self.state.draining or self.phase != _WAIT:
            self.close()
            return
        self.phase = _IDLE
        self.wait_bytes = 0
        self.tables = self.state.tables  # a reload applies from the next request on
        self.reader.next_cycle()
        if self.reader.buffered:
            self.phase = _HEAD
            self.watchdog.arm(self.tables.header_timeout)
        else:
            self.watchdog.arm(self.tables.idle_timeout)
        self.body_paused = False
        self._resume_reading()
        self._process()

    def log_exception(self, exc: BaseException) -> None:
        self.state.log.error("internal error in call", error="".join(
            traceback.format_exception_only(type(exc), exc)).strip())
        if self.state.log.debug_enabled:
            traceback.print_exception(exc, file=sys.stderr)


def now_ms() -> float:
    return time.perf_counter() * 1000.0
