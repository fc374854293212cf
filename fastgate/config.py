"""The configuration file: YAML in, a frozen and fully validated `Config` out.

`load_config(path)` reads the file with a safe loader that refuses duplicate keys,
expands `${env:NAME}` / `${file:PATH}` references, validates everything with pydantic and
returns a frozen `Config`. Anything wrong raises one `ConfigError` listing every problem
as `"<key.path>: <message>"`, e.g. `rules[2].when[0].op: unknown operator '=<'`.

Validation is layered. Field validators check types and formats; each model's `_whole`
checks span its fields ("exactly one of", approval iff effect approve); `Config._whole`
checks references across sections (function -> upstream, rule -> function, route
conflicts). `_whole` reads the raw mapping, so it also runs when an unrelated field of
the same object is broken: one run reports every problem, each at its key path.

Error messages never contain an expanded secret: every expanded value is recorded in
`Config.secret_values` and scrubbed from messages before they are raised.
"""
from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fastgate.units import parse_duration, parse_hostport, parse_size, valid_hostname

__all__ = [
    "Admin", "ApiKey", "ApprovalSpec", "Approvals", "Audit", "Condition", "Config", "ConfigError",
    "CustomDetector", "Function", "HttpRoute", "Identity", "JWTConfig", "Limits", "Log", "McpTool",
    "Notify", "OPERATORS", "Pii", "Redact", "Rule", "Store", "TLS", "Upstream",
    "config_json_schema", "format_path", "glob_match", "load_config", "parse_config",
    "parse_duration", "parse_hostport", "parse_path_template", "parse_selector", "parse_size",
]

MAX_FILE_BYTES = 4 * 2**20
MAX_SECRET_FILE_BYTES = 2**20
MAX_VALUES = 200_000
MAX_DEPTH = 64

Loc = tuple[str | int, ...]


# --------------------------------------------------------------------------- errors

class ConfigError(Exception):
    """A configuration was refused. `.errors` holds one `"<key.path>: <message>"` per problem."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


_PLAIN_KEY = re.compile(r"[^\s.\[\]\"'\\\x00-\x1f\x7f]+")


def format_path(loc: Loc) -> str:
    """`("rules", 2, "when", 0, "op")` -> `rules[2].when[0].op`; `()` -> `(root)`."""
    out: list[str] = []
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out.append(f"[{part}]")
        elif isinstance(part, str) and _PLAIN_KEY.fullmatch(part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{json.dumps(str(part))}]")
    return "".join(out) or "(root)"


def _fail(message: str, items: tuple[tuple[Loc, str], ...] = ()) -> PydanticCustomError:
    """A validation error whose message is shown as is; `items` place sub-errors below its loc."""
    return PydanticCustomError("fastgate", "{summary}", {"summary": message, "items": items})


class _Problems:
    """Collects (relative loc, message) pairs inside a validator and raises them together."""

    def __init__(self) -> None:
        self.items: list[tuple[Loc, str]] = []

    def add(self, loc: Loc, message: str) -> None:
        self.items.append((tuple(loc), message))

    def raise_if_any(self) -> None:
        if self.items:
            raise _fail("; ".join(m for _, m in self.items), tuple(self.items))


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _humanize(err: Mapping[str, Any]) -> str:
    kind = _kind(err.get("input"))
    ctx = err.get("ctx") or {}
    t = err["type"]
    if t == "fastgate":
        return str(ctx["summary"])
    if t == "missing":
        return "required key is missing"
    if t == "extra_forbidden":
        return "unknown key"
    if t in ("string_type", "string_sub_type"):
        return f"expected a string, got {kind}"
    if t in ("int_type", "int_parsing", "int_from_float"):
        return f"expected an integer, got {kind}"
    if t in ("float_type", "float_parsing", "finite_number"):
        return f"expected a finite number, got {kind}"
    if t in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {kind}"
    if t in ("list_type", "tuple_type", "set_type"):
        return f"expected a list, got {kind}"
    if t in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, got {kind}"
    if t == "literal_error":
        got = err.get("input")
        shown = f", not {got!r}" if isinstance(got, (str, int, float)) and len(repr(got)) <= 40 else ""
        return f"must be {ctx.get('expected')}{shown}"
    if t == "greater_than":
        return f"must be greater than {ctx.get('gt')}"
    if t == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    if t == "less_than_equal":
        return f"must be at most {ctx.get('le')}"
    if t == "less_than":
        return f"must be less than {ctx.get('lt')}"
    if t == "too_short":
        n = ctx.get("min_length")
        return f"must have at least {n} item{'s' if n != 1 else ''}"
    if t == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if t == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else (
            f"must be at least {ctx.get('min_length')} characters")
    if t == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if t == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern')}"
    if t == "value_error":
        return str(ctx.get("error", err.get("msg", "")))
    msg = str(err.get("msg", t))
    return msg.removeprefix("Value error, ")


def _errors_of(exc: ValidationError, prefix: Loc = ()) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(p for p in err["loc"] if p != "[key]")
        items = (err.get("ctx") or {}).get("items") if err["type"] == "fastgate" else None
        if items:
            out.extend((loc + tuple(sub), msg) for sub, msg in items)
        else:
            out.append((loc, _humanize(err)))
    return out


# --------------------------------------------------------------------------- small types

def _duration(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None


def _size(value: object) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None


Duration = Annotated[float, BeforeValidator(_duration), WithJsonSchema({
    "anyOf": [{"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)?$"}, {"type": "number", "minimum": 0}],
    "description": "a duration: 250ms, 30s, 15m, 1h, 2d, or a number of seconds",
})]
Size = Annotated[int, BeforeValidator(_size), WithJsonSchema({
    "anyOf": [{"type": "string", "pattern": r"^\d+(\.\d+)?([KMGT]i?B|B)?$"},
              {"type": "integer", "minimum": 0}],
    "description": "a size: 512, 512B, 10KB (10000 bytes), 64KiB, 1MiB, 4GiB",
})]
PositiveDuration = Annotated[Duration, Field(gt=0)]
PositiveSize = Annotated[Size, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


def _check_hostport(value: str) -> str:
    try:
        parse_hostport(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    return value


HostPort = Annotated[str, AfterValidator(_check_hostport)]

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_header_name(value: str) -> str:
    if not _TOKEN_RE.fullmatch(value):
        raise _fail(f"invalid header name {value!r} (RFC 9110 token characters only)")
    return value


HeaderName = Annotated[str, AfterValidator(_check_header_name)]

_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_NAME_RULE = "1-128 characters from A-Z a-z 0-9 _ . : -"


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise _fail(f"invalid name {value!r}: use {_NAME_RULE}")
    return value


Name = Annotated[str, AfterValidator(_check_name),
                 Field(json_schema_extra={"pattern": r"^[A-Za-z0-9_.:-]{1,128}$"})]

_PATTERN_RE = re.compile(r"[A-Za-z0-9_.:*-]{1,128}")


def _check_function_pattern(value: str) -> str:
    if not _PATTERN_RE.fullmatch(value):
        raise _fail(f"invalid function name or pattern {value!r}: use {_NAME_RULE}, and * as a wildcard")
    return value


FunctionPattern = Annotated[str, AfterValidator(_check_function_pattern)]

_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_ident(value: str) -> str:
    if not _IDENT_RE.fullmatch(value):
        raise _fail(f"invalid parameter name {value!r}: use letters, digits and _, not starting with a digit")
    return value


@lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def glob_match(pattern: str, name: str) -> bool:
    """Rule function patterns: `*` matches any run of characters; nothing else is special."""
    return _glob_regex(pattern).fullmatch(name) is not None


# --------------------------------------------------------------------------- selectors

KEY, INDEX, WILDCARD, DESCEND = "key", "index", "wildcard", "descend"
Step = tuple[str, Any]
_SEL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _read_quoted(s: str, i: int) -> tuple[str, int]:
    quote = s[i]
    out: list[str] = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\":
            if i + 1 < len(s) and s[i + 1] in ("\\", quote):
                out.append(s[i + 1])
                i += 2
                continue
            raise ValueError(f"invalid escape at position {i} (only \\\\ and \\{quote})")
        if c == quote:
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise ValueError("unterminated quoted name")


def _read_name(s: str, i: int) -> tuple[str, int]:
    m = _SEL_NAME_RE.match(s, i)
    if m is None:
        raise ValueError(f"expected a field name at position {i} (quote other names: [\"my key\"])")
    return m.group(), m.end()


def parse_selector(selector: str) -> tuple[Step, ...]:
    """Steps of a JSONPath-subset selector used by `redact` and by `arg` conditions.

    Grammar: `$` then one or more of `.name`, `["name"]` / `['name']`, `[*]`, `.*`, `[N]`
    and `..name` / `..["name"]` (any depth). Steps are `("key", name)`, `("index", n)`,
    `("wildcard", None)` and `("descend", name)`.
    """
    if not isinstance(selector, str) or not selector.startswith("$"):
        raise ValueError("a selector starts with '$', e.g. $.card.number")
    steps: list[Step] = []
    s, i, n = selector, 1, len(selector)
    while i < n:
        if s.startswith("..", i):
            i += 2
            if i < n and s[i] == "[" and i + 1 < n and s[i + 1] in "\"'":
                name, i = _read_quoted(s, i + 1)
                if i >= n or s[i] != "]":
                    raise ValueError(f"expected ']' at position {i}")
                i += 1
            else:
                name, i = _read_name(s, i)
            steps.append((DESCEND, name))
        elif s[i] == ".":
            i += 1
            if i < n and s[i] == "*":
                steps.append((WILDCARD, None))
                i += 1
            else:
                name, i = _read_name(s, i)
                steps.append((KEY, name))
        elif s[i] == "[":
            i += 1
            if i < n and s[i] in "\"'":
                name, i = _read_quoted(s, i)
                steps.append((KEY, name))
            elif i < n and s[i] == "*":
                steps.append((WILDCARD, None))
                i += 1
            else:
                m = re.compile(r"0|[1-9][0-9]{0,8}").match(s, i)
                if m is None:
                    raise ValueError(f"expected \"name\", * or an index >= 0 at position {i}")
                steps.append((INDEX, int(m.group())))
                i = m.end()
            if i >= n or s[i] != "]":
                raise ValueError(f"expected ']' at position {i}")
            i += 1
        else:
            raise ValueError(f"unexpected {s[i]!r} at position {i}")
    if not steps:
        raise ValueError("'$' alone selects the whole document; name a field, e.g. $.card.number")
    return tuple(steps)


def _check_selector(value: str) -> str:
    try:
        parse_selector(value)
    except ValueError as exc:
        raise _fail(f"invalid selector {value!r}: {exc}") from None
    return value


Selector = Annotated[str, AfterValidator(_check_selector)]


# --------------------------------------------------------------------------- paths and URLs

_PCHAR_RE = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,=:@]|%[0-9A-Fa-f]{2})*")
_TEMPLATE_LITERAL_RE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@]+")
PathSegment = tuple[Literal["literal", "param"], str]


def parse_path_template(path: str, *, params: bool = True) -> tuple[PathSegment, ...]:
    """Segments of a route template: `/refunds/{order_id}` -> literal `refunds`, param `order_id`.

    A parameter is a whole segment `{name}`. Refused: `?`, `#`, `%`, `\\`, `;`, empty
    segments (so also a trailing slash), and `.`/`..` segments. `/` alone is the root.
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError("must start with '/'")
    if path == "/":
        return ()
    segments: list[PathSegment] = []
    seen: set[str] = set()
    for number, seg in enumerate(path[1:].split("/"), 1):
        if seg == "":
            raise ValueError("trailing slash is not allowed" if number == path.count("/")
                             else f"segment {number} is empty ('//')")
        if seg in (".", ".."):
            raise ValueError(f"segment {number} is {seg!r}; dot segments are not allowed")
        if params and seg.startswith("{") and seg.endswith("}"):
            name = seg[1:-1]
            if not _IDENT_RE.fullmatch(name):
                raise ValueError(f"invalid parameter name {name!r} in segment {number}")
            if name in seen:
                raise ValueError(f"parameter {name!r} appears twice")
            seen.add(name)
            segments.append(("param", name))
            continue
        bad = next((c for c in seg if not _TEMPLATE_LITERAL_RE.fullmatch(c)), None)
        if bad is not None:
            if bad in "{}" and params:
                raise ValueError(f"segment {number} {seg!r}: a parameter must be a whole segment, "
                                 "like /{id}")
            raise ValueError(f"character {bad!r} is not allowed (segment {number})")
        segments.append(("literal", seg))
    return tuple(segments)


def _parse_url(url: str, *, allow_query: bool) -> tuple[str, str, int, str]:
    """(scheme, host, port, base_path) of an http(s) URL; raises ValueError with a readable reason."""
    if not url.isascii() or any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ValueError("must not contain whitespace, control or non-ASCII characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not url[len(scheme):].startswith("://"):
        raise ValueError("must start with http:// or https://")
    if "#" in url:
        raise ValueError("must not have a fragment (#...)")
    if "?" in url and not allow_query:
        raise ValueError("must not have a query (?...)")
    netloc = parts.netloc
    if "@" in netloc:
        raise ValueError("must not contain credentials (user@host); use inject_headers")
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = netloc[1:end], netloc[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = netloc.partition(":")
        rest = sep + port_text
        if not host:
            raise ValueError("missing host")
        if not valid_hostname(host):
            raise ValueError(f"{host!r} is not a valid host name")
    port = 443 if scheme == "https" else 80
    if rest:
        text = rest[1:]
        if not rest.startswith(":") or not (text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535):
            raise ValueError("port must be a number from 1 to 65535")
        port = int(text)
    path = parts.path
    if path not in ("", "/"):
        for seg in path[1:].rstrip("/").split("/"):
            if seg in ("", ".", ".."):
                raise ValueError("path must not contain empty, '.' or '..' segments")
            if not _PCHAR_RE.fullmatch(seg):
                raise ValueError(f"path segment {seg!r} has a character that must be percent-encoded")
    return scheme, host.lower(), port, path.rstrip("/")


def _check_http_url(value: str) -> str:
    try:
        _parse_url(value, allow_query=True)
    except ValueError as exc:
        raise _fail(f"invalid URL: {exc}") from None
    return value


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _check_secure_url(value: str) -> str:
    _check_http_url(value)
    scheme, host, _, _ = _parse_url(value, allow_query=True)
    if scheme != "https" and host not in _LOOPBACK and not host.startswith("127."):
        raise _fail("must use https:// (plain http is only accepted for a loopback host)")
    return value


SecureUrl = Annotated[str, AfterValidator(_check_secure_url)]


# --------------------------------------------------------------------------- models

def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _item(obj: Any, key: str) -> Any:
    """A key of a raw mapping or an attribute of an already built model."""
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


class _Model(BaseModel):
    """Frozen, strict, refuses unknown keys.

    Checks that span several fields live in `_whole`, which reads the raw mapping. It runs
    after a successful validation and also when some field failed, so a broken field does
    not hide an unrelated problem of the same object.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def _whole(cls, data: dict[str, Any], result: Any) -> list[tuple[Loc, str]]:
        """Cross-field problems of `data`; `result` is the built model, or None if fields failed."""
        return []

    @model_validator(mode="wrap")
    @classmethod
    def _collect(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            result = handler(data)
        except ValidationError as exc:
            if not isinstance(data, dict):
                raise
            found = _errors_of(exc)
            bad = {loc for loc, _ in found}
            extra = [(loc, msg) for loc, msg in cls._whole(data, None) if loc not in bad]
            if not extra:
                raise
            raise _fail("; ".join(m for _, m in found + extra), tuple(found + extra)) from None
        if isinstance(data, dict):
            problems = cls._whole(data, result)
            if problems:
                raise _fail("; ".join(m for _, m in problems), tuple(problems))
        return result


class TLS(_Model):
    cert: NonEmptyStr
    key: NonEmptyStr


class Limits(_Model):
    max_header_bytes: PositiveSize = 16 * 2**10
    max_header_count: PositiveInt = 100
    max_request_line_bytes: PositiveSize = 8 * 2**10
    max_body_bytes: PositiveSize = 2**20
    header_timeout: PositiveDuration = 10.0
    body_timeout: PositiveDuration = Field(
        30.0, description="longest gap between two reads of a request body")
    idle_timeout: PositiveDuration = 60.0
    upstream_timeout: PositiveDuration = Field(
        30.0, description="wait for the response head, and longest gap between two reads of the response")
    connect_timeout: PositiveDuration = 5.0
    max_connections: PositiveInt = 10000
    max_pipelined: PositiveInt = 32
    drain_timeout: PositiveDuration = 30.0


class Admin(_Model):
    socket: NonEmptyStr = "var/admin.sock"
    http: HostPort | None = Field(None, description="HOST:PORT serving /metrics, /healthz, /readyz; off when unset")


class Store(_Model):
    path: NonEmptyStr = "var/fastgate.lmdb"
    map_size: PositiveSize = 4 * 2**30
    durability: Literal["sync", "batch", "none"] = "sync"


class Audit(_Model):
    export_dir: NonEmptyStr | None = "var/audit"
    max_body_bytes: Size = 64 * 2**10
    fail_closed: bool = True


JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                  "EdDSA", "HS256", "HS384", "HS512")
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


class JWTConfig(_Model):
    issuer: NonEmptyStr
    audiences: Annotated[list[NonEmptyStr], Field(min_length=1)]
    jwks_file: NonEmptyStr | None = None
    jwks_url: SecureUrl | None = None
    discovery: SecureUrl | None = None
    algorithms: Annotated[list[str], Field(
        min_length=1, json_schema_extra={"items": {"enum": list(JWT_ALGORITHMS)}})] = ["RS256", "ES256"]
    leeway: Duration = 30.0
    subject_claim: NonEmptyStr = "sub"
    groups_claim: NonEmptyStr = "groups"
    max_token_bytes: PositiveSize = 8 * 2**10
    jwks_refresh_interval: PositiveDuration = 300.0
    hmac_secret: SecretStr | None = None

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, algs: list[str]) -> list[str]:
        problems = _Problems()
        for i, alg in enumerate(algs):
            if alg.lower() == "none":
                problems.add((i,), "algorithm 'none' is never accepted")
            elif alg not in JWT_ALGORITHMS:
                problems.add((i,), f"unsupported algorithm {alg!r} (one of {', '.join(JWT_ALGORITHMS)})")
        known = [a for a in algs if a in JWT_ALGORITHMS]
        if any(a.startswith("HS") for a in known) and not all(a.startswith("HS") for a in known):
            problems.add((), "cannot mix HMAC (HS*) and asymmetric algorithms: a public key would be "
                             "accepted as an HMAC secret")
        problems.raise_if_any()
        return algs

    @property
    def uses_hmac(self) -> bool:
        return self.algorithms[0].startswith("HS")

    @classmethod
    def _whole(cls, data: dict[str, Any], result: Any) -> list[tuple[Loc, str]]:
        algs = data.get("algorithms", cls.model_fields["algorithms"].default)
        if not (isinstance(algs, list) and algs and all(a in JWT_ALGORITHMS for a in algs)):
            return []
        hmac = [a.startswith("HS") for a in algs]
        if any(hmac) != all(hmac):
            return []
        out: list[tuple[Loc, str]] = []
        sources = [k for k in ("jwks_file", "jwks_url", "discovery") if data.get(k) is not None]
        secret = _plain(data.get("hmac_secret"))
        if all(hmac):
            out += [((k,), "not used with HS* algorithms (the key is hmac_secret)") for k in sources]
            if secret is None:
                out.append((("hmac_secret",), "required when HS* algorithms are used"))
            elif isinstance(secret, str):
                need = max(_HMAC_MIN_BYTES[a] for a in algs)
                if len(secret.encode()) < need:
                    out.append((("hmac_secret",), f"must be at least {need} bytes for {', '.join(algs)} "
                                "(RFC 7518 section 3.2)"))
        else:
            if secret is not None:
                out.append((("hmac_secret",), "only used with HS* algorithms"))
            if not sources:
                out.append(((), "one of jwks_file, jwks_url or discovery is required"))
            elif len(sources) > 1:
                out.append(((), "give only one of jwks_file, jwks_url and discovery "
                                f"(got {', '.join(sources)})"))
        return out


def _check_sha256(value: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        hint = " (use lowercase)" if re.fullmatch(r"[0-9a-fA-F]{64}", value) else ""
        raise _fail(f"must be the sha256 of the key as 64 lowercase hex characters{hint}")
    return value


class ApiKey(_Model):
    name: NonEmptyStr
    sha256: Annotated[str, AfterValidator(_check_sha256)]
    groups: list[NonEmptyStr] = []


class Identity(_Model):
    jwt: JWTConfig | None = None
    api_keys: list[ApiKey] = []
    forward: Literal["headers", "jwt", "none"] = "none"
    strip_headers: list[HeaderName] = Field([], description="extra client headers removed before forwarding")

    @classmethod
    def _whole(cls, data: dict[str, Any], result: Any) -> list[tuple[Loc, str]]:
        keys = data.get("api_keys")
        if not isinstance(keys, list):
            return []
        out: list[tuple[Loc, str]] = []
        names: dict[str, int] = {}
        hashes: dict[str, int] = {}
        for i, key in enumerate(keys):
            name, digest = _item(key, "name"), _item(key, "sha256")
            if isinstance(name, str):
                if name in names:
                    out.append((("api_keys", i, "name"),
                                f"duplicate name {name!r} (first at api_keys[{names[name]}])"))
                names.setdefault(name, i)
            if isinstance(digest, str):
                if digest in hashes:
                    out.append((("api_keys", i, "sha256"), f"same key as api_keys[{hashes[digest]}]"))
                hashes.setdefault(digest, i)
        return out


class Notify(_Model):
    url: HttpUrl
    secret: SecretStr | None = None
    format: Literal["slack", "json"] = "json"


class Approvals(_Model):
    reviewers: dict[NonEmptyStr, list[NonEmptyStr]] = Field({}, description="reviewer name -> groups")
    notify: Notify | None = None
    max_pending: PositiveInt = 1000
    max_pending_per_caller: PositiveInt = 20
    state_secret: SecretStr | None = Field(None, description=(
        "HMAC key (>= 32 bytes) sealing the requestState of MCP approval round trips; default: a "
        "random key per start, shared by the workers"))

    @field_validator("state_secret")
    @classmethod
    def _state_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and len(secret.get_secret_value().encode()) < 32:
            raise _fail("must be at least 32 bytes")
        return secret

    @classmethod
    def _whole(cls, data: dict[str, Any], result: Any) -> list[tuple[Loc, str]]:
        total = data.get("max_pending", cls.model_fields["max_pending"].default)
        per_caller = data.get("max_pending_per_caller", cls.model_fields["max_pending_per_caller"].default)
        numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (total, per_caller))
        if numbers and per_caller > total:
            return [(("max_pending_per_caller",), f"must not exceed max_pending ({total})")]
        return []


# Headers the gateway frames itself; injecting them would break or smuggle requests.
_NOT_INJECTABLE = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                             "te", "trailer", "upgrade", "proxy-connection"})


def _header_value_problem(value: str) -> str | None:
    if any(c in value for c in "\r\n\x00"):
        return "header value must not contain CR, LF or NUL"
    if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in value):
        return "header value must not contain control characters"
    if not value.isascii():
        return "header value must be ASCII"
    if value != value.strip(" \t"):
        return "header value must not start or end with whitespace"
    if not value:
        return "header value must not be empty"
    return None


class Upstream(_Model):
    url: Annotated[str, Field(description="http(s)://host[:port][/base/path]")]
    inject_headers: dict[HeaderName, SecretStr] = {}
    max_connections: PositiveInt = 256
    timeout: PositiveDuration | None = Field(None, description="overrides limits.upstream_timeout")
    tls_verify: bool = True

    _parts: tuple[str, str, int, str] = PrivateAttr(default=("http", "", 80, ""))

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        try:
            _parse_url(url, allow_query=False)
        except ValueError as exc:
            raise _fail(f"invalid URL: {exc}") from None
        return url

    @model_validator(mode="after")
    def _split(self) -> Upstream:
        self._parts = _parse_url(self.url, allow_query=False)
        return self

    @classmethod
    def _whole(cls, data: dict[str, Any], result: Any) -> list[tuple[Loc, str]]:
        headers = data.get("inject_headers")
        if not isinstance(headers, dict):
            return []
        out: list[tuple[Loc, str]] = []
        seen: dict[str, str] = {}
        for name, value in headers.items():
            if not isinstance(name, str):
                continue
            lower = name.lower()
            if lower in _NOT_INJECTABLE:
                out.append((("inject_headers", name), f"{name} is set by the gateway and cannot be injected"))
            if lower in seen:
                out.append((("inject_headers", name),
                            f"same header as {seen[lower]!r} (names are case-insensitive)"))
            seen.setdefault(lower, name)
            value = _plain(value)
            reason = _header_value_problem(value) if isinstance(value, str) else None
            if reason:
                out.append((("inject_headers", name), reason))
        return out

    @property
    def scheme(self) -> str:
        return self._parts[0]

    @property
    def host(self) -> str:
        """Lowercased host name or address; IPv6 without brackets."""
        return self._parts[1]

    @property
    def port(self) -> int:
        return self._parts[2]

    @property
    def base_path(self) -> str:
        """Path prefix for every forwarded request: "" or "/a/b", never a trailing slash."""
        return self._parts[3]

    @property
    def host_header(self) -> str:
        """The Host header for this upstream: brackets for IPv6, port only when not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class HttpRoute(_Model):
    method: Annotated[str, Field(json_schema_extra={"enum": list(HTTP_METHODS)})]
    path: Annotated[str, Field(description="route template, e.g. /refunds/{order_id}")]

    _segments: tuple[PathSegment, ...] = PrivateAttr(default=())

    @field_validator("method")
    @classmethod
    def _method(cls, method: str) -> str:
        if method not in HTTP_METHODS:
            hint = " (write it in uppercase)" if method.upper() in HTTP_METHODS else ""
            raise _fail(f"unsupported method {method!r}{hint}; one of {', '.join(HTTP_METHODS)}")
        return method

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        try:
            parse_path_template(path)
        except ValueError as exc:
            raise _fail(f"invalid path template {path!r}: {exc}") from None
        return path

    @model_validator(mode="after")
    def _parse(self) -> HttpRoute:
        self._segments = parse_path_template(self.path)
        return self

    @property
    def segments(self) -> tuple[PathSegment, ...]:
        return self._segments

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(v for kind, v in self._segments if kind == "param")

    @property
    def shape(self) -> str:
        """The template with parameter names erased: two routes with the same shape collide."""
        return "/" + "/".join("{}" if kind == "param" else v for kind, v in self._segments)


class McpTool(_Model):
    endpoint: Annotated[str, Field(description="gateway path of the MCP endpoint, e.g. /mcp")]
    tool: Annotated[str, Field(min_length=1, max_length=128)]
    refusal: Literal["error", "tool_result"] = Field(
        "error", description="policy refusals as a JSON-RPC error, or as an isError tool result the model reads")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, endpoint: str) -> str:
        try:
            parse_path_template(endpoint, params=False)
        except ValueError as exc:
            raise _fail(f"invalid endpoint path {endpoint!r}: {exc}") from None
        return endpoint


class Redact(_Model):
    request: list[Selector] = Field([], description="masked before forwarding and in the record")
    response: list[Selector] = Field([], description="masked before answering and in the record")


class Function(_Model):
    name: Name
    upstream: NonEmptyStr
    http: HttpRoute | None = None
    mcp: McpTool | None = None
    redact: Redact = Field(default_factory=Redact)
    description: str | None = None

    @classmethod
    def _whole(cls, data: dict[str, Any], result: Any) -> list[tuple[Loc, str]]:
        http, mcp = data.get("http") is not None, data.get("mcp") is not None
        if http == mcp:
            return [((), "give only one of 'http' and 'mcp'" if http
                     else "exactly one of 'http' or 'mcp' is required")]
        return []


PII_DETECTORS = ("email", "credit_card", "us_ssn", "phone", "iban", "secret_token")


class CustomDetector(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    regex: NonEmptyStr

    @field_validator("regex")
    @classmethod
    def _regex(cls, regex: str) -> str:
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            raise _fail(f"invalid regular expression: {exc}") from None
        if compiled.match("") is not None:
            raise _fail("regular expression matches the empty string")
        return regex


def _check_mask(mask: str) -> str:
    try:
        mask.format(type="x", last4="1234", hash="0123456789ab")
    except (KeyError, IndexError, ValueError):
        raise _fail("mask may use only the {type}, {last4} and {hash} placeholders "
                    "(write {{ and }} for literal braces)") from None
    return mask


class Pii(_Model):
    detectors: list[Literal["email", "credit_card", "us_ssn", "phone", "iban", "secret_token"]] = []
    scan: list[Literal["request", "response", "audit"]] = []
    mask: Annotated[str, AfterValidator(_check_mask)] = "[REDACTED:{type}]"
    hash_key: SecretStr | None = None  # key of {hash} tokens; without it they correlate within one process only
    custom: list[CustomDetector] = []

    @classmethod
    def _whole(cls, data: dict[str, Any], result: Any) -> list[tuple[Loc, str]]:
        custom = data.get("custom")
        out: list[tuple[Loc, str]] = []
        seen: dict[str, int] = {}
        for i, det in enumerate(custom if isinstance(custom, list) else []):
            name = _item(det, "name")
            if not isinstance(name, str):
                continue
            if name in PII_DETECTORS:
                out.append((("custom", i, "name"), f"{name!r} is a built-in detector name"))
            elif name in seen:
                out.append((("custom", i, "name"),
                            f"duplicate name {name!r} (first at custom[{seen[name]}])"))
            seen.setdefault(name, i)
        return out


OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in", "prefix", "suffix", "contains", "matches",
             "exists")
CONDITION_SOURCES = ("arg", "param", "query", "header", "claim")


def _check_operator(op: str) -> str:
    if op not in OPERATORS:
        raise _fail(f"unknown operator {op!r} (one of {', '.join(OPERATORS)})")
    return op


class Condition(_Model):
    arg: Selector | None = Field(None, description="JSON body or MCP arguments, by selector")
    param: Annotated[str, AfterValidator(_check_ident)] | None = Field(None, description="path parameter")
    query: NonEmptyStr | None = None
    header: HeaderName | None = None
    claim: NonEmptyStr | None = Field(None, description="token claim")
    op: Annotated[str, AfterValidator(_check_operator), Field(json_schema_extra={"enum": list(OPERATORS)})]
    value: Any = Field(None, description="required except for exists (default true)")

    _regex: re.Pattern[str] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _exists_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("op") == "exists" and "value" not in data:
            data = {**data, "value": True}
        return data

    @model_validator(mode="after")
    def _compile(self) -> Condition:
        if self.op == "matches" and isinstance(self.value, str):
            try:
                self._regex = re.compile(self.value)
            except re.error:
                pass  # reported by _whole
        return self

    @classmethod
    def _whole(cls, data: dict[str, Any], result: Any) -> list[tuple[Loc, str]]:
        out: list[tuple[Loc, str]] = []
        sources = [s for s in CONDITION_SOURCES if data.get(s) is not None]
        if not sources:
            out.append(((), "exactly one source is required: arg, param, query, header or claim"))
        elif len(sources) > 1:
            out.append(((), f"give only one source, got {' and '.join(sources)}"))
        op = data.get("op")
        if op not in OPERATORS:
            return out
        value = data.get("value")
        problem = None
        if "value" not in data:
            problem = None if op == "exists" else f"required for operator {op!r}"
        elif op in ("in", "not_in") and not isinstance(value, list):
            problem = f"operator {op!r} needs a list, got {_kind(value)}"
        elif op in ("<", "<=", ">", ">=") and not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            problem = f"operator {op!r} needs a finite number, got {_kind(value)}"
        elif op in ("prefix", "suffix", "matches") and not isinstance(value, str):
            problem = f"operator {op!r} needs a string, got {_kind(value)}"
        elif op == "exists" and not isinstance(value, bool):
            problem = f"operator 'exists' takes true or false, got {_kind(value)}"
        elif op == "matches":
            try:
                re.compile(value)
            except re.error as exc:
                problem = f"invalid regular expression: {exc}"
        if problem:
            out.append((("value",), problem))
        return out

    @property
    def source(self) -> tuple[str, str]:
        """(kind, key): e.g. ("arg", "$.amount") or ("header", "X-Tenant")."""
        for kind in CONDITION_SOURCES:
            key = getattr(self, kind)
            if key is not None:
                return kind, key
        raise AssertionError("validated condition without a source")

    @property
    def selector(self) -> tuple[Step, ...] | None:
        return parse_selector(self.arg) if self.arg is not None else None

    @property
    def regex(self) -> re.Pattern[str] | None:
        """The compiled pattern of a `matches` condition."""
        return self._regex


def _check_reviewer(value: str) -> str:
    if value.startswith("user:") and not value[5:].strip():
        raise _fail("'user:' must be followed by a name")
    return value


class ApprovalSpec(_Model):
    reviewers: Annotated[list[Annotated[NonEmptyStr, AfterValidator(_check_reviewer)]], Field(
        min_length=1, description="groups, or subjects as user:NAME, that may decide")]
    quorum: PositiveInt = 1
    timeout: PositiveDuration = 900.0
    mode: Literal["hold", "async"] = "hold"


class Rule(_Model):
    id: Name
    functions: Annotated[list[FunctionPattern], Field(min_length=1)]
    groups: list[NonEmptyStr] = []
    subjects: list[NonEmptyStr] = []
    authenticated: bool = False
    when: list[Condition] = []
    effect: Literal["allow", "deny", "approve"]
    approval: ApprovalSpec | None = None

    @classmethod
    def _whole(cls, data: dict[str, Any], result: Any) -> list[tuple[Loc, str]]:
        effect, approval = data.get("effect"), data.get("approval")
        if effect == "approve" and approval is None:
            return [(("approval",), "required when effect is 'approve'")]
        if effect in ("allow", "deny") and approval is not None:
            return [(("approval",), f"only allowed when effect is 'approve', not {effect!r}")]
        return []

    def applies_to(self, function_name: str) -> bool:
        return any(glob_match(p, function_name) for p in self.functions)


class Log(_Model):
    access: bool = True
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class _FnView:
    """What the cross checks need of a function; built from a validated one or, best effort, raw data."""
    index: int
    name: str | None
    upstream: str | None
    http: HttpRoute | None
    mcp: McpTool | None

    @classmethod
    def of(cls, i: int, fn: Function) -> _FnView:
        return cls(i, fn.name, fn.upstream, fn.http, fn.mcp)

    @classmethod
    def raw(cls, i: int, item: Any) -> _FnView:
        item = item if isinstance(item, dict) else {}
        return cls(i, _str_or_none(item.get("name")), _str_or_none(item.get("upstream")),
                   _valid_or_none(HttpRoute, item.get("http")), _valid_or_none(McpTool, item.get("mcp")))


@dataclass(frozen=True)
class _RuleView:
    index: int
    id: str | None
    functions: tuple[tuple[int, str], ...]
    params: tuple[tuple[int, str], ...]

    @classmethod
    def of(cls, i: int, rule: Rule) -> _RuleView:
        return cls(i, rule.id, tuple(enumerate(rule.functions)),
                   tuple((k, c.param) for k, c in enumerate(rule.when) if c.param is not None))

    @classmethod
    def raw(cls, i: int, item: Any) -> _RuleView:
        item = item if isinstance(item, dict) else {}
        fns = item.get("functions")
        when = item.get("when")
        fns = fns if isinstance(fns, list) else []
        when = when if isinstance(when, list) else []
        return cls(i, _str_or_none(item.get("id")),
                   tuple((k, f) for k, f in enumerate(fns) if isinstance(f, str)),
                   tuple((k, c["param"]) for k, c in enumerate(when)
                         if isinstance(c, dict) and isinstance(c.get("param"), str)))


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _valid_or_none(model: type[_Model], value: Any) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError:
        return None


def _cross_check(upstreams: set[str] | None, functions: list[_FnView], rules: list[_RuleView]
                 ) -> list[tuple[Loc, str]]:
    """References between sections: names unique, function -> upstream, rule -> function,
    route and tool conflicts, `param` conditions naming real path parameters."""
    out: list[tuple[Loc, str]] = []
    by_name: dict[str, _FnView] = {}
    routes: dict[tuple[str, str], _FnView] = {}
    tools: dict[tuple[str, str], _FnView] = {}
    endpoints: dict[str, _FnView] = {}
    for fn in functions:
        i = fn.index
        if fn.name is not None:
            if fn.name in by_name:
                out.append((("functions", i, "name"), f"duplicate function name {fn.name!r} "
                            f"(first at functions[{by_name[fn.name].index}])"))
            by_name.setdefault(fn.name, fn)
        if upstreams is not None and fn.upstream is not None and fn.upstream not in upstreams:
            known = ", ".join(sorted(upstreams)) or "none defined"
            out.append((("functions", i, "upstream"), f"unknown upstream {fn.upstream!r} (known: {known})"))
        if fn.mcp is not None:
            other = tools.setdefault((fn.mcp.endpoint, fn.mcp.tool), fn)
            if other is not fn:
                out.append((("functions", i, "mcp", "tool"), f"tool {fn.mcp.tool!r} on {fn.mcp.endpoint} is "
                            f"already function {other.name!r} (functions[{other.index}])"))
            first = endpoints.setdefault(fn.mcp.endpoint, fn)
            if first.upstream != fn.upstream:
                out.append((("functions", i, "upstream"),
                            f"MCP endpoint {fn.mcp.endpoint} is served by upstream {first.upstream!r} "
                            f"(functions[{first.index}]); one endpoint has one upstream"))
    for fn in functions:
        if fn.http is None:
            continue
        other = routes.setdefault((fn.http.method, fn.http.shape), fn)
        if other is not fn:
            out.append((("functions", fn.index, "http", "path"), f"route {fn.http.method} {fn.http.shape} is "
                        f"already function {other.name!r} (functions[{other.index}])"))
        if fn.http.path in endpoints:
            other = endpoints[fn.http.path]
            out.append((("functions", fn.index, "http", "path"), f"{fn.http.path} is the MCP endpoint of "
                        f"function {other.name!r} (functions[{other.index}])"))
    rule_ids: dict[str, int] = {}
    for rule in rules:
        i = rule.index
        if rule.id is not None:
            if rule.id in rule_ids:
                out.append((("rules", i, "id"),
                            f"duplicate rule id {rule.id!r} (first at rules[{rule_ids[rule.id]}])"))
            rule_ids.setdefault(rule.id, i)
        named: list[_FnView] = []
        for k, pattern in rule.functions:
            if "*" in pattern:
                continue
            if pattern in by_name:
                named.append(by_name[pattern])
            else:
                out.append((("rules", i, "functions", k), f"unknown function {pattern!r}"))
        for k, param in rule.params:
            for fn in named:
                if fn.http is not None and param not in fn.http.params:
                    out.append((("rules", i, "when", k, "param"), f"{param!r} is not a parameter of function "
                                f"{fn.name!r} ({fn.http.method} {fn.http.path})"))
    return out


class Config(_Model):
    version: Literal[1]
    listen: HostPort = "127.0.0.1:8080"
    tls: TLS | None = None
    workers: Annotated[int, Field(ge=1, le=256)] = 1
    limits: Limits = Field(default_factory=Limits)
    admin: Admin = Field(default_factory=Admin)
    store: Store = Field(default_factory=Store)
    audit: Audit = Field(default_factory=Audit)
    identity: Identity = Field(default_factory=Identity)
    approvals: Approvals = Field(default_factory=Approvals)
    upstreams: dict[Name, Upstream] = {}
    functions: list[Function] = []
    pii: Pii = Field(default_factory=Pii)
    rules: list[Rule] = []
    log: Log = Field(default_factory=Log)

    _secret_values: frozenset[str] = PrivateAttr(default_factory=frozenset)
    _function_by_name: dict[str, Function] = PrivateAttr(default_factory=dict)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, version: Any) -> Any:
        if version != 1 or isinstance(version, bool) or not isinstance(version, int):
            raise _fail(f"unsupported config version {version!r}; this fastgate reads version: 1")
        return version

    @model_validator(mode="after")
    def _index(self) -> Config:
        self._function_by_name = {fn.name: fn for fn in self.functions}
        return self

    @classmethod
    def _whole(cls, data: dict[str, Any], result: Any) -> list[tuple[Loc, str]]:
        if result is None:
            return _salvage(data)
        return _cross_check(set(result.upstreams), [_FnView.of(i, f) for i, f in enumerate(result.functions)],
                            [_RuleView.of(i, r) for i, r in enumerate(result.rules)])

    @property
    def listen_host(self) -> str:
        return parse_hostport(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return parse_hostport(self.listen)[1]

    @property
    def secret_values(self) -> frozenset[str]:
        """Every value expanded from ${env:...} / ${file:...}, so logs can scrub them."""
        return self._secret_values

    @property
    def function_by_name(self) -> dict[str, Function]:
        """Name -> function. Shared: treat as read-only."""
        return self._function_by_name


# --------------------------------------------------------------------------- YAML and secrets

class _Loader(yaml.SafeLoader):
    """SafeLoader; duplicate keys are found on the node tree before construction."""


def _duplicate_keys(loader: _Loader, root: yaml.Node) -> list[tuple[Loc, str]]:
    out: list[tuple[int, Loc, str]] = []
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, Loc]] = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    stack.append((value_node, loc))
                    continue
                try:
                    key = loader.construct_object(key_node, deep=True)
                    hash(key)
                except (yaml.YAMLError, TypeError):
                    continue
                line = key_node.start_mark.line + 1
                if key in first_line:
                    out.append((line, loc + (str(key),),
                                f"duplicate key (line {line}; first at line {first_line[key]})"))
                else:
                    first_line[key] = line
                stack.append((value_node, loc + (key if isinstance(key, (str, int)) else str(key),)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, loc + (i,)) for i, child in enumerate(node.value))
    return [(loc, msg) for _, loc, msg in sorted(out, key=lambda e: e[0])]


def _yaml_message(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"invalid YAML{where}: {', '.join(parts)}"
    return f"invalid YAML: {' '.join(str(exc).split())}"


def _load_yaml(text: str) -> Any:
    try:
        loader = _Loader(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"(root): {_yaml_message(exc)}"]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        dups = _duplicate_keys(loader, node)
        if dups:
            raise ConfigError([f"{format_path(loc)}: {msg}" for loc, msg in dups])
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError([f"(root): {_yaml_message(exc)}"]) from None
    except RecursionError:
        raise ConfigError(["(root): the document is nested too deeply"]) from None
    finally:
        loader.dispose()


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Expander:
    """Expands `${env:NAME}` and `${file:PATH}` in every string of the raw document."""

    def __init__(self, env: Mapping[str, str], base_dir: Path):
        self.env = env
        self.base_dir = base_dir
        self.secrets: set[str] = set()
        self.errors: list[tuple[Loc, str]] = []
        self.visited = 0

    def walk(self, value: Any, loc: Loc = ()) -> Any:
        self.visited += 1
        if self.visited > MAX_VALUES:
            raise ConfigError([f"(root): the document holds more than {MAX_VALUES} values "
                               "(aliases expanded)"])
        if len(loc) > MAX_DEPTH:
            raise ConfigError([f"{format_path(loc[:8])}...: nested more than {MAX_DEPTH} levels deep"])
        if isinstance(value, str):
            return self.expand(value, loc) if "$" in value else value
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    self.errors.append((loc + (str(k),), f"keys must be strings, got {_kind(k)} (quote it)"))
                    k = str(k)
                out[k] = self.walk(v, loc + (k,))
            return out
        if isinstance(value, list):
            return [self.walk(v, loc + (i,)) for i, v in enumerate(value)]
        return value

    def expand(self, text: str, loc: Loc) -> str:
        out: list[str] = []
        i = 0
        while True:
            j = text.find("$", i)
            if j < 0:
                out.append(text[i:])
                return "".join(out)
            out.append(text[i:j])
            if text.startswith("$${", j):
                out.append("${")
                i = j + 3
            elif text.startswith("${", j):
                end = text.find("}", j + 2)
                if end < 0:
                    self.errors.append((loc, "unterminated '${' (write '$${' for a literal '${')"))
                    return text
                resolved = self.resolve(text[j + 2:end], loc)
                if resolved is None:
                    return text
                out.append(resolved)
                i = end + 1
            else:
                out.append("$")
                i = j + 1

    def resolve(self, ref: str, loc: Loc) -> str | None:
        kind, _, arg = ref.partition(":")
        if kind == "env" and _ENV_NAME_RE.fullmatch(arg):
            value = self.env.get(arg)
            if value is None:
                self.errors.append((loc, f"environment variable {arg} is not set"))
                return None
            if value == "":
                self.errors.append((loc, f"environment variable {arg} is empty"))
                return None
        elif kind == "file" and arg:
            value = self.read_file(arg, loc)
            if value is None:
                return None
        else:
            shown = ref if len(ref) <= 60 else ref[:57] + "..."
            self.errors.append((loc, f"unsupported reference '${{{shown}}}': use ${{env:NAME}} or "
                                     "${file:PATH} (write '$${' for a literal '${')"))
            return None
        self.secrets.add(value)
        return value

    def read_file(self, name: str, loc: Loc) -> str | None:
        path = Path(name)
        if not path.is_absolute():
            path = self.base_dir / path
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            self.errors.append((loc, f"cannot read secret file {name!r}: {exc.strerror or exc}"))
            return None
        if len(data) > MAX_SECRET_FILE_BYTES:
            self.errors.append((loc, f"secret file {name!r} is larger than {MAX_SECRET_FILE_BYTES} bytes"))
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.errors.append((loc, f"secret file {name!r} is not UTF-8 text"))
            return None
        if text.endswith("\n"):
            text = text[:-2] if text.endswith("\r\n") else text[:-1]
        if text == "":
            self.errors.append((loc, f"secret file {name!r} is empty"))
            return None
        return text


def _scrub(message: str, secrets: frozenset[str]) -> str:
    """Replace every secret, also as repr() or JSON would escape it inside a message."""
    variants = {v for s in secrets for v in (s, repr(s)[1:-1], json.dumps(s)[1:-1]) if v}
    for variant in sorted(variants, key=len, reverse=True):
        message = message.replace(variant, "***")
    return message


def _salvage(data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    """The cross checks, best effort, on a document that failed validation elsewhere."""
    raw_upstreams = data.get("upstreams", {})
    raw_functions = data.get("functions", [])
    raw_rules = data.get("rules", [])
    return _cross_check(
        set(map(str, raw_upstreams)) if isinstance(raw_upstreams, dict) else None,
        [_FnView.raw(i, f) for i, f in enumerate(raw_functions if isinstance(raw_functions, list) else [])],
        [_RuleView.raw(i, r) for i, r in enumerate(raw_rules if isinstance(raw_rules, list) else [])],
    )


def parse_config(data: Any, env: Mapping[str, str] | None = None,
                 base_dir: str | os.PathLike[str] | None = None) -> Config:
    """Validate an already-loaded document (a mapping) and return the frozen Config.

    `${env:NAME}` reads `env` (default: os.environ). A relative `${file:PATH}` is resolved
    against `base_dir`, which defaults to the current working directory, not the config
    file's directory. Raises ConfigError listing every problem.
    """
    if not isinstance(data, Mapping):
        got = "an empty document" if data is None else _kind(data)
        raise ConfigError([f"(root): expected a mapping of settings, got {got}"])
    expander = _Expander(os.environ if env is None else env,
                         Path.cwd() if base_dir is None else Path(base_dir))
    expanded = expander.walk(dict(data))
    secrets = frozenset(expander.secrets)
    problems = list(expander.errors)
    failed = {loc for loc, _ in expander.errors}
    config: Config | None = None
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        found = _errors_of(exc)
        problems += [(loc, msg) for loc, msg in found
                     if not any(loc[:len(bad)] == bad for bad in failed)]
    if problems:
        lines: list[str] = []
        for loc, msg in problems:
            line = f"{format_path(loc)}: {_scrub(msg, secrets)}"
            if line not in lines:
                lines.append(line)
        raise ConfigError(lines)
    assert config is not None
    config._secret_values = secrets
    return config


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate a YAML config file. Raises ConfigError.

    Relative `${file:PATH}` references resolve against the current working directory.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"(root): cannot read {os.fspath(path)!r}: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([f"(root): the file is larger than {MAX_FILE_BYTES} bytes"])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"(root): the file is not UTF-8 (byte {exc.start})"]) from None
    return parse_config(_load_yaml(text), env=env)


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the config file (validation mode: what a user may write)."""
    schema = Config.model_json_schema(mode="validation")
    schema["title"] = "fastgate configuration"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
