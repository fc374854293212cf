"""text/event-stream framing for the answer rewriters (redaction, MCP), sans-IO.

WHATWG event-stream grammar: lines end in CRLF, LF or CR; a blank line ends an event; a BOM may
open the stream. One event is held at a time (bounded by `limit`), so a stream of any length
passes in constant memory. Lines that are not `data` (event, id, retry, comments) stay byte for
byte; only an event's data payload (its data lines joined by LF) is handed to `rewrite`.
"""
from __future__ import annotations

import re

LINE_END = re.compile(rb"\r\n|\r|\n")
BOM = b"\xef\xbb\xbf"


class EventRewriter:
    """`feed(chunk) -> bytes`, `close() -> bytes`; subclasses define `rewrite` and `too_large`."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._buf = b""
        self._lines: list[tuple[bytes, bytes]] = []  # (line without its end, line end)
        self._size = 0
        self._started = False

    def rewrite(self, payload: bytes) -> bytes | None:
        """The new payload of one event, or None to pass the event verbatim."""
        raise NotImplementedError

    def too_large(self) -> Exception:
        """What to raise for an event over `limit` bytes."""
        raise NotImplementedError

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data
        out = []
        if not self._started:
            if len(buf) < 3 and BOM.startswith(buf):
                self._buf = buf
                return b""
            self._started = True
            if buf.startswith(BOM):  # a BOM is not part of the first field name
                out.append(buf[:3])
                buf = buf[3:]
        pos = 0
        for m in LINE_END.finditer(buf):
            if m.group() == b"\r" and m.end() == len(buf):
                break  # the LF of a CRLF may come with the next chunk
            out.append(self._line(buf[pos:m.start()], m.group()))
            pos = m.end()
        self._buf = buf[pos:]
        if len(self._buf) + self._size > self._limit:
            raise self.too_large()
        return b"".join(out)

    def close(self) -> bytes:
        out = b""
        if self._buf:
            line, self._buf = self._buf, b""
            end = b""
            if line.endswith(b"\r"):
                line, end = line[:-1], b"\r"
            out = self._line(line, end) if line else self._dispatch(end)
        if self._lines:
            out += self._dispatch(None)
        return out

    def _line(self, line: bytes, end: bytes) -> bytes:
        if line:
            self._lines.append((line, end))
            self._size += len(line) + len(end)
            if self._size > self._limit:
                raise self.too_large()
            return b""
        return self._dispatch(end)

    def _dispatch(self, end: bytes | None) -> bytes:
        lines, self._lines, self._size = self._lines, [], 0
        data: list[tuple[int, int]] = []  # (index of the line, where its value starts)
        for k, (line, _) in enumerate(lines):
            colon = line.find(b":")
            if (line if colon < 0 else line[:colon]) != b"data":
                continue
            start = len(line) if colon < 0 else colon + 1 + (line[colon + 1:colon + 2] == b" ")
            data.append((k, start))
        new = self.rewrite(b"\n".join(lines[k][0][s:] for k, s in data)) if data else None
        if new is None:
            return b"".join(line + eol for line, eol in lines) + (end or b"")
        # The new values go back onto the event's data lines, in order; the last line takes any
        # extra values, and data lines left without a value are dropped.
        values = new.split(b"\n")
        slot = {k: n for n, (k, _) in enumerate(data)}
        rebuilt = []
        for k, (line, eol) in enumerate(lines):
            n = slot.get(k)
            if n is None:
                rebuilt.append(line + eol)
            elif n < len(values):
                prefix = line[:data[n][1]] if b":" in line else b"data:"
                if n == len(data) - 1 and len(values) > len(data):
                    rebuilt.extend(prefix + v + eol for v in values[n:])
                else:
                    rebuilt.append(prefix + values[n] + eol)
        return b"".join(rebuilt) + (end or b"")
