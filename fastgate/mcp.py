"""MCP (JSON-RPC over streamable HTTP) as the gate needs it: sans-IO, values in, values out.

The pipeline owns sockets; this module only reads one POST body plus its headers, writes
in-band refusals, rewrites answers (`tools/list` filtering, approval round trips) and seals
session ids and `requestState` to the caller.

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
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from fastgate.jsonargs import ArgsError, parse_args
from fastgate.sse import BOM, LINE_END, EventRewriter

__all__ = [
    "APPROVAL_DENIED",
    "APPROVAL_PENDING",
    "DENIED",
    "HEADER_MISMATCH",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LEGACY_TRANSPORT",
    "PARSE_ERROR",
    "SESSION_VERSIONS",
    "STATELESS_VERSIONS",
    "McpError",
    "LegacyTransportProbe",
    "McpRequest",
    "ResultStateWrapper",
    "StateSealer",
    "ToolsListFilter",
    "call_hash",
    "gate_responses",
    "input_required",
    "is_gate_state",
    "metadata_url",
    "param_header_paths",
    "parse_message",
    "process_state_key",
    "refusal",
    "resource_metadata",
    "strip_gate_state",
    "upstream_responses",
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
    try:
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
    except McpError as exc:
        exc.id = _readable_id(body)  # JSON-RPC: an error names the request's id whenever it can be read
        raise

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


def _readable_id(body: bytes) -> int | str | None:
    try:
        msg = parse_args(body, _MAX_DEPTH)
    except (ArgsError, TypeError):
        return None
    raw = msg.get("id") if type(msg) is dict else None
    return raw if type(raw) in (int, str) else None


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
        if data is not None:  # not structuredContent: that must match the tool's outputSchema
            result["_meta"] = {"fastgate": data}
        if request.era == "stateless":
            result["resultType"] = "complete"
        out["result"] = result
    else:
        err: dict[str, Any] = {"code": code, "message": text}
        if data is not None:
            err["data"] = data
        out["error"] = err
    return orjson.dumps(out)


# ---------------------------------------------------------------------------- approval round trips

GATE_STATE_PREFIX = "fastgate1."
GATE_INPUT_PREFIX = "fastgate-"


def call_hash(tool: str, arguments: Mapping[str, Any]) -> str:
    """What an approval is bound to: the tool and its arguments, not the JSON-RPC id or the
    round-trip fields, which change on every retry."""
    return hashlib.sha256(orjson.dumps([tool, arguments], option=orjson.OPT_SORT_KEYS)).hexdigest()


class StateSealer:
    """HMAC-SHA256 sealed `requestState` for the gate's own round trips (2026-07-28), and
    caller-bound session ids (session era).

    The client echoes the state verbatim; the gate believes nothing in it that it did not sign,
    and the expiry `e` bounds how long a copy is worth anything. Workers share one key (made
    before fork, or `approvals.state_secret`), so any worker can open what another sealed.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the requestState key needs at least 32 bytes")
        self._key = key

    def _mac(self, body: bytes) -> bytes:
        return base64.urlsafe_b64encode(hmac.new(self._key, body, hashlib.sha256).digest()).rstrip(b"=")

    def seal(self, fields: Mapping[str, Any]) -> str:
        body = GATE_STATE_PREFIX.encode() + base64.urlsafe_b64encode(orjson.dumps(fields)).rstrip(b"=")
        return (body + b"." + self._mac(body)).decode()

    # Session ids: the client sees `<upstream id>.<flag><mac>`. The MAC binds the upstream's id to
    # the caller who opened it (and to whether its client declared elicitation), so a session id
    # is worthless to anyone else (2025-11-25 security_best_practices "Session Hijacking") and
    # every worker, with no shared table, can check it and give the upstream its own id back.

    def _session_mac(self, sid: str, flag: str, subject: str, auth: str) -> str:
        msg = orjson.dumps(["session", sid, flag, subject, auth])
        return base64.urlsafe_b64encode(hmac.new(self._key, msg, hashlib.sha256).digest()[:16]).rstrip(b"=").decode()

    def session_id(self, upstream_sid: str, subject: str, auth: str, elicitation: bool) -> str:
        """The id the client gets for the upstream's `upstream_sid` (visible ASCII, checked)."""
        if not _VISIBLE.match(upstream_sid):
            raise ValueError("session ids are visible ASCII (0x21-0x7E)")
        flag = "e" if elicitation else "n"
        return f"{upstream_sid}.{flag}{self._session_mac(upstream_sid, flag, subject, auth)}"

    def open_session(self, client_sid: str, subject: str, auth: str) -> tuple[str, bool] | None:
        """(upstream id, elicitation declared) for this caller's own session id, else None."""
        sid, dot, tail = client_sid.rpartition(".")
        if not dot or not sid or len(tail) < 2 or tail[0] not in "en":
            return None
        mac = self._session_mac(sid, tail[0], subject, auth)
        if not hmac.compare_digest(tail[1:].encode("utf-8", "replace"), mac.encode()):
            return None
        return sid, tail[0] == "e"

    def open(self, token: str, id: Any, now: float | None = None) -> dict[str, Any]:
        """The signed fields, or McpError (in-band -32602) for a forged, altered or stale state."""
        def bad() -> McpError:
            return McpError(200, INVALID_PARAMS, "Invalid params: invalid or expired requestState", id)

        body, dot, mac = token.encode("utf-8", "replace").rpartition(b".")
        if not dot or not hmac.compare_digest(mac, self._mac(body)):
            raise bad()
        try:
            data = body[len(GATE_STATE_PREFIX):]
            fields = orjson.loads(base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4)))
        except (binascii.Error, ValueError):
            raise bad() from None
        if type(fields) is not dict or not isinstance(fields.get("e"), (int, float)):
            raise bad()
        if fields["e"] <= (time.time() if now is None else now):
            raise bad()
        return fields


_PROCESS_KEY: list[bytes] = []


def process_state_key() -> bytes:
    """A random key for this run: made once (before fork, by the supervisor), so every worker
    opens what another sealed; a restart invalidates states in flight (the client calls again)."""
    if not _PROCESS_KEY:
        _PROCESS_KEY.append(secrets.token_bytes(32))
    return _PROCESS_KEY[0]


def is_gate_state(value: Any) -> bool:
    return type(value) is str and value.startswith(GATE_STATE_PREFIX)


def gate_responses(params: Mapping[str, Any]) -> dict[str, Any]:
    """The client's answers to the gate's own input requests (keys `fastgate-…`)."""
    answers = params.get("inputResponses")
    if type(answers) is not dict:
        return {}
    return {k: v for k, v in answers.items() if k.startswith(GATE_INPUT_PREFIX)}


def upstream_responses(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The client's answers to the upstream's input requests, if any."""
    answers = params.get("inputResponses")
    if type(answers) is not dict:
        return None
    return {k: v for k, v in answers.items() if not k.startswith(GATE_INPUT_PREFIX)} or None


def strip_gate_state(message: Mapping[str, Any], upstream_state: str | None,
                     upstream_inputs: Mapping[str, Any] | None = None) -> bytes:
    """The message the upstream gets: the gate's own round-trip fields removed, the upstream's
    own `requestState` (and answers kept from an earlier round) put back."""
    params = dict(message.get("params") or {})
    answers = dict(upstream_inputs or {})
    answers.update(upstream_responses(params) or {})
    params.pop("inputResponses", None)
    params.pop("requestState", None)
    if answers:
        params["inputResponses"] = answers
    if upstream_state is not None:
        params["requestState"] = upstream_state
    return orjson.dumps({**message, "params": params})


def input_required(request: McpRequest, approval_id: str, message: str, state: str) -> bytes:
    """A 2026-07-28 `input_required` result: an elicitation that tells the human the call waits
    for approval `approval_id` (a reviewer decides, not the answer), plus the sealed state the
    client's retry must carry."""
    ask = {"method": "elicitation/create",
           "params": {"mode": "form", "message": message,
                      "requestedSchema": {"type": "object", "properties": {}}}}
    result = {"resultType": "input_required", "inputRequests": {GATE_INPUT_PREFIX + approval_id: ask},
              "requestState": state}
    return orjson.dumps({"jsonrpc": "2.0", "id": request.id, "result": result})


# ---------------------------------------------------------------------------- answer rewriting

class _Rewriter:
    """Rewrites JSON-RPC messages in an upstream answer, JSON or SSE; `_payload` returns the new
    bytes of one message, or None to pass it verbatim. Upstream bodies the gate cannot read
    raise McpError(502, …): the pipeline fails closed rather than pass what it could not check."""

    max_event = 4 * 2**20

    def filter_json(self, body: bytes) -> bytes:
        """A whole `application/json` response body."""
        out = self._payload(body)
        return body if out is None else out

    def stream(self) -> _SseFilter:
        """A `text/event-stream` response: `feed(chunk) -> bytes`, `close() -> bytes`."""
        return _SseFilter(self)

    def _read(self, payload: bytes, what: str) -> Any:
        try:
            return parse_args(payload, _MAX_DEPTH)
        except ArgsError as exc:
            raise McpError(502, INTERNAL_ERROR, f"unreadable upstream {what}: {exc.detail}") from None

    def _payload(self, payload: bytes) -> bytes | None:
        raise NotImplementedError


class ResultStateWrapper(_Rewriter):
    """After an approved call, an upstream `input_required` result gets the gate's sealed state
    wrapped around its own, so the client's retry continues the approved call instead of asking
    for a second approval; the upstream gets its own state back on that retry."""

    def __init__(self, seal: Any) -> None:
        self._seal = seal  # upstream requestState | None -> the gate's sealed state

    def _payload(self, payload: bytes) -> bytes | None:
        msg = self._read(payload, "tools/call answer")
        result = msg.get("result") if type(msg) is dict else None
        if type(result) is not dict or result.get("resultType") != "input_required":
            return None
        upstream = result.get("requestState")
        result["requestState"] = self._seal(upstream if type(upstream) is str else None)
        return orjson.dumps(msg)


# ---------------------------------------------------------------------------- tools/list

class ToolsListFilter(_Rewriter):
    """Keeps only allowed tools in `tools/list` results; everything else passes unchanged.

    `param_headers` collects the `x-mcp-header` paths of the tools kept, for `parse_message`.
    """

    def __init__(self, allowed: Iterable[str], max_event: int = 4 * 2**20) -> None:
        self.allowed = frozenset(allowed)
        self.max_event = max_event
        self.param_headers: dict[str, dict[str, tuple[str, ...]]] = {}

    def _payload(self, payload: bytes) -> bytes | None:
        """Filtered JSON, or None when the message is not a tools list and passes verbatim."""
        msg = self._read(payload, "tools/list")
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


class _SseFilter(EventRewriter):
    """An SSE answer rewritten event by event through the owner's `_payload`."""

    def __init__(self, owner: _Rewriter) -> None:
        super().__init__(owner.max_event)
        self._owner = owner

    def too_large(self) -> Exception:
        return McpError(502, INTERNAL_ERROR, "upstream event-stream event too large")

    def rewrite(self, payload: bytes) -> bytes | None:
        if not payload.strip(b" \t\r\n"):
            return None  # priming events carry an empty data field
        return self._owner._payload(payload)


# ---------------------------------------------------------------------------- 2024-11-05 transport

LEGACY_TRANSPORT = ("the MCP HTTP+SSE transport (2024-11-05) is not served through fastgate: its answers "
                    "arrive on a separate stream the gate cannot tie to the calls it decided; use streamable "
                    "HTTP (protocol 2025-03-26 or later)")


_EVENT_END = re.compile(rb"(?:\r\n|\n|\r(?!\n)){2}")  # a blank line: CRLF is one line end, not two


class LegacyTransportProbe:
    """Looks at the first event of a GET stream opened without a session or a protocol version:
    a 2024-11-05 server opens with `event: endpoint` (the URL to POST to). That transport answers
    on this stream instead of the POST, so the gate could neither mask nor filter per call: it is
    refused (McpError 501) before anything reaches the client. Other streams pass unchanged once
    their first event is complete (or after `limit` bytes)."""

    def __init__(self, limit: int = 64 * 1024) -> None:
        self._buf = b""
        self._limit = limit
        self._passing = False

    def feed(self, chunk: bytes) -> bytes:
        if self._passing:
            return chunk
        self._buf += chunk
        m = _EVENT_END.search(self._buf)
        if m is None and len(self._buf) < self._limit:
            return b""
        first = self._buf[:m.start()] if m is not None else b""
        for line in LINE_END.split(first.lstrip(BOM)):
            name, _, value = line.partition(b":")
            if name == b"event" and value.strip(b" ") == b"endpoint":
                raise McpError(501, INVALID_REQUEST, LEGACY_TRANSPORT)
        self._passing = True
        out, self._buf = self._buf, b""
        return out

    def close(self) -> bytes:
        out, self._buf = self._buf, b""
        return out


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
