"""Sans-IO tests of the HTTP/1.1 seam: what RequestReader accepts, refuses, and how it splits.

Socket-level behaviour is in test_framing.py; these pin the decisions themselves, fed whole
and one byte at a time (h11's own habit: the answer must not depend on how bytes arrive).
Every case runs on the pure-Python reference (`py`) and the compiled reader (`c`);
test_http1_parity.py checks that the two agree on everything else.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from fastgate._core import compiled_or_none, reference
from fastgate.http1 import CLOSED, END, NEED_DATA, PAUSED, HTTPError, Limits, RequestHead

PY = reference("http1")
C = compiled_or_none("http1")
C_MISSING = "FASTGATE_NO_EXTENSIONS is set" if os.environ.get("FASTGATE_NO_EXTENSIONS") else "compiled http1 not built"
IMPLS = [
    pytest.param(PY, id="py"),
    pytest.param(C, id="c", marks=pytest.mark.skipif(C is None, reason=C_MISSING)),
]
pytestmark = pytest.mark.parametrize("impl", IMPLS)


def events(raw: bytes, *, split: int | None = None, limits: Limits | None = None, impl=PY) -> list:
    reader = impl.RequestReader(limits or Limits())
    out: list = []
    pieces = [raw] if split is None else [raw[i:i + split] for i in range(0, len(raw), split)]
    for piece in pieces:
        reader.feed(piece)
        while True:
            ev = reader.next_event()
            if ev is NEED_DATA or ev is PAUSED or ev is CLOSED:
                break
            out.append(ev)
    return out


def refused(raw: bytes, **kw) -> HTTPError:
    with pytest.raises(HTTPError) as info:
        events(raw, **kw)
    return info.value


GOOD = b"POST /items HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"


def test_good_request_whole_and_bytewise(impl):
    for split in (None, 1, 2, 7):
        evs = events(GOOD, split=split, impl=impl)
        head = evs[0]
        assert isinstance(head, RequestHead)
        assert head.method == b"POST" and head.target == b"/items" and head.content_length == 5
        assert b"".join(e for e in evs if isinstance(e, bytes)) == b"hello"
        assert evs[-1] is END


REFUSALS = [
    # RFC 9112 §6.1 / PortSwigger "HTTP desync attacks": CL and TE together.
    ("cl-te", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("te-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("te-gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    ("te-twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
    ("cl-signed", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("cl-underscore", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1_0\r\n\r\n", 400),
    ("cl-differ", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n", 400),
    ("bare-cr", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\rX-B: 2\r\n\r\n", 400),
    ("ctl-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", 400),
    ("underscore-name", b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n", 400),
    ("lowercase-method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("connect", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 400),
    ("asterisk", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("absolute-other-host", b"GET http://evil/x HTTP/1.1\r\nHost: gw\r\n\r\n", 400),
    ("no-host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("method-override", b"POST / HTTP/1.1\r\nHost: a\r\nX-HTTP-Method-Override: DELETE\r\n\r\n", 400),
    ("http2", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ("expect-other", b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417),
]


@pytest.mark.parametrize("raw,status", [(r, s) for _, r, s in REFUSALS], ids=[i for i, _, _ in REFUSALS])
@pytest.mark.parametrize("split", [None, 1], ids=["whole", "bytewise"])
def test_refusals(raw, status, split, impl):
    assert refused(raw, split=split, impl=impl).status == status


def test_absolute_form_for_own_host_becomes_origin_form(impl):
    head = events(b"GET http://gw:8080/a?b=1 HTTP/1.1\r\nHost: gw:8080\r\n\r\n", impl=impl)[0]
    assert head.target == b"/a?b=1"


def test_limits_whole_head_in_one_read(impl):
    """threats.md: h11 enforces its size limit only while a head is incomplete."""
    limits = Limits(max_header_bytes=1024, max_header_count=10, max_request_line_bytes=256)
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    assert refused(big, limits=limits, impl=impl).status == 431
    many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(20)) + b"\r\n"
    assert refused(many, limits=limits, impl=impl).status == 431
    long_line = b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert refused(long_line, limits=limits, impl=impl).status == 414
    endless_line = b"GET /" + b"a" * 3000
    assert refused(endless_line, limits=limits, impl=impl).status == 414


def test_body_limit_chunked(impl):
    limits = Limits(max_body_bytes=10)
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
    assert refused(raw, limits=limits, impl=impl).status == 413


def test_keep_alive_and_connection_tokens(impl):
    head = events(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Hop\r\n\r\n", impl=impl)[0]
    assert not head.keep_alive and b"x-hop" in head.connection_tokens
    assert not events(b"GET / HTTP/1.0\r\n\r\n", impl=impl)[0].keep_alive
    assert events(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", impl=impl)[0].keep_alive


def test_pipelined_requests_need_next_cycle(impl):
    reader = impl.RequestReader(Limits())
    reader.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reader.next_event().target == b"/1"
    assert reader.next_event() is END
    assert reader.next_event() is PAUSED
    reader.next_cycle()
    assert reader.next_event().target == b"/2"


def test_trailers_are_not_surfaced(impl):
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: evil\r\n\r\n"
    evs = events(raw, impl=impl)
    assert [e for e in evs if isinstance(e, bytes)] == [b"abc"] and evs[-1] is END


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_return_or_raise_our_error(impl, data):
    """h11's fuzz contract, for our layer: any input returns events or raises HTTPError."""
    try:
        events(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + data, impl=impl)
        events(data, impl=impl)
    except HTTPError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=40))
def test_split_independence(impl, split):
    raw = (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    evs = events(raw, split=split, impl=impl)
    assert b"".join(e for e in evs if isinstance(e, bytes)) == b"hello world"
    assert evs[-1] is END


def test_refusal_sticks_until_next_cycle(impl):
    """After a framing error nothing on the connection can be trusted: the refusal repeats."""
    reader = impl.RequestReader(Limits(max_body_bytes=3))
    reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert isinstance(reader.next_event(), RequestHead)
    for _ in range(3):
        with pytest.raises(HTTPError) as info:
            reader.next_event()
        assert info.value.status == 413
