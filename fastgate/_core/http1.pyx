# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled twin of http1_py: h11's request and response parsers plus the gate's checks, in one pass.

The reference is h11 (sans-IO, regex per line) with raw-head checks before it and `_validate`
after it. This file reproduces that whole stack as one state machine over one buffer, and
must agree with it on every input and split: events, their boundaries, `buffered`,
`in_request`, and every refusal with its status, error and detail text.

A refusal belongs to one of three layers, and the layers keep the reference's order:

1. raw checks (the reference's `_scan_head`), as soon as a whole head is buffered: obs-fold,
   repeated or malformed Content-Length. Nothing is consumed; the state stays IDLE.
2. h11: request line and header line grammar (RFC 9112 §3, §5 as h11 reads them), then
   Transfer-Encoding (501) and Host count, chunk framing, the incomplete-buffer limit, EOF.
   These put the machine in ERROR, like h11's `their_state`.
3. the gate (`_validate`, the 413 body rule): version, lengths, methods, header names and
   values, framing conflicts, Expect, target form. The state is left where h11 left it.

States follow h11's client states: IDLE, SEND_BODY, DONE, MUST_CLOSE (no keep-alive),
MIGHT_SWITCH (Upgrade/CONNECT: always PAUSED), CLOSED, ERROR. Any refusal is kept and
raised again by every later `next_event()` until `next_cycle()`.

`ResponseReader` is the same machine on the client side of h11 (status line, obs-fold
unfolded as h11 does, Content-Length lists, chunked or close-delimited bodies, 1xx skipped),
plus the Content-Length/Transfer-Encoding conflict the reference refuses.

Buffering: while nothing is pending, a fed `bytes` object is parsed in place (and a body
event that covers all of it is that very object); leftovers move into a growable buffer.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.string cimport memchr, memcmp, memcpy, memmove

import re

from fastgate._core import http1_py as _ref
from fastgate._core.http1_py import (
    CLOSED, END, NEED_DATA, PAUSED, TOO_LARGE_HEAD, TOO_LARGE_LENGTH, TOO_LONG_LINE,
    HTTPError, Limits, RequestHead, ResponseError, ResponseHead, origin_form, too_large_body,
)

__all__ = ["CLOSED", "END", "NEED_DATA", "PAUSED", "HTTPError", "Limits", "RequestHead", "RequestReader",
           "ResponseError", "ResponseHead", "ResponseReader"]

cdef enum:
    S_IDLE = 0
    S_BODY = 1
    S_DONE = 2
    S_MUST_CLOSE = 3
    S_SWITCH = 4
    S_CLOSED = 5
    S_ERROR = 6

cdef enum:
    C_SIZE = 0      # next: a chunk-size line (or the CRLF that ends the previous chunk's data)
    C_DATA = 1
    C_TRAILER = 2

# Byte classes. TCHAR: RFC 9110 §5.6.2 token. VCHAR: request-target bytes as h11 reads them.
# VALUE: 0 field-content, 1 a control byte h11 passes and the gate refuses, 2 h11 refuses
# (NUL and the whitespace that is not SP/HTAB: RFC 9110 §5.5 as h11 applies it).
cdef unsigned char TCHAR[256]
cdef unsigned char VCHAR[256]
cdef unsigned char VALUE[256]
cdef long long CHUNK_CLAMP = 1LL << 62   # 20 hex digits overflow 64 bits; no body gets near this
cdef long long LIMIT_CLAMP = 1LL << 60   # configured limits above this are the same as this

cdef Py_ssize_t _i
for _i in range(256):
    TCHAR[_i] = 0
    VCHAR[_i] = 1 if 0x21 <= _i <= 0x7e else 0
    VALUE[_i] = 1 if (_i < 0x20 and _i != 0x09) or _i == 0x7f else 0
for _i in b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
    TCHAR[_i] = 1
for _i in (0x00, 0x0a, 0x0b, 0x0c, 0x0d):
    VALUE[_i] = 2

cdef bytes B_GET = b"GET"
cdef bytes B_POST = b"POST"
cdef bytes B_V11 = b"1.1"
cdef bytes B_V10 = b"1.0"
cdef bytes B_CHUNKED = b"chunked"
cdef bytes B_CRLF = b"\r\n"
cdef frozenset EMPTY = frozenset()
cdef object _HTTPError = HTTPError
cdef object _RequestHead = RequestHead
cdef object _ResponseError = ResponseError
cdef object _ResponseHead = ResponseHead
cdef bytes B_HEAD = b"HEAD"
cdef bytes B_OK = b"OK"
cdef Py_ssize_t RESPONSE_HEAD_LIMIT = 16 * 1024   # h11's default max_incomplete_event_size

# h11's header-field grammar (h11/_abnf.py), for trailers: rare, so the regex is fine there.
_HEADER_FIELD = re.compile(
    rb"(?P<field_name>[-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*"
    rb"(?P<field_value>(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*")
_OBS_FOLD = re.compile(rb"[ \t]+")
_CL_VALUE = re.compile(rb"[0-9]+")


cdef inline unsigned char _lower(unsigned char c):
    return c + 32 if 0x41 <= c <= 0x5a else c


cdef inline bint _is_space(unsigned char c):
    # bytes.strip()'s whitespace
    return c == 0x20 or c == 0x09 or c == 0x0a or c == 0x0d or c == 0x0b or c == 0x0c


cdef inline bint _eq(const unsigned char* s, Py_ssize_t n, const char* lit, Py_ssize_t m):
    return n == m and memcmp(s, lit, <size_t>m) == 0


cdef Py_ssize_t _find_crlf(const unsigned char* s, Py_ssize_t start, Py_ssize_t n):
    """Index of the first CRLF in s[start:n], or -1."""
    cdef const unsigned char* p
    while start < n:
        p = <const unsigned char*>memchr(s + start, b'\r', <size_t>(n - start))
        if p == NULL:
            return -1
        start = p - s
        if start + 1 < n and s[start + 1] == b'\n':
            return start
        start += 1
    return -1


cdef Py_ssize_t _find_blank(const unsigned char* s, Py_ssize_t start, Py_ssize_t n, Py_ssize_t* stop):
    """Index of the first LF of the first `\\n\\r?\\n` in s[start:n] (h11's blank line), or -1.
    `stop` gets the end of the match."""
    cdef const unsigned char* p
    cdef Py_ssize_t i
    while start < n:
        p = <const unsigned char*>memchr(s + start, b'\n', <size_t>(n - start))
        if p == NULL:
            return -1
        i = p - s
        if i + 1 < n:
            if s[i + 1] == b'\n':
                stop[0] = i + 2
                return i
            if s[i + 1] == b'\r' and i + 2 < n and s[i + 2] == b'\n':
                stop[0] = i + 3
                return i
        start = i + 1
    return -1


def _trailer_fault(block):
    """h11's reading of a trailer section (obs-fold, field grammar, Content-Length and
    Transfer-Encoding rules); returns (status, detail) for the first fault, or None."""
    lines = bytearray(block).split(b"\n")
    for line in lines:
        if line.endswith(b"\r"):
            del line[len(line) - 1]
    del lines[len(lines) - 2:]
    folded = []
    last = None
    for line in lines:
        m = _OBS_FOLD.match(line)
        if m:
            if last is None:
                return 400, "continuation line at start of headers"
            last += b" "
            last += line[m.end():]
        else:
            if last is not None:
                folded.append(last)
            last = line
    if last is not None:
        folded.append(last)
    fields = []
    for line in folded:
        m = _HEADER_FIELD.fullmatch(line)
        if m is None:
            return 400, "illegal header line: {!r}".format(line)
        fields.append((m["field_name"], m["field_value"]))
    seen_length = None
    saw_te = False
    for name, value in fields:
        name = name.lower()
        if name == b"content-length":
            lengths = {length.strip() for length in value.split(b",")}
            if len(lengths) != 1:
                return 400, "conflicting Content-Length headers"
            value = lengths.pop()
            if _CL_VALUE.fullmatch(value) is None or len(value) > 20:
                return 400, "bad Content-Length"
            if seen_length is None:
                seen_length = value
            elif seen_length != value:
                return 400, "conflicting Content-Length headers"
        elif name == b"transfer-encoding":
            if saw_te:
                return 501, "multiple Transfer-Encoding headers"
            if value.lower() != b"chunked":
                return 501, "Only Transfer-Encoding: chunked is supported"
            saw_te = True
    return None


cdef class _Reader:
    """The buffer and the body readers both directions share (h11's ReceiveBuffer and its
    ContentLengthReader/ChunkedReader); subclasses read heads and name their refusals."""

    cdef object _obj                  # the bytes object _base points into, or None
    cdef unsigned char* _mem          # our buffer, when leftovers had to be kept
    cdef Py_ssize_t _cap
    cdef const unsigned char* _base
    cdef Py_ssize_t _pos, _end        # pending bytes are _base[_pos:_end]
    cdef Py_ssize_t _scan             # bytes after _pos already searched for the current delimiter
    cdef bint _closed
    cdef object _error
    cdef long long _cycle_bytes       # bytes fed since this cycle began
    cdef bint _chunked
    cdef int _chunk
    cdef int _discard                 # bytes of the CRLF after chunk data still to match
    cdef long long _remaining         # Content-Length left, or bytes left in this chunk
    cdef long long _length

    def __cinit__(self):
        self._mem = NULL
        self._cap = 0
        self._base = NULL
        self._obj = None
        self._pos = 0
        self._end = 0
        self._closed = False

    def __dealloc__(self):
        if self._mem != NULL:
            PyMem_Free(self._mem)
            self._mem = NULL

    # -- buffer -------------------------------------------------------------------------------
    def feed(self, data):
        cdef Py_ssize_t n
        if type(data) is not bytes:
            data = bytes(data)
        n = PyBytes_GET_SIZE(data)
        if n == 0:
            self._closed = True
            return
        if self._closed:
            raise RuntimeError("received close, then received more data?")
        self._cycle_bytes += n
        if self._pos == self._end:
            self._obj = data
            self._base = <const unsigned char*>PyBytes_AS_STRING(data)
            self._pos = 0
            self._end = n
            return
        self._append(<const unsigned char*>PyBytes_AS_STRING(data), n)

    cdef int _reserve(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap
        cdef unsigned char* mem
        if need <= self._cap:
            return 0
        cap = self._cap * 2
        if cap < need:
            cap = need
        if cap < 4096:
            cap = 4096
        mem = <unsigned char*>PyMem_Realloc(self._mem, <size_t>cap)
        if mem == NULL:
            raise MemoryError()
        self._mem = mem
        self._cap = cap
        return 0

    cdef int _append(self, const unsigned char* src, Py_ssize_t n) except -1:
        cdef Py_ssize_t have = self._end - self._pos
        if self._obj is not None:
            # Pending bytes live in a fed object: copy them into our buffer first.
            self._reserve(have + n)
            memcpy(self._mem, self._base + self._pos, <size_t>have)
            self._obj = None
            self._pos = 0
            self._end = have
        elif self._end + n > self._cap:
            if self._pos:
                memmove(self._mem, self._mem + self._pos, <size_t>have)
                self._pos = 0
                self._end = have
            self._reserve(have + n)
        self._base = self._mem
        memcpy(self._mem + self._end, src, <size_t>n)
        self._end += n
        return 0

    cdef inline void _consume(self, Py_ssize_t k):
        self._pos += k
        self._scan = 0
        if self._pos == self._end:
            self._obj = None
            self._base = self._mem
            self._pos = 0
            self._end = 0

    cdef object _take(self, Py_ssize_t k):
        cdef object out
        if self._obj is not None and self._pos == 0 and k == self._end:
            out = self._obj
        else:
            out = PyBytes_FromStringAndSize(<const char*>self._base + self._pos, k)
        self._consume(k)
        return out

    cdef bytes _pending(self, Py_ssize_t k):
        return PyBytes_FromStringAndSize(<const char*>self._base + self._pos, k)

    def feed_eof(self):
        self._closed = True

    @property
    def buffered(self):
        return self._end - self._pos

    # -- overridden by each direction ---------------------------------------------------------
    cdef int _h11_fail(self, int status, str detail) except -1:
        raise NotImplementedError

    cdef object _data(self, Py_ssize_t k):
        return self._take(k)

    cdef object _end_of_message(self):
        raise NotImplementedError

    # -- bodies (h11/_readers.py) -------------------------------------------------------------
    cdef object _read_length(self):
        cdef Py_ssize_t avail = self._end - self._pos
        cdef Py_ssize_t k
        if self._remaining == 0:
            return self._end_of_message()
        if avail == 0:
            return None
        k = avail if avail < self._remaining else <Py_ssize_t>self._remaining
        self._remaining -= k
        return self._data(k)

    cdef object _read_chunked(self):
        """RFC 9112 §7.1 as h11 reads it: one event per call, at most one chunk's data."""
        cdef const unsigned char* s
        cdef Py_ssize_t avail, k, at, n, i, start
        cdef long long size
        cdef unsigned char c
        cdef bint ok
        while True:
            if self._chunk == C_TRAILER:
                return self._read_trailer()
            s = self._base + self._pos
            avail = self._end - self._pos
            if self._discard:
                if avail == 0:
                    return None
                k = avail if avail < self._discard else self._discard
                if memcmp(s, (<const char*>B_CRLF) + 2 - self._discard, <size_t>k) != 0:
                    expected = B_CRLF[2 - self._discard:]
                    got = bytearray(self._pending(k))
                    self._consume(k)
                    self._h11_fail(400, "malformed chunk footer: {!r} (expected {!r})".format(got, expected))
                self._consume(k)
                self._discard -= k
                if self._discard:
                    return None
                continue
            if self._chunk == C_SIZE:
                start = self._scan - 1 if self._scan > 0 else 0
                at = _find_crlf(s, start, avail)
                if at < 0:
                    self._scan = avail
                    return None
                n = at + 2
                # chunk-size [ chunk-ext ] CRLF, as h11's regex: 1-20 hex digits, then either
                # only SP/HTAB or ';' and anything but LF. Extensions are dropped.
                i = 0
                size = 0
                while i < at:
                    c = s[i]
                    if 0x30 <= c <= 0x39:
                        c -= 0x30
                    elif 0x61 <= c <= 0x66:
                        c -= 0x57
                    elif 0x41 <= c <= 0x46:
                        c -= 0x37
                    else:
                        break
                    size = size * 16 + c if size < (CHUNK_CLAMP >> 4) else CHUNK_CLAMP
                    i += 1
                ok = 1 <= i <= 20
                if ok and i < at:
                    if s[i] == b';':
                        ok = memchr(s + i, b'\n', <size_t>(at - i)) == NULL
                    else:
                        while i < at and (s[i] == b' ' or s[i] == b'\t'):
                            i += 1
                        ok = i == at
                if not ok:
                    line = bytearray(self._pending(n))
                    self._consume(n)
                    self._h11_fail(400, "illegal chunk header: {!r}".format(line))
                self._consume(n)
                if size == 0:
                    self._chunk = C_TRAILER
                    continue
                self._remaining = size
                self._chunk = C_DATA
                s = self._base + self._pos
                avail = self._end - self._pos
            if avail == 0:
                return None
            k = avail if avail < self._remaining else <Py_ssize_t>self._remaining
            self._remaining -= k
            if self._remaining == 0:
                self._discard = 2
                self._chunk = C_SIZE
            return self._data(k)

    cdef object _read_trailer(self):
        cdef const unsigned char* s = self._base + self._pos
        cdef Py_ssize_t avail = self._end - self._pos
        cdef Py_ssize_t at, stop = 0
        if avail >= 1 and s[0] == b'\n':
            self._consume(1)
            return self._end_of_message()
        if avail >= 2 and s[0] == b'\r' and s[1] == b'\n':
            self._consume(2)
            return self._end_of_message()
        at = _find_blank(s, self._scan, avail, &stop)
        if at < 0:
            self._scan = avail - 2 if avail > 2 else 0
            return None
        block = self._pending(stop)
        self._consume(stop)
        fault = _trailer_fault(block)
        if fault is not None:
            self._h11_fail(fault[0], fault[1])
        return self._end_of_message()


cdef class RequestReader(_Reader):
    """Turns client bytes into `RequestHead`, body chunks and end-of-message, one request at a time.

    `next_event()` returns a RequestHead, bytes (body), `END`, NEED_DATA, PAUSED (a whole
    request was read; call `next_cycle()` once its answer is sent) or CLOSED. Errors are
    `HTTPError`, and stick until `next_cycle()`.
    """

    cdef int _state
    cdef object _limits
    cdef Py_ssize_t _max_head, _max_count, _max_line
    cdef long long _max_body, _max_raw_body
    cdef long long _head_len          # raw head length (up to the first LF of the blank line)
    cdef long long _body_seen
    cdef bint _keep_alive, _switch

    def __init__(self, limits):
        self._limits = limits
        self._max_head = min(int(limits.max_header_bytes), LIMIT_CLAMP)
        self._max_count = min(int(limits.max_header_count), LIMIT_CLAMP)
        self._max_line = min(int(limits.max_request_line_bytes), LIMIT_CLAMP)
        self._max_body = min(int(limits.max_body_bytes), LIMIT_CLAMP)
        self._max_raw_body = 2 * self._max_body + 65536
        self._reset()

    cdef void _reset(self):
        self._state = S_IDLE
        self._error = None
        self._scan = 0
        self._cycle_bytes = self._end - self._pos
        self._head_len = 0
        self._body_seen = 0
        self._chunked = False
        self._chunk = C_SIZE
        self._discard = 0
        self._remaining = 0
        self._length = 0
        self._keep_alive = True
        self._switch = False

    # -- state --------------------------------------------------------------------------------
    @property
    def in_request(self):
        """True between the first byte of a head and the end of its body."""
        return self._state == S_BODY or (self._state == S_IDLE and self._end > self._pos)

    def next_cycle(self):
        """Start reading the next pipelined request from what is already buffered."""
        self._reset()
        if self._pos == self._end and self._cap > 1 << 20:
            PyMem_Free(self._mem)     # a large body went through: do not keep its buffer
            self._mem = NULL
            self._cap = 0
            self._base = NULL
            self._obj = None
            self._pos = self._end = 0

    def next_event(self):
        if self._error is not None:
            raise self._error
        return self._next()

    # -- refusals -----------------------------------------------------------------------------
    cdef int _fail(self, int status, str error, str detail) except -1:
        """A refusal from the gate's own checks: h11's state is untouched."""
        exc = _HTTPError(status, error, detail)
        self._error = exc
        raise exc

    cdef int _h11_fail(self, int status, str detail) except -1:
        """A refusal h11 would raise (RemoteProtocolError), translated the reference's way."""
        self._state = S_ERROR
        if status == 501:
            return self._fail(501, "not_implemented", detail)
        return self._fail(400, "bad_request", detail)

    cdef int _too_long(self) except -1:
        cdef Py_ssize_t n = self._end - self._pos
        if n > self._max_line + 2:
            n = self._max_line + 2
        self._state = S_ERROR
        if memchr(self._base + self._pos, b'\n', <size_t>n) == NULL:
            return self._fail(414, "uri_too_long", TOO_LONG_LINE)
        return self._fail(431, "headers_too_large", TOO_LARGE_HEAD)

    # -- events -------------------------------------------------------------------------------
    cdef object _next(self):
        cdef int state = self._state
        cdef object event = None
        if state == S_BODY:
            event = self._read_chunked() if self._chunked else self._read_length()
        elif state == S_IDLE:
            event = self._read_head()
        elif state == S_DONE:
            if self._end > self._pos:
                return PAUSED
        elif state == S_SWITCH:
            return PAUSED
        elif self._end > self._pos:      # MUST_CLOSE, CLOSED
            self._h11_fail(400, "Got data when expecting EOF")
        if event is not None:
            return event
        if self._pos == self._end and self._closed:
            if state == S_BODY:
                self._state = S_ERROR
                if self._chunked:
                    self._h11_fail(400, "peer closed connection without sending complete message "
                                        "body (incomplete chunked read)")
                self._h11_fail(400, "peer closed connection without sending complete message body "
                                    "(received {} bytes, expected {})".format(
                                        self._length - self._remaining, self._length))
            self._state = S_CLOSED
            return CLOSED
        if self._end - self._pos > self._max_head:
            self._too_long()
        if self._closed:
            self._h11_fail(400, "peer unexpectedly closed connection")
        return NEED_DATA

    cdef object _data(self, Py_ssize_t k):
        data = self._take(k)
        self._body_seen += k
        # Chunk framing may not dwarf the data it carries (CVE-2024-22019 class).
        if self._body_seen > self._max_body or self._cycle_bytes - self._head_len > self._max_raw_body:
            exc = too_large_body()
            self._error = exc
            raise exc
        return data

    cdef object _end_of_message(self):
        if self._switch:
            self._state = S_SWITCH
        elif not self._keep_alive:
            self._state = S_MUST_CLOSE
        else:
            self._state = S_DONE
        self._scan = 0
        return END  # trailers are never forwarded: RFC 9110 §6.5.1

    cdef object _read_head(self):
        cdef const unsigned char* s = self._base + self._pos
        cdef Py_ssize_t avail = self._end - self._pos
        cdef Py_ssize_t term, stop = 0
        keep = self._obj  # `s` may point into it, and _consume() lets it go
        if avail == 0:
            return None
        term = _find_blank(s, self._scan, avail, &stop)
        if term < 0:
            self._scan = avail - 2 if avail > 2 else 0
            # h11 looks at the first bytes before a head is complete (_receivebuffer.py).
            if s[0] == b'\n':
                self._consume(1)
                self._h11_fail(400, "no request line received")
            if avail >= 2 and s[0] == b'\r' and s[1] == b'\n':
                self._consume(2)
                self._h11_fail(400, "no request line received")
            if s[0] < 0x21:
                self._h11_fail(400, "illegal request line")
            return None
        self._head_len = term + 1
        self._raw_checks(s, term + 1)
        if s[0] == b'\n':
            self._consume(1)
            self._h11_fail(400, "no request line received")
        if s[0] == b'\r' and s[1] == b'\n':
            self._consume(2)
            self._h11_fail(400, "no request line received")
        return self._parse_head(s, term, stop)

    cdef int _raw_checks(self, const unsigned char* s, Py_ssize_t n) except -1:
        """The reference's `_scan_head`: refusals h11 would normalize away (RFC 9112 §5.2, §6.3).
        `s[:n]` is the head up to and including the first LF of the blank line."""
        cdef const unsigned char* p
        cdef Py_ssize_t i = 0, at = -1, a, b, j
        cdef unsigned char c
        while True:
            p = <const unsigned char*>memchr(s + i, b'\n', <size_t>(n - i))
            if p == NULL or p - s + 1 >= n:
                break
            i = p - s + 1
            if s[i] == b' ' or s[i] == b'\t':
                self._fail(400, "bad_request", "obsolete line folding in the request head")
        i = 0
        while True:
            p = <const unsigned char*>memchr(s + i, b'\n', <size_t>(n - i))
            if p == NULL:
                break
            i = p - s + 1
            if i + 15 > n:
                break
            j = 0
            while j < 15:
                if _lower(s[i + j]) != (<const unsigned char*>b"content-length:")[j]:
                    break
                j += 1
            if j < 15:
                continue
            if at != -1:
                self._fail(400, "bad_request", "repeated Content-Length")
            at = i
        if at == -1:
            return 0
        a = at + 15
        b = <const unsigned char*>memchr(s + a, b'\n', <size_t>(n - a)) - s
        while a < b and _is_space(s[a]):
            a += 1
        while b > a and _is_space(s[b - 1]):
            b -= 1
        if b - a < 1 or b - a > 18:
            self._fail(400, "bad_request", "bad Content-Length")
        for j in range(a, b):
            if not (0x30 <= s[j] <= 0x39):
                self._fail(400, "bad_request", "bad Content-Length")
        return 0

    cdef object _parse_head(self, const unsigned char* s, Py_ssize_t term, Py_ssize_t stop):
        """Request line and fields (h11's grammar, layer 2), then the gate's checks (layer 3)."""
        cdef Py_ssize_t e, le, i, mlen, ts, tlen, p, q, nlen, vs, ve, k
        cdef Py_ssize_t n_headers = 0, n_host = 0, n_cl = 0, n_te = 0, size
        cdef int fault = 0, te_fault = 0, cls, vflag
        cdef bint underscore, upper, has_upgrade = False
        cdef long long content_length = -1
        cdef unsigned char c
        cdef char* w
        cdef const unsigned char* v
        cdef const unsigned char* nm

        # request-line = method SP request-target SP HTTP-version (RFC 9112 §3)
        e = <const unsigned char*>memchr(s, b'\n', <size_t>(term + 1)) - s
        le = e - 1 if e > 0 and s[e - 1] == b'\r' else e
        i = 0
        while i < le and TCHAR[s[i]]:
            i += 1
        mlen = i
        ts = i + 1
        i = ts
        while i < le and VCHAR[s[i]]:
            i += 1
        tlen = i - ts
        if (mlen == 0 or mlen >= le or s[mlen] != b' ' or tlen == 0 or le - i != 9 or s[i] != b' '
                or memcmp(s + i + 1, b"HTTP/", 5) != 0 or not (0x30 <= s[i + 6] <= 0x39)
                or s[i + 7] != b'.' or not (0x30 <= s[i + 8] <= 0x39)):
            line = bytearray(PyBytes_FromStringAndSize(<const char*>s, le))
            self._consume(stop)
            self._h11_fail(400, "illegal request line: {!r}".format(line))
        if _eq(s, mlen, "GET", 3):
            method = B_GET
        elif _eq(s, mlen, "POST", 4):
            method = B_POST
        else:
            method = PyBytes_FromStringAndSize(<const char*>s, mlen)
        target = PyBytes_FromStringAndSize(<const char*>s + ts, tlen)
        if s[i + 6] == b'1' and s[i + 8] == b'1':
            version = B_V11
        elif s[i + 6] == b'1' and s[i + 8] == b'0':
            version = B_V10
        else:
            version = PyBytes_FromStringAndSize(<const char*>s + i + 6, 3)

        # field-line = field-name ":" OWS field-value OWS (RFC 9112 §5)
        headers = []
        host = b""
        connection = b""
        expect = b""
        cl_value = None
        size = mlen + tlen + 11
        p = e + 1
        while p <= term:
            q = <const unsigned char*>memchr(s + p, b'\n', <size_t>(term + 1 - p)) - s
            le = q - 1 if q > p and s[q - 1] == b'\r' else q
            i = p
            underscore = False
            upper = False
            while i < le and TCHAR[s[i]]:
                c = s[i]
                if c == b'_':
                    underscore = True
                elif 0x41 <= c <= 0x5a:
                    upper = True
                i += 1
            nlen = i - p
            if nlen == 0 or i >= le or s[i] != b':':
                self._bad_line(s + p, le - p, stop)
            i += 1
            while i < le and (s[i] == b' ' or s[i] == b'\t'):
                i += 1
            vs = i
            ve = le
            while ve > vs and (s[ve - 1] == b' ' or s[ve - 1] == b'\t'):
                ve -= 1
            vflag = 0
            for k in range(vs, ve):
                cls = VALUE[s[k]]
                if cls:
                    if cls == 2:
                        self._bad_line(s + p, le - p, stop)
                    vflag = 1

            if upper:
                name = PyBytes_FromStringAndSize(NULL, nlen)
                w = PyBytes_AS_STRING(name)
                for k in range(nlen):
                    w[k] = <char>_lower(s[p + k])
            else:
                name = PyBytes_FromStringAndSize(<const char*>s + p, nlen)
            value = PyBytes_FromStringAndSize(<const char*>s + vs, ve - vs)
            v = s + vs
            n_headers += 1
            size += nlen + (ve - vs) + 4

            # The gate's per-field refusals keep the reference's order: '_', control bytes,
            # method overrides (first offending field wins, after every line passed h11).
            if fault == 0:
                if underscore:
                    fault = 1
                elif vflag:
                    fault = 2
            nm = <const unsigned char*>PyBytes_AS_STRING(name)
            if nlen == 4 and memcmp(nm, b"host", 4) == 0:
                n_host += 1
                host = value
            elif nlen == 14 and memcmp(nm, b"content-length", 14) == 0:
                n_cl += 1
                cl_value = value
            elif nlen == 17 and memcmp(nm, b"transfer-encoding", 17) == 0:
                n_te += 1
                if n_te > 1:
                    if te_fault == 0:
                        te_fault = 1
                else:
                    value = value.lower()
                    if value != B_CHUNKED and te_fault == 0:
                        te_fault = 2
            elif nlen == 10 and memcmp(nm, b"connection", 10) == 0:
                connection = connection + b"," + value if connection else value
            elif nlen == 6 and memcmp(nm, b"expect", 6) == 0:
                expect = value
            elif nlen == 7 and memcmp(nm, b"upgrade", 7) == 0:
                for k in range(ve - vs):
                    if v[k] != b',' and v[k] != b' ' and v[k] != b'\t':
                        has_upgrade = True
                        break
            elif fault == 0 and ((nlen == 22 and memcmp(nm, b"x-http-method-override", 22) == 0)
                                 or (nlen == 13 and memcmp(nm, b"x-http-method", 13) == 0)
                                 or (nlen == 17 and memcmp(nm, b"x-method-override", 17) == 0)):
                fault = 3
            headers.append((name, value))
            p = q + 1

        # h11 after the grammar: Transfer-Encoding (RFC 9112 §6.1, 501), then Host (§3.2).
        self._consume(stop)
        if te_fault == 1:
            self._h11_fail(501, "multiple Transfer-Encoding headers")
        if te_fault == 2:
            self._h11_fail(501, "Only Transfer-Encoding: chunked is supported")
        if version is B_V11 and n_host == 0:
            self._h11_fail(400, "Missing mandatory Host: header")
        if n_host > 1:
            self._h11_fail(400, "Found multiple Host: headers")

        # h11 has a Request: framing (TE over CL; RFC 9112 §6.3) and the connection's fate.
        self._state = S_BODY
        if cl_value is not None:
            content_length = int(cl_value)
        if n_te:
            self._chunked = True
        elif content_length >= 0:
            self._remaining = self._length = content_length
        if connection:
            tokens = frozenset([t.strip().lower() for t in connection.split(b",")])
        else:
            tokens = EMPTY
        self._keep_alive = version >= B_V11 and b"close" not in tokens
        self._switch = has_upgrade or method == b"CONNECT"

        # The gate's checks: the reference's `_validate`, in its order.
        if version is not B_V11 and version is not B_V10:
            self._fail(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served")
        if tlen > self._max_line:
            self._fail(414, "uri_too_long", TOO_LONG_LINE)
        # RFC 9110 §9.1: methods are case-sensitive; `get` is not GET.
        for k in range(mlen):
            if not (0x41 <= s[k] <= 0x5a):
                self._fail(400, "bad_request", "method must be an upper-case token")
        if mlen == 7 and method == b"CONNECT":
            self._fail(400, "bad_request", "CONNECT is not served")
        if n_headers > self._max_count:
            self._fail(431, "headers_too_large", "too many header fields")
        if fault == 1:
            self._fail(400, "bad_request", "header names with '_' are refused (they alias '-' upstream)")
        if fault == 2:
            self._fail(400, "bad_request", "control character in a header value")
        if fault == 3:
            self._fail(400, "bad_request", "method override headers are refused")
        if size > self._max_head:
            self._fail(431, "headers_too_large", TOO_LARGE_HEAD)
        if content_length > self._max_body:
            self._fail(413, "payload_too_large", TOO_LARGE_LENGTH)
        if n_te:
            # RFC 9112 §6.1: TE with CL is a desync vector; TE on HTTP/1.0 is not framing we trust.
            if n_cl:
                self._fail(400, "bad_request", "both Transfer-Encoding and Content-Length")
            if version is B_V10:
                self._fail(400, "bad_request", "Transfer-Encoding on HTTP/1.0")
        keep_alive = version is B_V11 and b"close" not in tokens
        expect_continue = False
        if expect:
            if expect.lower() != b"100-continue":
                self._fail(417, "expectation_failed", "only Expect: 100-continue is supported")
            expect_continue = version is B_V11
        if s[ts] != b'/':
            try:
                target = origin_form(target, host)
            except HTTPError as exc:
                self._error = exc
                raise
        return _RequestHead(method, target, version, headers, host,
                            None if content_length < 0 else content_length, n_te > 0,
                            keep_alive, expect_continue, tokens)

    cdef int _bad_line(self, const unsigned char* line, Py_ssize_t n, Py_ssize_t stop) except -1:
        text = "illegal header line: {!r}".format(bytearray(PyBytes_FromStringAndSize(<const char*>line, n)))
        self._consume(stop)
        return self._h11_fail(400, text)


# ---------------------------------------------------------------------------------------------
# Response side (upstream -> gate)

cdef enum:
    R_HEAD = 0      # h11's SEND_RESPONSE: waiting for a status line (1xx answers loop here)
    R_BODY = 1
    R_DONE = 2

cdef object _SKIP = object()   # a 1xx answer was read and dropped


cdef int _field(const unsigned char* s, Py_ssize_t p, Py_ssize_t le,
                Py_ssize_t* nend, Py_ssize_t* vs, Py_ssize_t* ve) noexcept:
    """h11's field-line grammar on s[p:le]: bounds of name and (OWS-stripped) value, -1 if
    malformed, else 1 when the name has upper-case letters."""
    cdef Py_ssize_t i = p, a, b
    cdef int upper = 0
    while i < le and TCHAR[s[i]]:
        if 0x41 <= s[i] <= 0x5a:
            upper = 1
        i += 1
    if i == p or i >= le or s[i] != b':':
        return -1
    nend[0] = i
    i += 1
    while i < le and (s[i] == b' ' or s[i] == b'\t'):
        i += 1
    a = i
    b = le
    while b > a and (s[b - 1] == b' ' or s[b - 1] == b'\t'):
        b -= 1
    for i in range(a, b):
        if VALUE[s[i]] == 2:
            return -1
    vs[0] = a
    ve[0] = b
    return upper


cdef bint _digits(bytes value):
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i
    if n == 0:
        return False
    for i in range(n):
        if not (0x30 <= s[i] <= 0x39):
            return False
    return True


cdef bytes _name(const unsigned char* s, Py_ssize_t n, int upper):
    cdef bytes name
    cdef char* w
    cdef Py_ssize_t k
    if not upper:
        return PyBytes_FromStringAndSize(<const char*>s, n)
    name = PyBytes_FromStringAndSize(NULL, n)
    w = PyBytes_AS_STRING(name)
    for k in range(n):
        w[k] = <char>_lower(s[k])
    return name


def _unfold(block):
    """h11's `_obsolete_line_fold` over the field lines of a head: logical lines as bytearrays,
    or a str when the first line is a continuation."""
    lines = bytearray(block).split(b"\n")
    del lines[len(lines) - 1]
    out = []
    last = None
    for line in lines:
        if line.endswith(b"\r"):
            del line[len(line) - 1]
        m = _OBS_FOLD.match(line)
        if m:
            if last is None:
                return "continuation line at start of headers"
            last += b" "
            last += line[m.end():]
        else:
            if last is not None:
                out.append(last)
            last = line
    if last is not None:
        out.append(last)
    return out


cdef class ResponseReader(_Reader):
    """Reads the answer to one request of `method` (HEAD has no body) from an upstream.

    `next_event()` returns a `ResponseHead`, bytes (body), `END`, NEED_DATA, and PAUSED once
    the answer is complete; 1xx answers are skipped (101 is refused). Errors are
    `ResponseError`, and stick. After END, `reusable` says whether the connection may carry
    another request (RFC 9112 §9.3).
    """

    cdef int _state
    cdef bint _head_method
    cdef bint _eof_framed
    cdef bint _keep_alive
    cdef object _expected             # the Content-Length as sent (it may not fit 64 bits)
    cdef public bint reusable

    def __init__(self, method):
        self._head_method = method == B_HEAD
        self._state = R_HEAD
        self._error = None
        self._scan = 0
        self._chunked = False
        self._chunk = C_SIZE
        self._discard = 0
        self._remaining = 0
        self._length = 0
        self._eof_framed = False
        self._keep_alive = True
        self._expected = 0
        self.reusable = False

    def next_event(self):
        if self._error is not None:
            raise self._error
        if self._state == R_DONE:
            return PAUSED
        return self._next()

    cdef int _h11_fail(self, int status, str detail) except -1:
        return self._refuse("malformed upstream response: " + detail)

    cdef int _refuse(self, str detail) except -1:
        exc = _ResponseError(detail)
        self._error = exc
        raise exc

    cdef object _end_of_message(self):
        self._state = R_DONE
        self.reusable = self._keep_alive and self._end == self._pos and not self._closed
        return END

    cdef object _next(self):
        cdef object event
        cdef Py_ssize_t avail
        while True:
            event = None
            if self._state == R_HEAD:
                event = self._read_status()
                if event is _SKIP:
                    continue
            elif self._eof_framed:
                # RFC 9112 §6.3 rule 8: no length, no chunks: the body runs to the close.
                avail = self._end - self._pos
                if avail:
                    return self._take(avail)
                if self._closed:
                    return self._end_of_message()
            elif self._chunked:
                event = self._read_chunked()
            else:
                event = self._read_length()
            if event is not None:
                return event
            break
        avail = self._end - self._pos
        if avail == 0 and self._closed:
            if self._state == R_HEAD:
                self._h11_fail(400, "can't handle event type ConnectionClosed when role=SERVER "
                                    "and state=SEND_RESPONSE")
            if self._chunked:
                self._h11_fail(400, "peer closed connection without sending complete message "
                                    "body (incomplete chunked read)")
            self._h11_fail(400, "peer closed connection without sending complete message body "
                                "(received {} bytes, expected {})".format(
                                    self._length - self._remaining, self._expected))
        if avail > RESPONSE_HEAD_LIMIT:
            self._h11_fail(431, "Receive buffer too long")
        if self._closed:
            self._h11_fail(400, "peer unexpectedly closed connection")
        return NEED_DATA

    cdef object _read_status(self):
        cdef const unsigned char* s = self._base + self._pos
        cdef Py_ssize_t avail = self._end - self._pos
        cdef Py_ssize_t term, stop = 0, e, le, p, q, nend = 0, vs = 0, ve = 0, k
        cdef int status, upper
        cdef bint ok, fold = False
        keep = self._obj  # `s` may point into it, and _consume() lets it go
        if avail == 0:
            return None
        if s[0] == b'\n':
            self._consume(1)
            self._h11_fail(400, "no response line received")
        if avail >= 2 and s[0] == b'\r' and s[1] == b'\n':
            self._consume(2)
            self._h11_fail(400, "no response line received")
        term = _find_blank(s, self._scan, avail, &stop)
        if term < 0:
            self._scan = avail - 2 if avail > 2 else 0
            if s[0] < 0x21:
                self._h11_fail(400, "illegal request line")  # sic: h11's wording
            return None
        self._consume(stop)

        # status-line = HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112 §4; the
        # reason and its space may be missing, as h11 allows)
        e = <const unsigned char*>memchr(s, b'\n', <size_t>(term + 1)) - s
        le = e - 1 if e > 0 and s[e - 1] == b'\r' else e
        ok = (le >= 12 and memcmp(s, b"HTTP/", 5) == 0 and 0x30 <= s[5] <= 0x39 and s[6] == b'.'
              and 0x30 <= s[7] <= 0x39 and s[8] == b' ' and 0x30 <= s[9] <= 0x39
              and 0x30 <= s[10] <= 0x39 and 0x30 <= s[11] <= 0x39)
        if ok and le > 12:
            ok = s[12] == b' '
            for k in range(13, le):
                if VALUE[s[k]] == 2:
                    ok = False
                    break
        if not ok:
            line = bytearray(PyBytes_FromStringAndSize(<const char*>s, le))
            self._h11_fail(400, "illegal status line: {!r}".format(line))
        status = (s[9] - 0x30) * 100 + (s[10] - 0x30) * 10 + (s[11] - 0x30)
        if s[5] == b'1' and s[7] == b'1':
            version = B_V11
        else:
            version = PyBytes_FromStringAndSize(<const char*>s + 5, 3)
        if le <= 13:
            reason = b""
        elif le == 15 and s[13] == b'O' and s[14] == b'K':
            reason = B_OK
        else:
            reason = PyBytes_FromStringAndSize(<const char*>s + 13, le - 13)

        # field lines; obs-fold is unfolded the way h11 does it (RFC 9112 §5.2 lets a client)
        fields = []
        p = e + 1
        while p <= term:
            if s[p] == b' ' or s[p] == b'\t':
                fold = True
                break
            p = <const unsigned char*>memchr(s + p, b'\n', <size_t>(term + 1 - p)) - s + 1
        if not fold:
            p = e + 1
            while p <= term:
                q = <const unsigned char*>memchr(s + p, b'\n', <size_t>(term + 1 - p)) - s
                le = q - 1 if q > p and s[q - 1] == b'\r' else q
                upper = _field(s, p, le, &nend, &vs, &ve)
                if upper < 0:
                    line = bytearray(PyBytes_FromStringAndSize(<const char*>s + p, le - p))
                    self._h11_fail(400, "illegal header line: {!r}".format(line))
                fields.append((_name(s + p, nend - p, upper),
                               PyBytes_FromStringAndSize(<const char*>s + vs, ve - vs)))
                p = q + 1
        else:
            lines = _unfold(PyBytes_FromStringAndSize(<const char*>s + e + 1, term - e))
            if type(lines) is str:
                self._h11_fail(400, lines)
            for line in lines:
                raw = bytes(line)
                le = PyBytes_GET_SIZE(raw)
                upper = _field(<const unsigned char*>PyBytes_AS_STRING(raw), 0, le, &nend, &vs, &ve)
                if upper < 0:
                    self._h11_fail(400, "illegal header line: {!r}".format(line))
                fields.append((_name(<const unsigned char*>PyBytes_AS_STRING(raw), nend, upper), raw[vs:ve]))

        # h11's normalize_and_validate: Content-Length lists must agree and repeats collapse
        # to one field; Transfer-Encoding must be one `chunked` (lower-cased).
        headers = []
        seen_length = None
        saw_te = False
        close = False
        for name, value in fields:
            if name == b"content-length":
                if not _digits(value):  # a list, padding or junk: h11's general rule
                    lengths = {length.strip() for length in value.split(b",")}
                    if len(lengths) != 1:
                        self._h11_fail(400, "conflicting Content-Length headers")
                    value = lengths.pop()
                    if _CL_VALUE.fullmatch(value) is None:
                        self._h11_fail(400, "bad Content-Length")
                if len(value) > 20:
                    self._h11_fail(400, "bad Content-Length")
                if seen_length is None:
                    seen_length = value
                    headers.append((name, value))
                elif seen_length != value:
                    self._h11_fail(400, "conflicting Content-Length headers")
            elif name == b"transfer-encoding":
                if saw_te:
                    self._h11_fail(501, "multiple Transfer-Encoding headers")
                value = value.lower()
                if value != B_CHUNKED:
                    self._h11_fail(501, "Only Transfer-Encoding: chunked is supported")
                saw_te = True
                headers.append((name, value))
            else:
                if name == b"connection" and not close:
                    close = b"close" in [t.strip() for t in value.lower().split(b",")]
                headers.append((name, value))

        if status < 200:
            if status < 100:
                self._h11_fail(400, "InformationalResponse status_code should be in range "
                                    "[100, 200), not {}".format(status))
            if status == 101:
                self._h11_fail(400, "Received server _SWITCH_UPGRADE event without a pending proposal")
            return _SKIP  # 100 Continue and friends: the final answer follows

        self._state = R_BODY
        self._keep_alive = not close and version >= B_V11
        content_length = None if seen_length is None else int(seen_length)
        # RFC 9112 §6.3: a body's length comes from the method and status first, then TE, then CL.
        if self._head_method or status == 204 or status == 304:
            pass
        elif saw_te:
            self._chunked = True
        elif content_length is not None:
            self._remaining = self._length = min(content_length, CHUNK_CLAMP)
            self._expected = content_length
        else:
            self._eof_framed = True
        if seen_length is not None and saw_te:
            self._refuse("upstream sent both Content-Length and Transfer-Encoding")
        return _ResponseHead(status, reason, headers, content_length,
                             not (self._head_method or status == 204 or status == 304))
