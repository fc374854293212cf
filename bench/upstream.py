"""A deliberately minimal HTTP/1.1 upstream for load benchmarks.

It answers every request with the same fixed, prebuilt response. Parsing is limited to what
keeps the byte stream in sync (end of head, Content-Length of request bodies, pipelining,
Connection: close) so that the upstream costs far less CPU per request than any proxy in
front of it and never becomes the thing being measured. It is not a general HTTP server:
chunked request bodies get 501 and the connection is closed.

    python bench/upstream.py --port 9001                    # 301-byte JSON body (default)
    python bench/upstream.py --port 9001 --answer mcp-json  # an MCP tools/call result, JSON
    python bench/upstream.py --port 9001 --answer mcp-sse   # the same result as one SSE event

`--answer` picks the body (see ANSWERS). The MCP answers are what an SDK server sends for
`tools/call` with id 1 (the request is not read: the id is always 1): `mcp-json` with
Content-Length, `mcp-sse` as `Content-Type: text/event-stream`, chunked, one
`event: message` with one `data:` line, CRLF line ends, then the last chunk (stateless
servers end the stream after the result). `--split-writes` sends the head, each chunk and
the last chunk in separate writes, as uvicorn + sse-starlette do, instead of one write.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal

BODY = json.dumps(
    {
        "id": "bench-0001",
        "object": "bench.result",
        "status": "ok",
        "items": [{"n": i, "name": f"item-{i}", "price": 10 + i, "tags": ["a", "b"]} for i in range(4)],
        "note": "fixed bench body",
    },
    separators=(",", ":"),
).encode()

# An MCP `tools/call` result as a FastMCP-style tool returns it: the structured value once
# as `structuredContent` and once serialized (indent 2, so escape-dense) in content[0].text.
TOOL_RECORD = {
    "id": "c-1",
    "name": "Ada Lovelace",
    "email": "ada.lovelace@example.com",
    "plan": "pro",
    "status": "active",
    "orders": [{"id": "o-1001", "total": 42.5, "currency": "EUR"}],
    "updated": "2026-11-27T04:00:00Z",
}
MCP_RESULT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "content": [{"type": "text", "text": json.dumps(TOOL_RECORD, indent=2)}],
            "structuredContent": TOOL_RECORD,
            "isError": False,
        },
    },
    separators=(",", ":"),
).encode()
SSE_EVENT = b"event: message\r\ndata: " + MCP_RESULT + b"\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
_SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache, no-transform\r\n"
             b"X-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n")
_KEEP, _CLOSE = b"Connection: keep-alive\r\n\r\n", b"Connection: close\r\n\r\n"


def _json(body: bytes) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    return (_HEAD % len(body) + _KEEP, body), (_HEAD % len(body) + _CLOSE, body)


def _sse(events: tuple[bytes, ...]) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    chunks = tuple(_chunk(e) for e in events) + (b"0\r\n\r\n",)
    return (_SSE_HEAD + _KEEP, *chunks), (_SSE_HEAD + _CLOSE, *chunks)


# name -> (keep-alive response, closing response), each as the pieces --split-writes sends apart
ANSWERS = {
    "bench": _json(BODY),
    "mcp-json": _json(MCP_RESULT),
    "mcp-sse": _sse((SSE_EVENT,)),
}
RESPONSE = b"".join(ANSWERS["bench"][0])
RESPONSE_CLOSE = b"".join(ANSWERS["bench"][1])
RESPONSE_501 = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEAD = 64 * 1024


def _body_length(head: bytes) -> tuple[int, bool]:
    """(Content-Length, wants close) of a request head; -1 length means unsupported framing.

    Lowering a ~150-byte head costs well under a microsecond, cheaper than being clever.
    """
    lower = head.lower()
    close = b"connection: close" in lower or lower.startswith(b"http/1.0", lower.find(b" http/") + 1)
    if b"transfer-encoding:" in lower:
        return -1, True
    idx = lower.find(b"\r\ncontent-length:")
    if idx < 0:
        return 0, close
    end = lower.find(b"\r\n", idx + 17)
    try:
        return int(lower[idx + 17:end if end >= 0 else None]), close
    except ValueError:
        return -1, True


class UpstreamProtocol(asyncio.Protocol):
    """One connection: buffer bytes, answer every complete request, batch the writes.

    `for_answer()` makes a subclass with another answer; `PIECES` maps a response to the
    writes it is sent in when writes are split (None: one write per batch of answers)."""

    __slots__ = ("transport", "buf", "skip", "pending")
    RESPONSE = RESPONSE
    RESPONSE_CLOSE = RESPONSE_CLOSE
    PIECES: dict[bytes, tuple[bytes, ...]] | None = None

    @classmethod
    def for_answer(cls, answer: str = "bench", split_writes: bool = False) -> type[UpstreamProtocol]:
        keep, close = ANSWERS[answer]
        response, response_close = b"".join(keep), b"".join(close)
        attrs = {"__slots__": (), "RESPONSE": response, "RESPONSE_CLOSE": response_close,
                 "PIECES": {response: keep, response_close: close} if split_writes else None}
        return type(f"UpstreamProtocol_{answer.replace('-', '_')}", (cls,), attrs)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.skip = 0  # request-body bytes still to arrive before `pending` is sent
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        out = []
        close = False
        if self.skip:
            n = min(self.skip, len(data))
            self.skip -= n
            data = data[n:]
            if self.skip:
                return
            out.append(self.pending)
            close = self.pending is self.RESPONSE_CLOSE
            self.pending = b""
        buf = self.buf + data if self.buf else data
        pos = 0
        while not close:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            length, close = _body_length(buf[pos:end])
            pos = end + 4
            if length < 0:
                out.append(RESPONSE_501)
                break
            response = self.RESPONSE_CLOSE if close else self.RESPONSE
            if length > len(buf) - pos:  # answer once the rest of the body has arrived
                self.skip = length - (len(buf) - pos)
                self.pending = response
                pos = len(buf)
                break
            pos += length
            out.append(response)
        self.buf = buf[pos:] if pos < len(buf) else b""
        transport = self.transport
        if out:
            pieces = self.PIECES
            if pieces is None:
                transport.write(out[0] if len(out) == 1 else b"".join(out))
            else:  # as a framework sends it: head, each chunk, last chunk, one write each
                for response in out:
                    for piece in pieces.get(response, (response,)):
                        transport.write(piece)
        if (close and not self.skip) or len(self.buf) > MAX_HEAD:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int, ready: asyncio.Event | None = None, answer: str = "bench",
                split_writes: bool = False) -> None:
    """Serve until cancelled or SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    protocol = UpstreamProtocol if answer == "bench" and not split_writes else \
        UpstreamProtocol.for_answer(answer, split_writes)
    server = await loop.create_server(protocol, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--answer", choices=tuple(ANSWERS), default="bench",
                        help="bench: 301-byte JSON (default); mcp-json / mcp-sse: an MCP tools/call "
                             "result as application/json / as one text/event-stream event, chunked")
    parser.add_argument("--split-writes", action="store_true",
                        help="send head, each chunk and the last chunk in separate writes")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # still usable, just slower
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    runner(serve(args.host, args.port, answer=args.answer, split_writes=args.split_writes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
