"""Raw-socket HTTP/1.1 client helpers: send exactly the bytes a test names, read answers strictly.

The response parser is deliberately strict about what the gateway sends back (one framing,
valid lengths, well-formed chunks): a sloppy answer from the gateway fails the test that
received it instead of being papered over.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import re
import socket
import time
from collections.abc import Iterable, Sequence

ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")  # Crockford base32, 26 chars


class ResponseError(AssertionError):
    """The gateway's answer was malformed."""


class ConnectionClosedError(AssertionError):
    """The peer closed the connection before a complete response head arrived."""


class ResponseTimeout(AssertionError):
    """No (complete) response within the timeout."""


@dataclasses.dataclass
class Response:
    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]  # lowercased names, in order
    body: bytes
    raw_head: bytes
    complete: bool = True  # False when the peer closed before the declared body length

    def __iter__(self):  # status, headers, body = conn.recv_response()
        return iter((self.status, self.headers, self.body))

    def header_all(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k == key]

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def has_header(self, name: str) -> bool:
        return bool(self.header_all(name))

    @property
    def header_names(self) -> set[str]:
        return {k.decode("latin-1") for k, _ in self.headers}

    @property
    def request_id(self) -> str | None:
        return self.header("x-request-id")

    def json(self):
        return json.loads(self.body)

    def connection_tokens(self) -> set[str]:
        return {t.strip().lower() for v in self.header_all("connection") for t in v.split(",") if t.strip()}

    def __repr__(self) -> str:
        body = self.body if len(self.body) < 300 else self.body[:300] + b"..."
        return f"<Response {self.status} {self.headers!r} body={body!r} complete={self.complete}>"


_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class RawConn:
    """One client connection to HOST:PORT with TCP_NODELAY, sending bytes exactly as given."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.send_failed = False

    # ---- sending ---------------------------------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """Send all of data; False (and send_failed) when the peer has already closed or reset."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.send_failed = True
            return False

    def send_parts(self, parts: Iterable[bytes], gap: float = 0.002) -> bool:
        """Send each part as its own segment, pausing `gap` seconds between them."""
        first = True
        for part in parts:
            if not first and gap:
                time.sleep(gap)
            first = False
            if part and not self.send(part):
                return False
        return True

    def send_slowly(self, data: bytes, delay: float, chunk: int = 1) -> bool:
        return self.send_parts([data[i:i + chunk] for i in range(0, len(data), chunk)], gap=delay)

    # ---- receiving -------------------------------------------------------------------------------
    def _fill(self, deadline: float) -> bool:
        """Read once more into buf; False on EOF/reset. Raises ResponseTimeout at the deadline."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ResponseTimeout(f"timed out; buffered {bytes(self.buf[:300])!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise ResponseTimeout(f"timed out; buffered {bytes(self.buf[:300])!r}") from None
        except (ConnectionResetError, ConnectionAbortedError):
            self.eof = self.reset = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _read_line(self, deadline: float, limit: int = 1 << 20) -> bytes:
        while True:
            idx = self.buf.find(b"\r\n")
            if idx >= 0:
                line = bytes(self.buf[:idx])
                del self.buf[:idx + 2]
                return line
            if len(self.buf) > limit:
                raise ResponseError("line too long in response")
            if not self._fill(deadline):
                raise _Truncated()

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise _Truncated()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def recv_response(self, timeout: float = 5.0, head: bool = False) -> Response:
        """Read one response (1xx included). `head=True` when it answers a HEAD request."""
        deadline = time.monotonic() + timeout
        while True:
            idx = self.buf.find(b"\r\n\r\n")
            if idx >= 0:
                break
            if len(self.buf) > 1 << 20:
                raise ResponseError("response head larger than 1 MiB")
            if not self._fill(deadline):
                if self.buf:
                    raise ResponseError(f"connection closed inside a response head: {bytes(self.buf)!r}")
                raise ConnectionClosedError("connection closed before a response" +
                                            (" (reset)" if self.reset else ""))
        raw_head = bytes(self.buf[:idx + 4])
        del self.buf[:idx + 4]
        lines = raw_head[:-4].split(b"\r\n")
        m = re.match(rb"^(HTTP/1\.[01]) ([1-5][0-9][0-9]) ([\t \x21-\x7e\x80-\xff]*)$", lines[0])
        if not m:
            raise ResponseError(f"bad status line {lines[0]!r}")
        version, status, reason = m.group(1), int(m.group(2)), m.group(3)
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.match(name):
                raise ResponseError(f"bad header line {line!r} in {raw_head!r}")
            value = value.strip(b" \t")
            if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value):
                raise ResponseError(f"control byte in header {line!r}")
            headers.append((name.lower(), value))
        resp = Response(status, reason, version, headers, b"", raw_head)
        cls = [v for k, v in headers if k == b"content-length"]
        tes = [v for k, v in headers if k == b"transfer-encoding"]
        if cls and tes:
            raise ResponseError(f"response with both Content-Length and Transfer-Encoding: {raw_head!r}")
        if len(cls) > 1 or (cls and not re.fullmatch(rb"[0-9]{1,15}", cls[0])):
            raise ResponseError(f"bad Content-Length in response: {cls!r}")
        if head or 100 <= status < 200 or status in (204, 304):
            if status == 204 and (cls or tes):
                raise ResponseError("204 with a body framing header")
            return resp
        try:
            if tes:
                if [t.strip().lower() for t in b",".join(tes).split(b",")] != [b"chunked"]:
                    raise ResponseError(f"unexpected response Transfer-Encoding {tes!r}")
                body = bytearray()
                while True:
                    size_line = self._read_line(deadline)
                    size_txt = size_line.split(b";", 1)[0].strip(b" \t")
                    if not re.fullmatch(rb"[0-9A-Fa-f]{1,15}", size_txt):
                        raise ResponseError(f"bad chunk size line {size_line!r}")
                    size = int(size_txt, 16)
                    if size == 0:
                        while self._read_line(deadline):  # trailers
                            pass
                        break
                    body += self._read_exact(size, deadline)
                    if self._read_exact(2, deadline) != b"\r\n":
                        raise ResponseError("chunk not followed by CRLF")
                resp.body = bytes(body)
            elif cls:
                n = int(cls[0])
                try:
                    resp.body = self._read_exact(n, deadline)
                except _Truncated:
                    resp.body = bytes(self.buf)
                    self.buf.clear()
                    resp.complete = False
            else:
                while self._fill(deadline):
                    pass
                resp.body = bytes(self.buf)
                self.buf.clear()
        except _Truncated:
            resp.body = bytes(self.buf)
            self.buf.clear()
            resp.complete = False
        return resp

    def recv_final(self, timeout: float = 5.0, head: bool = False) -> tuple[list[Response], Response]:
        """Read 1xx answers until a final one: (informational, final)."""
        info = []
        while True:
            resp = self.recv_response(timeout, head=head)
            if resp.status >= 200:
                return info, resp
            info.append(resp)

    def read_until(self, marker: bytes, timeout: float = 5.0) -> bool:
        """Read until `marker` is buffered (True) or timeout/EOF (False); the bytes stay in buf."""
        deadline = time.monotonic() + timeout
        try:
            while marker not in self.buf:
                if not self._fill(deadline):
                    return False
        except ResponseTimeout:
            return False
        return True

    def is_closed(self, timeout: float = 2.0) -> bool:
        """True when the peer closes (EOF or reset) within timeout; bytes read meanwhile stay in buf."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except ResponseTimeout:
            return False
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Truncated(Exception):
    pass


# ---- split delivery ---------------------------------------------------------------------------------
def split_variants(data: bytes, every_index: bool = True,
                   at: Sequence[int] = ()) -> list[tuple[str, list[bytes]]]:
    """Ways to deliver `data`: whole, byte by byte, and split in two at every index (or at `at`)."""
    bytewise = [data[i:i + 1] for i in range(len(data))]
    out: list[tuple[str, list[bytes]]] = [("whole", [data]), ("bytewise", bytewise)]
    points = range(1, len(data)) if every_index else sorted({i for i in at if 0 < i < len(data)})
    out += [(f"split@{i}", [data[:i], data[i:]]) for i in points]
    return out


def crlf_split_points(data: bytes, spread: int = 1, chars: bytes = b"\r\n:;") -> list[int]:
    """Split points around every byte of `chars` (CR, LF, ':' and ';' by default: where parsers keep
    state), from spread before it to spread after it."""
    points = set()
    for i, b in enumerate(data):
        if b in chars:
            points.update(range(i - spread, i + spread + 2))
    return sorted(p for p in points if 0 < p < len(data))


@dataclasses.dataclass
class Exchange:
    name: str
    response: Response | None
    closed: bool | None  # checked only when close_check > 0 and the last answer was >= 400
    error: str | None = None
    responses: list[Response] = dataclasses.field(default_factory=list)


def exchange(port: int, parts: Sequence[bytes], *, name: str = "", gap: float = 0.002, timeout: float = 5.0,
             head: bool = False, close_check: float = 0.0, n_responses: int = 1) -> Exchange:
    """Fresh connection: send parts, read n_responses (1xx skipped), optionally check it closes."""
    with RawConn(port, timeout=timeout) as conn:
        conn.send_parts(parts, gap=gap)
        responses = []
        try:
            for _ in range(n_responses):
                responses.append(conn.recv_final(timeout, head=head)[1])
        except AssertionError as exc:
            return Exchange(name, responses[0] if responses else None, None,
                            f"{type(exc).__name__}: {exc}", responses)
        # only refusals are expected to close; a success is reported as is (no pointless wait)
        closed = conn.is_closed(close_check) if close_check and responses[-1].status >= 400 else None
        return Exchange(name, responses[0], closed, None, responses)


def run_variants(port: int, variants: Sequence[tuple[str, list[bytes]]], *, workers: int = 8,
                 **kwargs) -> list[Exchange]:
    """Run exchange() for each variant concurrently, each on a fresh connection; results in order."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(exchange, port, parts, name=name, **kwargs) for name, parts in variants]
        return [f.result() for f in futures]
