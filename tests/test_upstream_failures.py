"""Slow, broken and hostile upstreams (threats.md §1 "malformed upstream responses", §7).

Limits in base_config: upstream_timeout 2s, connect_timeout 1s.
"""
from __future__ import annotations

import time

import pytest
from support import RawConn, assert_error, assert_request_id, assert_upstream_clean, base_config, req
from support.upstream import SLOW_HEAD_S


def fetch(port: int, target: bytes, method: bytes = b"GET", timeout: float = 6.0, **kw):
    with RawConn(port, timeout=timeout) as conn:
        conn.send(req(method, target, **kw))
        return conn.recv_response(timeout=timeout, head=method == b"HEAD")


def test_connection_refused_is_502(gateway, upstream):
    """An upstream port with nothing listening (function `dead`)."""
    t0 = time.monotonic()
    resp = fetch(gateway.port, b"/dead/x")
    assert_error(resp, 502, "upstream_unavailable")
    assert time.monotonic() - t0 < 1.5


@pytest.mark.parametrize("target", [
    pytest.param(b"/close/x", id="closed-without-answer"),
    pytest.param(b"/malformed/x", id="garbage-status-line-RFC9112-4"),
    pytest.param(b"/te-cl/x", id="response-with-CL-and-TE-RFC9112-6.3"),
])
def test_bad_upstream_answer_is_502(gateway, upstream, target):
    assert_error(fetch(gateway.port, target), 502, "upstream_unavailable")
    assert upstream.requests[-1].target == target.decode()


@pytest.mark.parametrize("target", [b"/malformed/x", b"/te-cl/x", b"/close/x"])
def test_bad_upstream_connection_not_reused(gateway, upstream, target):
    """Response-queue poisoning (PortSwigger 2021): after an answer whose framing could not be trusted,
    that upstream connection is never used again; the next call works on a new one."""
    for _ in range(2):  # warm the pool with a good connection first
        assert fetch(gateway.port, b"/items/WARM").status == 200
    assert_error(fetch(gateway.port, target), 502)
    bad_conn = upstream.requests[-1].conn_id
    with RawConn(gateway.port) as conn:
        for i in range(3):
            conn.send(req(target=b"/items/NEXT%d" % i))
            resp = conn.recv_response(timeout=4.0)
            assert resp.status == 200 and resp.json()["path"] == f"/items/NEXT{i}", resp
    assert all(r.conn_id != bad_conn for r in upstream.requests[-3:])
    assert_upstream_clean(upstream)


def test_malformed_answer_opens_new_upstream_connection(gateway_factory, upstream):
    """On a fresh gateway (empty pool): the malformed answer's connection is dropped, the next call
    opens a second upstream connection."""
    gw = gateway_factory(base_config(upstream.port))
    assert_error(fetch(gw.port, b"/malformed/x"), 502)
    assert upstream.connections == 1
    resp = fetch(gw.port, b"/items/AFTER")
    assert resp.status == 200, resp
    assert upstream.connections == 2, "no new upstream connection after a malformed answer"
    assert upstream.requests[-1].conn_id != upstream.requests[0].conn_id


def test_slow_upstream_head_is_504(gateway, upstream):
    t0 = time.monotonic()
    resp = fetch(gateway.port, b"/slow-head/x")
    elapsed = time.monotonic() - t0
    assert_error(resp, 504, "upstream_timeout")
    assert 1.5 <= elapsed < SLOW_HEAD_S, f"504 after {elapsed:.2f}s (upstream_timeout 2s)"


def test_truncated_upstream_body_closes_client(gateway, upstream):
    """Content-Length 10, 5 bytes, close. If the head was already relayed the status cannot change, so
    the client connection is closed before the declared length (never padded, never left to hang);
    if nothing was relayed yet, the client gets a 502. Never a silent close with no answer at all."""
    with RawConn(gateway.port) as conn:
        conn.send(req(target=b"/bad-cl/x"))
        resp = conn.recv_response(timeout=4.0)  # ConnectionClosedError: closed without any answer
        assert_request_id(resp)
        if resp.status == 502:
            assert_error(resp, 502, "upstream_unavailable")
            return
        assert resp.status == 200 and not resp.complete, resp
        assert len(resp.body) < 10
        assert conn.eof


def test_stalled_upstream_body_closes_client(gateway, upstream):
    """Head and 5 of 20 bytes, then a stall past upstream_timeout: a 504 if nothing was relayed yet,
    else the relayed head, a truncated body and a close -- within upstream_timeout plus slack."""
    with RawConn(gateway.port) as conn:
        conn.send(req(target=b"/slow-body/x"))
        t0 = time.monotonic()
        resp = conn.recv_response(timeout=6.0)  # ConnectionClosedError: closed without any answer
        elapsed = time.monotonic() - t0
        assert_request_id(resp)
        if resp.status == 504:
            assert_error(resp, 504, "upstream_timeout")
        else:
            assert resp.status == 200 and not resp.complete, resp
            assert conn.eof
    assert elapsed < 5.0, f"stalled upstream body held the client for {elapsed:.2f}s"


@pytest.mark.parametrize("code", [201, 404, 418, 500, 503])
def test_upstream_status_relayed(gateway, upstream, code):
    resp = fetch(gateway.port, b"/status/%d" % code)
    assert resp.status == code, resp
    assert resp.json() == {"upstream_status": code}
    assert_request_id(resp)


def test_upstream_204_has_no_body(gateway, upstream):
    with RawConn(gateway.port) as conn:
        conn.send(req(target=b"/status/204") + req(target=b"/items/NEXT"))
        first = conn.recv_response()
        assert first.status == 204 and first.body == b"", first
        second = conn.recv_response()
        assert second.status == 200 and second.json()["path"] == "/items/NEXT", second


def test_upstream_body_on_head_not_relayed(gateway, upstream):
    """An upstream that answers HEAD with a body must not desync the client connection."""
    with RawConn(gateway.port) as conn:
        conn.send(req(b"HEAD", b"/head-response/x") + req(target=b"/items/NEXT"))
        first = conn.recv_response(head=True)
        assert first.status in (200, 502), first
        assert_request_id(first)
        try:
            second = conn.recv_response()
        except AssertionError:
            assert conn.eof  # closing is acceptable; desync is not
            return
        assert second.status == 200 and second.json()["path"] == "/items/NEXT", second


def test_upstream_101_never_tunnels(gateway, upstream):
    """Upgrade / h2c (Bishop Fox "h2c smuggling", 2020): never a 101 to the client, never raw bytes
    tunneled past policy, even when the upstream answers 101 on its own."""
    with RawConn(gateway.port) as conn:
        conn.send(req(target=b"/switch/x", headers=[(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"),
                                                    (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
                                                    (b"Sec-WebSocket-Version", b"13")]))
        resp = conn.recv_response(timeout=4.0)
        assert resp.status != 101, resp
        assert_request_id(resp)
        conn.send(b"GET /internal/admin HTTP/1.1\r\nHost: internal\r\n\r\n")
        try:
            conn.recv_response(timeout=2.0)
        except AssertionError:
            pass
    assert upstream.tunnel_data == []
    assert all(r.target != "/internal/admin" for r in upstream.requests)
    assert upstream.requests[0].header("upgrade") is None
