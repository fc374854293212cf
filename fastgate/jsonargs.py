"""Strict parsing of JSON call arguments: one reading that the gate and any upstream share.

Policy conditions look at arguments, so an argument document must not be readable two
ways (threats.md §4). `parse_args` refuses, with `ArgsError` (400):

* invalid JSON, including NaN / Infinity, trailing content, control characters in strings;
* a UTF-8 byte order mark, any other encoding, invalid UTF-8, and lone surrogates (raw or as
  `\\ud800` escapes);
* duplicate keys at any depth, also when they are only equal after unescaping
  (`{"a":1,"\\u0061":2}`): parsers disagree on which one wins;
* documents nested deeper than `max_depth` (default 64, at most 200) arrays / objects;
* numbers a double-based parser would read differently: floats that overflow to infinity
  (`1e400`, refused by orjson) and integer literals outside [-2**63, 2**64-1], which orjson
  would otherwise silently turn into a rounded float. Floats that underflow (`1e-400`) read as
  0.0 everywhere and are accepted;
* with `require_object=True`, a top level that is not an object.

Speed: orjson parses. Duplicate keys are invisible after parsing, so a cheap exact test runs
instead of a second parse: every object member contributes one `:` outside strings, and
strings keep their colons through a parse and re-serialisation, so
`colons(body) + escaped_colons(body) == colons(orjson.dumps(value))` holds exactly when no
member was dropped (a dropped duplicate loses its own colon). Only when the counts differ
(a duplicate, or a literal `\\\\u003a` text that fooled the escape count) does the slow exact
parse with `json.loads(object_pairs_hook=...)` run. The same re-serialisation, indented,
shows depth: a line indented 2*max_depth spaces exists only in documents that deep, and only
then does a Python walk measure it. The integer-range check runs only when a run of 19+ digits
appears. Cost: about twice orjson.loads alone.
"""
from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["DEFAULT_MAX_DEPTH", "ArgsError", "parse_args"]

DEFAULT_MAX_DEPTH = 64
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
# Every integer outside [INT_MIN, INT_MAX] has 19+ digits: map digits to "0", look for a run.
_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19
MAX_DEPTH_LIMIT = 200          # below orjson's serialisation limit (254), which the checks rely on
_INDENTS = {d: b"\n" + b" " * (2 * d) for d in range(1, MAX_DEPTH_LIMIT + 1)}


class ArgsError(ValueError):
    """The body is not an acceptable argument document; `detail` says why (for the 400 body)."""

    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class _Duplicate(Exception):
    pass


class _OutOfRange(Exception):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _int(text: str) -> int:
    # `text` is a JSON integer literal as the scanner matched it: -?(0|[1-9][0-9]*).
    if len(text.lstrip("-")) > 20:
        raise _OutOfRange(text)
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise _OutOfRange(text)
    return value


def _exact(raw: bytes) -> None:
    """The slow reading: reports duplicate keys and integers orjson would round."""
    try:
        json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs, parse_int=_int)
    except _Duplicate as exc:
        raise ArgsError(f"duplicate key {_short(exc.args[0])}") from None
    except _OutOfRange as exc:
        raise ArgsError(f"integer {_short(exc.args[0])} is outside the 64-bit range") from None
    except (ValueError, RecursionError) as exc:  # orjson accepted it; this should not happen
        raise ArgsError(f"invalid JSON: {exc}") from None


def _short(text: str, limit: int = 40) -> str:
    shown = json.dumps(text)
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


def _too_deep(value: Any, max_depth: int) -> bool:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        for child in (node.values() if type(node) is dict else node):
            t = type(child)
            if t is dict or t is list:
                stack.append((child, depth + 1))
    return False


def parse_args(body: bytes | bytearray | memoryview, max_depth: int = DEFAULT_MAX_DEPTH, *,
               require_object: bool = False) -> Any:
    """Parse a request body or MCP `arguments` text; raise ArgsError for anything ambiguous."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise TypeError("body must be bytes")
    if not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be between 1 and {MAX_DEPTH_LIMIT}")
    raw = body if type(body) is bytes else bytes(body)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ArgsError(f"invalid JSON: {exc}") from None
    t = type(value)
    if require_object and t is not dict:
        raise ArgsError("arguments must be a JSON object")
    slow = False
    if t is dict or t is list:
        # Re-serialised with 2-space indentation: every newline is structural (strings escape
        # theirs) and a value inside a container at depth d is indented by 2*d spaces.
        try:
            out = orjson.dumps(value, option=orjson.OPT_INDENT_2)
        except orjson.JSONEncodeError:  # orjson serialises at most 254 levels
            raise ArgsError(f"nested deeper than {max_depth} levels") from None
        if out.find(_INDENTS[max_depth]) >= 0 and _too_deep(value, max_depth):
            raise ArgsError(f"nested deeper than {max_depth} levels")
        colons = raw.count(b":")
        if colons:
            escaped = raw.count(b"\\u003a") + raw.count(b"\\u003A")
            slow = colons + escaped != out.count(b":")
    if slow or raw.translate(_DIGITS).find(_LONG_RUN) >= 0:
        _exact(raw)
    return value
