"""HTTP/1.1 request reading, pure-Python reference: h11 plus the checks a gate adds on top.

h11 parses every request from a client; it is strict about framing, but not strict enough
for a gate in front of other parsers (threats.md §1), so `RequestReader` adds the checks a
proxy needs before anything is forwarded: raw-head checks h11 would normalize away
(obs-fold, repeated Content-Length), then `_validate` on the parsed head.

This module is the executable specification. `http1.pyx` is its compiled twin and must
agree with it on every input and every split of it: same events in the same order, same
`HTTPError` (status, error and detail), same `buffered`/`in_request` between events,
provided `next_event()` is drained after every `feed()` (the listener always does).
After an `HTTPError` the reader is spent: every later `next_event()` raises it again.

The shared types (`HTTPError`, `RequestHead`, `Limits`, the event sentinels) live here so
that both twins and `fastgate.http1` use the very same objects.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import h11

# ---------------------------------------------------------------------------------------------
# Errors


class HTTPError(Exception):
    """A request the gate refuses before it reaches any stage; `status` is what the client gets."""

    def __init__(self, status: int, error: str, detail: str = "") -> None:
        super().__init__(detail or error)
        self.status = status
        self.error = error
        self.detail = detail


def bad_request(detail: str) -> HTTPError:
    return HTTPError(400, "bad_request", detail)


# ---------------------------------------------------------------------------------------------
# Events and heads

NEED_DATA = h11.NEED_DATA
PAUSED = h11.PAUSED
END = object()
CLOSED = object()

# RFC 9110 §7.6.1 hop-by-hop fields, plus the ones proxies historically treat that way.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"http2-settings",
})
# Method overrides let an upstream act on a method the policy never saw.
METHOD_OVERRIDE = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_UPPER_TOKEN = re.compile(rb"[A-Z]+\Z")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")


@dataclass(slots=True)
class RequestHead:
    """A validated request head. Header names are lowercase bytes; values are as received."""

    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    host: bytes
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    connection_tokens: frozenset[bytes] = field(default_factory=frozenset)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


@dataclass(slots=True)
class Limits:
    max_header_bytes: int = 16 * 1024
    max_header_count: int = 100
    max_request_line_bytes: int = 8 * 1024
    max_body_bytes: int = 1024 * 1024


# Refusal texts shared by both twins (the compiled one imports them from here).
TOO_LONG_LINE = "request line exceeds limits.max_request_line_bytes"
TOO_LARGE_HEAD = "request head exceeds limits.max_header_bytes"
TOO_LARGE_BODY = "request body exceeds limits.max_body_bytes"
TOO_LARGE_LENGTH = "Content-Length exceeds limits.max_body_bytes"


def too_large_body() -> HTTPError:
    return HTTPError(413, "payload_too_large", TOO_LARGE_BODY)


def buffer_too_long(pending: bytes, max_request_line_bytes: int) -> HTTPError:
    """h11's "receive buffer too long": a line that never ended is 414, anything else 431."""
    if b"\n" not in pending[: max_request_line_bytes + 2]:
        return HTTPError(414, "uri_too_long", TOO_LONG_LINE)
    return HTTPError(431, "headers_too_large", TOO_LARGE_HEAD)


class RequestReader:
    """Turns client bytes into `RequestHead`, body chunks and end-of-message, one request at a time.

    `next_event()` returns a RequestHead, bytes (body), `END`, NEED_DATA, PAUSED (a whole
    request was read; call `next_cycle()` once its answer is sent) or CLOSED. Errors are
    `HTTPError`, and stick: the reader raises the same refusal from then on.
    """

    __slots__ = ("_conn", "_limits", "_body_seen", "_head", "_raw_head", "_head_done", "_raw_fault",
                 "_raw_body", "_error")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._conn = self._new_conn()
        self._reset()

    def _reset(self) -> None:
        self._body_seen = 0
        self._head: RequestHead | None = None
        self._raw_head = b""
        self._head_done = False
        self._raw_fault: str | None = None
        self._raw_body = 0
        self._error: HTTPError | None = None

    def _new_conn(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.max_header_bytes)

    def feed(self, data: bytes) -> None:
        if not self._head_done:
            self._scan_head(data)
        else:
            self._raw_body += len(data)
        self._conn.receive_data(data)

    def _scan_head(self, data: bytes) -> None:
        """Look at the raw head before h11 normalizes it away.

        h11 unfolds obs-fold lines and merges repeated equal Content-Length fields; a gate
        refuses both (RFC 9112 §5.2, §6.3), so they are detected on the bytes themselves.
        """
        buf = self._raw_head + data if self._raw_head else data
        end = buf.find(b"\n\r\n")
        alt = buf.find(b"\n\n")
        if end == -1 or (alt != -1 and alt < end):
            end = alt
        if end == -1:
            if len(buf) <= self._limits.max_header_bytes + 4:
                self._raw_head = buf
            return
        head = buf[:end + 1]
        self._head_done = True
        self._raw_head = b""
        self._raw_body = len(buf) - len(head)
        if b"\n " in head or b"\n\t" in head:
            self._raw_fault = "obsolete line folding in the request head"
            return
        lower = head.lower()
        at = lower.find(b"\ncontent-length:")
        if at != -1:
            if lower.find(b"\ncontent-length:", at + 1) != -1:
                self._raw_fault = "repeated Content-Length"
            else:
                eol = head.find(b"\n", at + 1)
                if not _DIGITS.match(head[at + 16:eol].strip()):
                    self._raw_fault = "bad Content-Length"

    def feed_eof(self) -> None:
        try:
            self._conn.receive_data(b"")
        except h11.RemoteProtocolError:
            pass

    @property
    def in_request(self) -> bool:
        """True between the first byte of a head and the end of its body."""
        return self._conn.their_state is h11.SEND_BODY or (
            self._conn.their_state is h11.IDLE and bool(self._conn.trailing_data[0]))

    @property
    def buffered(self) -> int:
        return len(self._conn.trailing_data[0])

    def next_cycle(self) -> None:
        """Start reading the next pipelined request from what is already buffered."""
        data, closed = self._conn.trailing_data
        self._conn = self._new_conn()
        self._reset()
        if data:
            self.feed(bytes(data))
        if closed:
            self._conn.receive_data(b"")

    def next_event(self):
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except HTTPError as exc:
            self._error = exc
            raise

    def _next_event(self):
        conn = self._conn
        if self._raw_fault is not None:
            raise bad_request(self._raw_fault)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise self._translate(exc) from None
        kind = type(event)
        if kind is h11.Data:
            self._body_seen += len(event.data)
            limit = self._limits.max_body_bytes
            # Chunk framing may not dwarf the data it carries (CVE-2024-22019 class).
            if self._body_seen > limit or self._raw_body > 2 * limit + 65536:
                raise too_large_body()
            return bytes(event.data)
        if kind is h11.EndOfMessage:
            return END  # trailers (event.headers) are never forwarded: RFC 9110 §6.5.1
        if kind is h11.Request:
            head = self._head = self._validate(event)
            return head
        if kind is h11.ConnectionClosed:
            return CLOSED
        return event  # NEED_DATA / PAUSED

    def _translate(self, exc: h11.RemoteProtocolError) -> HTTPError:
        status = exc.error_status_hint
        if status == 431:
            return buffer_too_long(self._conn.trailing_data[0], self._limits.max_request_line_bytes)
        if status == 501:
            return HTTPError(501, "not_implemented", str(exc))
        return bad_request(str(exc))

    def _validate(self, event: h11.Request) -> RequestHead:
        limits = self._limits
        method, target, version = event.method, event.target, event.http_version
        if version not in (b"1.1", b"1.0"):
            raise HTTPError(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served")
        if len(target) > limits.max_request_line_bytes:
            raise HTTPError(414, "uri_too_long", TOO_LONG_LINE)
        # RFC 9110 §9.1: methods are case-sensitive; `get` is not GET.
        if not _UPPER_TOKEN.match(method):
            raise bad_request("method must be an upper-case token")
        if method == b"CONNECT":
            raise bad_request("CONNECT is not served")
        headers = list(event.headers)
        if len(headers) > limits.max_header_count:
            raise HTTPError(431, "headers_too_large", "too many header fields")
        size = len(method) + len(target) + 11
        host = b""
        n_host = n_cl = n_te = 0
        content_length: int | None = None
        te = b""
        connection = b""
        expect = b""
        for name, value in headers:
            size += len(name) + len(value) + 4
            if b"_" in name:
                raise bad_request("header names with '_' are refused (they alias '-' upstream)")
            if _CTL.search(value):
                raise bad_request("control character in a header value")
            if name == b"host":
                n_host += 1
                host = value
            elif name == b"content-length":
                n_cl += 1
                if not _DIGITS.match(value):
                    raise bad_request("bad Content-Length")
                content_length = int(value)
            elif name == b"transfer-encoding":
                n_te += 1
                te = value
            elif name == b"connection":
                connection = connection + b"," + value if connection else value
            elif name == b"expect":
                expect = value
            elif name in METHOD_OVERRIDE:
                raise bad_request("method override headers are refused")
        if size > limits.max_header_bytes:
            raise HTTPError(431, "headers_too_large", TOO_LARGE_HEAD)
        if content_length is not None and content_length > limits.max_body_bytes:
            raise HTTPError(413, "payload_too_large", TOO_LARGE_LENGTH)
        chunked = False
        if n_te:
            # RFC 9112 §6.1: TE with CL is a desync vector; TE on HTTP/1.0 is not framing we trust.
            if n_cl:
                raise bad_request("both Transfer-Encoding and Content-Length")
            if version == b"1.0":
                raise bad_request("Transfer-Encoding on HTTP/1.0")
            if n_te > 1 or te.strip().lower() != b"chunked":
                raise HTTPError(501, "not_implemented", "only Transfer-Encoding: chunked is supported")
            chunked = True
        if n_host > 1:
            raise bad_request("multiple Host headers")
        if version == b"1.1" and not n_host:
            raise bad_request("missing Host header")
        tokens = frozenset(t.strip().lower() for t in connection.split(b",")) if connection else frozenset()
        if version == b"1.1":
            keep_alive = b"close" not in tokens
        else:
            keep_alive = False  # HTTP/1.0 keep-alive is not offered: one request per connection
        expect_continue = False
        if expect:
            if expect.lower() != b"100-continue":
                raise HTTPError(417, "expectation_failed", "only Expect: 100-continue is supported")
            expect_continue = version == b"1.1"
        if target[:1] != b"/":
            target = origin_form(target, host)
        return RequestHead(method, target, version, headers, host, content_length, chunked,
                           keep_alive, expect_continue, tokens)


def origin_form(target: bytes, host: bytes) -> bytes:
    """RFC 9112 §3.2.2: accept absolute-form only for the Host the client named."""
    if target == b"*":
        raise bad_request("asterisk-form is not served")
    lower = target.lower()
    for scheme in (b"http://", b"https://"):
        if lower.startswith(scheme):
            rest = target[len(scheme):]
            cut = len(rest)
            for sep in (b"/", b"?"):
                i = rest.find(sep)
                if i != -1 and i < cut:
                    cut = i
            authority, path = rest[:cut], rest[cut:]
            if not host or authority.lower() != host.lower():
                raise bad_request("absolute-form target for another host")
            if not path.startswith(b"/"):
                path = b"/" + path
            return path
    raise bad_request("request target must be origin-form")


# ---------------------------------------------------------------------------------------------
# Response side (upstream -> gate)


class ResponseError(ValueError):
    """An upstream answer whose framing we would have to guess: 502 at the caller, connection dropped."""


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    content_length: int | None
    has_body: bool


_GET = h11.Request(method="GET", target="/", headers=[("host", "upstream")])
_HEAD = h11.Request(method="HEAD", target="/", headers=[("host", "upstream")])


class ResponseReader:
    """Reads the answer to one request of `method` (HEAD has no body) from an upstream.

    `next_event()` returns a `ResponseHead`, bytes (body), `END`, NEED_DATA, and PAUSED once
    the answer is complete; 1xx answers are skipped (101 is refused: Upgrade is never
    forwarded). Errors are `ResponseError`, and stick. After END, `reusable` says whether the
    connection may carry another request: a keep-alive answer, framed by its length or by
    chunks, with nothing after it and no EOF seen (RFC 9112 §9.3).
    """

    __slots__ = ("_conn", "_method", "_done", "_error", "reusable")

    def __init__(self, method: bytes) -> None:
        # The request itself was written by the gate; h11 only needs to know its method.
        conn = self._conn = h11.Connection(h11.CLIENT)
        conn.send(_HEAD if method == b"HEAD" else _GET)
        conn.send(h11.EndOfMessage())
        self._method = method
        self._done = False
        self._error: ResponseError | None = None
        self.reusable = False

    def feed(self, data: bytes) -> None:
        self._conn.receive_data(data)

    def feed_eof(self) -> None:
        self._conn.receive_data(b"")

    def next_event(self):
        if self._error is not None:
            raise self._error
        if self._done:
            return PAUSED
        try:
            return self._next_event()
        except ResponseError as exc:
            self._error = exc
            raise

    def _next_event(self):
        conn = self._conn
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ResponseError(f"malformed upstream response: {exc}") from None
            kind = type(event)
            if kind is h11.Data:
                return bytes(event.data)
            if kind is h11.Response:
                return self._validate(event)
            if kind is h11.EndOfMessage:
                self._done = True
                data, closed = conn.trailing_data
                self.reusable = (conn.their_state is h11.DONE and conn.our_state is h11.DONE
                                 and not data and not closed)
                return END  # trailers are never forwarded: RFC 9110 §6.5.1
            if kind is h11.InformationalResponse:
                continue  # 100 Continue toward us; 101 cannot happen: Upgrade is never forwarded
            if kind is h11.ConnectionClosed:
                raise ResponseError("upstream closed the connection")
            return event  # NEED_DATA

    def _validate(self, event: h11.Response) -> ResponseHead:
        n_cl = n_te = 0
        content_length = None
        for name, value in event.headers:
            if name == b"content-length":
                n_cl += 1
                content_length = int(value)
            elif name == b"transfer-encoding":
                n_te += 1
        if n_cl and n_te:
            raise ResponseError("upstream sent both Content-Length and Transfer-Encoding")
        status = event.status_code
        has_body = not (self._method == b"HEAD" or status in (204, 304) or 100 <= status < 200)
        return ResponseHead(status, bytes(event.reason), list(event.headers), content_length, has_body)
