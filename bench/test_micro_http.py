"""Micro-benchmarks of the HTTP parsing seam: what one request head costs to parse.

h11 is the parser the gateway uses on both sides; the bytes.split version does the least
work that still finds the request line and header fields, and is the floor that any
faster parser could approach. The asserts only check the benchmarked code did its job.
"""
from __future__ import annotations

import h11


def _h11_server_parse(data: bytes) -> list:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    events = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            raise AssertionError("incomplete request")
        events.append(event)
        if type(event) is h11.EndOfMessage:
            return events


def _h11_server_keepalive_cycle(conn: h11.Connection, data: bytes) -> h11.Request:
    """One request on a reused connection: parse, answer, reset; no Connection() per call."""
    conn.receive_data(data)
    request = conn.next_event()
    conn.next_event()  # EndOfMessage
    conn.send(h11.Response(status_code=200, headers=[("Content-Length", "2")]))
    conn.send(h11.Data(data=b"{}"))
    conn.send(h11.EndOfMessage())
    conn.start_next_cycle()
    return request


def _h11_client_roundtrip(response: bytes) -> list:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/bench?limit=10",
                          headers=[("Host", "127.0.0.1:9001"), ("Accept", "application/json"),
                                   ("Authorization", "Bearer bench-secret")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(response)
    events = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            raise AssertionError("incomplete response")
        events.append(event)
        if type(event) is h11.EndOfMessage:
            return events


def _split_head(data: bytes) -> tuple:
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, target, version = lines[0].split(b" ", 2)
    headers = [line.split(b":", 1) for line in lines[1:]]
    return method, target, version, [(k.lower(), v.strip()) for k, v in headers], rest


def test_h11_server_parse_request_head(benchmark, request_head):
    events = benchmark(_h11_server_parse, request_head)
    assert type(events[0]) is h11.Request


def test_h11_server_keepalive_parse_and_respond(benchmark, request_head):
    conn = h11.Connection(h11.SERVER)
    request = benchmark(_h11_server_keepalive_cycle, conn, request_head)
    assert type(request) is h11.Request


def test_h11_client_send_request_parse_response(benchmark, response_bytes):
    events = benchmark(_h11_client_roundtrip, response_bytes)
    assert type(events[0]) is h11.Response and events[0].status_code == 200


def test_bytes_split_head_floor(benchmark, request_head):
    method, target, _, headers, _ = benchmark(_split_head, request_head)
    assert method == b"GET" and len(headers) == 4
