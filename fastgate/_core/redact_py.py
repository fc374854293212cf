"""Streaming JSON redaction: the pure-Python reference core.

`redact.pyx` is its compiled twin. Both take a `Plan` (selectors, detectors, mask, limits:
compiled once per function and direction) and give an `Engine` with
`json(depth0, roots) -> JsonRedactor` and `find(text) -> spans`. Shared here and used by
both: `Plan`, `TextRedactor` (detectors over a text stream in content-defined blocks),
`LongString` (a string value too long to hold: streamed) and the escaping helpers.

The JsonRedactor is an incremental tokenizer: `feed(bytes) -> bytes` emits everything up
to the token in progress, `close()` checks the document is complete. Its output depends
only on the input bytes, never on how they were split: every decision below (long or
short string, JSON inside a string or not, block boundaries) is a function of content.

Rules (and why):
* Strict RFC 8259 JSON, UTF-8 validated in strings, lone `\\uD800` escapes allowed
  (they are valid JSON text). Anything else is a RedactionError: the gate must never pass
  on what it could not read (threats.md §4).
* Depth above `max_depth` and keys or numbers above `max_token` are RedactionErrors.
* A value whose path matches a selector becomes the mask as a JSON string, whatever its
  type; a masked container is still validated, never emitted. Keys are compared after
  unescaping; every duplicate key matches again.
* Detectors run over every key and string value (unescaped) and over integer tokens for
  card numbers. A string that is not modified is emitted byte for byte; a modified one is
  re-serialized (canonical escapes, UTF-8 kept raw). The masked text is scanned again
  until nothing new is found (`fixpoint`): redacting the output again changes nothing.
* A string value whose text starts (after whitespace) with `{` or `[` and parses as JSON is
  redacted as its own document (selectors from the root, plus the selector states of the
  string's own path) and re-serialized into the string if anything was masked. If it does
  not parse, it is text. Depth and size errors inside it are fatal either way.
* String values longer than `string_window` raw bytes are streamed (`LongString`) and
  always re-serialized, so memory stays bounded for a 5 MB tool result held in one MCP
  `text` string: JSON-looking ones are parsed speculatively for their first
  `string_window` unescaped bytes; if that prefix fails they are text, if a later part
  fails the document is refused (we have emitted the start already). Other long strings
  go through `TextRedactor` blocks.

Limits (defaults): depth 128, keys and numbers 8 MiB, strings held whole up to 64 KiB,
text blocks of 64 Ki code points scanned with 16 Ki of look-ahead. A match must fit in the
look-ahead to be seen whole at a block edge: addresses, card numbers and key headers do;
a single token longer than 16 Ki (a giant JWT) straddling a block edge of a text longer
than 80 Ki may be masked only in part. Private key blocks stay masked across blocks.
"""
from __future__ import annotations

import json
import re

from fastgate import pii
from fastgate.config import parse_selector

__all__ = [
    "DEFAULT_MASK",
    "MAX_DEPTH",
    "MAX_TOKEN",
    "STRING_WINDOW",
    "Engine",
    "JsonRedactor",
    "LongString",
    "Plan",
    "RedactionError",
    "TextRedactor",
    "apply",
    "escape",
    "unescape",
]

MAX_DEPTH = 128
MAX_TOKEN = 8 << 20
STRING_WINDOW = 64 << 10
BLOCK = 64 << 10
AHEAD = 16 << 10
BEHIND = 256
MAX_STATES = 512
DEFAULT_MASK = "[REDACTED:{type}]"


class RedactionError(ValueError):
    """The body could not be redacted; nothing more of it may be forwarded.

    `kind`: "syntax" (not the JSON it claims to be), "truncated", "depth", "size",
    "encoding" (unsupported or undecodable content coding or charset), "type" (a body we
    cannot scan while detectors are on).
    """

    status_hint = 502

    def __init__(self, message: str, kind: str = "syntax"):
        super().__init__(message)
        self.kind = kind


FATAL = frozenset(["depth", "size"])

# Selector automaton step kinds; a state past the last step accepts.
ACCEPT, KEY, INDEX, WILDCARD, DESCEND = 0, 1, 2, 3, 4
_STEP_KINDS = {"key": KEY, "index": INDEX, "wildcard": WILDCARD, "descend": DESCEND}


class Plan:
    """A compiled redaction config: what to mask and how. Immutable, shared by streams."""

    def __init__(self, selectors=(), detectors=(), mask: str = DEFAULT_MASK, custom=(), *,
                 hash_key: bytes | None = None, max_depth: int = MAX_DEPTH, max_token: int = MAX_TOKEN,
                 string_window: int = STRING_WINDOW, block: int = BLOCK, ahead: int = AHEAD,
                 behind: int = BEHIND):
        self.selectors = tuple(dict.fromkeys(selectors))  # a repeated selector adds nothing
        kinds: list[int] = []
        names: list[str | None] = []
        nums: list[int] = []
        owner: list[int] = []
        roots = accept = 0
        for k, sel in enumerate(self.selectors):
            steps = parse_selector(sel)
            roots |= 1 << len(kinds)
            for kind, arg in steps:
                kinds.append(_STEP_KINDS[kind])
                names.append(arg if kind in ("key", "descend") else None)
                nums.append(arg if kind == "index" else -1)
                owner.append(k)
            accept |= 1 << len(kinds)
            kinds.append(ACCEPT)
            names.append(None)
            nums.append(-1)
            owner.append(k)
        if len(kinds) > MAX_STATES:
            raise ValueError(f"too many selector steps ({len(kinds)} states, at most {MAX_STATES})")
        self.step_kind, self.step_name, self.step_num, self.step_owner = kinds, names, nums, owner
        self.nstates = len(kinds)
        self.roots, self.accept = roots, accept
        self.enabled = pii.enabled_bits(detectors)
        self.custom_names = tuple(name for name, _ in custom)
        self.custom_patterns = []
        for name, rx in custom:
            try:
                self.custom_patterns.append(re.compile(rx))
            except re.error as exc:
                raise ValueError(f"custom detector {name!r}: invalid regular expression: {exc}") from None
        self.type_names = pii.TYPES + self.custom_names
        self.mask = pii.MaskFormat(mask, hash_key)
        self.detecting = bool(self.enabled or self.custom_patterns)
        if max_depth < 1 or max_token < 1 or string_window < 16 or block < 16 or ahead < 16 or behind < 1:
            raise ValueError("redaction limits must be positive (string_window, block, ahead >= 16)")
        self.max_depth, self.max_token = max_depth, max_token
        self.string_window, self.block, self.ahead, self.behind = string_window, block, ahead, behind

    @property
    def empty(self) -> bool:
        return not self.selectors and not self.detecting

    def child(self, states: int, key: str | None, index: int) -> int:
        """States of a member (`key`) or element (`index`, key None) of a value in `states`."""
        out = 0
        s = states
        while s:
            low = s & -s
            sid = low.bit_length() - 1
            s ^= low
            kind = self.step_kind[sid]
            if kind == KEY:
                if key is not None and key == self.step_name[sid]:
                    out |= low << 1
            elif kind == INDEX:
                if key is None and index == self.step_num[sid]:
                    out |= low << 1
            elif kind == WILDCARD:
                out |= low << 1
            elif kind == DESCEND:
                out |= low
                if key is not None and key == self.step_name[sid]:
                    out |= low << 1
        return out

    def accepted(self, states: int) -> int:
        """Index of the first selector that matches a value in `states`, or -1."""
        a = states & self.accept
        if not a:
            return -1
        return self.step_owner[(a & -a).bit_length() - 1]


# --------------------------------------------------------------------------- strings

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile('["\\\\\x00-\x1f\ud800-\udfff]')


def _escape_one(m: re.Match[str]) -> str:
    ch = m.group()
    return _ESCAPES.get(ch) or f"\\u{ord(ch):04x}"


_SURROGATE = re.compile("[\ud800-\udfff]")


def escape(text: str) -> str:
    """Canonical JSON string content: the seven short escapes, `\\u00xx` for other controls
    and lone surrogates, everything else (UTF-8, `/`, DEL) raw."""
    if _SURROGATE.search(text) is None:
        return json.dumps(text, ensure_ascii=False)[1:-1]  # the same escapes, at C speed
    return _NEEDS_ESCAPE.sub(_escape_one, text)


def quote(text: str) -> bytes:
    return ('"' + escape(text) + '"').encode("utf-8")


def unescape(raw: bytes) -> str:
    """Text of validated string content (no quotes). Surrogate escape pairs combine; a lone
    one stays a lone surrogate, as in Python's json."""
    text = raw.decode("utf-8")
    if "\\" not in text:
        return text
    return json.loads('"' + text + '"')


def looks_json(text: str) -> bool:
    return text.lstrip(" \t\n\r").startswith(("{", "["))


def add_counts(kinds: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        kinds[k] = kinds.get(k, 0) + v


def apply(plan: Plan, text: str, spans, kinds: dict[str, int], start: int = 0, stop: int | None = None) -> str:
    """text[start:stop] with every span (all inside that range) replaced by its mask."""
    if stop is None:
        stop = len(text)
    out = []
    pos = start
    simple = plan.mask.simple
    for s, e, t in spans:
        kind = plan.type_names[t]
        out.append(text[pos:s])
        out.append(plan.mask.render(kind, None if simple else text[s:e]))
        kinds[kind] = kinds.get(kind, 0) + 1
        pos = e
    out.append(text[pos:stop])
    return "".join(out)


MAX_PASSES = 8


def fixpoint(engine, text: str, spans, kinds: dict[str, int]) -> str:
    """Mask `spans`, then detect again on the masked text until nothing new is found.

    Detectors look at neighbours (an address glued to a phone number hides the number's
    boundary), and a mask is a different neighbour than what it replaced. Iterating makes
    the output a fixed point: redacting it again changes nothing, and nothing detectable
    is left beside a mask. Capped for custom patterns that match their own mask.
    """
    for _ in range(MAX_PASSES):
        text = apply(engine.plan, text, spans, kinds)
        spans = engine.find(text)[0]
        if not spans:
            break
    return text


class TextRedactor:
    """Detectors over a text stream, with the same result however the text is split.

    The text is cut into blocks at fixed offsets (`block` code points from the start).
    Each block is scanned together with `ahead` code points after it and `behind` before
    it (context only), so a match that starts in the block and ends up to `ahead` later is
    still seen whole. A text of at most block + ahead code points is one scan. A private
    key block still open at a block end stays masked until its END line.
    """

    def __init__(self, engine):
        self._engine = engine
        self._plan: Plan = engine.plan
        self._buf = ""
        self._pending: list[str] = []
        self._pending_len = 0
        self._base = 0
        self._p = 0
        self._pem = False
        self.masked = 0
        self.kinds: dict[str, int] = {}

    def feed(self, text: str) -> str:
        if not text:
            return ""
        self._pending.append(text)
        self._pending_len += len(text)
        p = self._plan
        need = p.block + p.ahead
        if self._base + len(self._buf) + self._pending_len - self._p < need:
            return ""
        self._join()
        out = []
        while self._base + len(self._buf) - self._p >= need:
            out.append(self._block(False))
        return "".join(out)

    def close(self) -> str:
        self._join()
        if self._base + len(self._buf) <= self._p:
            return ""
        return self._block(True)

    def _join(self) -> None:
        if self._pending:
            self._buf += "".join(self._pending)
            self._pending.clear()
            self._pending_len = 0

    def _block(self, final: bool) -> str:
        p = self._plan
        buf = self._buf
        ctx = self._p - self._base
        window = buf if final else buf[:ctx + p.block + p.ahead]
        spans, open_ = self._engine.find(window, ctx, self._pem)
        limit = len(window) if final else ctx + p.block
        kept = [sp for sp in spans if sp[0] < limit]
        q = limit
        if kept and kept[-1][1] > q:
            q = kept[-1][1]
        self._pem = not final and open_ and bool(kept) and kept[-1][1] == len(window)
        before = sum(self.kinds.values())
        out = apply(p, window, kept, self.kinds, ctx, q)
        if kept:  # the segment alone, as a string value would be (see fixpoint)
            more = self._engine.find(out)[0]
            if more:
                out = fixpoint(self._engine, out, more, self.kinds)
        self.masked += sum(self.kinds.values()) - before
        self._p = self._base + q
        drop = max(0, q - p.behind)
        self._buf = buf[drop:]
        self._base += drop
        return out


_HIGH_TAIL = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")
UNDECIDED, JSON_MODE, TEXT_MODE = 0, 1, 2
_JSON_WS = b" \t\n\r"


class LongString:
    """A string value too long to hold, streamed through redaction; output is re-escaped.

    Fed raw string content (no quotes) in pieces that end on whole escapes and whole UTF-8
    sequences. Text that starts with `{`/`[` is held until `string_window` bytes of it
    (unescaped, UTF-8) are known and parsed as JSON: a failure there makes the whole
    string text, a failure later is a RedactionError (the start has been emitted).
    Anything else is text from the start.
    """

    def __init__(self, engine, depth0: int, roots):
        self._engine = engine
        self._plan: Plan = engine.plan
        self._depth0 = depth0
        self._roots = roots
        self._mode = UNDECIDED
        self._held: list[bytes] = []
        self._held_len = 0
        self._hold = b""
        self._inner = None
        self._text: TextRedactor | None = None
        self._started = False
        self.masked = 0
        self.kinds: dict[str, int] = {}

    def feed(self, raw: bytes) -> bytes:
        raw = self._hold + raw
        self._hold = b""
        k = len(raw) - 6
        if k >= 0 and _HIGH_TAIL.match(raw, k) is not None:
            run = 0
            while k - run - 1 >= 0 and raw[k - run - 1] == 0x5C:
                run += 1
            if run % 2 == 0:  # a real \uD8xx escape: its low half may come next
                self._hold = raw[k:]
                raw = raw[:k]
        return self._take(self._engine.unescape_bytes(raw), False)

    def close(self) -> bytes:
        tail = self._engine.unescape_bytes(self._hold) if self._hold else b""
        self._hold = b""
        out = self._take(tail, True)
        if self._mode == JSON_MODE:
            assert self._inner is not None
            out += self._quoted(self._inner.close())
            self.masked += self._inner.masked
            add_counts(self.kinds, self._inner.kinds)
        else:
            assert self._text is not None
            out += self._quoted_text(self._text.close())
            self.masked += self._text.masked
            add_counts(self.kinds, self._text.kinds)
        if not self._started:
            out = b'"' + out
        return out + b'"'

    def _opening(self, out: bytes) -> bytes:
        if not self._started and out:
            self._started = True
            return b'"' + out
        return out

    def _quoted(self, body: bytes) -> bytes:
        return self._opening(self._engine.escape_bytes(body))

    def _quoted_text(self, text: str) -> bytes:
        return self._opening(escape(text).encode("utf-8"))

    def _take(self, data: bytes, final: bool) -> bytes:
        """`data`: unescaped content, WTF-8 (lone surrogates in their 3-byte form)."""
        if self._mode == UNDECIDED:
            if data:
                self._held.append(data)
                self._held_len += len(data)
            held = b"".join(self._held)
            self._held = [held] if held else []
            head = held.lstrip(_JSON_WS)
            if not head and not final:
                return b""
            if head[:1] not in (b"{", b"["):
                return self._to_text(held)
            window = self._plan.string_window
            if self._held_len < window and not final:
                return b""
            return self._try_json(held[:window], held[window:], final)
        if not data:
            return b""
        if self._mode == JSON_MODE:
            return self._quoted(self._inner.feed(data))
        return self._quoted_text(self._text.feed(data.decode("utf-8", "surrogatepass")))

    def _to_text(self, held: bytes) -> bytes:
        self._mode = TEXT_MODE
        self._held = []
        self._text = TextRedactor(self._engine)
        return self._quoted_text(self._text.feed(held.decode("utf-8", "surrogatepass")))

    def _try_json(self, head: bytes, rest: bytes, final: bool) -> bytes:
        inner = self._engine.json(self._depth0, self._roots)
        try:
            first = inner.feed(head)
            if final and not rest:
                first += inner.close()
                self._mode = JSON_MODE
                self._inner = _Closed(inner)
                self._held = []
                return self._quoted(first)
        except RedactionError as exc:
            if exc.kind in FATAL:
                raise
            return self._to_text(head + rest)
        self._mode = JSON_MODE
        self._inner = inner
        self._held = []
        out = self._quoted(first)
        if rest:
            out += self._quoted(inner.feed(rest))
        return out


class _Closed:
    """An inner redactor that already finished (the string ended before the window)."""

    def __init__(self, inner):
        self.masked = inner.masked
        self.kinds = inner.kinds

    def feed(self, data: bytes) -> bytes:  # pragma: no cover - nothing follows a final piece
        raise AssertionError("feed after close")

    def close(self) -> bytes:
        return b""


# --------------------------------------------------------------------------- the reference engine

class Engine:
    """Reference engine: detectors from `fastgate.pii`, the tokenizer below."""

    impl = "python"

    def __init__(self, plan: Plan):
        self.plan = plan

    def find(self, text: str, begin: int = 0, pem_open: bool = False):
        p = self.plan
        if p.enabled:
            spans, open_ = pii.detect(text, p.enabled, begin, pem_open)
        else:
            spans, open_ = [], False
        if p.custom_patterns:
            spans = pii.merge(spans, pii.custom_spans(p.custom_patterns, text, begin, len(pii.TYPES)))
        return spans, open_

    def json(self, depth0: int = 0, roots=None) -> JsonRedactor:
        return JsonRedactor(self, depth0, roots)

    def text(self) -> TextRedactor:
        return TextRedactor(self)

    @staticmethod
    def unescape_bytes(raw: bytes) -> bytes:
        """Validated string content -> its text as WTF-8."""
        return unescape(raw).encode("utf-8", "surrogatepass")

    @staticmethod
    def escape_bytes(body: bytes) -> bytes:
        """UTF-8 text (no lone surrogates) -> canonical JSON string content."""
        return escape(body.decode("utf-8")).encode("utf-8")


S_START, S_VALUE, S_VALUE_OR_END, S_KEY_OR_END, S_KEY, S_COLON, S_AFTER, S_DONE = range(8)
T_NONE, T_STRING, T_NUMBER, T_LITERAL = range(4)
OBJECT, ARRAY = 0, 1
_WS = frozenset(b" \t\n\r")
_NUM_CHARS = frozenset(b"0123456789+-.eE")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = frozenset(b'"\\/bfnrt')
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_SPECIAL = re.compile(rb'["\\\x00-\x1f\x80-\xff]')
_LITERALS = {0x74: b"true", 0x66: b"false", 0x6E: b"null"}


def _utf8_lead(c: int) -> tuple[int, int, int]:
    """(continuation bytes, low, high bound of the first continuation) or (0, 0, 0) if invalid."""
    if 0xC2 <= c <= 0xDF:
        return 1, 0x80, 0xBF
    if c == 0xE0:
        return 2, 0xA0, 0xBF
    if 0xE1 <= c <= 0xEC or 0xEE <= c <= 0xEF:
        return 2, 0x80, 0xBF
    if c == 0xED:
        return 2, 0x80, 0x9F
    if c == 0xF0:
        return 3, 0x90, 0xBF
    if 0xF1 <= c <= 0xF3:
        return 3, 0x80, 0xBF
    if c == 0xF4:
        return 3, 0x80, 0x8F
    return 0, 0, 0


class JsonRedactor:
    """Reference incremental redactor for one JSON document (see the module docstring)."""

    def __init__(self, engine: Engine, depth0: int = 0, roots=None):
        p = engine.plan
        self._engine = engine
        self._plan = p
        self._depth0 = depth0
        self._roots = p.roots if roots is None else roots
        self._ckind: list[int] = []
        self._cstates: list[int] = []
        self._cindex: list[int] = []
        self._st = S_START
        self._child = 0
        self._skip = -1
        self._tok = T_NONE
        self._raw = bytearray()
        self._key = False
        self._vstates = 0
        self._vsel = -1
        self._vlong = False
        self._accum = False
        self._esc = 0
        self._u8 = 0
        self._u8lo = 0x80
        self._u8hi = 0xBF
        self._unit = 0
        self._long: LongString | None = None
        self._lit = b""
        self._litpos = 0
        self._out = bytearray()
        self._closed = False
        self.masked = 0
        self.kinds: dict[str, int] = {}

    # ------------------------------------------------------------------ driver

    def feed(self, data: bytes) -> bytes:
        if self._closed:
            raise RedactionError("feed after close", "syntax")
        self._out = bytearray()
        n = len(data)
        i = 0
        while i < n:
            t = self._tok
            if t == T_STRING:
                i = self._string(data, i, n)
            elif t == T_NUMBER:
                i = self._number(data, i, n)
            elif t == T_LITERAL:
                i = self._literal(data, i, n)
            else:
                self._byte(data[i])
                i += 1
        if self._tok == T_STRING and not self._key and self._accum and self._vsel < 0 \
                and (self._long is not None or len(self._raw) > self._plan.string_window):
            self._spill()
        return bytes(self._out)

    def close(self) -> bytes:
        if self._closed:
            return b""
        self._out = bytearray()
        if self._tok == T_NUMBER:
            self._number_done()
        elif self._tok != T_NONE:
            raise RedactionError("the JSON document ends inside a token", "truncated")
        if self._st not in (S_START, S_DONE):
            raise RedactionError("the JSON document is incomplete", "truncated")
        self._closed = True
        return bytes(self._out)

    def _count(self, kind: str) -> None:
        self.masked += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def _emit_mask(self, kind: str, value: str | None, count_as: str) -> None:
        self._out += quote(self._plan.mask.render(kind, value))
        self._count(count_as)

    # ------------------------------------------------------------------ structure

    def _byte(self, c: int) -> None:
        emitting = self._skip < 0
        if c in _WS:
            if emitting:
                self._out.append(c)
            return
        st = self._st
        if st == S_START or st == S_VALUE or st == S_VALUE_OR_END:
            if c == 0x5D and st == S_VALUE_OR_END:
                self._close_container(c)
                return
            self._begin_value(c)
            return
        if st == S_KEY_OR_END or st == S_KEY:
            if c == 0x22:
                self._start_string(True, self._skip < 0)
                return
            if c == 0x7D and st == S_KEY_OR_END:
                self._close_container(c)
                return
            raise RedactionError(f"expected a member name, got {chr(c)!r}")
        if st == S_COLON:
            if c != 0x3A:
                raise RedactionError(f"expected ':', got {chr(c)!r}")
            if emitting:
                self._out.append(c)
            self._st = S_VALUE
            return
        if st == S_AFTER:
            top = self._ckind[-1]
            if c == 0x2C:
                if emitting:
                    self._out.append(c)
                self._st = S_KEY if top == OBJECT else S_VALUE
                return
            if (c == 0x7D and top == OBJECT) or (c == 0x5D and top == ARRAY):
                self._close_container(c)
                return
            raise RedactionError(f"expected ',' or a closing bracket, got {chr(c)!r}")
        raise RedactionError("data after the JSON document")

    def _begin_value(self, c: int) -> None:
        p = self._plan
        skipping = self._skip >= 0
        states = 0
        sel = -1
        if not skipping:
            if not self._ckind:
                states = self._roots
            elif self._ckind[-1] == ARRAY:
                idx = self._cindex[-1]
                self._cindex[-1] = idx + 1
                parent = self._cstates[-1]
                states = p.child(parent, None, idx) if parent else 0
            else:
                states = self._child
            sel = p.accepted(states) if states else -1
        if c == 0x7B or c == 0x5B:
            if self._depth0 + len(self._ckind) + 1 > p.max_depth:
                raise RedactionError(f"JSON nested deeper than {p.max_depth} levels", "depth")
            if sel >= 0:
                self._emit_mask(pii.FIELD, None, p.selectors[sel])
                self._skip = len(self._ckind)
            elif not skipping:
                self._out.append(c)
            self._ckind.append(OBJECT if c == 0x7B else ARRAY)
            self._cstates.append(states)
            self._cindex.append(0)
            self._st = S_KEY_OR_END if c == 0x7B else S_VALUE_OR_END
            return
        self._vstates = states
        self._vsel = sel
        if c == 0x22:
            accum = not skipping and (sel < 0 or not p.mask.simple)
            self._start_string(False, accum)
            return
        if c == 0x2D or 0x30 <= c <= 0x39:
            self._tok = T_NUMBER
            self._raw = bytearray([c])
            return
        lit = _LITERALS.get(c)
        if lit is None:
            raise RedactionError(f"expected a JSON value, got {chr(c)!r}")
        self._tok = T_LITERAL
        self._lit = lit
        self._litpos = 1

    def _close_container(self, c: int) -> None:
        self._ckind.pop()
        self._cstates.pop()
        self._cindex.pop()
        if self._skip < 0:
            self._out.append(c)
        elif self._skip == len(self._ckind):
            self._skip = -1
        self._value_done()

    def _value_done(self) -> None:
        self._vsel = -1
        self._st = S_AFTER if self._ckind else S_DONE

    # ------------------------------------------------------------------ strings

    def _start_string(self, key: bool, accum: bool) -> None:
        self._tok = T_STRING
        self._key = key
        self._accum = accum
        self._vlong = False
        self._raw = bytearray()
        self._esc = self._u8 = self._unit = 0

    def _string(self, data: bytes, i: int, n: int) -> int:
        start = i
        esc, u8, unit = self._esc, self._u8, self._unit
        while i < n:
            if esc == 0 and u8 == 0:
                m = _SPECIAL.search(data, i)
                if m is None:
                    i = n
                    break
                i = m.start()
                c = data[i]
                if c == 0x22:
                    self._esc = self._u8 = self._unit = 0
                    self._keep(data, start, i)
                    self._string_done()
                    return i + 1
                if c == 0x5C:
                    esc = 1
                    unit = 1
                elif c < 0x20:
                    raise RedactionError("control character in a JSON string")
                else:
                    u8, lo, hi = _utf8_lead(c)
                    if u8 == 0:
                        raise RedactionError("invalid UTF-8 in a JSON string")
                    self._u8lo, self._u8hi = lo, hi
                    unit = 1
                i += 1
                continue
            c = data[i]
            if esc == 1:
                if c == 0x75:
                    esc = 5
                elif c in _SIMPLE_ESCAPES:
                    esc = 0
                else:
                    raise RedactionError("invalid escape in a JSON string")
            elif esc:
                if c not in _HEX:
                    raise RedactionError("invalid \\u escape in a JSON string")
                esc = esc - 1 if esc > 2 else 0
            else:
                if not self._u8lo <= c <= self._u8hi:
                    raise RedactionError("invalid UTF-8 in a JSON string")
                self._u8lo, self._u8hi = 0x80, 0xBF
                u8 -= 1
            unit = unit + 1 if (esc or u8) else 0
            i += 1
        self._esc, self._u8, self._unit = esc, u8, unit
        self._keep(data, start, i)
        return i

    def _keep(self, data: bytes, start: int, stop: int) -> None:
        if not self._accum:
            return
        self._raw += data[start:stop]
        p = self._plan
        if self._key:
            if len(self._raw) > p.max_token:
                raise RedactionError(f"a JSON member name is longer than {p.max_token} bytes", "size")
        elif self._vsel >= 0 and len(self._raw) > p.string_window:
            self._accum = False  # masked anyway; too long to show {last4}/{hash}
            self._vlong = True
            self._raw = bytearray()

    def _spill(self) -> None:
        cut = len(self._raw) - self._unit
        piece = bytes(self._raw[:cut])
        del self._raw[:cut]
        if self._long is None:
            self._long = LongString(self._engine, self._inner_depth(), self._inner_roots())
        self._out += self._long.feed(piece)

    def _inner_depth(self) -> int:
        return self._depth0 + len(self._ckind) + 1

    def _inner_roots(self):
        return self._plan.roots | (self._vstates & ~self._plan.accept)

    def _string_done(self) -> None:
        self._tok = T_NONE
        raw = bytes(self._raw)
        self._raw = bytearray()
        p = self._plan
        if self._key:
            self._st = S_COLON
            if self._skip >= 0:
                return
            text = unescape(raw)
            parent = self._cstates[-1]
            self._child = p.child(parent, text, -1) if parent else 0
            self._out += self._detected(raw, text)
            return
        if self._long is not None:
            ls = self._long
            self._long = None
            self._out += ls.feed(raw) + ls.close()
            self.masked += ls.masked
            add_counts(self.kinds, ls.kinds)
        elif self._skip >= 0:
            pass
        elif self._vsel >= 0:
            value = None if (p.mask.simple or self._vlong) else unescape(raw)
            if value is not None and p.mask.is_mask(value):
                self._out += quote(value)
                self._count(p.selectors[self._vsel])
            else:
                self._emit_mask(pii.FIELD, value, p.selectors[self._vsel])
        elif len(raw) > p.string_window:
            ls = LongString(self._engine, self._inner_depth(), self._inner_roots())
            self._out += ls.feed(raw) + ls.close()
            self.masked += ls.masked
            add_counts(self.kinds, ls.kinds)
        else:
            self._short_value(raw)
        self._value_done()

    def _short_value(self, raw: bytes) -> None:
        text = unescape(raw)
        if looks_json(text):
            inner = self._engine.json(self._inner_depth(), self._inner_roots())
            try:
                body = inner.feed(text.encode("utf-8", "surrogatepass")) + inner.close()
            except RedactionError as exc:
                if exc.kind in FATAL:
                    raise
            else:
                if inner.masked:
                    self._out += quote(body.decode("utf-8"))
                    self.masked += inner.masked
                    add_counts(self.kinds, inner.kinds)
                else:
                    self._out += b'"' + raw + b'"'
                return
        self._out += self._detected(raw, text)

    def _detected(self, raw: bytes, text: str) -> bytes:
        p = self._plan
        if p.detecting and text:
            spans = self._engine.find(text)[0]
            if spans:
                kinds: dict[str, int] = {}
                out = quote(fixpoint(self._engine, text, spans, kinds))
                add_counts(self.kinds, kinds)
                self.masked += sum(kinds.values())
                return out
        return b'"' + raw + b'"'

    # ------------------------------------------------------------------ numbers and literals

    def _number(self, data: bytes, i: int, n: int) -> int:
        start = i
        while i < n and data[i] in _NUM_CHARS:
            i += 1
        self._raw += data[start:i]
        if len(self._raw) > self._plan.max_token:
            raise RedactionError(f"a JSON number is longer than {self._plan.max_token} bytes", "size")
        if i < n:
            self._number_done()
        return i

    def _number_done(self) -> None:
        self._tok = T_NONE
        raw = bytes(self._raw)
        self._raw = bytearray()
        if _NUMBER.fullmatch(raw) is None:
            raise RedactionError("invalid JSON number")
        p = self._plan
        if self._skip < 0:
            if self._vsel >= 0:
                self._emit_mask(pii.FIELD, raw.decode("ascii"), p.selectors[self._vsel])
            elif p.enabled & pii.CARD and 13 <= len(raw) <= 19 and raw.isdigit() \
                    and pii.card_ok([d - 48 for d in raw]):
                self._emit_mask("credit_card", raw.decode("ascii"), "credit_card")
            else:
                self._out += raw
        self._value_done()

    def _literal(self, data: bytes, i: int, n: int) -> int:
        lit = self._lit
        while i < n and self._litpos < len(lit):
            if data[i] != lit[self._litpos]:
                raise RedactionError("invalid JSON literal")
            self._litpos += 1
            i += 1
        if self._litpos == len(lit):
            self._tok = T_NONE
            if self._skip < 0:
                if self._vsel >= 0:
                    self._emit_mask(pii.FIELD, lit.decode("ascii"), self._plan.selectors[self._vsel])
                else:
                    self._out += lit
            self._value_done()
        return i
