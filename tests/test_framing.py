"""Framing and desync (threats.md §1), over real sockets against a running gateway.

Every refused case is delivered whole, byte by byte and split around each CR, LF, ':' and ';'
(each delivery on a fresh connection); each must get the same refusal, `Connection: close`,
a closed connection, and nothing at the upstream. The sweeps at the end split valid and
invalid messages at every index.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    RawConn,
    assert_closes,
    assert_error,
    assert_nothing_forwarded,
    assert_request_id,
    assert_upstream_clean,
    check_accepted,
    check_refused,
    chunked,
    req,
)

H = b"Host: gw.test\r\n"
GET = b"GET /items/A1 HTTP/1.1\r\n" + H
POST = b"POST /echo/x HTTP/1.1\r\n" + H
TE = b"Transfer-Encoding: chunked\r\n"
CL5 = b"Content-Length: 5\r\n"
HELLO = b"5\r\nhello\r\n0\r\n\r\n"  # chunked(b"hello")
SMUGGLED = b"GET /items/SMUGGLED HTTP/1.1\r\nHost: gw.test\r\n\r\n"
BAD_TE = (400, 501)
BAD_VERSION = (400, 505)


def case(id_, data, status=400, **kw):
    return pytest.param(data, status, id=id_, **kw)


# ---- Content-Length ------------------------------------------------------------------------------
CONTENT_LENGTH_CASES = [
    # RFC 9112 §6.3 ¶5 / CVE-2019-20445 (Netty): several Content-Length lines, even equal ones
    case("cl-duplicate-equal-RFC9112-6.3", POST + CL5 + CL5 + b"\r\nhello"),
    case("cl-duplicate-differing-RFC9112-6.3", POST + CL5 + b"Content-Length: 6\r\n\r\nhello!"),
    case("cl-list-equal-RFC9112-6.3", POST + b"Content-Length: 5, 5\r\n\r\nhello"),
    # CVE-2022-24761 (waitress used int()): '+5', '1_0', '0x5', padding, non-ASCII digits
    case("cl-plus-sign-CVE-2022-24761", POST + b"Content-Length: +5\r\n\r\nhello"),
    case("cl-negative-CVE-2022-24761", POST + b"Content-Length: -5\r\n\r\nhello"),
    case("cl-underscore-CVE-2022-24761", POST + b"Content-Length: 1_0\r\n\r\nhellohello"),
    case("cl-hex-CVE-2022-24761", POST + b"Content-Length: 0x5\r\n\r\nhello"),
    case("cl-space-inside-RFC9112-6.3", POST + b"Content-Length: 1 0\r\n\r\nhellohello"),
    case("cl-fullwidth-digit-CVE-2022-24761", POST + "Content-Length: ５\r\n\r\nhello".encode()),
    case("cl-empty-RFC9112-6.3", POST + b"Content-Length: \r\n\r\nhello"),
    case("cl-nul-RFC9110-5.5", POST + b"Content-Length: 5\x00\r\n\r\nhello"),
    case("cl-huge-RFC9112-6.3", POST + b"Content-Length: 99999999999999999999999\r\n\r\nhello", (400, 413)),
]

# ---- Transfer-Encoding ---------------------------------------------------------------------------
TRANSFER_ENCODING_CASES = [
    # RFC 9112 §6.1 / CVE-2022-36760 (mod_proxy_ajp) / PortSwigger "HTTP desync attacks" CL.TE and TE.CL
    case("cl-te-RFC9112-6.1-CVE-2022-36760", POST + CL5 + TE + b"\r\n" + HELLO),
    case("te-cl-RFC9112-6.1-CVE-2022-36760", POST + TE + CL5 + b"\r\n" + HELLO),
    case("te-on-http10-RFC9112-6.1", b"POST /echo/x HTTP/1.0\r\n" + H + TE + b"\r\n" + HELLO),
    case("te-chunked-chunked-RFC9112-6.1", POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n"
         + HELLO, BAD_TE),
    case("te-two-lines-RFC9112-6.1", POST + TE + TE + b"\r\n" + HELLO, BAD_TE),
    case("te-xchunked-PortSwigger-TE.TE", POST + b"Transfer-Encoding: xchunked\r\n\r\n" + HELLO, BAD_TE),
    case("te-identity-RFC7230-removed", POST + b"Transfer-Encoding: identity\r\n\r\nhello", BAD_TE),
    case("te-gzip-chunked-RFC9112-6.1", POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n" + HELLO,
         BAD_TE),
    case("te-chunked-not-last-RFC9112-6.3", POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n" + HELLO,
         BAD_TE),
    case("te-empty-RFC9112-6.1", POST + b"Transfer-Encoding: \r\n\r\nhello", BAD_TE),
    case("te-quoted-PortSwigger-TE.TE", POST + b'Transfer-Encoding: "chunked"\r\n\r\n' + HELLO, BAD_TE),
    case("te-vertical-tab-CVE-2019-18277-HAProxy", POST + b"Transfer-Encoding:\x0bchunked\r\n\r\n"
         + HELLO),
    case("te-space-before-colon-CVE-2019-16276-CVE-2020-7238", POST + b"Transfer-Encoding : chunked\r\n\r\n"
         + HELLO),
    case("te-obs-fold-CVE-2022-32215", POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n" + HELLO),
    case("te-leading-space-line-RFC9112-2.2", POST + b" Transfer-Encoding: chunked\r\n\r\n" + HELLO),
    case("te-bare-lf-hidden-with-cl-CVE-2022-32214", POST + b"X-A: a\nTransfer-Encoding: chunked\r\n"
         b"Content-Length: 5\r\n\r\n" + HELLO),
]

# ---- field syntax --------------------------------------------------------------------------------
FIELD_CASES = [
    case("obs-fold-RFC9112-5.2", GET + b"X-A: a\r\n b\r\n\r\n"),
    case("obs-fold-tab-RFC9112-5.2", GET + b"X-A: a\r\n\tb\r\n\r\n"),
    case("bare-cr-in-header-RFC9112-2.2-CVE-2023-30589", GET + b"X-A: a\rX-B: b\r\n\r\n"),
    case("bare-cr-after-request-line-RFC9112-2.2", b"GET /items/A1 HTTP/1.1\r" + H + b"\r\n"),
    case("nul-in-value-RFC9110-5.5", GET + b"X-A: a\x00b\r\n\r\n"),
    case("soh-in-value-RFC9110-5.5", GET + b"X-A: a\x01b\r\n\r\n"),
    case("esc-in-value-RFC9110-5.5", GET + b"X-A: a\x1bb\r\n\r\n"),
    case("del-in-value-RFC9110-5.5", GET + b"X-A: a\x7fb\r\n\r\n"),
    case("ctl-in-name-CVE-2021-43797", GET + b"X-A\x01: b\r\n\r\n"),
    case("underscore-name-CGI-aliasing-RFC3875-4.1.18", GET + b"X_Forwarded_For: 10.0.0.1\r\n\r\n"),
    case("underscore-content_length-CGI-aliasing", POST + b"Content_Length: 5\r\n" + CL5 + b"\r\nhello"),
    case("space-in-name-RFC9110-5.1", GET + b"X A: b\r\n\r\n"),
    case("empty-name-RFC9110-5.1", GET + b": b\r\n\r\n"),
    case("non-ascii-name-RFC9110-5.1", GET + b"X-\xe4: b\r\n\r\n"),
    case("no-colon-CVE-2019-20444", GET + b"X-A b\r\n\r\n"),
    case("space-before-colon-RFC9112-5.1", GET + b"X-A : b\r\n\r\n"),
]

# ---- request line, method, target form, Host -----------------------------------------------------
REQUEST_LINE_CASES = [
    case("lowercase-method-RFC9110-9.1", b"get /items/A1 HTTP/1.1\r\n" + H + b"\r\n"),
    case("mixed-case-method-RFC9110-9.1", b"Get /items/A1 HTTP/1.1\r\n" + H + b"\r\n"),
    case("connect-RFC9110-9.3.6", b"CONNECT gw.test:443 HTTP/1.1\r\n" + H + b"\r\n"),
    case("asterisk-form-RFC9112-3.2.4", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n"),
    case("absolute-form-other-host-RFC9112-3.2.2", b"GET http://evil.test/items/A1 HTTP/1.1\r\n" + H
         + b"\r\n"),
    case("absolute-form-other-port-RFC9112-3.2.2", b"GET http://gw.test:8443/items/A1 HTTP/1.1\r\n" + H
         + b"\r\n"),
    case("absolute-form-userinfo-RFC9112-3.2.2", b"GET http://evil.test@gw.test/items/A1 HTTP/1.1\r\n" + H
         + b"\r\n"),
    case("missing-host-http11-RFC9112-3.2", b"GET /items/A1 HTTP/1.1\r\nX-A: b\r\n\r\n"),
    case("two-hosts-RFC9112-3.2", GET + b"Host: evil.test\r\n\r\n"),
    case("method-override-X-HTTP-Method-Override", GET + b"X-HTTP-Method-Override: DELETE\r\n\r\n"),
    case("method-override-X-HTTP-Method", GET + b"X-HTTP-Method: DELETE\r\n\r\n"),
    case("method-override-X-Method-Override", GET + b"X-Method-Override: DELETE\r\n\r\n"),
    case("version-2.0-RFC9112-2.3", b"GET /items/A1 HTTP/2.0\r\n" + H + b"\r\n", BAD_VERSION),
    case("version-1.2-RFC9112-2.3", b"GET /items/A1 HTTP/1.2\r\n" + H + b"\r\n", BAD_VERSION),
    case("version-0.9-style-RFC9112-2.3", b"GET /items/A1\r\n" + H + b"\r\n", BAD_VERSION),
    case("version-lowercase-RFC9112-2.3", b"GET /items/A1 http/1.1\r\n" + H + b"\r\n", BAD_VERSION),
    case("version-1.10-RFC9112-2.3", b"GET /items/A1 HTTP/1.10\r\n" + H + b"\r\n", BAD_VERSION),
    case("double-space-RFC9112-3", b"GET  /items/A1 HTTP/1.1\r\n" + H + b"\r\n"),
    case("tab-separator-RFC9112-3", b"GET\t/items/A1 HTTP/1.1\r\n" + H + b"\r\n"),
    case("trailing-space-after-version-RFC9112-3", b"GET /items/A1 HTTP/1.1 \r\n" + H + b"\r\n"),
]

# ---- chunked bodies (RFC 9112 §7.1) --------------------------------------------------------------
CH = POST + TE + b"\r\n"
CHUNK_CASES = [
    case("chunk-size-negative-RFC9112-7.1", CH + b"-5\r\nhello\r\n0\r\n\r\n"),
    case("chunk-size-0x-CVE-2022-24761", CH + b"0x5\r\nhello\r\n0\r\n\r\n"),
    case("chunk-size-plus-CVE-2022-24761", CH + b"+5\r\nhello\r\n0\r\n\r\n"),
    case("chunk-size-underscore-CVE-2022-24761", CH + b"1_0\r\nhellohello\r\n0\r\n\r\n"),
    case("chunk-size-leading-space-RFC9112-7.1", CH + b" 5\r\nhello\r\n0\r\n\r\n"),
    case("chunk-size-empty-RFC9112-7.1", CH + b"\r\nhello\r\n0\r\n\r\n"),
    case("chunk-size-overflow-RFC9112-7.1", CH + b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", (400, 413)),
    case("chunk-data-without-crlf-CVE-2025-43859-h11", CH + b"5\r\nhelloXX0\r\n\r\n"),
    case("chunk-data-longer-than-size-CVE-2025-43859", CH + b"3\r\nhello\r\n0\r\n\r\n"),
    case("chunk-size-bare-lf-CVE-2022-32214", CH + b"5\nhello\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("data", [
    pytest.param(CH + b"5;a\x00b\r\nhello\r\n0\r\n\r\n", id="chunk-ext-nul-CVE-2021-22960-llhttp"),
    pytest.param(CH + b"5;a\rb\r\nhello\r\n0\r\n\r\n", id="chunk-ext-bare-cr-CVE-2021-22960-llhttp"),
])
def test_odd_chunk_extensions_never_reach_upstream(gateway, upstream, data):
    """CVE-2021-22960 desynced a front proxy that passed raw chunk extensions on. fastgate re-frames
    every chunk and drops extensions, so these bytes cannot reach the upstream's parser; refusing is
    not needed for safety (h11 tolerates them) and the body arrives intact."""
    recs = check_accepted(gateway.port, upstream, data)
    assert recs[0].body == b"hello"
    assert b"a\x00b" not in recs[0].raw and b"a\rb" not in recs[0].raw


@pytest.mark.parametrize("data,status", CONTENT_LENGTH_CASES + TRANSFER_ENCODING_CASES + FIELD_CASES
                         + REQUEST_LINE_CASES)
def test_refused_and_closed(gateway, upstream, data, status):
    check_refused(gateway.port, upstream, data, status)


@pytest.mark.parametrize("data,status", CHUNK_CASES)
def test_bad_chunked_body_refused_and_closed(gateway, upstream, data, status):
    """The head was valid, so it may already be on its way upstream; no complete request may follow."""
    check_refused(gateway.port, upstream, data, status, forwarded="incomplete")


# ---- the same cases carrying a smuggled second request -------------------------------------------
SMUGGLE_CASES = [
    # PortSwigger "HTTP desync attacks" (Kettle 2019): CL.TE, TE.CL and TE.TE obfuscations
    case("CL.TE", POST + b"Content-Length: %d\r\n" % (5 + len(SMUGGLED)) + TE + b"\r\n0\r\n\r\n" + SMUGGLED),
    case("TE.CL", POST + b"Content-Length: 4\r\n" + TE + b"\r\n"
         + b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"),
    case("TE.TE-space-before-colon", POST + b"Content-Length: %d\r\nTransfer-Encoding : chunked\r\n\r\n"
         b"0\r\n\r\n" % (5 + len(SMUGGLED)) + SMUGGLED),
    case("TE.TE-xchunked", POST + b"Content-Length: %d\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
         % (5 + len(SMUGGLED)) + SMUGGLED, BAD_TE),
    case("TE.TE-second-te-line", POST + b"Content-Length: %d\r\n" % (5 + len(SMUGGLED)) + TE
         + b"Transfer-encoding: cow\r\n\r\n0\r\n\r\n" + SMUGGLED, BAD_TE),
    case("TE.TE-tab-ows", POST + b"Content-Length: %d\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n"
         % (5 + len(SMUGGLED)) + SMUGGLED),
    case("TE.TE-vertical-tab-CVE-2019-18277", POST + b"Content-Length: %d\r\n"
         b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n" % (5 + len(SMUGGLED)) + SMUGGLED),
    case("CL.CL-CVE-2019-20445", POST + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
         + SMUGGLED),
    case("TE-http10-CL", b"POST /echo/x HTTP/1.0\r\n" + H + b"Content-Length: %d\r\n" % (5 + len(SMUGGLED))
         + TE + b"\r\n0\r\n\r\n" + SMUGGLED),
]


@pytest.mark.parametrize("data,status", SMUGGLE_CASES)
def test_smuggling_payloads_refused(gateway, upstream, data, status):
    """The framing conflict is refused; neither the outer nor the smuggled request reaches the upstream."""
    check_refused(gateway.port, upstream, data, status)
    assert not any(b"SMUGGLED" in p for p in upstream.partial())


# ---- valid but unusual framing is accepted and re-framed -----------------------------------------
def test_content_length_with_ows_accepted(gateway, upstream):
    """RFC 9110 §5.5: OWS around a field value is not part of it."""
    recs = check_accepted(gateway.port, upstream, POST + b"Content-Length: \t 5 \t\r\n\r\nhello")
    assert recs[0].body == b"hello"


def test_chunked_with_tab_ows_accepted(gateway, upstream):
    recs = check_accepted(gateway.port, upstream, POST + b"Transfer-Encoding:\tchunked\r\n\r\n"
                          + chunked(b"hel", b"lo"))
    assert recs[0].body == b"hello"


def test_chunk_extensions_dropped(gateway, upstream):
    """RFC 9112 §7.1.1: extensions are hop-by-hop; the upstream gets the data, never the extension."""
    recs = check_accepted(gateway.port, upstream,
                          CH + b"5;name=value\r\nhello\r\n6;q=\"x;y\"\r\n world\r\n0\r\n\r\n")
    assert recs[0].body == b"hello world"
    assert all(b"name=value" not in r.raw and b"x;y" not in r.raw for r in recs)


def test_chunked_trailers_not_forwarded(gateway, upstream):
    """RFC 9110 §6.5.1: trailers are not merged into the forwarded head (CVE-2025-43859 h11 class)."""
    data = CH + chunked(b"hello", trailers=b"X-Trailer-Evil: 1\r\nAuthorization: Bearer trailer\r\n")
    recs = check_accepted(gateway.port, upstream, data)
    for rec in recs:
        assert rec.body == b"hello"
        assert b"x-trailer-evil" not in rec.header_names
        assert rec.trailers == [], rec.trailers
        assert b"Bearer trailer" not in rec.raw


def test_http10_without_host_served_and_closed(gateway, upstream, raw_conn):
    """RFC 9112 §3.2: Host is required on HTTP/1.1 only; HTTP/1.0 is one request per connection here."""
    conn = raw_conn()
    conn.send(b"GET /items/A1 HTTP/1.0\r\n\r\n")
    resp = conn.recv_response()
    assert resp.status == 200, resp
    assert_request_id(resp)
    assert conn.is_closed(2.0)
    assert [r.target for r in upstream.requests] == ["/items/A1"]


def test_absolute_form_same_host_forwarded_in_origin_form(gateway, upstream):
    """RFC 9112 §3.2.2: the Host is replaced by the target's authority; the upstream gets origin-form."""
    recs = check_accepted(gateway.port, upstream,
                          b"GET http://gw.test/items/A1?x=1 HTTP/1.1\r\n" + H + b"\r\n")
    assert {r.target for r in recs} == {"/items/A1?x=1"}


def test_bare_lf_line_endings_consistent(gateway, upstream, raw_conn):
    """RFC 9112 §2.2 lets a server accept bare LF; if it does, what it forwards must be a clean
    re-serialized request with the same fields (CVE-2022-32214 / CVE-2020-1935 class)."""
    conn = raw_conn()
    conn.send(b"GET /items/A1 HTTP/1.1\nHost: gw.test\nX-A: a\nX-B: b\n\n")
    resp = conn.recv_response()
    if resp.status == 400:
        assert_error(resp, 400)
        assert_closes(conn, resp)
        assert_nothing_forwarded(upstream)
        return
    assert resp.status == 200, resp
    assert_upstream_clean(upstream)
    (rec,) = upstream.requests
    assert rec.header_all("x-a") == [b"a"] and rec.header_all("x-b") == [b"b"]
    assert b"\n" not in rec.raw.replace(b"\r\n", b"")


def test_transfer_encoding_case_insensitive_consistent(gateway, upstream, raw_conn):
    """RFC 9112 §7: coding names are case-insensitive; refusing is allowed, mis-framing is not."""
    conn = raw_conn()
    conn.send(POST + b"Transfer-Encoding: Chunked\r\n\r\n" + HELLO + req())
    resp = conn.recv_response()
    if resp.status in (400, 501):
        assert_error(resp, resp.status)
        assert_closes(conn, resp)
        assert_nothing_forwarded(upstream)
        return
    assert resp.status == 200 and resp.body == b"hello", resp
    assert conn.recv_response().status == 200
    assert [r.body for r in upstream.requests] == [b"hello", b""]


def test_forwarded_head_is_reserialized(gateway, upstream, raw_conn):
    """threats.md §1: forward a re-serialized request, never the client's raw bytes."""
    conn = raw_conn()
    conn.send(b"GET /items/A1 HTTP/1.1\r\nhOsT:    gw.test   \r\nX-Custom:  \t spaced out \t \r\n\r\n")
    resp = conn.recv_response()
    assert resp.status == 200, resp
    (rec,) = upstream.requests
    assert rec.header_all("x-custom") == [b"spaced out"]
    assert b"\t spaced" not in rec.raw and b"spaced out \t" not in rec.raw
    assert rec.raw.count(b"\r\n\r\n") == 1 and rec.raw.endswith(b"\r\n\r\n")


# ---- pipelining ----------------------------------------------------------------------------------
def test_pipelined_requests_answered_in_order(gateway, upstream, raw_conn):
    conn = raw_conn()
    conn.send(req(target=b"/items/P1") + req(b"POST", b"/echo/p2", body=b"two") + req(target=b"/items/P3"))
    responses = [conn.recv_response() for _ in range(3)]
    assert [r.status for r in responses] == [200, 200, 200], responses
    assert responses[0].json()["path"] == "/items/P1"
    assert responses[1].body == b"two"
    assert responses[2].json()["path"] == "/items/P3"
    ids = [assert_request_id(r) for r in responses]
    assert len(set(ids)) == 3
    assert [r.target for r in upstream.requests] == ["/items/P1", "/echo/p2", "/items/P3"]
    assert [r.header("x-request-id").decode() for r in upstream.requests] == ids


@pytest.mark.parametrize("bad", [
    pytest.param(b"get /items/P2 HTTP/1.1\r\n" + H + b"\r\n", id="lowercase-method"),
    pytest.param(POST + b"Content-Length: 3\r\n" + TE + b"\r\n0\r\n\r\n", id="CL.TE"),
    pytest.param(GET + b"X_Bad: 1\r\n\r\n", id="underscore-header"),
])
def test_bad_request_inside_pipeline(gateway, upstream, raw_conn, bad):
    """Earlier requests are answered, then 400 and close; nothing after the bad one is forwarded."""
    conn = raw_conn()
    conn.send(req(target=b"/items/P1") + bad + req(target=b"/items/P3"))
    first = conn.recv_response()
    assert first.status == 200 and first.json()["path"] == "/items/P1", first
    second = conn.recv_response()
    assert_error(second, 400)
    assert_closes(conn, second)
    assert [r.target for r in upstream.requests] == ["/items/P1"]


def test_body_bytes_never_parsed_as_next_request(gateway, upstream, raw_conn):
    """A body that looks like a request stays a body (PortSwigger CL.0 class)."""
    conn = raw_conn()
    conn.send(req(b"POST", b"/echo/x", body=SMUGGLED) + req(target=b"/items/P2"))
    first, second = conn.recv_response(), conn.recv_response()
    assert first.status == 200 and first.body == SMUGGLED
    assert second.status == 200 and second.json()["path"] == "/items/P2"
    assert [r.target for r in upstream.requests] == ["/echo/x", "/items/P2"]


def test_unknown_function_with_body_keeps_framing(gateway, upstream, raw_conn):
    """A refused request's body is consumed, not parsed as the next request."""
    conn = raw_conn()
    te = [(b"Transfer-Encoding", b"chunked")]
    conn.send(req(b"POST", b"/nope", body=SMUGGLED) + req(b"POST", b"/nope2", te, body=chunked(SMUGGLED))
              + req(target=b"/items/P3"))
    for _ in range(2):
        assert_error(conn.recv_response(), 404, "unknown_function")
    third = conn.recv_response()
    assert third.status == 200 and third.json()["path"] == "/items/P3", third
    assert [r.target for r in upstream.requests] == ["/items/P3"]


# ---- every split point ---------------------------------------------------------------------------
VALID_HEAD = (b"GET /items/S1?q=1 HTTP/1.1\r\nHost: gw.test\r\nAccept: application/json\r\n"
              b"X-Trace: abc-123\r\nUser-Agent: split\r\n\r\n")


def test_valid_head_every_split_point(gateway, upstream):
    """h11's discipline: same answer and same upstream request however the head is split."""
    assert 90 <= len(VALID_HEAD) <= 130
    recs = check_accepted(gateway.port, upstream, VALID_HEAD, variants="all")
    assert recs[0].target == "/items/S1?q=1"


def test_chunked_body_every_split_point(gateway, upstream):
    data = CH + b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-T: 1\r\n\r\n"
    recs = check_accepted(gateway.port, upstream, data, variants="all")
    assert recs[0].body == b"hello world"


def test_cl_te_every_split_point(gateway, upstream):
    """RFC 9112 §6.1 CL.TE refused at every split point (PortSwigger "HTTP desync attacks")."""
    check_refused(gateway.port, upstream, TRANSFER_ENCODING_CASES[0].values[0], 400, variants="all")


def test_smuggled_cl_te_every_split_point(gateway, upstream):
    check_refused(gateway.port, upstream, SMUGGLE_CASES[0].values[0], 400, variants="all")


def test_pipeline_every_split_point(gateway, upstream):
    from support import run_variants, split_variants

    data = req(target=b"/items/Q1") + req(b"POST", b"/echo/q2", body=b"abc")
    results = run_variants(gateway.port, split_variants(data), n_responses=2)
    bad = [(r.name, r.error or [x.status for x in r.responses]) for r in results
           if r.error or [x.status for x in r.responses] != [200, 200] or r.responses[1].body != b"abc"]
    assert not bad, bad[:5]
    assert len(upstream.wait_for(2 * len(results))) == 2 * len(results)
    assert_upstream_clean(upstream)


# ---- property: random valid requests, random deliveries ------------------------------------------
_names = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).map(lambda t: "X-H-" + t)
_VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
_values = st.text(_VCHAR + " \t", max_size=40).map(lambda v: v.strip(" \t"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.lists(st.tuples(_names, _values), max_size=6, unique_by=lambda h: h[0].lower()),
       body=st.binary(max_size=300), use_chunked=st.booleans(), chunk_size=st.integers(1, 64),
       cuts=st.lists(st.integers(1, 1000), max_size=5))
def test_random_request_random_delivery(gateway, upstream_server, headers, body, use_chunked, chunk_size,
                                        cuts):
    """Any valid request, however it is cut into segments, reaches the upstream with the same fields
    (in order) and body (threats.md: "every split point for streaming stages")."""
    upstream_server.clear()
    raw_headers = [(n.encode(), v.encode()) for n, v in headers]
    if use_chunked:
        pieces = [body[i:i + chunk_size] for i in range(0, len(body), chunk_size)]
        te = [(b"Transfer-Encoding", b"chunked")]
        data = req(b"POST", b"/echo/h", raw_headers + te, body=chunked(*pieces))
    else:
        data = req(b"POST", b"/echo/h", raw_headers, body=body, content_length=True)
    points = sorted({c % len(data) for c in cuts if c % len(data)})
    parts = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    with RawConn(gateway.port) as conn:
        conn.send_parts(parts, gap=0.002)
        resp = conn.recv_response()
    assert resp.status == 200 and resp.body == body, resp
    assert_upstream_clean(upstream_server)
    (rec,) = upstream_server.requests
    assert rec.body == body
    forwarded = [(k, v) for k, v in rec.headers if k.startswith(b"x-h-")]
    assert forwarded == [(k.lower(), v) for k, v in raw_headers]
