"""What a well-formed call looks like on both sides of the gateway (contract "Data plane answers").

Headers toward the upstream are checked on what the recording upstream received.
"""
from __future__ import annotations

import json
import time

import httpx
import pytest
from support import (
    INJECTED_SECRET,
    UP_TOKEN,
    RawConn,
    assert_closes,
    assert_error,
    assert_request_id,
    assert_upstream_clean,
    base_config,
    chunked,
    req,
)
from support.upstream import CHUNKED_BODY, HOP_RESPONSE_HEADERS, STREAM_PAUSE_S, big_body

CLIENT_AUTH = "Bearer client-secret-canary-7f3a"


def one_call(port: int, data: bytes, head: bool = False):
    with RawConn(port) as conn:
        conn.send(data)
        return conn.recv_response(head=head)


def test_get_forwarded(gateway, upstream):
    resp = one_call(gateway.port, req(target=b"/items/A1"))
    assert resp.status == 200, resp
    assert resp.json() == {"ok": True, "path": "/items/A1", "method": "GET"}
    rid = assert_request_id(resp)
    (rec,) = upstream.requests
    assert (rec.method, rec.target, rec.body) == ("GET", "/items/A1", b"")
    assert rec.header_all("x-request-id") == [rid.encode()]
    assert rec.raw.count(b"HTTP/1.1\r\n") == 1  # exactly one request in the bytes the upstream got
    assert_upstream_clean(upstream)


def test_post_body_forwarded(gateway, upstream):
    body = json.dumps({"name": "widget", "qty": 3}).encode()
    ctype = [(b"Content-Type", b"application/json")]
    resp = one_call(gateway.port, req(b"POST", b"/items", ctype, body=body))
    assert resp.status == 200, resp
    (rec,) = upstream.requests
    assert (rec.method, rec.target, rec.body) == ("POST", "/items", body)
    assert rec.header("content-type") == b"application/json"


def test_chunked_request_forwarded(gateway, upstream):
    resp = one_call(gateway.port, req(b"POST", b"/echo/x", [(b"Transfer-Encoding", b"chunked")],
                                      body=chunked(b"hello ", b"chunked ", b"world")))
    assert resp.status == 200 and resp.body == b"hello chunked world", resp
    assert upstream.requests[0].body == b"hello chunked world"


def test_empty_body_post(gateway, upstream):
    resp = one_call(gateway.port, req(b"POST", b"/items", content_length=True))
    assert resp.status == 200, resp
    assert upstream.requests[0].body == b""


def test_request_ids_unique_and_forwarded(gateway, upstream):
    with httpx.Client(base_url=gateway.url, timeout=5.0) as client:
        ids = []
        for i in range(5):
            r = client.get(f"/items/R{i}", headers={"X-Request-Id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"})
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
    assert len(set(ids)) == 5 and "01ARZ3NDEKTSV4RRFFQ69G5FAV" not in ids
    assert [r.header_all("x-request-id") for r in upstream.requests] == [[i.encode()] for i in ids]


def test_unknown_function_404(gateway, upstream):
    resp = one_call(gateway.port, req(target=b"/nope/A1"))
    body = assert_error(resp, 404, "unknown_function")
    assert body["request_id"] == resp.request_id
    assert upstream.requests == []


def test_credentials_and_spoofed_headers_toward_upstream(gateway, upstream):
    """Caller credentials stripped, upstream credentials injected once, forwarding headers regenerated.
    CVE-2018-14773 (Symfony X-Original-URL / X-Rewrite-URL), CVE-2022-31813 (mod_proxy X-Forwarded-*)."""
    headers = [
        (b"Authorization", CLIENT_AUTH.encode()), (b"Cookie", b"session=client-cookie"),
        (b"Proxy-Authorization", b"Basic Y2xpZW50OnByb3h5"), (b"X-Api-Secret", b"client-supplied-secret"),
        (b"X-Forwarded-For", b"10.6.6.6"), (b"X-Forwarded-Host", b"evil.test"),
        (b"X-Forwarded-Proto", b"https"), (b"Forwarded", b"for=10.6.6.6;host=evil.test;proto=https"),
        (b"X-Real-IP", b"10.6.6.6"), (b"X-Original-URL", b"/admin"), (b"X-Rewrite-URL", b"/admin"),
        (b"X-Keep", b"kept"),
    ]
    resp = one_call(gateway.port, req(target=b"/items/A1", headers=headers))
    assert resp.status == 200, resp
    (rec,) = upstream.requests
    assert rec.header_all("authorization") == [f"Bearer {UP_TOKEN}".encode()]
    assert rec.header_all("x-api-secret") == [INJECTED_SECRET.encode()]
    for name in ("cookie", "proxy-authorization", "x-real-ip", "x-original-url", "x-rewrite-url",
                 "forwarded"):
        assert rec.header(name) is None, f"{name} forwarded: {rec.header(name)!r}"
    assert rec.header_all("x-forwarded-for") == [b"127.0.0.1"]
    assert rec.header_all("x-forwarded-proto") == [b"http"]
    assert all(b"evil.test" not in v and b"10.6.6.6" not in v for _, v in rec.headers), rec.headers
    assert b"client-secret-canary" not in rec.raw and b"client-cookie" not in rec.raw
    assert rec.header_all("host") == [f"127.0.0.1:{upstream.port}".encode()]
    assert rec.header("x-keep") == b"kept"


def test_hop_by_hop_request_headers_removed(gateway, upstream):
    """RFC 9110 §7.6.1: hop-by-hop fields and every field the client names in Connection are removed."""
    headers = [
        (b"Connection", b"keep-alive, X-Drop-Me, X-Drop-Too"), (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"), (b"Trailer", b"X-Checksum"), (b"Proxy-Connection", b"keep-alive"),
        (b"X-Drop-Me", b"1"), (b"X-Drop-Too", b"2"), (b"X-Keep", b"kept"),
    ]
    resp = one_call(gateway.port, req(target=b"/items/A1", headers=headers))
    assert resp.status == 200, resp
    (rec,) = upstream.requests
    for name in ("keep-alive", "te", "trailer", "proxy-connection", "x-drop-me", "x-drop-too", "upgrade"):
        assert rec.header(name) is None, f"{name} forwarded"
    assert all(b"x-drop" not in v.lower() for v in rec.header_all("connection"))
    assert rec.header("x-keep") == b"kept"


def test_connection_cannot_strip_gateway_headers(gateway, upstream):
    """Naming the gateway's own headers in Connection must not remove them (Davison, "Abusing HTTP
    hop-by-hop request headers", 2019; CVE-2022-31813 Apache mod_proxy)."""
    resp = one_call(gateway.port, req(target=b"/items/A1", headers=[
        (b"Connection", b"close, Authorization, X-Api-Secret, X-Forwarded-For, X-Forwarded-Proto, "
                        b"X-Request-Id, Host"),
    ]))
    assert resp.status == 200, resp
    (rec,) = upstream.requests
    assert rec.header_all("authorization") == [f"Bearer {UP_TOKEN}".encode()]
    assert rec.header_all("x-api-secret") == [INJECTED_SECRET.encode()]
    assert rec.header_all("x-forwarded-for") == [b"127.0.0.1"]
    assert rec.header_all("x-forwarded-proto") == [b"http"]
    assert rec.header_all("x-request-id") == [resp.request_id.encode()]
    assert rec.header_all("host") == [f"127.0.0.1:{upstream.port}".encode()]


@pytest.mark.parametrize("headers", [
    pytest.param([(b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c"),
                  (b"HTTP2-Settings", b"AAMAAABkAAQAAP__")], id="h2c-BishopFox-h2c-smuggling"),
    pytest.param([(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"),
                  (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"Sec-WebSocket-Version", b"13")],
                 id="websocket-RFC6455"),
])
def test_upgrade_forwarded_as_plain_request(gateway, upstream, headers):
    """RFC 9110 §7.8: never a 101 to the client; the upstream sees a plain request without Upgrade."""
    with RawConn(gateway.port) as conn:
        conn.send(req(target=b"/items/A1", headers=headers))
        resp = conn.recv_response()
        assert resp.status == 200, resp
        conn.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # what an h2c client sends next
        try:
            after = conn.recv_response(timeout=2.0)
            assert after.status != 101 and after.status >= 400, after
        except AssertionError:
            assert conn.eof
    (rec,) = upstream.requests
    assert rec.header("upgrade") is None and rec.header("http2-settings") is None
    assert all(b"upgrade" not in v.lower() for v in rec.header_all("connection"))
    assert_upstream_clean(upstream)


def test_hop_by_hop_response_headers_stripped(gateway, upstream):
    resp = one_call(gateway.port, req(target=b"/hop/x"))
    assert resp.status == 200, resp
    for name, _ in HOP_RESPONSE_HEADERS:
        if name.lower() in (b"x-visible", b"connection"):
            continue
        assert not resp.has_header(name.decode()), f"{name!r} relayed to the client: {resp!r}"
    assert "x-secret-hop" not in resp.connection_tokens()
    assert resp.header("x-visible") == "yes"
    assert resp.json()["path"] == "/hop/x"


def test_chunked_response_streamed_intact(gateway, upstream):
    with RawConn(gateway.port) as conn:
        conn.send(req(target=b"/chunked/x") + req(target=b"/items/NEXT"))
        resp = conn.recv_response()
        assert resp.status == 200 and resp.body == CHUNKED_BODY, resp
        assert conn.recv_response().json()["path"] == "/items/NEXT"


def test_response_streamed_not_buffered(gateway, upstream):
    """A chunk the upstream has sent reaches the client without waiting for the rest (SSE / MCP
    streams depend on it): the upstream pauses STREAM_PAUSE_S after its first chunk."""
    with RawConn(gateway.port) as conn:
        conn.send(req(target=b"/stream/x"))
        t0 = time.monotonic()
        assert conn.read_until(b"first-", timeout=STREAM_PAUSE_S - 0.5), \
            f"first chunk not relayed within {STREAM_PAUSE_S - 0.5:.1f}s; got {bytes(conn.buf)!r}"
        assert time.monotonic() - t0 < STREAM_PAUSE_S
        resp = conn.recv_response()
        assert resp.status == 200 and resp.body == b"first-last", resp
        assert_request_id(resp)


def test_head_answer_has_no_body(gateway, upstream):
    with RawConn(gateway.port) as conn:
        conn.send(req(b"HEAD", b"/items/A1") + req(target=b"/items/NEXT"))
        head = conn.recv_response(head=True)
        assert head.status == 200 and head.body == b"", head
        assert_request_id(head)
        nxt = conn.recv_response()  # would be garbage if the HEAD answer carried a body
        assert nxt.status == 200 and nxt.json()["path"] == "/items/NEXT", nxt
    assert [r.method for r in upstream.requests] == ["HEAD", "GET"]


def test_large_response_streams_intact(gateway, upstream):
    n = 5_000_000
    with RawConn(gateway.port, timeout=20.0) as conn:
        conn.send(req(target=b"/big/%d" % n))
        resp = conn.recv_response(timeout=20.0)
    assert resp.status == 200 and resp.complete, resp
    assert len(resp.body) == n and resp.body == big_body(n)


def test_keep_alive_reuses_client_connection(gateway, upstream):
    with RawConn(gateway.port) as conn:
        for i in range(5):
            conn.send(req(target=b"/items/K%d" % i))
            resp = conn.recv_response()
            assert resp.status == 200 and resp.json()["path"] == f"/items/K{i}"
            assert "close" not in resp.connection_tokens()


def test_connection_close_honoured(gateway, upstream):
    with RawConn(gateway.port) as conn:
        conn.send(req(target=b"/items/A1", headers=[(b"Connection", b"close")]))
        resp = conn.recv_response()
        assert resp.status == 200
        assert_closes(conn, resp)


def test_secrets_never_logged(gateway_factory, upstream_server):
    """Injected upstream credentials and the caller's Authorization never reach the gateway's logs."""
    upstream_server.clear()
    gw = gateway_factory(base_config(upstream_server.port))
    secret_headers = [(b"Authorization", CLIENT_AUTH.encode()), (b"Cookie", b"session=client-cookie")]
    with RawConn(gw.port) as conn:
        for target in (b"/items/A1", b"/nope", b"/status/500", b"/items/A1?token=q"):
            conn.send(req(target=target, headers=secret_headers))
            conn.recv_response()
    with RawConn(gw.port) as conn:  # and on a refused request
        conn.send(req(target=b"/items/A1", headers=secret_headers + [(b"X_Bad", b"1")]))
        assert_error(conn.recv_response(), 400)
    with RawConn(gw.port) as conn:  # and on an upstream failure
        conn.send(req(target=b"/malformed/x", headers=secret_headers))
        assert_error(conn.recv_response(), 502)
    assert gw.stop() is not None
    logs = gw.logs()
    for secret in (UP_TOKEN, INJECTED_SECRET, CLIENT_AUTH, "client-secret-canary", "client-cookie"):
        assert secret not in logs, f"{secret!r} in the gateway's output"
    assert upstream_server.requests[0].header("authorization") == f"Bearer {UP_TOKEN}".encode()
