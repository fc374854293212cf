"""Request-target normalization: the one path that both the policy and the upstream see.

RFC 3986 §6.2.2 syntax-based normalization (uppercase hex, decoded unreserved characters,
dot segments removed as in §5.2.4, repeated slashes merged) plus the refusals of
threats.md §2: whatever two servers could read differently is a PathError, never a guess.

This is the pure-Python reference. `pathnorm.pyx` is its compiled twin, reads the byte
tables defined here and must agree on every input: result, exception type and message.
Table convention: 0 = accept, 1 = `%` escape, any other value = index into REASONS.
"""
from __future__ import annotations

MAX_PATH_LENGTH = 8192


class PathError(ValueError):
    """The request-target is malformed or ambiguous; nothing may be forwarded."""

    status_hint = 400


ACCEPT = 0
PERCENT = 1
NOT_ORIGIN_FORM = 2
PATH_TOO_LONG = 3
MALFORMED_ESCAPE = 4
ENCODED_SLASH = 5
ENCODED_BACKSLASH = 6
ENCODED_NUL = 7
DOUBLE_ENCODING = 8
ENCODED_SEMICOLON = 9
ENCODED_QUESTION = 10
ENCODED_HASH = 11
BACKSLASH = 12
SEMICOLON = 13
FRAGMENT = 14
PATH_CONTROL = 15
PATH_NON_ASCII = 16
PATH_OTHER = 17
QUERY_MALFORMED_ESCAPE = 18
QUERY_CONTROL = 19
QUERY_NON_ASCII = 20
QUERY_OTHER = 21
ABOVE_ROOT = 22

REASONS: tuple[str, ...] = (
    "",
    "",
    "not origin-form",
    "path too long",
    "malformed percent-escape",
    "encoded slash (%2F)",
    "encoded backslash (%5C)",
    "encoded NUL (%00)",
    "double encoding (%25)",
    "encoded path parameter (%3B)",
    "encoded '?' (%3F)",
    "encoded '#' (%23)",
    "backslash in path",
    "path parameter (;)",
    "fragment (#)",
    "control byte or space in path",
    "non-ASCII byte in path",
    "character not allowed in path",
    "malformed percent-escape in query",
    "control byte or space in query",
    "non-ASCII byte in query",
    "character not allowed in query",
    "dot segment above root",
)

# Escape table values: KEEP re-emits %XX with uppercase hex, DECODE emits the byte itself.
KEEP = 0
DECODE = 1

UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
# RFC 3986 §3.3 pchar without ';' (sub-delim, but read as a path parameter by Tomcat, Jetty, Spring).
_PATH_CHARS = UNRESERVED + b"!$&'()*+,=:@/"
# RFC 3986 §3.4: query = *( pchar / "/" / "?" ).
_QUERY_CHARS = UNRESERVED + b"!$&'()*+,;=:@/?"
HEX_DIGITS = b"0123456789ABCDEF"


def _byte_table(allowed: bytes, special: dict[int, int], control: int, non_ascii: int,
                other: int) -> bytes:
    table = bytearray(other for _ in range(256))
    for b in range(0x21):
        table[b] = control
    table[0x7F] = control
    for b in range(0x80, 0x100):
        table[b] = non_ascii
    for b in allowed:
        table[b] = ACCEPT
    table[ord("%")] = PERCENT
    for b, code in special.items():
        table[b] = code
    return bytes(table)


PATH_CLASS = _byte_table(_PATH_CHARS, {ord("\\"): BACKSLASH, ord(";"): SEMICOLON, ord("#"): FRAGMENT},
                         PATH_CONTROL, PATH_NON_ASCII, PATH_OTHER)
QUERY_CLASS = _byte_table(_QUERY_CHARS, {ord("#"): FRAGMENT}, QUERY_CONTROL, QUERY_NON_ASCII, QUERY_OTHER)

_escape = bytearray(KEEP for _ in range(256))
for _b in UNRESERVED:
    _escape[_b] = DECODE
for _b, _code in ((0x2F, ENCODED_SLASH), (0x5C, ENCODED_BACKSLASH), (0x00, ENCODED_NUL),
                  (0x25, DOUBLE_ENCODING), (0x3B, ENCODED_SEMICOLON), (0x3F, ENCODED_QUESTION),
                  (0x23, ENCODED_HASH)):
    _escape[_b] = _code
ESCAPE_CLASS = bytes(_escape)

# 0xFF marks "not a hex digit"; int(x, 16) is not used because it accepts "+f", "-1" and " f".
_hex = bytearray(b"\xff" * 256)
for _i, _c in enumerate(b"0123456789abcdef"):
    _hex[_c] = _hex[ord(chr(_c).upper())] = _i
HEX_VALUE = bytes(_hex)
del _escape, _hex, _b, _code, _i, _c


def normalize_target(target: bytes) -> tuple[str, str]:
    """Split an origin-form request-target into (normalized path, verbatim query).

    Checks run in a fixed order so both implementations report the same reason:
    origin-form, length, path bytes left to right, query bytes, dot segments.
    """
    if not isinstance(target, bytes):
        raise TypeError("target must be bytes")
    q = target.find(b"?")
    raw_path, raw_query = (target, b"") if q < 0 else (target[:q], target[q + 1:])
    if not raw_path.startswith(b"/"):
        raise PathError(REASONS[NOT_ORIGIN_FORM])
    if len(raw_path) > MAX_PATH_LENGTH:
        raise PathError(REASONS[PATH_TOO_LONG])
    decoded = _decode_path(raw_path)
    _check_query(raw_query)
    return _remove_dot_segments(decoded), raw_query.decode("ascii")


def _decode_path(raw: bytes) -> str:
    """RFC 3986 §6.2.2.1/§6.2.2.2: uppercase kept escapes, decode unreserved ones."""
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        cls = PATH_CLASS[c]
        if cls == ACCEPT:
            out.append(c)
            i += 1
            continue
        if cls != PERCENT:
            raise PathError(REASONS[cls])
        if i + 2 >= n:
            raise PathError(REASONS[MALFORMED_ESCAPE])
        hi, lo = HEX_VALUE[raw[i + 1]], HEX_VALUE[raw[i + 2]]
        if hi > 15 or lo > 15:
            raise PathError(REASONS[MALFORMED_ESCAPE])
        value = hi * 16 + lo
        action = ESCAPE_CLASS[value]
        if action == DECODE:
            out.append(value)
        elif action == KEEP:
            out += bytes((0x25, HEX_DIGITS[hi], HEX_DIGITS[lo]))
        else:
            raise PathError(REASONS[action])
        i += 3
    return out.decode("ascii")


def _check_query(raw: bytes) -> None:
    i, n = 0, len(raw)
    while i < n:
        cls = QUERY_CLASS[raw[i]]
        if cls == ACCEPT:
            i += 1
            continue
        if cls != PERCENT:
            raise PathError(REASONS[cls])
        if i + 2 >= n or HEX_VALUE[raw[i + 1]] > 15 or HEX_VALUE[raw[i + 2]] > 15:
            raise PathError(REASONS[QUERY_MALFORMED_ESCAPE])
        i += 3


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on a path that starts with '/', with empty segments merged.

    A '..' with nothing left to remove is refused instead of clamped at the root: a
    target that tries to climb out is an attack, not a typo. A final '.', '..' or empty
    segment leaves a trailing slash, as in §5.2.4.
    """
    segments = path.split("/")
    out: list[str] = []
    for seg in segments[1:-1]:
        if seg == "..":
            if not out:
                raise PathError(REASONS[ABOVE_ROOT])
            out.pop()
        elif seg and seg != ".":
            out.append(seg)
    last = segments[-1]
    trailing = True
    if last == "..":
        if not out:
            raise PathError(REASONS[ABOVE_ROOT])
        out.pop()
    elif last and last != ".":
        out.append(last)
        trailing = False
    if not out:
        return "/"
    return "/" + "/".join(out) + ("/" if trailing else "")
