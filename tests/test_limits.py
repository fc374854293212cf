"""Exhaustion (threats.md §7) and `Expect: 100-continue` over real sockets.

Limits in base_config: header_timeout 1s, body_timeout 1s, idle_timeout 5s, max_body_bytes 64KiB,
max_header_bytes 8KiB, max_request_line_bytes 4KiB, max_header_count 50.
"""
from __future__ import annotations

import threading
import time

import httpx
import pytest
from support import (
    RawConn,
    assert_closes,
    assert_error,
    assert_no_complete_request,
    assert_nothing_forwarded,
    assert_request_id,
    base_config,
    check_accepted,
    check_refused,
    req,
)

KIB = 1024
SMUGGLED = b"GET /items/SMUGGLED HTTP/1.1\r\nHost: gw.test\r\n\r\n"


# ---- request line and head size ------------------------------------------------------------------
def test_request_line_within_limit_forwarded(gateway, upstream):
    target = b"/items/A1?q=" + b"a" * (3 * KIB)
    recs = check_accepted(gateway.port, upstream, req(target=target), variants="whole")
    assert recs[0].target == target.decode()


@pytest.mark.parametrize("size", [5 * KIB, 200 * KIB], ids=["5KiB", "200KiB"])
def test_request_line_too_long(gateway, upstream, size):
    """RFC 9110 §15.5.15 414; a long line arriving in one read must be caught too (h11 limit bypass)."""
    check_refused(gateway.port, upstream, req(target=b"/items/A1?q=" + b"a" * size), 414, variants="whole")


def test_request_line_too_long_arriving_slowly(gateway, upstream):
    data = req(target=b"/items/A1?q=" + b"a" * (5 * KIB))
    with RawConn(gateway.port) as conn:
        conn.send_parts([data[i:i + 512] for i in range(0, len(data), 512)], gap=0.01)
        resp = conn.recv_response()
        assert_error(resp, 414, "uri_too_long")
        assert_closes(conn, resp)
    assert_nothing_forwarded(upstream)


def test_head_within_limits_forwarded(gateway, upstream):
    headers = [(f"X-Fill-{i}", "v" * 150) for i in range(30)]  # ~5 KiB in 31 fields
    recs = check_accepted(gateway.port, upstream, req(headers=headers), variants="whole")
    assert len(recs[0].header_all("x-fill-29")) == 1


@pytest.mark.parametrize("headers", [
    pytest.param([("X-Big", "v" * (9 * KIB))], id="one-9KiB-field"),
    pytest.param([(f"X-Fill-{i}", "v" * 300) for i in range(32)], id="32-fields-of-300B"),
    pytest.param([("X-Big", "v" * (100 * KIB))], id="one-100KiB-field-h11-one-pass"),
])
def test_head_too_large(gateway, upstream, headers):
    """RFC 6585 §5 431, also when the whole head arrives in one read (h11 checks only incomplete heads)."""
    check_refused(gateway.port, upstream, req(headers=headers), 431, variants="whole")


def test_head_too_large_arriving_slowly(gateway, upstream):
    data = req(headers=[("X-Big", "v" * (9 * KIB))])
    with RawConn(gateway.port) as conn:
        conn.send_parts([data[i:i + 1024] for i in range(0, len(data), 1024)], gap=0.01)
        resp = conn.recv_response()
        assert_error(resp, 431, "headers_too_large")
        assert_closes(conn, resp)
    assert_nothing_forwarded(upstream)


@pytest.mark.parametrize("count", [60, 5000], ids=["60-fields", "5000-fields-one-pass"])
def test_too_many_header_fields(gateway, upstream, count):
    """max_header_count (CVE-2023-24534 Go textproto class: many small fields)."""
    headers = [(f"X-{i}", "1") for i in range(count)]
    check_refused(gateway.port, upstream, req(headers=headers), 431, variants="whole")


def test_header_count_within_limit_forwarded(gateway, upstream):
    recs = check_accepted(gateway.port, upstream, req(headers=[(f"X-{i}", "1") for i in range(40)]),
                          variants="whole")
    assert recs[0].header("x-39") == b"1"


# ---- body size -----------------------------------------------------------------------------------
def test_body_at_limit_forwarded(gateway, upstream):
    body = b"b" * (64 * KIB)
    recs = check_accepted(gateway.port, upstream, req(b"POST", b"/echo/x", body=body), variants="whole")
    assert recs[0].body == body


def test_content_length_over_limit_refused_before_body(gateway, upstream):
    """RFC 9110 §15.5.14 413 decided from Content-Length alone, before the body is sent; the body that
    follows is never parsed as a request (CVE-2022-22720: Apache kept reading a discarded body)."""
    body = (SMUGGLED * 2000)[:64 * KIB + 1]
    data = req(b"POST", b"/echo/x", body=body)
    head = data[:len(data) - len(body)]
    with RawConn(gateway.port) as conn:
        conn.send(head + body[:100])
        resp = conn.recv_response(timeout=3.0)
        assert_error(resp, 413, "payload_too_large")
        conn.send(body[100:])  # may fail: the gateway may close right after the 413
        if not conn.is_closed(1.0):  # kept open: then it must have discarded exactly the declared body
            conn.send(req(target=b"/items/AFTER"))
            after = conn.recv_response()
            assert after.status == 200 and after.json()["path"] == "/items/AFTER", after
            assert [r.target for r in upstream.requests] == ["/items/AFTER"]
            return
    assert_nothing_forwarded(upstream)


def test_content_length_over_limit_every_delivery(gateway, upstream):
    check_refused(gateway.port, upstream, req(b"POST", b"/echo/x", body=b"x" * (64 * KIB + 1)), 413,
                  variants="whole")


def test_chunked_body_over_limit(gateway, upstream):
    """A chunked body that grows past max_body_bytes: 413 and nothing complete reaches the upstream."""
    with RawConn(gateway.port) as conn:
        conn.send(req(b"POST", b"/echo/x", [(b"Transfer-Encoding", b"chunked")]))
        piece = b"c" * (16 * KIB)
        for _ in range(5):
            if not conn.send(b"%x\r\n%s\r\n" % (len(piece), piece)):
                break
        conn.send(b"0\r\n\r\n" + SMUGGLED)
        resp = conn.recv_response(timeout=3.0)
        assert_error(resp, 413, "payload_too_large")
        assert_closes(conn, resp)
    assert_no_complete_request(upstream)


def test_chunk_extensions_count_against_limits(gateway, upstream):
    """CVE-2024-22019 (Node) / CVE-2023-39326 (Go): extension bytes must be bounded like body bytes."""
    ext = b";" + b"e" * 4000
    body = b"".join(b"1" + ext + b"\r\nx\r\n" for _ in range(100)) + b"0\r\n\r\n"  # ~400 KB for 100 bytes
    with RawConn(gateway.port) as conn:
        conn.send(req(b"POST", b"/echo/x", [(b"Transfer-Encoding", b"chunked")]))
        conn.send(body)
        resp = conn.recv_response(timeout=3.0)
        assert_error(resp, (400, 413, 431))
        assert_closes(conn, resp)
    assert_no_complete_request(upstream)


# ---- Expect: 100-continue (RFC 9110 §10.1.1): decide before 100 ----------------------------------
def test_expect_continue_allowed(gateway, upstream):
    with RawConn(gateway.port) as conn:
        conn.send(req(b"POST", b"/echo/x", [(b"Expect", b"100-continue"), (b"Content-Length", b"5")]))
        interim = conn.recv_response(timeout=3.0)
        assert interim.status == 100, interim
        assert interim.raw_head.startswith(b"HTTP/1.1 100 Continue\r\n")
        assert upstream.requests == []
        conn.send(b"hello")
        final = conn.recv_response()
        assert final.status == 200 and final.body == b"hello", final
        assert_request_id(final)
    (rec,) = upstream.requests
    assert rec.body == b"hello"


@pytest.mark.parametrize("data,status", [
    pytest.param(req(b"POST", b"/nope", [(b"Expect", b"100-continue"), (b"Content-Length", b"5")]), 404,
                 id="unknown-function"),
    pytest.param(req(b"POST", b"/echo/x", [(b"Expect", b"100-continue"), (b"Content-Length", b"70000")]), 413,
                 id="content-length-over-limit"),
])
def test_expect_continue_refused_without_100(gateway, upstream, data, status):
    """The final answer comes first; a 100 would invite the body the gateway will refuse."""
    with RawConn(gateway.port) as conn:
        conn.send(data)
        resp = conn.recv_response(timeout=3.0)
        assert resp.status != 100, "sent 100 Continue before refusing"
        assert_error(resp, status)
    assert_nothing_forwarded(upstream)


# ---- slow clients --------------------------------------------------------------------------------
class Trickle:
    """Sends `data` one piece every `delay` seconds in a thread until done, closed or stopped."""

    def __init__(self, conn: RawConn, data: bytes, delay: float, piece: int = 1) -> None:
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, args=(conn, data, delay, piece), daemon=True)
        self.thread.start()

    def _run(self, conn: RawConn, data: bytes, delay: float, piece: int) -> None:
        for i in range(0, len(data), piece):
            if self.stop.wait(delay) or not conn.send(data[i:i + piece]):
                return
            self.sent += piece

    def join(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_slowloris_head(gateway, upstream):
    """CVE-2007-6750 (slowloris): a head trickled forever gets 408 at header_timeout, then close."""
    data = req(headers=[(f"X-{i}", "1") for i in range(40)])
    with RawConn(gateway.port) as conn:
        t0 = time.monotonic()
        trickle = Trickle(conn, data, delay=0.1, piece=2)  # still sending when the 1 s deadline passes
        try:
            resp = conn.recv_response(timeout=4.0)
        finally:
            trickle.join()
        elapsed = time.monotonic() - t0
        assert_error(resp, 408, "request_timeout")
        assert_closes(conn, resp)
    assert 0.8 <= elapsed <= 3.0, f"408 after {elapsed:.2f}s (header_timeout 1s)"
    assert trickle.sent < len(data)
    assert_nothing_forwarded(upstream)


def test_slow_body(gateway, upstream):
    """R-U-Dead-Yet: a body that stalls longer than body_timeout gets 408 (or a close), never forwarded."""
    with RawConn(gateway.port) as conn:
        conn.send(req(b"POST", b"/echo/x", [(b"Content-Length", b"100")]) + b"x" * 10)
        t0 = time.monotonic()
        try:
            resp = conn.recv_response(timeout=4.0)
        except AssertionError:  # closed without an answer is acceptable here
            resp = None
            assert conn.eof
        elapsed = time.monotonic() - t0
        if resp is not None:
            assert_error(resp, 408, "request_timeout")
            assert conn.is_closed(2.0)
    assert elapsed <= 3.0, f"stalled body held for {elapsed:.2f}s (body_timeout 1s)"
    assert_no_complete_request(upstream)


def test_slow_chunked_body(gateway, upstream):
    with RawConn(gateway.port) as conn:
        conn.send(req(b"POST", b"/echo/x", [(b"Transfer-Encoding", b"chunked")]) + b"a\r\nhello")
        t0 = time.monotonic()
        try:
            resp = conn.recv_response(timeout=4.0)
        except AssertionError:
            resp = None
            assert conn.eof
        if resp is not None:
            assert_error(resp, 408, "request_timeout")
            assert conn.is_closed(2.0)
    assert time.monotonic() - t0 <= 3.0
    assert_no_complete_request(upstream)


def test_others_served_during_slowloris(gateway_factory, upstream):
    """While 30 connections trickle heads (header_timeout 6s here), a normal client is answered promptly:
    a gateway blocked by them would answer only after they time out."""
    gw = gateway_factory(base_config(upstream.port, limits={"header_timeout": "6s"}))
    conns = [RawConn(gw.port) for _ in range(30)]
    trickles = []
    try:
        for conn in conns:
            conn.send(b"GET /items/SLOW HTTP/1.1\r\n")
            trickles.append(Trickle(conn, b"X-Slow: 1\r\n" * 100, delay=0.05))
        with httpx.Client(base_url=gw.url, timeout=5.0) as client:
            for i in range(5):
                t0 = time.monotonic()
                r = client.get(f"/items/N{i}")
                assert r.status_code == 200, r.text
                assert time.monotonic() - t0 < 2.0
        assert all(t.thread.is_alive() for t in trickles), "a slowloris connection ended early"
    finally:
        for t in trickles:
            t.join()
        for conn in conns:
            conn.close()
    assert sorted(r.target for r in upstream.requests) == [f"/items/N{i}" for i in range(5)]


def test_silent_connection_closed(gateway_factory, upstream_server):
    """A connection that never sends a byte does not stay open past idle_timeout (connection floods)."""
    gw = gateway_factory(base_config(upstream_server.port, limits={"idle_timeout": "1s"}))
    with RawConn(gw.port) as conn:
        t0 = time.monotonic()
        assert conn.is_closed(4.0), "silent connection still open after 4 s"
        assert time.monotonic() - t0 >= 0.5


def test_idle_keepalive_closed(gateway_factory, upstream_server):
    gw = gateway_factory(base_config(upstream_server.port, limits={"idle_timeout": "1s"}))
    with RawConn(gw.port) as conn:
        conn.send(req())
        assert conn.recv_response().status == 200
        t0 = time.monotonic()
        time.sleep(0.3)
        conn.send(req(target=b"/items/A2"))  # still open well within idle_timeout
        assert conn.recv_response().status == 200
        assert conn.is_closed(4.0), "idle keep-alive connection still open after 4 s"
        elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed <= 3.5, f"closed after {elapsed:.2f}s (idle_timeout 1s)"


def test_many_idle_connections_do_not_block_service(gateway, upstream):
    conns = []
    try:
        for _ in range(150):
            conns.append(RawConn(gateway.port))
        with httpx.Client(base_url=gateway.url, timeout=3.0) as client:
            r = client.get("/items/FLOOD")
        assert r.status_code == 200
    finally:
        for conn in conns:
            conn.close()


def test_pipeline_flood_answered_in_order(gateway, upstream):
    """200 pipelined requests in one send: answered in order (or cut short with a close, never reordered)."""
    n = 200
    with RawConn(gateway.port, timeout=10.0) as conn:
        conn.send(b"".join(req(target=b"/items/F%d" % i) for i in range(n)))
        got = []
        for i in range(n):
            try:
                resp = conn.recv_response(timeout=10.0)
            except AssertionError:
                assert conn.eof, "pipeline stalled without closing"
                break
            assert resp.status == 200, resp
            got.append(resp.json()["path"])
    assert got == [f"/items/F{i}" for i in range(len(got))]
    assert len(got) >= 32, f"only {len(got)} of {n} pipelined requests answered"
