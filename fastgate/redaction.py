"""Redaction in the data path: declared fields and PII masked in bodies as they stream.

`Redactor.build(...)` compiles one function+direction's config (selectors, detectors,
mask, custom regexes) once; `Redactor.stream(content_type, content_encoding)` returns a
`Stream` for one body: `feed(chunk) -> bytes`, `close() -> bytes`, and the counts
`masked` / `kinds` for the record. Output never depends on how the body was split.
The JSON work happens in the compiled core `fastgate._core.redact` (pure-Python twin
`redact_py`); this module owns the framing around it.

Framing by media type (parameters ignored except `charset`):
* JSON (`application/json`, `*/*+json`): one document, streamed. Not JSON -> RedactionError
  at the byte where that is known; an empty or all-whitespace body passes (nothing in it).
* `text/event-stream`: events are held until their blank line (at most `max_token` bytes).
  Each event's `data:` payload (lines joined with LF) is redacted as a JSON document if it
  parses, else as text with the detectors. Other fields, comments, line ends (CRLF, LF,
  CR) and unmodified events are passed byte for byte; a modified payload is written back
  as `data:` lines with the original prefixes and line ends.
* NDJSON (`application/x-ndjson`, `application/ndjson`, `application/jsonl`,
  `application/x-jsonlines`): every line is a JSON document (blank lines pass), streamed.
* Text (`text/*`, `application/xml`, `*/*+xml`, `application/javascript`,
  `application/x-www-form-urlencoded`, `application/yaml`, `application/graphql`): the
  detectors over the decoded text in content-defined blocks with an overlap window, so a
  match split across chunks is still caught. Invalid UTF-8 bytes pass through untouched
  (surrogateescape). UTF-16/32 charsets cannot be scanned: RedactionError when detecting.
* No Content-Type: sniffed. A first non-blank byte `{` or `[` makes it JSON (strict),
  anything else text.
* Anything else (images, PDF, octet-stream, multipart, ...): passed through untouched when
  no detectors are configured (selectors name JSON fields; there are none), refused with
  RedactionError when detectors are on: we will not vouch for bytes we cannot read.

`Content-Encoding`: gzip / x-gzip (multi-member) and deflate (zlib or raw) are
decompressed, at most `max_decoded` bytes, and the output is uncompressed
(`Stream.decoded` is True: drop the Content-Encoding header and re-measure). Any other
coding raises RedactionError from `stream()`; a truncated or corrupt stream raises.

After a RedactionError a Stream refuses further input. `status_hint` is 502: the pipeline
answers 502 if the response head has not left, else aborts the connection.

What is masked (rules in `fastgate._core.redact_py`, detectors in `fastgate.pii`): a value
a selector names becomes the mask as a JSON string whatever its type; detectors run over
every key and string value (after JSON unescaping) and over integer tokens (cards only);
JSON serialized inside a string (MCP `content[].text`) is redacted as a document and put
back. Memory is bounded: only an incomplete token is held, strings longer than 64 KiB are
streamed through the detectors (or, if they hold JSON, through a nested redactor).

Masks: a `str.format` string with `{type}` (detector type, custom detector name, or
`field` for a selector match), `{last4}` (last four letters or digits of the masked
value) and `{hash}` (12 hex digits of HMAC-SHA256 under `hash_key`: equal values give
equal tokens, for correlation). Examples: `[REDACTED:{type}]` (default), `****{last4}`,
`<{type}:{hash}>`. Masks of a masked object or array leave {last4} and {hash} empty.
"""
from __future__ import annotations

import codecs
import json
import re
import zlib
from typing import Any

import orjson

from fastgate._core import load
from fastgate._core.redact_py import DEFAULT_MASK, FATAL, MAX_DEPTH, MAX_TOKEN, Plan, RedactionError
from fastgate.sse import EventRewriter

__all__ = ["DEFAULT_MASK", "MAX_DECODED", "RedactionError", "Redactor", "Stream"]

MAX_DECODED = 64 << 20
_DECODE_STEP = 64 << 10

_JSON_TYPES = frozenset(["application/json", "text/json"])
_NDJSON_TYPES = frozenset(["application/x-ndjson", "application/ndjson", "application/jsonl",
                           "application/x-jsonlines", "application/jsonlines"])
_TEXT_TYPES = frozenset(["application/xml", "application/javascript", "application/x-javascript",
                         "application/ecmascript", "application/x-www-form-urlencoded", "application/yaml",
                         "application/x-yaml", "application/graphql", "application/sql"])
_UTF8 = frozenset(["utf-8", "utf8", "us-ascii", "ascii"])
_WIDE_CHARSET = re.compile(r"(?:utf|ucs)-?(?:16|32|2|4)", re.IGNORECASE)


def _media(content_type: str | None) -> tuple[str | None, str | None]:
    """(lowercased type/subtype or None, charset or None)."""
    if content_type is None:
        return None, None
    parts = content_type.split(";")
    media = parts[0].strip().lower() or None
    charset = None
    for param in parts[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return media, charset


class Redactor:
    """One function+direction's compiled redaction; build once, stream many bodies."""

    def __init__(self, plan: Plan, core: Any, max_decoded: int = MAX_DECODED):
        self.plan = plan
        self.core = core
        self.engine = core.Engine(plan)
        self.max_decoded = max_decoded

    @property
    def impl(self) -> str:
        return self.engine.impl

    @classmethod
    def build(cls, selectors: list[str], detectors: list[str], mask: str = DEFAULT_MASK,
              custom: list[tuple[str, str]] | tuple = (), *, hash_key: bytes | None = None,
              max_depth: int = MAX_DEPTH, max_token: int = MAX_TOKEN, max_decoded: int = MAX_DECODED,
              core: Any = None, **limits: int) -> Redactor | None:
        """None when there is nothing to do. ValueError for a bad selector, detector name,
        regex or mask. `core` picks an implementation (tests); `limits` are Plan's window
        sizes (string_window, block, ahead, behind), for tests."""
        plan = Plan(selectors, detectors, mask, custom, hash_key=hash_key, max_depth=max_depth,
                    max_token=max_token, **limits)
        if plan.empty:
            return None
        return cls(plan, core if core is not None else load("redact"), max_decoded)

    def stream(self, content_type: str | None, content_encoding: str | None = None) -> Stream:
        """A Stream for one body. Raises RedactionError for a coding or type we cannot scan."""
        media, charset = _media(content_type)
        detecting = self.plan.detecting
        body: _Body
        if media is None:
            body = _Sniff(self.engine)
        elif media in _JSON_TYPES or media.endswith("+json"):
            if charset is not None and charset not in _UTF8:
                raise RedactionError(f"JSON in charset {charset!r} is not supported", "encoding")
            body = _JsonBody(self.engine)
        elif media == "text/event-stream":
            body = _SseBody(self.engine)
        elif media in _NDJSON_TYPES:
            body = _NdjsonBody(self.engine)
        elif media.startswith("text/") or media in _TEXT_TYPES or media.endswith("+xml"):
            if not detecting:
                body = _Passthrough()
            elif charset is not None and _WIDE_CHARSET.match(charset):
                raise RedactionError(f"cannot scan {media} in charset {charset!r}", "encoding")
            else:
                body = _TextBody(self.engine)
        elif detecting:
            raise RedactionError(f"cannot scan a {media} body for PII", "type")
        else:
            body = _Passthrough()
        decoder = _Decoder.for_header(content_encoding, self.max_decoded)
        return Stream(body, decoder)

    def redact_value(self, value: Any) -> tuple[Any, int]:
        """Masked copy of already-parsed JSON and the number of masks; the value itself
        when nothing was masked. Same rules as the streams (it runs through the core)."""
        try:
            data = orjson.dumps(value)
        except (TypeError, orjson.JSONEncodeError):
            try:
                data = json.dumps(value, allow_nan=False, separators=(",", ":")).encode("ascii")
            except (TypeError, ValueError) as exc:
                raise RedactionError(f"value is not JSON: {exc}") from None
        red = self.engine.json()
        out = red.feed(data) + red.close()
        if not red.masked:
            return value, 0
        try:
            return orjson.loads(out), red.masked
        except orjson.JSONDecodeError:
            return json.loads(out), red.masked

    def redact_text(self, text: str) -> tuple[str, int]:
        """Detectors over one piece of text (a header value, a log line)."""
        if not self.plan.detecting:
            return text, 0
        tr = self.engine.text()
        out = tr.feed(text) + tr.close()
        return out, tr.masked


class Stream:
    """One body through redaction. `masked`, `kinds` (per detector type or selector) and
    `decoded` (the body was decompressed: drop Content-Encoding) are for the caller."""

    def __init__(self, body: _Body, decoder: _Decoder | None = None):
        self._body = body
        self._decoder = decoder
        self.decoded = decoder is not None
        self.kind = body.kind
        self._dead: RedactionError | None = None
        self._closed = False

    @property
    def masked(self) -> int:
        return self._body.masked

    @property
    def kinds(self) -> dict[str, int]:
        return self._body.kinds

    def feed(self, chunk: bytes) -> bytes:
        self._check()
        try:
            data = self._decoder.feed(chunk) if self._decoder is not None else bytes(chunk)
            return self._body.feed(data) if data else b""
        except RedactionError as exc:
            self._dead = exc
            raise

    def close(self) -> bytes:
        self._check()
        try:
            out = b""
            if self._decoder is not None:
                tail = self._decoder.close()
                if tail:
                    out = self._body.feed(tail)
            out += self._body.close()
        except RedactionError as exc:
            self._dead = exc
            raise
        self._closed = True
        return out

    def _check(self) -> None:
        if self._dead is not None:
            raise RedactionError(f"stream already failed: {self._dead}", self._dead.kind)
        if self._closed:
            raise RedactionError("stream already closed", "syntax")


# --------------------------------------------------------------------------- bodies

class _Body:
    kind = "body"
    masked = 0
    kinds: dict[str, int]

    def feed(self, data: bytes) -> bytes:
        raise NotImplementedError

    def close(self) -> bytes:
        raise NotImplementedError


class _Passthrough(_Body):
    kind = "passthrough"

    def __init__(self) -> None:
        self.kinds = {}

    def feed(self, data: bytes) -> bytes:
        return data

    def close(self) -> bytes:
        return b""


class _JsonBody(_Body):
    kind = "json"

    def __init__(self, engine: Any):
        self._red = engine.json()

    @property
    def masked(self) -> int:  # type: ignore[override]
        return self._red.masked

    @property
    def kinds(self) -> dict[str, int]:  # type: ignore[override]
        return self._red.kinds

    def feed(self, data: bytes) -> bytes:
        return self._red.feed(data)

    def close(self) -> bytes:
        return self._red.close()


class _Counting(_Body):
    def __init__(self) -> None:
        self.masked = 0
        self.kinds = {}

    def _add(self, masked: int, kinds: dict[str, int]) -> None:
        self.masked += masked
        for k, v in kinds.items():
            self.kinds[k] = self.kinds.get(k, 0) + v


class _TextBody(_Body):
    kind = "text"

    def __init__(self, engine: Any):
        self._dec = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._text = engine.text()

    @property
    def masked(self) -> int:  # type: ignore[override]
        return self._text.masked

    @property
    def kinds(self) -> dict[str, int]:  # type: ignore[override]
        return self._text.kinds

    def feed(self, data: bytes) -> bytes:
        return self._text.feed(self._dec.decode(data)).encode("utf-8", "surrogateescape")

    def close(self) -> bytes:
        out = self._text.feed(self._dec.decode(b"", True)) + self._text.close()
        return out.encode("utf-8", "surrogateescape")


class _NdjsonBody(_Counting):
    kind = "ndjson"

    def __init__(self, engine: Any):
        super().__init__()
        self._engine = engine
        self._cur = engine.json()

    def feed(self, data: bytes) -> bytes:
        out = []
        start = 0
        while True:
            k = data.find(b"\n", start)
            if k < 0:
                out.append(self._cur.feed(data[start:]))
                return b"".join(out)
            out.append(self._cur.feed(data[start:k]))
            out.append(self._next())
            out.append(b"\n")
            start = k + 1

    def _next(self) -> bytes:
        tail = self._cur.close()
        self._add(self._cur.masked, self._cur.kinds)
        self._cur = self._engine.json()
        return tail

    def close(self) -> bytes:
        return self._next()


class _Sniff(_Body):
    """No Content-Type: JSON if the first non-blank byte opens an object or array, else text."""

    kind = "sniff"

    def __init__(self, engine: Any):
        self._engine = engine
        self._held = b""
        self._inner: _Body | None = None

    @property
    def masked(self) -> int:  # type: ignore[override]
        return self._inner.masked if self._inner is not None else 0

    @property
    def kinds(self) -> dict[str, int]:  # type: ignore[override]
        return self._inner.kinds if self._inner is not None else {}

    def feed(self, data: bytes) -> bytes:
        if self._inner is None:
            self._held += data
            head = self._held.lstrip(b" \t\r\n")
            if not head:
                return b""
            if head[:1] in (b"{", b"["):
                self._inner = _JsonBody(self._engine)
            elif self._engine.plan.detecting:
                self._inner = _TextBody(self._engine)
            else:
                self._inner = _Passthrough()
            self.kind = self._inner.kind
            data, self._held = self._held, b""
        return self._inner.feed(data)

    def close(self) -> bytes:
        if self._inner is None:
            held, self._held = self._held, b""
            return held
        return self._inner.close()


class _SseBody(EventRewriter, _Counting):
    """text/event-stream: each event's data payload redacted as its own document."""

    kind = "sse"

    def __init__(self, engine: Any):
        _Counting.__init__(self)
        EventRewriter.__init__(self, engine.plan.max_token)
        self._engine = engine

    def too_large(self) -> Exception:
        return RedactionError(f"an event-stream event is larger than {self._limit} bytes", "size")

    def rewrite(self, payload: bytes) -> bytes | None:
        out, masked, kinds = self._redact(payload)
        if not masked:
            return None
        self._add(masked, kinds)
        return out

    def _redact(self, payload: bytes) -> tuple[bytes, int, dict[str, int]]:
        red = self._engine.json()
        try:
            out = red.feed(payload) + red.close()
            return out, red.masked, red.kinds
        except RedactionError as exc:
            if exc.kind in FATAL:
                raise
        tr = self._engine.text()
        text = tr.feed(payload.decode("utf-8", "surrogateescape")) + tr.close()
        return text.encode("utf-8", "surrogateescape"), tr.masked, tr.kinds


# --------------------------------------------------------------------------- content codings

class _Decoder:
    """Content-Encoding removal with a cap on the decoded size (decompression bombs)."""

    def __init__(self, codings: list[str], cap: int):
        self._stages = [_Inflate(c) for c in reversed(codings)]
        self._cap = cap
        self._total = 0

    @classmethod
    def for_header(cls, header: str | None, cap: int) -> _Decoder | None:
        if header is None:
            return None
        codings = [c.strip().lower() for c in header.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if not codings:
            return None
        for c in codings:
            if c not in _Inflate.KNOWN:
                raise RedactionError(f"cannot decode Content-Encoding {c!r}", "encoding")
        return cls(codings, cap)

    def feed(self, data: bytes) -> bytes:
        for stage in self._stages:
            data = stage.feed(data, self._cap - self._total)
        self._total += len(data)
        return data

    def close(self) -> bytes:
        data = b""
        for stage in self._stages:
            if data:
                data = stage.feed(data, self._cap - self._total)
            data += stage.close()
        self._total += len(data)
        if self._total > self._cap:
            raise RedactionError("decompressed body exceeds the size cap", "size")
        return data


class _Inflate:
    KNOWN = frozenset(["gzip", "x-gzip", "deflate"])

    def __init__(self, coding: str):
        self._gzip = coding in ("gzip", "x-gzip")
        self._d: Any = zlib.decompressobj(31) if self._gzip else None
        self._head = b""
        self._seen = False

    def feed(self, data: bytes, room: int) -> bytes:
        if not data:
            return b""
        self._seen = True
        if self._d is None:  # deflate: zlib-wrapped (RFC 9110) or, in practice, sometimes raw
            self._head += data
            if len(self._head) < 2:
                return b""
            b0, b1 = self._head[0], self._head[1]
            wrapped = (b0 & 0x0F) == 8 and (b0 >> 4) <= 7 and (b0 * 256 + b1) % 31 == 0
            self._d = zlib.decompressobj(15 if wrapped else -15)
            data, self._head = self._head, b""
        out = []
        size = 0
        pending = data
        more = True
        try:
            while True:
                d = self._d
                if d.eof:
                    rest = d.unused_data + pending
                    if not rest:
                        break
                    if not (self._gzip and rest[0] == 0x1F):
                        raise RedactionError("data after the end of the compressed body", "encoding")
                    self._d = zlib.decompressobj(31)  # gzip allows concatenated members
                    pending = rest
                    more = True
                    continue
                if not pending and not more:
                    break
                chunk = d.decompress(pending, _DECODE_STEP)
                size += len(chunk)
                if size > room:
                    raise RedactionError("decompressed body exceeds the size cap", "size")
                out.append(chunk)
                pending = d.unconsumed_tail
                more = len(chunk) == _DECODE_STEP
        except zlib.error as exc:
            raise RedactionError(f"corrupt compressed body: {exc}", "encoding") from None
        return b"".join(out)

    def close(self) -> bytes:
        if not self._seen:
            return b""
        if self._d is None:
            raise RedactionError("compressed body is truncated", "encoding")
        try:
            tail = self._d.flush()
        except zlib.error as exc:
            raise RedactionError(f"corrupt compressed body: {exc}", "encoding") from None
        if not self._d.eof:
            raise RedactionError("compressed body is truncated", "encoding")
        return tail
