"""Closed-loop HTTP/1.1 load generator on asyncio/uvloop, the stand-in for wrk.

Each of N keep-alive connections sends one request, waits for the whole response, records
the latency and sends the next, until the duration is over. Being Python it saturates one
core far earlier than wrk does, so its req/s is a floor for fast servers; its latencies and
the server's CPU per request stay meaningful. The run is bounded: whatever has not
answered `grace` seconds after the end is cut off and counted as a timeout.

Library:  result = loadgen.run(port=8080, connections=32, duration=10)
CLI:      python bench/loadgen.py --port 8080 -c 32 -d 10 [--method POST --body '{}'] [--json -]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field


@dataclass
class LoadResult:
    """What one run measured; latencies in milliseconds."""

    connections: int
    duration_s: float
    requests: int = 0  # complete responses, any status (as wrk counts them)
    non_2xx: int = 0
    errors: int = 0  # connect failures, resets, malformed responses
    timeouts: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    max_ms: float = 0.0
    latencies_ns: list[int] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("latencies_ns")
        return d


def build_request(method: str, path: str, host: str, port: int, body: bytes = b"",
                  headers: dict[str, str] | None = None) -> bytes:
    """The exact bytes sent for every request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
        if not any(k.lower() == "content-type" for k in (headers or {})):
            lines.append("Content-Type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _ResponseReader(asyncio.Protocol):
    """Frames one response at a time (Content-Length or chunked); resolves `waiter`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and not self.waiter.done():
            self._try_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed mid-response"))

    def _try_complete(self) -> None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        start = end + 4
        try:
            status = int(head[9:12])
        except ValueError:
            self.waiter.set_exception(ValueError(f"bad status line {bytes(head[:40])!r}"))
            return
        idx = head.find(b"\r\ncontent-length:")
        if idx >= 0:
            stop = head.find(b"\r\n", idx + 17)
            total = start + int(head[idx + 17:stop if stop >= 0 else None])
            if len(buf) < total:
                return
        elif b"transfer-encoding: chunked" in head:
            total = _chunked_end(buf, start)
            if total < 0:
                return
        elif status in (204, 304) or 100 <= status < 200:
            total = start
        else:  # body delimited by close: wait for it
            if not self.closed:
                return
            total = len(buf)
        del buf[:total]
        close = b"\r\nconnection: close" in head
        self.waiter.set_result((status, close))


def _chunked_end(buf: bytearray, pos: int) -> int:
    """Offset just past a complete chunked body starting at pos, or -1 if incomplete."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return -1
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            while trailer_end > pos:  # skip trailer fields
                pos = trailer_end + 2
                trailer_end = buf.find(b"\r\n", pos)
            return -1 if trailer_end < 0 else trailer_end + 2
        pos += size + 2
        if pos > len(buf):
            return -1


async def _worker(host: str, port: int, request: bytes, deadline: float, lat: list[int],
                  res: LoadResult, conns: set, last: list[float]) -> None:
    loop = asyncio.get_running_loop()
    now = time.perf_counter_ns
    proto: _ResponseReader | None = None
    while time.monotonic() < deadline:
        if proto is None or proto.closed:
            try:
                _, proto = await loop.create_connection(_ResponseReader, host, port)
            except OSError:
                res.errors += 1
                await asyncio.sleep(0.05)
                proto = None
                continue
            conns.add(proto)
        proto.waiter = loop.create_future()
        t0 = now()
        proto.transport.write(request)
        try:
            status, close = await proto.waiter
        except asyncio.CancelledError:
            res.timeouts += 1
            raise
        except (ConnectionError, ValueError):
            res.errors += 1
            proto.transport.close()
            proto = None
            continue
        t1 = now()
        lat.append(t1 - t0)
        last[0] = t1
        if status >= 300 or status < 200:
            res.non_2xx += 1
        if close:
            proto.transport.close()
            proto = None
    if proto is not None:
        proto.transport.close()


async def run_load(host: str = "127.0.0.1", port: int = 8080, *, path: str = "/", method: str = "GET",
                   body: bytes = b"", headers: dict[str, str] | None = None, connections: int = 32,
                   duration: float = 10.0, grace: float = 5.0) -> LoadResult:
    """Run one closed-loop load window; never takes longer than duration + grace (+ connect)."""
    request = build_request(method, path, host, port, body, headers)
    res = LoadResult(connections=connections, duration_s=duration)
    lat: list[int] = []
    conns: set[_ResponseReader] = set()
    start = time.monotonic()
    start_ns = time.perf_counter_ns()
    last = [start_ns]
    deadline = start + duration
    tasks = [asyncio.ensure_future(_worker(host, port, request, deadline, lat, res, conns, last))
             for _ in range(connections)]
    done, pending = await asyncio.wait(tasks, timeout=duration + grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for proto in conns:
        if proto.transport is not None:
            proto.transport.close()
    # the window ends with the last completed response (in-flight ones finish after deadline)
    elapsed = (last[0] - start_ns) / 1e9 if lat else duration
    _fill_stats(res, lat, max(elapsed, 1e-9))
    return res


def _fill_stats(res: LoadResult, lat: list[int], elapsed: float) -> None:
    res.latencies_ns = lat
    res.requests = len(lat)
    res.duration_s = round(elapsed, 3)
    if not lat:
        return
    ordered = sorted(lat)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6

    res.rps = len(lat) / elapsed
    res.p50_ms, res.p90_ms, res.p99_ms = pct(0.50), pct(0.90), pct(0.99)
    res.mean_ms = sum(ordered) / len(ordered) / 1e6
    res.max_ms = ordered[-1] / 1e6


def run(host: str = "127.0.0.1", port: int = 8080, **kwargs) -> LoadResult:
    """Synchronous wrapper: a fresh (uv)loop per run."""
    try:
        import uvloop
        return uvloop.run(run_load(host, port, **kwargs))
    except ImportError:
        return asyncio.run(run_load(host, port, **kwargs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body", default="", help="request body (sent with Content-Length)")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("--json", metavar="FILE", help="write the summary as JSON ('-' = stdout)")
    args = parser.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    res = run(args.host, args.port, path=args.path, method=args.method.upper(), body=args.body.encode(),
              headers=headers, connections=args.connections, duration=args.duration)
    if args.json == "-":
        json.dump(res.summary(), sys.stdout)
        print()
        return 0
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res.summary(), fh, indent=2)
    print(f"{res.requests} requests in {res.duration_s:.2f}s, {res.connections} connections: "
          f"{res.rps:,.0f} req/s  p50 {res.p50_ms:.3f} ms  p99 {res.p99_ms:.3f} ms  "
          f"non-2xx {res.non_2xx}  errors {res.errors}  timeouts {res.timeouts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
