"""The admin socket: the contract's NDJSON protocol on a Unix socket.

Three layers, each testable alone: the **codec** (one JSON object per line each way), the
**server** (`AdminServer`: socket creation and peer checks, limits, dispatch to registered
handlers) and the **record commands** (`RecordCommands`: status and `sessions.*` over the store).

Protocol. Request `{"id": 1, "cmd": "sessions.show", "args": {...}}`; answer
`{"id": 1, "ok": true, "result": ...}` or `{"id": 1, "ok": false, "error": {"code", "message"}}`
with code `bad_request | not_found | forbidden | unavailable | internal`. A streaming command
(`sessions.tail`, `sessions.export`) first sends any number of `{"id": 1, "ok": true, "stream": item}`
lines, then the final answer (tail has none: it streams until the client closes the connection).
Requests on one connection are answered in order.

Handlers. `server.register(name, handler)` with `async def handler(args: dict) -> Any` (the result
must be JSON-encodable by orjson); `register(name, handler, stream=True)` with
`async def handler(args: dict, stream: Stream) -> Any`, calling `await stream.send(item)` per item
and checking `stream.closed`. Raise `AdminError(code, message)` to answer an error;
`StoreUnavailable` answers `unavailable`; anything else answers `internal` (and is logged).

Safety. The socket is created mode 0600 (umask held while binding). The server refuses to start if
the path exists and is not a socket owned by us, or if a live gateway answers on it; a stale socket
of ours is replaced. Each connection's peer uid (SO_PEERCRED) must be ours or root. A request
line is at most `max_line` bytes (1 MiB), at most `max_connections` (32) are served at once, an
idle connection is closed after `idle_timeout`. No command deletes or alters a record, and no
command makes the gateway write a file a client names: `sessions.export` streams the events back
and the CLI writes the file.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import ssl
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import h11
import orjson

from fastgate import records
from fastgate.store import Store, StoreUnavailable

__all__ = ["AdminError", "AdminServer", "AdminSocketError", "RecordCommands", "Stream",
           "decode_request", "encode"]

ERROR_CODES = frozenset({"bad_request", "not_found", "forbidden", "unavailable", "internal"})
MAX_LINE = 2**20


class AdminError(Exception):
    """An error answer: `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str, *, rid: Any = None) -> None:
        if code not in ERROR_CODES:
            code = "internal"
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.rid = rid   # the request's id, when a malformed request still had a usable one

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class AdminSocketError(Exception):
    """The admin socket cannot be created (path taken, in use, not ours)."""


# --------------------------------------------------------------------------- codec

def encode(message: Any) -> bytes:
    """One protocol line. Stored events pass through as `orjson.Fragment` (their exact bytes)."""
    return orjson.dumps(message) + b"\n"


def reply(rid: Any, result: Any) -> bytes:
    return encode({"id": rid, "ok": True, "result": result})


def error_reply(rid: Any, error: AdminError) -> bytes:
    return encode({"id": rid, "ok": False, "error": error.to_dict()})


def decode_request(line: bytes) -> tuple[Any, str, dict[str, Any]]:
    """(id, cmd, args) of a request line; AdminError(bad_request) if it is not one."""
    try:
        msg = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise AdminError("bad_request", "a request is one JSON object per line") from None
    if not isinstance(msg, dict):
        raise AdminError("bad_request", "a request is a JSON object")
    rid = msg.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (int, str))):
        raise AdminError("bad_request", "id must be a number or a string")
    cmd, args = msg.get("cmd"), msg.get("args", {})
    if not isinstance(cmd, str) or not cmd:
        raise AdminError("bad_request", "cmd must be a non-empty string", rid=rid)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise AdminError("bad_request", "args must be an object", rid=rid)
    return rid, cmd, args


# --------------------------------------------------------------------------- server

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
StreamHandler = Callable[[dict[str, Any], "Stream"], Awaitable[Any]]


class Stream:
    """Where a streaming handler sends its items."""

    def __init__(self, rid: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.rid = rid
        self._reader = reader
        self._writer = writer
        self.sent = 0

    @property
    def closed(self) -> bool:
        """The client went away (or the server is closing the connection)."""
        return self._reader.at_eof() or self._writer.is_closing()

    async def send(self, item: Any) -> None:
        self._writer.write(encode({"id": self.rid, "ok": True, "stream": item}))
        self.sent += 1
        await self._writer.drain()


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def bind_admin_socket(path: str) -> tuple[socket.socket, int]:
    """A listening Unix socket at `path`, mode 0600. Returns (socket, inode)."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise AdminSocketError(f"{path} exists and is not a socket; refusing to replace it")
        if st.st_uid != os.geteuid():
            raise AdminSocketError(f"{path} is a socket owned by uid {st.st_uid}, not us; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # stale: nobody listens
        except OSError as exc:
            raise AdminSocketError(f"cannot probe the existing socket {path}: {exc}") from None
        else:
            raise AdminSocketError(f"{path} is in use by a running process; stop it first")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise AdminSocketError(f"cannot bind the admin socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock, os.stat(path).st_ino


class AdminServer:
    """Serves registered commands on the admin socket (runs on the owner's event loop)."""

    def __init__(self, path: str | os.PathLike[str], *, max_line: int = MAX_LINE, max_connections: int = 32,
                 idle_timeout: float = 300.0, log: Any = None) -> None:
        self.path = os.fspath(path)
        self.max_line = max_line
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.log = log
        self._handlers: dict[str, tuple[Callable[..., Awaitable[Any]], bool]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._inode = 0
        self._tasks: set[asyncio.Task] = set()
        self.allowed_uids = {os.geteuid(), 0}

    def register(self, name: str, handler: Callable[..., Awaitable[Any]], *, stream: bool = False) -> None:
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"admin handler for {name!r} must be an async function")
        self._handlers[name] = (handler, stream)

    @property
    def commands(self) -> list[str]:
        return sorted(self._handlers)

    async def start(self) -> None:
        sock, self._inode = bind_admin_socket(self.path)
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=self.max_line)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for _ in range(3):  # let connections accepted just now reach _client and register
            await asyncio.sleep(0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        try:
            try:
                uid = _peer_uid(writer.get_extra_info("socket"))
            except OSError:
                uid = -1
            if uid not in self.allowed_uids:
                self._event("warning", "admin connection refused", uid=uid)
                writer.write(error_reply(None, AdminError("forbidden", f"uid {uid} may not use this socket")))
                return
            if len(self._tasks) >= self.max_connections:
                writer.write(error_reply(None, AdminError(
                    "unavailable", f"too many admin connections (max {self.max_connections})")))
                return
            assert task is not None
            self._tasks.add(task)
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), self.idle_timeout)
            except TimeoutError:
                return
            except ValueError:  # the line outgrew the reader's limit
                writer.write(error_reply(None, AdminError(
                    "bad_request", f"request line exceeds {self.max_line} bytes")))
                return
            if not line:
                return
            if not line.strip():
                continue
            if not await self._dispatch(line, reader, writer):
                return

    async def _dispatch(self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        rid = None
        try:
            rid, cmd, args = decode_request(line)
            entry = self._handlers.get(cmd)
            if entry is None:
                raise AdminError("bad_request", f"unknown command {cmd!r}; known: {', '.join(self.commands)}")
            handler, streaming = entry
            if streaming:
                stream = Stream(rid, reader, writer)
                result = await handler(args, stream)
                if stream.closed:
                    return False
            else:
                result = await handler(args)
            writer.write(reply(rid, result))
        except AdminError as exc:
            writer.write(error_reply(rid if rid is not None else exc.rid, exc))
        except StoreUnavailable as exc:
            writer.write(error_reply(rid, AdminError("unavailable", str(exc))))
        except ConnectionError:
            return False
        except Exception as exc:  # noqa: BLE001 - answer, log, keep serving
            self._event("error", "admin command failed", error=f"{type(exc).__name__}: {exc}")
            writer.write(error_reply(rid, AdminError("internal", f"{type(exc).__name__}")))
        await writer.drain()
        return True

    def _event(self, level: str, msg: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.event(level, msg, **fields)


# --------------------------------------------------------------------------- argument checks

def _str(args: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = args.get(key)
    if value is None:
        if required:
            raise AdminError("bad_request", f"args.{key} is required")
        return None
    if not isinstance(value, str) or not value:
        raise AdminError("bad_request", f"args.{key} must be a non-empty string")
    return value


def _int(args: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = args.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise AdminError("bad_request", f"args.{key} must be an integer from {lo} to {hi}")
    return value


# --------------------------------------------------------------------------- record commands

class RecordCommands:
    """`status` and `sessions.*` over the store. Store reads run in worker threads.

    `status_extra`: a function (sync or async) returning more `status` fields (workers, config
    version, approvals pending, ...). `mask_response(function, body) -> body` masks the answer of a
    replayed request the way the live pipeline would; without it the answer is shown as received.
    """

    def __init__(self, store: Store, *, export_dir: str | None = None,
                 status_extra: Callable[[], Any] | None = None, started: float | None = None,
                 poll_interval: float = 0.1, mask_response: Callable[[str | None, bytes], bytes] | None = None,
                 max_body_bytes: int = 64 * 2**10, replay_timeout: float = 10.0) -> None:
        self.store = store
        self.export_dir = export_dir
        self.status_extra = status_extra
        self.started = time.time() if started is None else started
        self.poll_interval = poll_interval
        self.mask_response = mask_response
        self.max_body_bytes = max_body_bytes
        self.replay_timeout = replay_timeout

    def install(self, server: AdminServer) -> None:
        server.register("status", self.status)
        server.register("sessions.list", self.sessions_list)
        server.register("sessions.show", self.sessions_show)
        server.register("sessions.tail", self.sessions_tail, stream=True)
        server.register("sessions.verify", self.sessions_verify)
        server.register("sessions.export", self.sessions_export, stream=True)
        server.register("sessions.replay", self.sessions_replay)

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        def read() -> tuple[tuple[int, str | None], int, dict[str, Any]]:
            with self.store.read() as snap:
                return snap.head(), snap.count(), self.store.stat()
        (seq, digest), count, store_stat = await asyncio.to_thread(read)
        result: dict[str, Any] = {
            "pid": os.getpid(), "uptime_s": round(time.time() - self.started, 3), "cores": os.cpu_count(),
            "store": store_stat, "head": {"seq": seq, "hash": digest}, "events": count}
        if self.status_extra is not None:
            extra = self.status_extra()
            if inspect.isawaitable(extra):
                extra = await extra
            result.update(extra or {})
        return result

    async def sessions_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        since = _str(args, "since")
        if since is not None:
            try:
                since = records.parse_since(since)
            except ValueError as exc:
                raise AdminError("bad_request", f"args.since: {exc}") from None
        subject, function = _str(args, "subject"), _str(args, "function")
        decision, cursor = _str(args, "decision"), _str(args, "cursor")
        limit = _int(args, "limit", 50, 1, 1000) or 50

        def read() -> list[dict[str, Any]]:
            with self.store.read() as snap:
                return records.list_sessions(snap, since=since, subject=subject, function=function,
                                             decision=decision, limit=limit, cursor=cursor)
        return await asyncio.to_thread(read)

    async def _session(self, sid: str) -> dict[str, Any]:
        def read() -> list[dict[str, Any]]:
            with self.store.read() as snap:
                return snap.session_events(sid)
        events = await asyncio.to_thread(read)
        if not events:
            raise AdminError("not_found", f"no session {sid!r}")
        return records.merge_session(events)

    async def sessions_show(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._session(_str(args, "id", required=True) or "")

    async def sessions_verify(self, args: dict[str, Any]) -> dict[str, Any]:
        export_dir = _str(args, "export_dir") or self.export_dir
        if args.get("export") is False:
            export_dir = None

        def run() -> dict[str, Any]:
            with self.store.read() as snap:
                return records.verify(snap, export_dir)
        try:
            return await asyncio.to_thread(run)
        except (OSError, ValueError, KeyError) as exc:
            raise AdminError("unavailable", f"cannot read the export at {export_dir}: {exc}") from None

    async def _send_range(self, stream: Stream, start: int, end: int | None) -> tuple[int, int | None, int | None]:
        """Stream stored events start..end (exact bytes) in chunks; (count, first, last)."""
        count, first, last = 0, None, None
        seq = start
        while not stream.closed:
            def read(lo: int = seq) -> list[tuple[int, bytes]]:
                with self.store.read() as snap:
                    out = []
                    for s, raw in snap.events(lo, end):
                        out.append((s, bytes(raw)))
                        if len(out) >= 1000:
                            break
                    return out
            chunk = await asyncio.to_thread(read)
            if not chunk:
                break
            for s, raw in chunk:
                await stream.send(orjson.Fragment(raw))
                first = s if first is None else first
                last, count = s, count + 1
            seq = chunk[-1][0] + 1
        return count, first, last

    async def sessions_tail(self, args: dict[str, Any], stream: Stream) -> dict[str, Any]:
        """New events as they are committed, by any process; `from_seq` replays from there first.
        `limit` ends the stream after that many events (with a final answer)."""
        limit = _int(args, "limit", None, 1, 10**9)
        from_seq = _int(args, "from_seq", None, 1, 2**63)
        last = (from_seq - 1) if from_seq is not None else (await asyncio.to_thread(self.store.head))[0]
        sent = 0
        while not stream.closed:
            head = (await asyncio.to_thread(self.store.head))[0]
            if head > last:
                end = head if limit is None else min(head, last + limit - sent)
                count, _, got_last = await self._send_range(stream, last + 1, end)
                sent += count
                last = got_last if got_last is not None else end
                if limit is not None and sent >= limit:
                    return {"events": sent, "last_seq": last}
                continue
            await asyncio.sleep(self.poll_interval)
        return {"events": sent, "last_seq": last}

    async def sessions_export(self, args: dict[str, Any], stream: Stream) -> dict[str, Any]:
        """Stored events (exact bytes) from `from_seq` to `to_seq`, or all events of `session`."""
        sid = _str(args, "session")
        if sid is not None:
            def read() -> list[tuple[int, bytes]]:
                with self.store.read() as snap:
                    return [(s, bytes(r)) for s in snap.session_seqs(sid) if (r := snap.raw(s)) is not None]
            found = await asyncio.to_thread(read)
            if not found:
                raise AdminError("not_found", f"no session {sid!r}")
            for _, raw in found:
                await stream.send(orjson.Fragment(raw))
            return {"events": len(found), "first_seq": found[0][0], "last_seq": found[-1][0]}
        start = _int(args, "from_seq", 1, 1, 2**63) or 1
        end = _int(args, "to_seq", None, 1, 2**63)
        count, first, last = await self._send_range(stream, start, end)
        return {"events": count, "first_seq": first, "last_seq": last}

    async def sessions_replay(self, args: dict[str, Any]) -> dict[str, Any]:
        sid = _str(args, "id", required=True) or ""
        to = _str(args, "to")

        def read() -> list[dict[str, Any]]:
            with self.store.read() as snap:
                return snap.session_events(sid)
        events = await asyncio.to_thread(read)
        if not events:
            raise AdminError("not_found", f"no session {sid!r}")
        result: dict[str, Any] = {"id": sid, "events": records.replay_view(events), "replay": None}
        if to is None:
            return result
        view = records.merge_session(events)
        try:
            method, target, headers, body = records.replay_request(view)
        except ValueError as exc:
            raise AdminError("bad_request", str(exc)) from None
        recorded = view.get("response") or {}
        replay: dict[str, Any] = {"url": None, "method": method,
                                  "recorded": {"status": recorded.get("status"), "body": recorded.get("body")}}
        try:
            url, status, resp_headers, data = await replay_http(to, method, target, headers, body,
                                                                timeout=self.replay_timeout)
        except AdminError:
            raise
        except (OSError, h11.ProtocolError, TimeoutError, ssl.SSLError) as exc:
            replay["url"] = to
            replay["error"] = f"{type(exc).__name__}: {exc}"
            result["replay"] = replay
            return result
        if self.mask_response is not None:
            data = self.mask_response(view.get("function"), data)
        new = records.body_record(data, self.max_body_bytes)
        replay.update(url=url, new={"status": status, "headers": resp_headers, "body": new.get("body"),
                                    "bytes": new.get("bytes"), "truncated": new.get("truncated")},
                      same_status=status == recorded.get("status"),
                      same_body=new.get("body") == recorded.get("body"))
        result["replay"] = replay
        return result


_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                  "upgrade", "host", "content-length", "expect"})
MAX_REPLAY_BYTES = 8 * 2**20


async def replay_http(to: str, method: str, target: str, headers: dict[str, str], body: bytes, *,
                      timeout: float = 10.0) -> tuple[str, int, dict[str, str], bytes]:
    """Send one request to `to` + `target` (HTTP/1.1, h11); (url, status, headers, body)."""
    parts = urlsplit(to)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AdminError("bad_request", "args.to must be an http:// or https:// URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path.rstrip("/") + target
    url = f"{parts.scheme}://{parts.netloc}{path}"

    async def exchange() -> tuple[int, dict[str, str], bytes]:
        ctx = ssl.create_default_context() if parts.scheme == "https" else None
        reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=ctx)
        try:
            conn = h11.Connection(h11.CLIENT)
            out = [("host", parts.netloc)] + [(k, v) for k, v in headers.items() if k.lower() not in _HOP]
            out += [("content-length", str(len(body))), ("connection", "close")]
            writer.write(conn.send(h11.Request(method=method, target=path, headers=out)))
            if body:
                writer.write(conn.send(h11.Data(data=body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            status, resp_headers, chunks, size = 0, {}, [], 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    for k, v in event.headers:
                        name = k.decode("latin-1")
                        if name not in records.CREDENTIAL_HEADERS:
                            resp_headers[name] = v.decode("latin-1")
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_REPLAY_BYTES:
                        raise OSError(f"replayed answer exceeds {MAX_REPLAY_BYTES} bytes")
                    chunks.append(bytes(event.data))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, resp_headers, b"".join(chunks)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    status, resp_headers, data = await asyncio.wait_for(exchange(), timeout)
    return url, status, resp_headers, data
