"""A deliberately minimal HTTP/1.1 upstream for load benchmarks.

It answers every request with the same ~300-byte JSON body. Parsing is limited to what
keeps the byte stream in sync (end of head, Content-Length of request bodies, pipelining,
Connection: close) so that the upstream costs far less CPU per request than any proxy in
front of it and never becomes the thing being measured. It is not a general HTTP server:
chunked request bodies get 501 and the connection is closed.

    python bench/upstream.py --port 9001
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

_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
RESPONSE = _HEAD % len(BODY) + b"Connection: keep-alive\r\n\r\n" + BODY
RESPONSE_CLOSE = _HEAD % len(BODY) + b"Connection: close\r\n\r\n" + BODY
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
    """One connection: buffer bytes, answer every complete request, batch the writes."""

    __slots__ = ("transport", "buf", "skip", "pending")

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
            close = self.pending is RESPONSE_CLOSE
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
            response = RESPONSE_CLOSE if close else RESPONSE
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
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if (close and not self.skip) or len(self.buf) > MAX_HEAD:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled or SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=4096, reuse_address=True)
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
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # still usable, just slower
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    runner(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
