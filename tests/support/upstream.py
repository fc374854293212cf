"""A recording HTTP/1.1 upstream for end-to-end tests.

Runs on 127.0.0.1:0 in a background thread with its own asyncio loop, parses requests with
h11 (server side, keep-alive) and records each complete request together with the exact bytes
it arrived as. The first path segment selects a behaviour, so tests can ask for a hostile or
slow upstream by calling the matching function through the gateway:

    /chunked/...      200, chunked, CHUNKS sent with short pauses
    /stream/...       200, chunked: b"first-", a STREAM_PAUSE_S pause, b"last" (is the answer streamed?)
    /slow-head/...    waits SLOW_HEAD_S before the head
    /slow-body/...    head (Content-Length 20) and 5 bytes, then stalls
    /close/...        reads the request, closes without answering
    /malformed/...    answers `HTTP/1.1 2OO OK`, then keeps the connection open (reads and discards)
    /bad-cl/...       Content-Length: 10, sends 5 bytes, closes
    /big/N            N-byte body, big_body(N)
    /echo/...         echoes the request body and content type
    /status/NNN       answers status NNN with a small JSON body (none for 204/304)
    /te-cl/...        both Content-Length and Transfer-Encoding in the response
    /hop/...          hop-by-hop headers (HOP_RESPONSE_HEADERS) plus X-Visible: yes
    /head-response/.. answers HEAD with a body anyway (non-compliant), then closes
    /switch/...       answers 101 Switching Protocols and records whatever follows as tunnel data
    anything else     200 JSON {"ok": true, "path": TARGET, "method": METHOD}
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import threading
import time

import h11

CHUNKS = (b"alpha-", b"bravo-", b"charlie-", b"delta")
CHUNKED_BODY = b"".join(CHUNKS)
SLOW_HEAD_S = 3.0
STREAM_PAUSE_S = 1.5
SLOW_BODY_STALL_S = 30.0
HOP_RESPONSE_HEADERS = [
    (b"Connection", b"X-Secret-Hop"),
    (b"X-Secret-Hop", b"1"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Proxy-Authenticate", b'Basic realm="upstream"'),
    (b"Proxy-Connection", b"keep-alive"),
    (b"Trailer", b"X-Checksum"),
    (b"Upgrade", b"h2c"),
    (b"X-Visible", b"yes"),
]
_PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"


def big_body(n: int) -> bytes:
    """The deterministic body /big/N answers with."""
    reps = n // len(_PATTERN) + 1
    return (_PATTERN * reps)[:n]


@dataclasses.dataclass
class RecordedRequest:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]  # lowercased names, in order
    body: bytes
    raw: bytes  # the exact bytes of this request as received
    conn_id: int
    http_version: str = "1.1"
    trailers: list[tuple[bytes, bytes]] = dataclasses.field(default_factory=list)

    def header_all(self, name: str | bytes) -> list[bytes]:
        key = (name.encode() if isinstance(name, str) else name).lower()
        return [v for k, v in self.headers if k == key]

    def header(self, name: str | bytes) -> bytes | None:
        values = self.header_all(name)
        return values[0] if values else None

    @property
    def header_names(self) -> set[bytes]:
        return {k for k, _ in self.headers}

    def view(self) -> tuple:
        """What the function sees, without per-request ids and framing: for comparing variants."""
        skip = {b"x-request-id", b"content-length", b"transfer-encoding"}
        return (self.method, self.target, tuple(h for h in self.headers if h[0] not in skip), self.body)


class _ConnState:
    def __init__(self, conn_id: int) -> None:
        self.conn_id = conn_id
        self.buf = bytearray()
        self.start = 0  # offset in buf of the first byte not part of a recorded request
        self.closed = False

    def pending(self) -> bytes:
        return bytes(self.buf[self.start:])


class RecordingUpstream:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self.errors: list[tuple[int, str, bytes]] = []  # (conn_id, message, bytes) of unparseable requests
        self.tunnel_data: list[bytes] = []  # bytes received after a 101 (must stay empty)
        self.connections = 0  # accepted since the last clear()
        self._states: list[_ConnState] = []
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> RecordingUpstream:
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            loop = self._loop
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._on_connect, self.host, 0, backlog=512))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # pragma: no cover - reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="recording-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            fut.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self._loop.close()
            self._loop = None

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.sleep(0.01)  # let closed transports finish

    def __enter__(self) -> RecordingUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what tests look at -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def clear(self) -> None:
        self.requests.clear()
        self.errors.clear()
        self.tunnel_data.clear()
        self.connections = 0
        for st in list(self._states):
            st.start = len(st.buf)
        self._states = [st for st in self._states if not st.closed]

    def partial(self) -> list[bytes]:
        """Bytes received (since clear()) that do not belong to a complete recorded request."""
        return [p for p in (st.pending() for st in list(self._states)) if p]

    def received_nothing(self) -> bool:
        return not self.requests and not self.partial() and not self.errors and not self.tunnel_data

    def wait_for(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.requests

    # ---- server ----------------------------------------------------------------------------------
    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        st = _ConnState(next(self._ids))
        self.connections += 1
        self._states.append(st)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        fed = 0
        try:
            while True:
                req: h11.Request | None = None
                body = bytearray()
                trailers: list[tuple[bytes, bytes]] = []
                while True:
                    try:
                        ev = conn.next_event()
                    except h11.RemoteProtocolError as exc:
                        if not st.closed:
                            self.errors.append((st.conn_id, str(exc), st.pending()))
                        return
                    if ev is h11.NEED_DATA:
                        data = await reader.read(65536)
                        if not data:
                            st.closed = True
                        st.buf += data
                        fed += len(data)
                        conn.receive_data(data)
                        continue
                    if isinstance(ev, h11.Request):
                        req = ev
                        if conn.they_are_waiting_for_100_continue:
                            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, h11.EndOfMessage):
                        trailers = [(bytes(k), bytes(v)) for k, v in ev.headers]
                        break
                    elif isinstance(ev, h11.ConnectionClosed):
                        return
                assert req is not None
                consumed = fed - len(conn.trailing_data[0])
                raw = bytes(st.buf[st.start:consumed])
                st.start = consumed
                rec = RecordedRequest(
                    method=req.method.decode("latin-1"), target=req.target.decode("latin-1"),
                    headers=[(bytes(k), bytes(v)) for k, v in req.headers],
                    body=bytes(body), raw=raw, conn_id=st.conn_id,
                    http_version=req.http_version.decode("latin-1"), trailers=trailers)
                self.requests.append(rec)
                keep = await self._respond(conn, reader, writer, rec, st)
                await writer.drain()
                if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, asyncio.CancelledError, h11.LocalProtocolError):
            return
        finally:
            st.closed = True
            writer.close()

    async def _respond(self, conn: h11.Connection, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, rec: RecordedRequest, st: _ConnState) -> bool:
        """Answer one request; False closes the connection afterwards."""
        path = rec.target.split("?", 1)[0]
        parts = path.split("/")
        kind = parts[1] if len(parts) > 1 else ""
        last = parts[-1]

        def send(event: object) -> None:
            writer.write(conn.send(event))

        def head(status: int, headers: list[tuple[bytes, bytes]]) -> None:
            send(h11.Response(status_code=status, headers=headers))

        def simple(status: int, body: bytes, ctype: bytes = b"application/json",
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
            headers = [(b"Content-Type", ctype), (b"Content-Length", str(len(body)).encode())]
            head(status, headers + (extra or []))
            if rec.method != "HEAD" and body:
                send(h11.Data(data=body))
            send(h11.EndOfMessage())

        def default_body() -> bytes:
            return json.dumps({"ok": True, "path": rec.target, "method": rec.method}).encode()

        if kind == "chunked":
            head(200, [(b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked")])
            for chunk in CHUNKS:
                await writer.drain()
                await asyncio.sleep(0.02)
                send(h11.Data(data=chunk))
            send(h11.EndOfMessage())
            return True
        if kind == "stream":
            head(200, [(b"Content-Type", b"text/event-stream"), (b"Transfer-Encoding", b"chunked")])
            send(h11.Data(data=b"first-"))
            await writer.drain()
            await asyncio.sleep(STREAM_PAUSE_S)
            send(h11.Data(data=b"last"))
            send(h11.EndOfMessage())
            return True
        if kind == "slow-head":
            await asyncio.sleep(SLOW_HEAD_S)
            simple(200, default_body())
            return True
        if kind == "slow-body":
            head(200, [(b"Content-Type", b"text/plain"), (b"Content-Length", b"20")])
            send(h11.Data(data=b"01234"))
            await writer.drain()
            await asyncio.sleep(SLOW_BODY_STALL_S)
            send(h11.Data(data=b"56789abcdefghij"))
            send(h11.EndOfMessage())
            return False
        if kind == "close":
            return False
        if kind == "malformed":
            writer.write(b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            while await reader.read(65536):  # keep it open: a proxy must not reuse it
                pass
            return False
        if kind == "bad-cl":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nhello")
            return False
        if kind == "te-cl":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n0\r\n\r\n")
            return False
        if kind == "head-response":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n"
                         b"hello world")
            return False
        if kind == "switch":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n\r\n")
            await writer.drain()
            while True:
                data = await reader.read(65536)
                if not data:
                    return False
                self.tunnel_data.append(data)
        if kind == "big":
            n = int(last) if last.isdigit() and last.isascii() else 0
            body = big_body(n)
            head(200, [(b"Content-Type", b"application/octet-stream"),
                       (b"Content-Length", str(n).encode())])
            if rec.method != "HEAD":
                step = 256 * 1024
                for i in range(0, n, step):
                    send(h11.Data(data=body[i:i + step]))
                    await writer.drain()
            send(h11.EndOfMessage())
            return True
        if kind == "echo":
            ctype = rec.header("content-type") or b"application/octet-stream"
            simple(200, rec.body, ctype)
            return True
        if kind == "status":
            code = int(last) if last.isdigit() and last.isascii() and len(last) == 3 else 500
            if code in (204, 304):
                head(code, [])
                send(h11.EndOfMessage())
            else:
                simple(code, json.dumps({"upstream_status": code}).encode())
            return True
        if kind == "hop":
            simple(200, default_body(), extra=HOP_RESPONSE_HEADERS)
            return True
        simple(200, default_body())
        return True


if __name__ == "__main__":  # manual use: python tests/support/upstream.py
    with RecordingUpstream() as up:
        print(f"recording upstream on {up.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
