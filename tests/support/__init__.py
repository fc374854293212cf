"""Helpers shared by the end-to-end suites: request builders and assertions on gateway answers.

Import as `from support import ...` (tests/conftest.py puts tests/ on sys.path).
"""
from __future__ import annotations

import json
from collections.abc import Iterable

from .gateway import INJECTED_SECRET, UP_TOKEN, Gateway, base_config, free_port  # noqa: F401
from .rawhttp import ULID_RE, RawConn, Response, crlf_split_points, run_variants, split_variants  # noqa: F401
from .upstream import RecordingUpstream  # noqa: F401

HOST = b"gw.test"

# the contract's `error` value for each status the data plane answers with on its own
ERROR_FOR_STATUS = {400: "bad_request", 408: "request_timeout", 413: "payload_too_large", 414: "uri_too_long",
                    431: "headers_too_large", 501: "not_implemented", 502: "upstream_unavailable",
                    504: "upstream_timeout"}


def req(method: bytes | str = b"GET", target: bytes | str = b"/items/A1",
        headers: Iterable[tuple[bytes | str, bytes | str]] | bytes = (), body: bytes = b"",
        version: bytes = b"HTTP/1.1", host: bytes | None = HOST, content_length: bool | None = None) -> bytes:
    """Build one request. `headers` may be pairs or a raw b"Name: v\\r\\n..." block.

    Content-Length is added when there is a body (or content_length=True) and no framing header was given.
    """
    def b(x: bytes | str) -> bytes:
        return x.encode("latin-1") if isinstance(x, str) else x

    lines = [b(method) + b" " + b(target) + b" " + version]
    if host is not None:
        lines.append(b"Host: " + host)
    if isinstance(headers, bytes):
        block = headers
    else:
        block = b"".join(b(k) + b": " + b(v) + b"\r\n" for k, v in headers)
    framed = any(name in block.lower() for name in (b"content-length:", b"transfer-encoding:"))
    if content_length is None:
        content_length = bool(body) and not framed
    if content_length:
        block += b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    return b"\r\n".join(lines) + b"\r\n" + block + b"\r\n" + body


def chunked(*chunks: bytes, trailers: bytes = b"") -> bytes:
    """A chunked body: each chunk, the last-chunk, optional raw trailer lines, final CRLF."""
    out = b"".join(f"{len(c):x}".encode() + b"\r\n" + c + b"\r\n" for c in chunks if c)
    return out + b"0\r\n" + trailers + b"\r\n"


def assert_request_id(resp: Response) -> str:
    ids = resp.header_all("x-request-id")
    assert len(ids) == 1, f"expected exactly one X-Request-Id, got {ids!r}: {resp!r}"
    assert ULID_RE.match(ids[0]), f"X-Request-Id {ids[0]!r} is not a ULID"
    return ids[0]


def assert_error(resp: Response, status: int | tuple[int, ...],
                 error: str | tuple[str, ...] | None = None) -> dict:
    """Status, X-Request-Id and a JSON error body {"error": ...}; returns the decoded body."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert resp.status in statuses, f"expected {statuses}, got {resp!r}"
    assert_request_id(resp)
    try:
        body = json.loads(resp.body)
    except ValueError:
        raise AssertionError(f"error body is not JSON: {resp!r}") from None
    assert isinstance(body, dict) and isinstance(body.get("error"), str), f"no error field: {resp!r}"
    if error is None and resp.status in ERROR_FOR_STATUS:
        error = ERROR_FOR_STATUS[resp.status]
    if error is not None:
        errors = error if isinstance(error, tuple) else (error,)
        assert body["error"] in errors, f"expected error in {errors}, got {body!r}"
    return body


def assert_closes(conn: RawConn, resp: Response, timeout: float = 2.0) -> None:
    """The gateway said Connection: close and then closed the connection."""
    assert "close" in resp.connection_tokens(), f"no Connection: close on {resp!r}"
    assert conn.is_closed(timeout), f"connection still open {timeout}s after {resp.status}"


def assert_nothing_forwarded(upstream: RecordingUpstream) -> None:
    assert upstream.requests == [], f"upstream got {[(r.method, r.target) for r in upstream.requests]}"
    assert upstream.partial() == [], f"upstream got partial bytes {upstream.partial()!r}"
    assert upstream.errors == [], f"upstream got unparseable bytes {upstream.errors!r}"


def assert_upstream_clean(upstream: RecordingUpstream) -> None:
    """Whatever reached the upstream was well-formed (no unparseable bytes, no tunnel)."""
    assert upstream.errors == [], f"upstream got unparseable bytes {upstream.errors!r}"
    assert upstream.tunnel_data == [], f"bytes tunneled past a 101: {upstream.tunnel_data!r}"


def assert_no_complete_request(upstream: RecordingUpstream) -> None:
    """Nothing complete reached the upstream (a partial, aborted body is tolerated)."""
    got = [(r.method, r.target, r.body[:80]) for r in upstream.requests]
    assert upstream.requests == [], f"upstream got {got}"
    assert upstream.errors == [], f"upstream got unparseable bytes {upstream.errors!r}"


def _summarize(failures: list[str], total: int) -> str:
    by_msg: dict[str, list[str]] = {}
    for name, msg in failures:
        by_msg.setdefault(msg, []).append(name)
    lines = [f"{len(failures)}/{total} delivery variants failed:"]
    for msg, names in list(by_msg.items())[:6]:
        shown = ", ".join(names[:8]) + (f" (+{len(names) - 8})" if len(names) > 8 else "")
        lines.append(f"  [{shown}] {msg[:600]}")
    return "\n".join(lines)


def check_refused(port: int, upstream: RecordingUpstream, data: bytes, status: int | tuple[int, ...],
                  error: str | tuple[str, ...] | None = None, *, variants: str = "auto",
                  split_chars: bytes = b"\r\n:;", gap: float = 0.002, close: bool = True,
                  forwarded: str = "nothing") -> None:
    """Every delivery of `data` is refused with `status` (JSON error, X-Request-Id), the gateway says
    Connection: close and closes, and nothing reaches the upstream (forwarded="nothing") or at least
    no complete request does (forwarded="incomplete": a streamed head, then an abort).

    variants: "whole" | "auto" (whole, byte by byte, split around CR/LF/`:`/`;`/split_chars) | "all"
    (whole, byte by byte, every split index).
    """
    if variants == "whole":
        vs = [("whole", [data])]
    elif variants == "all":
        vs = split_variants(data)
    else:
        vs = split_variants(data, every_index=False, at=crlf_split_points(data, spread=0, chars=split_chars))
    results = run_variants(port, vs, gap=gap, close_check=2.0 if close else 0.0)
    failures = []
    for r in results:
        if r.error:
            failures.append((r.name, r.error))
            continue
        try:
            assert_error(r.response, status, error)
            if close:
                assert "close" in r.response.connection_tokens(), f"no Connection: close on {r.response!r}"
                assert r.closed, f"connection not closed within 2s after {r.response!r}"
        except AssertionError as exc:
            failures.append((r.name, str(exc)))
    assert not failures, _summarize(failures, len(results))
    if forwarded == "nothing":
        assert_nothing_forwarded(upstream)
    else:
        assert_no_complete_request(upstream)


def check_accepted(port: int, upstream: RecordingUpstream, data: bytes, *, variants: str = "auto",
                   split_chars: bytes = b"\r\n:;", gap: float = 0.002, status: int = 200,
                   head: bool = False) -> list:
    """Every delivery of `data` gets `status`, the same response body, and the upstream records the
    same request (method, target, headers but X-Request-Id, body) once per delivery. Returns the
    recorded requests."""
    if variants == "whole":
        vs = [("whole", [data])]
    elif variants == "all":
        vs = split_variants(data)
    else:
        vs = split_variants(data, every_index=False, at=crlf_split_points(data, spread=0, chars=split_chars))
    results = run_variants(port, vs, gap=gap, head=head)
    failures = []
    bodies = set()
    for r in results:
        if r.error:
            failures.append((r.name, r.error))
        elif r.response.status != status:
            failures.append((r.name, f"status {r.response.status}: {r.response!r}"))
        else:
            bodies.add(r.response.body)
    assert not failures, _summarize(failures, len(results))
    assert len(bodies) == 1, f"responses differ across deliveries: {sorted(bodies)[:3]!r}"
    assert_upstream_clean(upstream)
    recs = upstream.wait_for(len(vs), timeout=2.0)
    assert len(recs) == len(vs), f"{len(vs)} deliveries but the upstream recorded {len(recs)} requests"
    views = {rec.view() for rec in recs}
    assert len(views) == 1, f"the upstream saw different requests: {sorted(map(repr, views))[:3]}"
    return list(recs)
