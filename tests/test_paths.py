"""Path and identity confusion (threats.md §2): the upstream receives exactly the path policy matched.

Assertions are on what the recording upstream actually received (`upstream.requests[-1].target`).
Each case is delivered whole, byte by byte and split around every '%', '/', '.', ';', '?' and CR/LF.
"""
from __future__ import annotations

import pytest
from support import (
    RawConn,
    assert_error,
    assert_nothing_forwarded,
    assert_request_id,
    check_accepted,
    check_refused,
    req,
)

PATH_CHARS = b"%/.;?#\\\r\n"


def get(target: bytes) -> bytes:
    return req(b"GET", target)


NORMALIZED = [
    # RFC 3986 §5.2.4 remove_dot_segments / CVE-2019-9901 (Envoy forwarded un-normalized paths)
    pytest.param(b"/items/./A1", "/items/A1", id="dot-segment-RFC3986-5.2.4-CVE-2019-9901"),
    pytest.param(b"/./items/A1", "/items/A1", id="leading-dot-segment-RFC3986-5.2.4"),
    pytest.param(b"/x/../items/A1", "/items/A1", id="dotdot-within-root-RFC3986-5.2.4-CVE-2019-9901"),
    # repeated slashes collapse (CVE-2019-9901 class: Envoy merge_slashes)
    pytest.param(b"//items//A1", "/items/A1", id="repeated-slashes-CVE-2019-9901"),
    # RFC 3986 §6.2.2.2: percent-encoded unreserved characters are decoded
    pytest.param(b"/items/%41%31", "/items/A1", id="encoded-unreserved-RFC3986-6.2.2.2"),
    pytest.param(b"/%69tems/A1", "/items/A1", id="encoded-unreserved-in-literal-segment-RFC3986-6.2.2.2"),
    pytest.param(b"/items/A%2d1", "/items/A-1", id="encoded-hyphen-RFC3986-2.3"),
    # RFC 3986 §3.4: the query is not part of the path and is forwarded verbatim
    pytest.param(b"/items/A1?a=1&b=%20x", "/items/A1?a=1&b=%20x", id="query-verbatim-RFC3986-3.4"),
    pytest.param(b"/items/A1?x=../../secret&y=%2F", "/items/A1?x=../../secret&y=%2F",
                 id="query-not-normalized"),
    pytest.param(b"/items/./A1?a=/./", "/items/A1?a=/./", id="dot-segment-with-query"),
]


@pytest.mark.parametrize("target,expected", NORMALIZED)
def test_normalized_path_reaches_upstream(gateway, upstream, target, expected):
    recs = check_accepted(gateway.port, upstream, get(target), split_chars=PATH_CHARS)
    assert {r.target for r in recs} == {expected}


REFUSED = [
    # climbing above the root is refused, not clamped (RFC 3986 §5.2.4 would clamp silently)
    pytest.param(b"/../items/A1", id="dotdot-above-root-RFC3986-5.2.4"),
    pytest.param(b"/items/../../secret", id="dotdot-twice-above-root-CVE-2021-41773"),
    pytest.param(b"/items/%2e%2e/%2e%2e/secret", id="encoded-dotdot-above-root-CVE-2021-41773"),
    pytest.param(b"/items/.%2e/.%2e/secret", id="half-encoded-dotdot-above-root-CVE-2021-41773"),
    pytest.param(b"/items/%2E%2E/%2E%2E/secret", id="encoded-dotdot-upper-above-root-CVE-2021-42013"),
    # encoded delimiters: the upstream would decode them into structure the policy never saw
    pytest.param(b"/items/A1%2Fsecret", id="encoded-slash-upper-CVE-2021-41773"),
    pytest.param(b"/items/A1%2fsecret", id="encoded-slash-lower-CVE-2021-41773"),
    pytest.param(b"/items/A1%5Csecret", id="encoded-backslash-upper"),
    pytest.param(b"/items/A1%5csecret", id="encoded-backslash-lower"),
    pytest.param(b"/items/A1%00", id="encoded-nul"),
    pytest.param(b"/items/A1%252Fsecret", id="double-encoded-slash-CVE-2021-42013"),
    pytest.param(b"/items/%252e%252e/%252e%252e/secret", id="double-encoded-dotdot-CVE-2021-42013"),
    pytest.param(b"/items/A1%3Bjsessionid=1", id="encoded-semicolon"),
    pytest.param(b"/items/A1%3Fx=1", id="encoded-question-mark"),
    pytest.param(b"/items/A1%23frag", id="encoded-hash"),
    # raw characters that parsers split on differently
    pytest.param(b"/items\\A1", id="raw-backslash"),
    pytest.param(b"/items/A1;jsessionid=1", id="matrix-param-semicolon-Tomcat-path-params"),
    pytest.param(b"/items/A1#frag", id="raw-fragment-RFC9112-3.2"),
    # malformed percent-encoding (RFC 3986 §2.1)
    pytest.param(b"/items/A1%", id="truncated-percent-RFC3986-2.1"),
    pytest.param(b"/items/A1%4", id="short-percent-RFC3986-2.1"),
    pytest.param(b"/items/A1%zz", id="non-hex-percent-RFC3986-2.1"),
]


@pytest.mark.parametrize("target", REFUSED)
def test_ambiguous_path_refused(gateway, upstream, target):
    check_refused(gateway.port, upstream, get(target), 400, split_chars=PATH_CHARS)


@pytest.mark.parametrize("target", [
    pytest.param(b"/Items/A1", id="case-sensitive-literal"),
    pytest.param(b"/ITEMS/A1", id="upper-case-literal"),
    pytest.param(b"/items", id="missing-param"),
    pytest.param(b"/items/A1/extra", id="extra-segment"),
    pytest.param(b"/", id="root"),
])
def test_no_function_for_path(gateway, upstream, target):
    """Matching is exact and case-sensitive: anything else is an unknown function (contract: 404)."""
    with RawConn(gateway.port) as conn:
        conn.send(get(target))
        resp = conn.recv_response()
        body = assert_error(resp, 404, "unknown_function")
        assert body.get("request_id") == resp.request_id
    assert_nothing_forwarded(upstream)


@pytest.mark.parametrize("target,forwarded", [
    # encoded dot segments that do not climb above the root: refused, unknown, or resolved and forwarded
    # resolved -- never forwarded still encoded, where the upstream would resolve them itself
    pytest.param(b"/items/%2e%2e/items/A1", "/items/A1", id="encoded-dotdot-within-root-CVE-2021-41773"),
    pytest.param(b"/items/%2e%2e/secret", None, id="encoded-dotdot-to-unknown-CVE-2021-41773"),
    pytest.param(b"/items/%2e%2e", None, id="encoded-dotdot-as-param-CVE-2021-41773"),
    pytest.param(b"/items/%2e", None, id="encoded-dot-as-param-CVE-2021-41773"),
    pytest.param(b"/items/.%2e", None, id="half-encoded-dotdot-as-param-CVE-2021-41773"),
])
def test_encoded_dot_segments_never_reach_upstream_unresolved(gateway, upstream, target, forwarded):
    with RawConn(gateway.port) as conn:
        conn.send(get(target))
        resp = conn.recv_response()
    assert_request_id(resp)
    if resp.status == 200:
        assert forwarded is not None, f"{target!r} was forwarded as {upstream.requests[-1].target!r}"
        assert [r.target for r in upstream.requests] == [forwarded]
    else:
        assert_error(resp, (400, 404))
        assert_nothing_forwarded(upstream)


@pytest.mark.parametrize("target,allowed", [
    # trailing dots and spaces: Windows/IIS-style upstreams strip them, so "A1." may be "A1" there.
    # The gateway may refuse; if it forwards, the upstream gets the exact (encoded) form policy matched.
    pytest.param(b"/items/A1.", {"/items/A1."}, id="trailing-dot"),
    pytest.param(b"/items/A1%20", {"/items/A1%20"}, id="trailing-encoded-space"),
    pytest.param(b"/items/A1%2e", {"/items/A1."}, id="trailing-encoded-dot"),
    pytest.param(b"/items/%C3%A9", {"/items/%C3%A9", "/items/%c3%a9"}, id="encoded-utf8"),
    pytest.param(b"/items/\xc3\xa9", {"/items/%C3%A9", "/items/%c3%a9"}, id="raw-utf8-RFC3986-2.1"),
])
def test_odd_segments_forwarded_exactly_or_refused(gateway, upstream, target, allowed):
    with RawConn(gateway.port) as conn:
        conn.send(get(target))
        resp = conn.recv_response()
    assert_request_id(resp)
    assert upstream.errors == [], upstream.errors
    if resp.status == 200:
        assert [r.target for r in upstream.requests][:1] and upstream.requests[-1].target in allowed, \
            [r.target for r in upstream.requests]
    else:
        assert_error(resp, (400, 404))
        assert_nothing_forwarded(upstream)


@pytest.mark.parametrize("target", [
    pytest.param(b"/items/A1%0d%0aX-Injected:%201", id="encoded-crlf-CVE-2023-25690"),
    pytest.param(b"/items/A1%0aX-Injected:%201", id="encoded-lf-CVE-2023-25690"),
    pytest.param(b"/items/A1%0d%0a%0d%0aGET%20/items/SMUGGLED%20HTTP/1.1",
                 id="encoded-crlf-request-CVE-2023-25690"),
])
def test_encoded_crlf_never_decoded_into_the_upstream_request(gateway, upstream, target):
    """CVE-2023-25690 (mod_proxy + RewriteRule): a decoded CR/LF split the forwarded request. Refusing is
    fine; forwarding is fine only with CR/LF still percent-encoded and no injected field or request."""
    with RawConn(gateway.port) as conn:
        conn.send(get(target))
        resp = conn.recv_response()
    assert_request_id(resp)
    assert upstream.errors == [], upstream.errors
    if resp.status == 400:
        assert_error(resp, 400)
        assert_nothing_forwarded(upstream)
        return
    assert resp.status in (200, 404), resp
    assert all(r.header("x-injected") is None for r in upstream.requests)
    assert all("SMUGGLED" not in r.target or "%0" in r.target.lower() for r in upstream.requests)
    assert len(upstream.requests) <= 1
    for rec in upstream.requests:
        assert "%0d" in rec.target.lower() or "%0a" in rec.target.lower(), rec.target


def test_path_param_forwarded_as_matched(gateway, upstream):
    """The function's parameter is the normalized segment; the upstream gets the same segment."""
    with RawConn(gateway.port) as conn:
        conn.send(get(b"/items/%41-b_c~d"))
        resp = conn.recv_response()
    assert resp.status == 200, resp
    assert resp.json()["path"] == "/items/A-b_c~d"
    assert upstream.requests[-1].target == "/items/A-b_c~d"


def test_unknown_function_keeps_connection(gateway, upstream):
    """A well-framed request for no function is a 404 and the connection stays usable."""
    with RawConn(gateway.port) as conn:
        conn.send(req(b"DELETE", b"/items/A1"))
        resp = conn.recv_response()
        body = assert_error(resp, 404, "unknown_function")
        assert body["request_id"] == resp.request_id
        assert "close" not in resp.connection_tokens()
        conn.send(get(b"/items/A2"))
        again = conn.recv_response()
        assert again.status == 200 and again.json()["path"] == "/items/A2", again
    assert [r.target for r in upstream.requests] == ["/items/A2"]


@pytest.mark.parametrize("method", [b"TRACE", b"PUT", b"PATCH", b"OPTIONS", b"PROPFIND"])
def test_other_methods_are_unknown_functions(gateway, upstream, method):
    with RawConn(gateway.port) as conn:
        conn.send(req(method, b"/items/A1"))
        resp = conn.recv_response()
    assert_error(resp, (400, 404))
    assert_nothing_forwarded(upstream)


def test_head_is_its_own_function(gateway, upstream):
    """HEAD is matched as HEAD (its own function), never as GET; HEAD /items has none."""
    with RawConn(gateway.port) as conn:
        conn.send(req(b"HEAD", b"/items"))
        resp = conn.recv_response(head=True)
    assert resp.status == 404 and resp.body == b"", resp
    assert_request_id(resp)
    assert_nothing_forwarded(upstream)
