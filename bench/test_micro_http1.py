"""Micro-benchmarks of the HTTP/1 readers: the compiled `_core/http1` against its reference.

The reference is h11 plus the gate's checks (`_core/http1_py.py`), which is what the listener
and upstream.py ran before the compiled readers existed. A request benchmark reads one request
to END the way the listener does: a fresh reader (first request on a connection), or one reader
reused with `next_cycle()` (keep-alive). A response benchmark reads one upstream answer to END
with a new reader, as upstream.py does per exchange (for the reference that includes priming
an h11 client connection). The asserts only check that the benchmarked code did its job.
"""
from __future__ import annotations

import pytest

from fastgate._core import compiled_or_none, reference

PY = reference("http1")
C = compiled_or_none("http1")
IMPLS = [pytest.param(PY, id="reference"),
         pytest.param(C, id="compiled", marks=pytest.mark.skipif(C is None, reason="compiled http1 not built"))]
LIMITS = PY.Limits()

POST = (b"POST /items/42 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer 8f14e45fceea167a\r\nContent-Length: 27\r\n\r\n"
        b'{"qty": 2, "sku": "A-1001"}')
CHUNKED = (b"POST /items/42 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n"
           b'1b\r\n{"qty": 2, "sku": "A-1001"}\r\n0\r\n\r\n')


def _read_all(reader, data: bytes) -> list:
    reader.feed(data)
    events = []
    while True:
        ev = reader.next_event()
        events.append(ev)
        if ev is PY.END:
            return events


def _fresh(impl, data: bytes) -> list:
    return _read_all(impl.RequestReader(LIMITS), data)


def _keepalive(reader, data: bytes) -> list:
    events = _read_all(reader, data)
    reader.next_cycle()
    return events


@pytest.mark.parametrize("impl", IMPLS)
def test_request_head_fresh_reader(benchmark, impl, request_head):
    events = benchmark(_fresh, impl, request_head)
    assert events[0].method == b"GET" and len(events[0].headers) == 4


@pytest.mark.parametrize("impl", IMPLS)
def test_request_head_keepalive(benchmark, impl, request_head):
    reader = impl.RequestReader(LIMITS)
    events = benchmark(_keepalive, reader, request_head)
    assert events[0].method == b"GET"


@pytest.mark.parametrize("impl", IMPLS)
def test_post_with_small_body(benchmark, impl):
    reader = impl.RequestReader(LIMITS)
    events = benchmark(_keepalive, reader, POST)
    assert events[1] == b'{"qty": 2, "sku": "A-1001"}'


@pytest.mark.parametrize("impl", IMPLS)
def test_chunked_small_body(benchmark, impl):
    reader = impl.RequestReader(LIMITS)
    events = benchmark(_keepalive, reader, CHUNKED)
    assert events[1] == b'{"qty": 2, "sku": "A-1001"}'


def _read_response(impl, method: bytes, data: bytes) -> list:
    """One upstream answer, as upstream.py reads it: a new reader per exchange."""
    reader = impl.ResponseReader(method)
    reader.feed(data)
    events = []
    while True:
        ev = reader.next_event()
        events.append(ev)
        if ev is PY.END:
            assert reader.reusable
            return events


CHUNKED_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b'31\r\n{"id":"bench-0001","status":"ok","items":[1,2,3]}\r\n0\r\n\r\n')


@pytest.mark.parametrize("impl", IMPLS)
def test_response_content_length(benchmark, impl, response_bytes):
    events = benchmark(_read_response, impl, b"GET", response_bytes)
    assert events[0].status == 200 and len(events[1]) == events[0].content_length


@pytest.mark.parametrize("impl", IMPLS)
def test_response_chunked(benchmark, impl):
    events = benchmark(_read_response, impl, b"GET", CHUNKED_RESPONSE)
    assert events[0].status == 200 and events[1].startswith(b'{"id"')
