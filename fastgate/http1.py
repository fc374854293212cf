"""HTTP/1.1 on the wire, sans-IO: parse what arrives, write what leaves directly.

Client requests (`RequestReader`) and upstream answers (`ResponseReader`) are read by the
selected core (`fastgate._core.load("http1")`): the compiled `_core/http1.pyx`, or its
pure-Python reference `_core/http1_py.py`, which is h11 plus the checks a gate needs before
anything is forwarded (threats.md §1) and serves as the compiled one's oracle. Heads that
leave the gate are serialized here from already-validated parts: running h11's send side
would double the parsing cost without checking anything new.
"""
from __future__ import annotations

from fastgate._core import IMPLEMENTATIONS, load
from fastgate._core.http1_py import (  # noqa: F401  (re-exported: the seam's public names)
    CLOSED,
    END,
    HOP_BY_HOP,
    METHOD_OVERRIDE,
    NEED_DATA,
    PAUSED,
    HTTPError,
    Limits,
    RequestHead,
    ResponseError,
    ResponseHead,
    bad_request,
)

# ---------------------------------------------------------------------------------------------
# Reading (the selected core)

_core = load("http1")
IMPLEMENTATION = IMPLEMENTATIONS["http1"]
RequestReader = _core.RequestReader
ResponseReader = _core.ResponseReader

# ---------------------------------------------------------------------------------------------
# Writing heads

_REASONS = {
    100: b"Continue", 200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content",
    301: b"Moved Permanently", 302: b"Found", 304: b"Not Modified", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    417: b"Expectation Failed", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}
_STATUS_LINES: dict[int, bytes] = {}

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"


def status_line(status: int, reason: bytes = b"") -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b""))
        if status in _REASONS:
            _STATUS_LINES[status] = line
    return line


def serialize_headers(headers) -> bytes:
    return b"".join([b"%s: %s\r\n" % (n, v) for n, v in headers])


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
