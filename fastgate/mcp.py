"""MCP (JSON-RPC over streamable HTTP) as the gate needs it: sans-IO, values in, values out.

The pipeline owns sockets; this module only reads one POST body plus its headers, writes
in-band refusals, filters `tools/list` results, and keeps the session → caller binding.

Wire facts relied on (modelcontextprotocol/modelcontextprotocol, docs/specification/...):

* One JSON-RPC object per POST. Batches existed only in 2025-03-26; the gate refuses them in
  every era (one message, one decision) with 400 / -32600.
* Request ids are strings or integers, never null (basic/index "Requests", all revisions).
* `MCP-Protocol-Version` absent → assume 2025-03-26; unsupported → 400 (2025-11-25
  transports "Protocol Version Header"). 2026-07-28 is the stateless era: `Mcp-Method` on
  every request, `Mcp-Name` for tools/call, resources/read, prompts/get, and `Mcp-Param-{Name}`
  for `x-mcp-header` tool parameters; any disagreement with the body → 400 / -32020
  HeaderMismatch (2026-07-28 transports/streamable-http "Request Metadata", "Server
  Validation"). Header names compare case-insensitively, values case-sensitively; the
  `=?base64?…?=` sentinel is case-sensitive and decoded before comparing ("Value Encoding").
* Gate-defined codes sit outside -32768..-32000 (2026-07-28 basic/index "Error Codes").
"""
from __future__ import annotations

import base64
import binascii
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from fastgate.jsonargs import ArgsError, parse_args

__all__ = [
    "APPROVAL_DENIED",
    "APPROVAL_PENDING",
    "DENIED",
    "HEADER_MISMATCH",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "PARSE_ERROR",
    "SESSION_VERSIONS",
    "STATELESS_VERSIONS",
    "McpError",
    "McpRequest",
    "SessionBinder",
    "ToolsListFilter",
    "metadata_url",
    "param_header_paths",
    "parse_message",
    "refusal",
    "resource_metadata",
    "www_authenticate",
]

# JSON-RPC 2.0 §5.1 and MCP-defined codes.
PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32602, -32603
HEADER_MISMATCH, UNSUPPORTED_VERSION = -32020, -32022
# Gate codes (contract.md "Data plane answers").
DENIED, APPROVAL_DENIED, APPROVAL_PENDING = -31001, -31002, -31003

SESSION_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
STATELESS_VERSIONS = ("2026-07-28",)
ASSUMED_VERSION = "2025-03-26"
_NAMED = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_META_VERSION = "io.modelcontextprotocol/protocolVersion"
_PARAM_PREFIX = "mcp-param-"
_VISIBLE = re.compile(r"[\x21-\x7e]+\Z")          # session ids (2025-11-25 "Session Management")
_FIELD_VALUE = re.compile(r"[\x20-\x7e\t]*\Z")    # RFC 9110 §5.5 field-value, ASCII only
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_INT_HEADER = re.compile(r"-?[0-9]+(\.0*)?\Z")
_MAX_DEPTH = 128


class McpError(Exception):
    """A message the gate refuses before any policy runs; `body()` is the JSON-RPC answer.

    `http_status` is the hint for the pipeline: 400 for a malformed message, 200 for an
    in-band error on a readable request, 502 for an upstream answer the gate cannot read.
    """

    def __init__(self, http_status: int, jsonrpc_code: int, message: str,
                 id: int | str | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = jsonrpc_code
        self.message = message
        self.id = id
        self.data = data

    def body(self) -> bytes:
        """JSON-RPC error response; no `id` member when the id could not be read."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        out: dict[str, Any] = {"jsonrpc": "2.0"}
        if self.id is not None:
            out["id"] = self.id
        out["error"] = err
        return orjson.dumps(out)


@dataclass(frozen=True, slots=True)
class McpRequest:
    """One client→server message, parsed. Decisions use these fields, never the raw bytes."""

    kind: str                          # "request" | "notification" | "response"
    era: str                           # "session" | "stateless"
    version: str                       # protocol version in force (header or assumed)
    message: dict[str, Any]
    id: int | str | None = None
    method: str | None = None
    params: dict[str, Any] | None = None
    tool: str | None = None            # tools/call only
    arguments: dict[str, Any] | None = None
    session_id: str | None = None      # session era only
    unchecked_params: tuple[str, ...] = ()   # Mcp-Param-* names the gate had no schema for

    @property
    def client_capabilities(self) -> dict[str, Any]:
        """Declared client capabilities: initialize params (session) or `_meta` (stateless)."""
        params = self.params or {}
        if self.era == "stateless":
            meta = params.get("_meta")
            caps = meta.get("io.modelcontextprotocol/clientCapabilities") if type(meta) is dict else None
        else:
            caps = params.get("capabilities") if self.method == "initialize" else None
        return caps if type(caps) is dict else {}


# ---------------------------------------------------------------------------- parsing

Headers = Mapping[str, list[str]] | list[tuple[bytes, bytes]]


def _header_table(headers: Headers) -> dict[str, list[str]]:
    """Lower-cased names (RFC 9110 §5.1), values with surrounding whitespace removed (§5.5)."""
    table: dict[str, list[str]] = {}
    if isinstance(headers, Mapping):
        items: Iterable[tuple[Any, Any]] = ((k, v) for k, vs in headers.items() for v in vs)
    else:
        items = headers
    for name, value in items:
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).decode("latin-1")
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("latin-1")
        table.setdefault(name.lower(), []).append(value.strip(" \t"))
    return table


def _single(table: dict[str, list[str]], name: str, id: Any) -> str | None:
    values = table.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise McpError(400, HEADER_MISMATCH, f"Header mismatch: {name} is repeated", id)
    if not _FIELD_VALUE.match(values[0]):
        raise McpError(400, HEADER_MISMATCH, f"Header mismatch: {name} has invalid characters", id)
    return values[0]


def _decode_sentinel(value: str, name: str, id: Any) -> str:
    """`=?base64?…?=` (exact, lowercase markers) → the UTF-8 text; anything else is literal."""
    if len(value) >= 11 and value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise McpError(400, HEADER_MISMATCH, f"Header mismatch: {name} is not valid base64",
                           id) from None
    return value


def _header_matches(header: str, body: Any) -> bool:
    """Type conversion of 2026-07-28 "Value Encoding"; integers compare numerically."""
    if type(body) is str:
        return header == body
    if type(body) is bool:
        return header == ("true" if body else "false")
    if type(body) is int:
        return bool(_INT_HEADER.match(header)) and int(header.split(".")[0]) == body
    return False  # numbers, objects, arrays cannot be annotated: a header for them is a lie


def parse_message(body: bytes, headers: Headers, *,
                  param_headers: Mapping[str, Mapping[str, tuple[str, ...]]] | None = None
                  ) -> McpRequest:
    """Parse one POSTed JSON-RPC message; raise McpError for anything the gate must refuse.

    `param_headers` maps tool → {lower-cased `mcp-param-…` name: property path}, learned from
    `tools/list` (`ToolsListFilter.param_headers`). Tools absent from it have their
    `Mcp-Param-*` headers left unchecked (listed in `unchecked_params`): the gate decides on the
    body, and the upstream validates headers itself.
    """
    table = _header_table(headers)
    version = _single(table, "mcp-protocol-version", None)
    if version is None:
        era, version = "session", ASSUMED_VERSION
    elif version in SESSION_VERSIONS:
        era = "session"
    elif version in STATELESS_VERSIONS:
        era = "stateless"
    else:
        raise McpError(400, UNSUPPORTED_VERSION, f"Unsupported protocol version: {version[:40]}",
                       data={"supported": [*SESSION_VERSIONS[1:], *STATELESS_VERSIONS],
                             "requested": version[:40]})

    try:
        msg = parse_args(body, _MAX_DEPTH)
    except ArgsError as exc:
        code = PARSE_ERROR if exc.detail.startswith("invalid JSON") else INVALID_REQUEST
        raise McpError(400, code, "Parse error" if code == PARSE_ERROR else f"Invalid Request: {exc.detail}")
    except TypeError:
        raise McpError(400, PARSE_ERROR, "Parse error") from None
    if type(msg) is list:
        raise McpError(400, INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported")
    if type(msg) is not dict:
        raise McpError(400, INVALID_REQUEST, "Invalid Request: not a JSON-RPC object")

    raw_id = msg.get("id")
    id = raw_id if type(raw_id) in (int, str) else None
    if msg.get("jsonrpc") != "2.0":
        raise McpError(400, INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', id)
    if "method" in msg:
        method = msg["method"]
        if type(method) is not str or not method:
            raise McpError(400, INVALID_REQUEST, "Invalid Request: method must be a string", id)
        if "result" in msg or "error" in msg:
            raise McpError(400, INVALID_REQUEST, "Invalid Request: a request has no result or error", id)
        if "id" in msg:
            if id is None:
                raise McpError(400, INVALID_REQUEST, "Invalid Request: id must be a string or an integer")
            kind = "request"
        else:
            kind = "notification"
    elif "result" in msg or "error" in msg:
        return _response(msg, id, era, version, table)
    else:
        raise McpError(400, INVALID_REQUEST, "Invalid Request: no method, result or error", id)

    params = msg.get("params")
    if "params" in msg and type(params) is not dict:
        raise McpError(200 if id is not None else 400, INVALID_PARAMS,
                       "Invalid params: params must be an object", id)
    tool = arguments = None
    if method == "tools/call":
        p = params or {}
        tool = p.get("name")
        if type(tool) is not str or not tool:
            raise McpError(200 if id is not None else 400, INVALID_PARAMS,
                           "Invalid params: tools/call needs a tool name", id)
        arguments = p.get("arguments", {})
        if type(arguments) is not dict:
            raise McpError(200 if id is not None else 400, INVALID_PARAMS,
                           "Invalid params: arguments must be an object", id)

    unchecked: tuple[str, ...] = ()
    session_id = None
    if era == "stateless":
        unchecked = _check_stateless(table, kind, method, params or {}, version, tool, arguments,
                                     param_headers, id)
    else:
        session_id = _session_header(table, id)
    return McpRequest(kind, era, version, msg, id, method, params, tool, arguments, session_id, unchecked)


def _session_header(table: dict[str, list[str]], id: Any) -> str | None:
    values = table.get("mcp-session-id")
    if not values:
        return None
    if len(values) > 1 or not _VISIBLE.match(values[0]):
        raise McpError(400, INVALID_REQUEST, "Bad Request: invalid Mcp-Session-Id", id)
    return values[0]


def _response(msg: dict[str, Any], id: Any, era: str, version: str,
              table: dict[str, list[str]]) -> McpRequest:
    """A client's answer to a server request (elicitation, sampling, roots): session era only."""
    if era == "stateless":  # 2026-07-28: "The client MUST NOT send JSON-RPC responses."
        raise McpError(400, INVALID_REQUEST, "Invalid Request: responses are not accepted in this protocol version")
    if id is None:
        raise McpError(400, INVALID_REQUEST, "Invalid Request: a response needs a string or integer id")
    if ("result" in msg) == ("error" in msg):
        raise McpError(400, INVALID_REQUEST, "Invalid Request: a response has exactly one of result, error")
    if "result" in msg and type(msg["result"]) is not dict:
        raise McpError(400, INVALID_REQUEST, "Invalid Request: result must be an object")
    if "error" in msg:
        err = msg["error"]
        if type(err) is not dict or type(err.get("code")) is not int or type(err.get("message")) is not str:
            raise McpError(400, INVALID_REQUEST, "Invalid Request: malformed error object")
    return McpRequest("response", era, version, msg, id, session_id=_session_header(table, None))


def _check_stateless(table: dict[str, list[str]], kind: str, method: str, params: dict[str, Any],
                     version: str, tool: str | None, arguments: dict[str, Any] | None,
                     param_headers: Mapping[str, Mapping[str, tuple[str, ...]]] | None,
                     id: Any) -> tuple[str, ...]:
    def mismatch(text: str) -> McpError:
        return McpError(400, HEADER_MISMATCH, f"Header mismatch: {text}", id)

    required = kind == "request"  # header rules for notification POSTs are undefined: check if sent
    h_method = _single(table, "mcp-method", id)
    if h_method is None:
        if required:
            raise mismatch("Mcp-Method header is missing")
    elif h_method != method:
        raise mismatch("Mcp-Method header does not match the body method")

    source = _NAMED.get(method)
    h_name = _single(table, "mcp-name", id)
    if source is None:
        if h_name is not None:  # an intermediary could route on a name the body does not carry
            raise mismatch(f"Mcp-Name header is not defined for {method[:40]}")
    else:
        body_name = params.get(source)
        if h_name is None:
            if required:
                raise mismatch("Mcp-Name header is missing")
        elif type(body_name) is not str or _decode_sentinel(h_name, "Mcp-Name", id) != body_name:
            raise mismatch("Mcp-Name header does not match the body")

    if kind == "request":
        meta = params.get("_meta")
        body_version = meta.get(_META_VERSION) if type(meta) is dict else None
        if body_version != version:
            raise mismatch("MCP-Protocol-Version header does not match _meta protocolVersion")

    sent = sorted(n for n in table if n.startswith(_PARAM_PREFIX))
    if tool is None:
        return tuple(sent)
    paths = None if param_headers is None else param_headers.get(tool)
    if paths is None:
        return tuple(sent)
    for name, path in paths.items():
        value: Any = arguments
        for key in path:
            value = value.get(key) if type(value) is dict else None
        header = _single(table, name, id)
        if value is None:
            if header is not None:
                raise mismatch(f"{name} header has no value in the arguments")
            continue
        if header is None:
            raise mismatch(f"{name} header is missing")
        if not _header_matches(_decode_sentinel(header, name, id), value):
            raise mismatch(f"{name} header does not match the arguments")
    return tuple(n for n in sent if n not in paths)


def param_header_paths(tool: Mapping[str, Any]) -> dict[str, tuple[str, ...]] | None:
    """`x-mcp-header` annotations of one tool definition → {lower-cased header name: path}.

    Only chains of `properties` keys count (2026-07-28 "Schema Extension"); None when an
    annotation is invalid (clients then drop the tool; the gate then has no mapping).
    """
    schema = tool.get("inputSchema")
    out: dict[str, tuple[str, ...]] = {}
    stack: list[tuple[Any, tuple[str, ...]]] = [(schema, ())]
    while stack:
        node, path = stack.pop()
        if type(node) is not dict:
            continue
        if path and "x-mcp-header" in node:
            label = node["x-mcp-header"]
            if type(label) is not str or not _TOKEN.match(label):
                return None
            name = _PARAM_PREFIX + label.lower()
            if name in out:
                return None
            out[name] = path
        props = node.get("properties")
        if type(props) is dict and len(path) < _MAX_DEPTH:
            stack.extend((sub, (*path, key)) for key, sub in props.items())
    return out


# ---------------------------------------------------------------------------- refusals

_KINDS = {"denied": DENIED, "approval_denied": APPROVAL_DENIED, "approval_expired": APPROVAL_DENIED,
          "approval_pending": APPROVAL_PENDING, "unknown_tool": INVALID_PARAMS}


def refusal(request: McpRequest, kind: str, *, rule: str | None = None, approval_id: str | None = None,
            message: str | None = None, as_tool_result: bool = False,
            request_id: str | None = None) -> bytes | None:
    """The HTTP-200 body refusing `request` in-band, or None for a notification (answer 202).

    Real clients drop the session on an HTTP 403, so policy outcomes travel as JSON-RPC.
    `data` carries the contract's fields; `unknown_tool` carries none, so a hidden tool
    reads exactly like a missing one.
    """
    code = _KINDS.get(kind)
    if code is None:
        raise ValueError(f"unknown refusal kind {kind!r}")
    if request.kind != "request":
        return None
    data: dict[str, Any] | None
    if kind == "denied":
        text = f"denied by rule {rule}" if rule else "denied: no rule allows this call"
        data = {"error": "denied", "rule": rule}
    elif kind == "approval_pending":
        text = f"waiting for approval {approval_id}"
        data = {"status": "pending", "approval_id": approval_id}
    elif kind == "unknown_tool":
        text = f"Unknown tool: {request.tool}"
        data = None
    else:
        text = f"approval {approval_id} was {'denied' if kind == 'approval_denied' else 'not given in time'}"
        data = {"error": kind, "approval_id": approval_id}
    if data is not None and request_id is not None:
        data["request_id"] = request_id
    text = message or text
    out: dict[str, Any] = {"jsonrpc": "2.0", "id": request.id}
    if as_tool_result:
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": True}
        if request.era == "stateless":
            result["resultType"] = "complete"
        out["result"] = result
    else:
        err: dict[str, Any] = {"code": code, "message": text}
        if data is not None:
            err["data"] = data
        out["error"] = err
    return orjson.dumps(out)


# ---------------------------------------------------------------------------- tools/list

class ToolsListFilter:
    """Keeps only allowed tools in `tools/list` results; everything else passes unchanged.

    Upstream bodies the gate cannot read raise McpError(502, …): the pipeline fails closed
    rather than forwarding a list it could not filter. `param_headers` collects the
    `x-mcp-header` paths of the tools kept, for `parse_message`.
    """

    def __init__(self, allowed: Iterable[str], max_event: int = 4 * 2**20) -> None:
        self.allowed = frozenset(allowed)
        self.max_event = max_event
        self.param_headers: dict[str, dict[str, tuple[str, ...]]] = {}

    def filter_json(self, body: bytes) -> bytes:
        """A whole `application/json` response body."""
        out = self._payload(body)
        return body if out is None else out

    def stream(self) -> _SseFilter:
        """A `text/event-stream` response: `feed(chunk) -> bytes`, `close() -> bytes`."""
        return _SseFilter(self)

    def _payload(self, payload: bytes) -> bytes | None:
        """Filtered JSON, or None when the message is not a tools list and passes verbatim."""
        try:
            msg = parse_args(payload, _MAX_DEPTH)
        except ArgsError as exc:
            raise McpError(502, INTERNAL_ERROR, f"unreadable upstream tools/list: {exc.detail}") from None
        if type(msg) is not dict or "result" not in msg:
            return None  # notifications, server requests, error responses
        result = msg["result"]
        if type(result) is not dict or "tools" not in result:
            return None
        tools = result["tools"]
        if type(tools) is not list:
            raise McpError(502, INTERNAL_ERROR, "upstream tools/list result has no tool array")
        kept = []
        for tool in tools:
            name = tool.get("name") if type(tool) is dict else None
            if type(name) is str and name in self.allowed:
                kept.append(tool)
                paths = param_header_paths(tool)
                if paths:
                    self.param_headers[name] = paths
        result["tools"] = kept
        return orjson.dumps(msg)


_LINE_END = re.compile(rb"\r\n|\r|\n")


class _SseFilter:
    """SSE framing per the WHATWG event-stream grammar; one event held at a time.

    Lines that are not `data` (event, id, retry, comments) stay in place byte for byte; an
    event whose payload is rewritten gets one `data:` line where its first data line was.
    """

    def __init__(self, owner: ToolsListFilter) -> None:
        self._owner = owner
        self._buf = b""
        self._lines: list[tuple[bytes, bytes]] = []
        self._size = 0
        self._started = False

    def feed(self, chunk: bytes) -> bytes:
        buf = self._buf + chunk
        out: list[bytes] = []
        if not self._started:
            if len(buf) < 3 and b"\xef\xbb\xbf".startswith(buf):
                self._buf = buf
                return b""
            self._started = True
            if buf.startswith(b"\xef\xbb\xbf"):
                out.append(buf[:3])
                buf = buf[3:]
        pos = 0
        for m in _LINE_END.finditer(buf):
            if m.group() == b"\r" and m.end() == len(buf):
                break  # the LF of a CRLF may come with the next chunk
            out.append(self._line(buf[pos:m.start()], m.group()))
            pos = m.end()
        self._buf = buf[pos:]
        if self._size + len(self._buf) > self._owner.max_event:
            raise McpError(502, INTERNAL_ERROR, "upstream event-stream event too large")
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
            if self._size > self._owner.max_event:
                raise McpError(502, INTERNAL_ERROR, "upstream event-stream event too large")
            return b""
        return self._dispatch(end)

    def _dispatch(self, end: bytes | None) -> bytes:
        lines, self._lines, self._size = self._lines, [], 0
        verbatim = b"".join(line + eol for line, eol in lines) + (end or b"")
        data = []
        for k, (line, _) in enumerate(lines):
            colon = line.find(b":")
            if (line if colon < 0 else line[:colon]) != b"data":
                continue
            start = len(line) if colon < 0 else colon + 1 + (line[colon + 1:colon + 2] == b" ")
            data.append((k, start))
        if not data:
            return verbatim
        payload = b"\n".join(lines[k][0][s:] for k, s in data)
        if not payload.strip(b" \t\r\n"):
            return verbatim  # priming events carry an empty data field
        new = self._owner._payload(payload)
        if new is None:
            return verbatim
        first = data[0][0]
        skip = {k for k, _ in data}
        rebuilt = [b"data: " + new + lines[k][1] if k == first else line + eol
                   for k, (line, eol) in enumerate(lines) if k == first or k not in skip]
        return b"".join(rebuilt) + (end or b"")


# ---------------------------------------------------------------------------- authorization

def metadata_url(resource_url: str) -> str:
    """RFC 9728 §3.1: the well-known path goes between the host and the resource's path."""
    scheme, sep, rest = resource_url.partition("://")
    if not sep:
        raise ValueError("resource_url must be absolute")
    host, _slash, path = rest.partition("/")
    path = path.rstrip("/")
    return f"{scheme}://{host}/.well-known/oauth-protected-resource" + (f"/{path}" if path else "")


def resource_metadata(resource_url: str, issuer: str | list[str],
                      scopes: list[str] | None) -> dict[str, Any]:
    """RFC 9728 §2 protected-resource metadata for one MCP endpoint of the gate."""
    doc: dict[str, Any] = {
        "resource": resource_url,
        "authorization_servers": [issuer] if isinstance(issuer, str) else list(issuer),
        "bearer_methods_supported": ["header"],
    }
    if scopes is not None:
        doc["scopes_supported"] = list(scopes)
    return doc


def _quoted(value: str) -> str:
    """RFC 9110 §5.6.4 quoted-string; refuses what a header value cannot carry."""
    if not _FIELD_VALUE.match(value):
        raise ValueError("challenge parameter has characters a header cannot carry")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def www_authenticate(resource_metadata_url: str, error: str | None = None,
                     description: str | None = None, scope: list[str] | None = None) -> str:
    """`Bearer` challenge (RFC 6750 §3) with RFC 9728 §5.1 `resource_metadata`."""
    parts = [f"resource_metadata={_quoted(resource_metadata_url)}"]
    if error is not None:
        parts.append(f"error={_quoted(error)}")
    if description is not None:
        parts.append(f"error_description={_quoted(description)}")
    if scope:
        parts.append(f"scope={_quoted(' '.join(scope))}")
    return "Bearer " + ", ".join(parts)


# ---------------------------------------------------------------------------- sessions

@dataclass
class SessionBinder:
    """`Mcp-Session-Id` → the subject that opened it. Session ids are bearer secrets: a
    caller presenting another caller's id is refused (2025-11-25 security_best_practices
    "Session Hijacking"). Bounded with LRU eviction; an evicted or unknown session fails
    `check`, and the pipeline answers 404 so the client re-initializes (transports
    "Session Management" item 4)."""

    max_sessions: int = 100_000
    _owners: OrderedDict[str, str] = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")

    def __len__(self) -> int:
        return len(self._owners)

    def bind(self, session_id: str, subject: str) -> bool:
        """Record the session the upstream issued; False if it already belongs to someone else."""
        if not _VISIBLE.match(session_id):
            raise ValueError("session ids are visible ASCII (0x21-0x7E)")
        owner = self._owners.get(session_id)
        if owner is not None and owner != subject:
            return False
        self._owners[session_id] = subject
        self._owners.move_to_end(session_id)
        while len(self._owners) > self.max_sessions:
            self._owners.popitem(last=False)
        return True

    def check(self, session_id: str, subject: str) -> bool:
        """True only for the subject that opened the session; refreshes its LRU position."""
        owner = self._owners.get(session_id)
        if owner is None or owner != subject:
            return False
        self._owners.move_to_end(session_id)
        return True

    def forget(self, session_id: str) -> None:
        """After a DELETE the owner made (check first), or a 404 from the upstream."""
        self._owners.pop(session_id, None)
