"""A blocking client for the admin socket (the CLI's side of `fastgate.admin`'s protocol)."""
from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from typing import Any

import orjson

from fastgate.admin import AdminError, encode

__all__ = ["AdminClient", "AdminError"]

MAX_REPLY_LINE = 256 * 2**20


class AdminClient:
    """One connection; `call()` for plain commands, `stream()` for tail/export.

    Every failure is an `AdminError`: the server's error object, or `unavailable` when the socket
    cannot be reached or closes early.
    """

    def __init__(self, path: str, timeout: float | None = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._ids = itertools.count(1)

    def __enter__(self) -> AdminClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise AdminError("unavailable", f"cannot connect to the admin socket {self.path}: {reason} "
                                            "(is the gateway running? use --socket or -c CONFIG)") from None
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, cmd: str, args: dict[str, Any] | None) -> int:
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        rid = next(self._ids)
        try:
            self._sock.sendall(encode({"id": rid, "cmd": cmd, "args": args or {}}))
        except OSError as exc:
            raise AdminError("unavailable", f"admin socket write failed: {exc}") from None
        return rid

    def _line(self, timeout: float | None) -> dict[str, Any]:
        assert self._sock is not None
        self._sock.settimeout(timeout)
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[:i + 1]
                try:
                    msg = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise AdminError("internal", "the gateway sent a line that is not JSON") from None
                if not isinstance(msg, dict):
                    raise AdminError("internal", "the gateway sent a line that is not an object")
                return msg
            if len(self._buf) > MAX_REPLY_LINE:
                raise AdminError("internal", "answer line too long")
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError:
                raise AdminError("unavailable", f"no answer from the gateway within {timeout} s") from None
            except OSError as exc:
                raise AdminError("unavailable", f"admin socket read failed: {exc}") from None
            if not data:
                raise AdminError("unavailable", "the gateway closed the connection")
            self._buf += data

    @staticmethod
    def _error(msg: dict[str, Any]) -> AdminError:
        err = msg.get("error") or {}
        return AdminError(str(err.get("code", "internal")), str(err.get("message", "unknown error")))

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        """The command's result, or AdminError."""
        for kind, value in self.stream(cmd, args, timeout=self.timeout):
            if kind == "result":
                return value
        raise AdminError("internal", "no answer")  # pragma: no cover - stream always ends in a result

    def stream(self, cmd: str, args: dict[str, Any] | None = None, *,
               timeout: float | None = None) -> Iterator[tuple[str, Any]]:
        """("item", x) for each streamed item, then ("result", result). `timeout` is per line."""
        rid = self._send(cmd, args)
        while True:
            msg = self._line(timeout)
            if msg.get("id") not in (rid, None):
                continue
            if not msg.get("ok"):
                raise self._error(msg)
            if "stream" in msg:
                yield "item", msg["stream"]
            else:
                yield "result", msg.get("result")
                return
