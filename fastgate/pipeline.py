"""One call, from a validated request head to a finished answer.

Stages run in order: resolve (path normalization + catalog), decide (policy), forward
(credential injection, upstream exchange, streamed answer). A stage refuses by raising
`Refusal` with the contract's answer; nothing is forwarded after a refusal.

`Tables` is the compiled form of one config. Reload builds new tables and swaps one
reference; a call keeps the tables it started with.
"""
from __future__ import annotations

import asyncio
import hashlib
import time
from urllib.parse import parse_qs
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from fastgate import http1
from fastgate.catalog import Catalog, PathError, normalize_target
from fastgate.http1 import HOP_BY_HOP, CONTINUE_100, LAST_CHUNK, RequestHead, ResponseHead
from fastgate.identity import ANONYMOUS, AuthError, Authenticator, UnknownKey, forward_headers, gateway_jwks
from fastgate.jsonargs import ArgsError, parse_args
from fastgate import mcp
from fastgate.policy import MISSING, CallContext, Decision, Policy
from fastgate import records
from fastgate.approvals import ApprovalRefused
from fastgate.redaction import RedactionError, Redactor
from fastgate.store import StoreUnavailable
from fastgate.upstream import UpstreamConnection, UpstreamError, UpstreamPool

if TYPE_CHECKING:
    from fastgate.listener import ClientConnection

# Headers a client may not pass through: credentials (the upstream gets the gate's own),
# identity and routing claims the upstream might trust, and framing we re-derive.
_ALWAYS_DROP = HOP_BY_HOP | frozenset({
    b"host", b"content-length", b"expect", b"authorization", b"cookie", b"x-api-key",
    b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port",
    b"x-forwarded-prefix", b"x-forwarded-server", b"forwarded", b"x-real-ip", b"x-client-ip",
    b"x-original-url", b"x-rewrite-url", b"x-original-uri", b"x-request-id",
    b"x-user", b"x-forwarded-user", b"x-remote-user", b"x-auth-request-user", b"x-forwarded-email",
})
_IDENTITY_PREFIX = b"x-fastgate-"
GATEWAY_JWKS_PATH = b"/.well-known/fastgate/jwks.json"
MCP_METADATA_PREFIX = b"/.well-known/oauth-protected-resource/"
MCP_KEEPALIVE_S = 15.0
MCP_GRANT_TTL_S = 600.0  # an approved call's own round trips (upstream input_required) continue this long
MCP_PASS = Decision("allow", None, "MCP method: the caller may call a tool at this endpoint")
MCP_DENY = Decision("deny", None, "MCP method: the caller may call no tool at this endpoint")
_RESPONSE_DROP = HOP_BY_HOP | frozenset({b"x-request-id"})
_RESPONSE_MASK_DROP = _RESPONSE_DROP | frozenset({b"content-length", b"content-md5", b"digest", b"etag"})
_RESPONSE_REWRITE_DROP = _RESPONSE_MASK_DROP | frozenset({b"content-encoding"})
_ENCODING_DROP = frozenset({b"accept-encoding", b"te"})
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})
_PENDING_BODY_LIMIT = 256 * 1024


class Refusal(Exception):
    """A stage's local answer: status plus the contract's JSON body."""

    def __init__(self, status: int, body: dict, headers: tuple[tuple[bytes, bytes], ...] = (),
                 raw: bytes | None = None) -> None:
        super().__init__(body.get("error", ""))
        self.status = status
        self.body = body
        self.headers = headers
        self.raw = raw  # a body sent as it is (JSON-RPC answers on MCP endpoints)


@dataclass(slots=True)
class UpstreamRoute:
    """How requests leave for one upstream: its pool, what to strip, what to inject."""

    pool: UpstreamPool
    base_path: bytes
    drop: frozenset[bytes]
    static: bytes            # Host line plus injected credentials, serialized once
    proto: bytes


class Tables:
    """Everything a call needs from the config, compiled once."""

    def __init__(self, config, pools: "PoolRegistry", tls: bool = False, auth: Authenticator | None = None) -> None:
        self.config = config
        self.tls = tls
        limits = config.limits
        self.limits = http1.Limits(
            max_header_bytes=limits.max_header_bytes, max_header_count=limits.max_header_count,
            max_request_line_bytes=limits.max_request_line_bytes, max_body_bytes=limits.max_body_bytes)
        self.header_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
        self.idle_timeout = limits.idle_timeout
        self.max_pipelined = limits.max_pipelined
        self.catalog = Catalog.from_functions(config.functions)
        self.policy = Policy.from_config(config)
        self.auth = auth if auth is not None else Authenticator.from_config(config.identity)
        self.forward_mode = config.identity.forward
        self.access_log = config.log.access
        self.mcp_tool_of = {fn.name: fn.mcp.tool for fn in config.functions if fn.mcp is not None}
        self.mcp_tool_results = frozenset(fn.name for fn in config.functions
                                          if fn.mcp is not None and fn.mcp.refusal == "tool_result")
        self.mcp_upstream = {fn.mcp.endpoint: fn.upstream for fn in config.functions if fn.mcp is not None}
        jwt = config.identity.jwt
        self.mcp_issuer = jwt.issuer if jwt is not None else None
        secret = config.approvals.state_secret
        self.mcp_sealer = mcp.StateSealer(secret.get_secret_value().encode() if secret is not None
                                          else mcp.process_state_key())
        self.fail_closed = config.audit.fail_closed
        self.audit_max_body = config.audit.max_body_bytes
        self.redact_request: dict[str, Redactor] = {}
        self.redact_response: dict[str, Redactor] = {}
        pii = config.pii
        custom = [(d.name, d.regex) for d in pii.custom]
        hash_key = pii.hash_key.get_secret_value().encode() if pii.hash_key is not None else None
        for fn in config.functions:
            for where, selectors, table in (("request", fn.redact.request, self.redact_request),
                                            ("response", fn.redact.response, self.redact_response)):
                detectors = list(pii.detectors) if where in pii.scan else []
                redactor = Redactor.build(list(selectors), detectors, pii.mask, custom, hash_key=hash_key)
                if redactor is not None:
                    table[fn.name] = redactor
        # pii.scan: [audit] masks what is recorded even where the caller's answer is not masked
        self.audit_redactor = (Redactor.build([], list(pii.detectors), pii.mask, custom, hash_key=hash_key)
                               if "audit" in pii.scan else None)
        # MCP answers that belong to no tool (GET streams, resources/read, prompts/get, server requests)
        self.mcp_redactor = (Redactor.build([], list(pii.detectors), pii.mask, custom, hash_key=hash_key)
                             if "response" in pii.scan else None)
        strip = frozenset(h.lower().encode() for h in config.identity.strip_headers)
        self.routes: dict[str, UpstreamRoute] = {}
        for name, up in config.upstreams.items():
            injected = [(k.lower().encode(), v.get_secret_value().encode())
                        for k, v in up.inject_headers.items()]
            host = up.host if ":" not in up.host else f"[{up.host}]"
            default_port = 443 if up.scheme == "https" else 80
            authority = host if up.port == default_port else f"{host}:{up.port}"
            static = b"host: " + authority.encode() + b"\r\n" + http1.serialize_headers(injected)
            pool = pools.get(name, up, limits)
            self.routes[name] = UpstreamRoute(
                pool=pool, base_path=up.base_path.encode(),
                drop=_ALWAYS_DROP | strip | frozenset(n for n, _ in injected),
                static=static, proto=b"https" if tls else b"http")


class PoolRegistry:
    """Upstream pools outlive config reloads when the upstream's address is unchanged."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pools: dict[tuple, UpstreamPool] = {}

    def get(self, name: str, up, limits) -> UpstreamPool:
        timeout = up.timeout if up.timeout is not None else limits.upstream_timeout
        key = (name, up.scheme, up.host, up.port, up.tls_verify, up.max_connections,
               limits.connect_timeout, timeout)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = UpstreamPool(
                self.loop, name, up.host, up.port, tls=up.scheme == "https", tls_verify=up.tls_verify,
                max_connections=up.max_connections, connect_timeout=limits.connect_timeout,
                timeout=timeout)
        return pool


def sse_event(payload: bytes) -> bytes:
    """One SSE `message` event carrying a JSON document (CRs are JSON whitespace only: dropped)."""
    lines = payload.replace(b"\r", b"").split(b"\n")
    return b"event: message\r\n" + b"".join(b"data: %s\r\n" % line for line in lines) + b"\r\n"


class McpBody:
    """An MCP answer rewritten message by message (JSON or SSE): a tools/list filtered for the
    caller, or an approved call's `input_required` with the gate's state wrapped around it."""

    decoded = False

    def __init__(self, flt: "mcp._Rewriter", content_type: str) -> None:
        self.filter = flt
        self.sse = content_type.split(";")[0].strip().lower() == "text/event-stream"
        self.inner = flt.stream() if self.sse else None
        self.parts: list[bytes] = []

    def feed(self, data: bytes) -> bytes:
        if self.inner is not None:
            return self.inner.feed(data)
        self.parts.append(data)  # a JSON list is one small document: filter it whole
        return b""

    def close(self) -> bytes:
        if self.inner is not None:
            return self.inner.close()
        return self.filter.filter_json(b"".join(self.parts))


class LegacyProbeBody:
    """A GET stream that may be the 2024-11-05 transport: refused with 501 if it is."""

    decoded = False

    def __init__(self) -> None:
        self.probe = mcp.LegacyTransportProbe()

    def feed(self, data: bytes) -> bytes:
        try:
            return self.probe.feed(data)
        except mcp.McpError as exc:
            raise UpstreamError(501, "2024-11-05 HTTP+SSE transport",
                                {"error": "unsupported_transport", "detail": exc.message}) from None

    def close(self) -> bytes:
        return self.probe.close()


class ChainBody:
    """Two answer rewriters in a row: the redactor first, so what the gate adds is never masked."""

    def __init__(self, first, second) -> None:
        self.first = first
        self.second = second
        self.decoded = first.decoded

    def feed(self, data: bytes) -> bytes:
        data = self.first.feed(data)
        return self.second.feed(data) if data else b""

    def close(self) -> bytes:
        return self.second.feed(self.first.close()) + self.second.close()


def audit_mask(redactor: Redactor, body: bytes) -> bytes:
    """Mask a recorded body; a prefix cut mid-document is masked as text instead."""
    try:
        stream = redactor.stream("application/json")
        return stream.feed(body) + stream.close()
    except RedactionError:
        text, _ = redactor.redact_text(body.decode("utf-8", "replace"))
        return text.encode()


def error_body(status: int, error: str, request_id: str, **extra) -> bytes:
    body = {"error": error, "request_id": request_id}
    body.update(extra)
    return orjson.dumps(body)


class Call:
    """One request/response. Implements the upstream `Exchange` sink."""

    __slots__ = ("client", "tables", "head", "request_id", "started", "function", "decision",
                 "path", "upstream", "route", "pending", "pending_bytes", "body_done", "response_started",
                 "rechunk", "status", "bytes_out", "error", "finished", "upstream_started", "upstream_ms",
                 "out", "close_after", "attempts", "task", "_raw_body", "_query", "head_sent", "caller", "params",
                 "args", "buffering", "body_waiter", "streaming", "continued", "masker", "request_decoded", "recorded", "capture", "captured",
                 "digest", "bytes_sent", "response_headers", "refusal_payload", "refusal_error",
                 "approval_id", "holding", "approval_wait_ms", "mcp_functions", "mcp_request", "sse_held",
                 "wrap_json", "wrapped", "mcp_state", "mcp_grant", "mcp_session")

    def __init__(self, client: "ClientConnection", tables: Tables, head: RequestHead, request_id: str) -> None:
        self.client = client
        self.tables = tables
        self.head = head
        self.request_id = request_id
        self.started = time.perf_counter()
        self.function: str | None = None
        self.decision = None
        self.path = ""
        self.upstream: UpstreamConnection | None = None
        self.route: UpstreamRoute | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.body_done = not head.has_body
        self.response_started = False
        self.rechunk = False
        self.status = 0
        self.bytes_out = 0
        self.error: str | None = None
        self.finished = False
        self.upstream_started = 0.0
        self.upstream_ms = None
        self.out: list[bytes] = []
        self.close_after = not head.keep_alive
        self.attempts = 0
        self.task: asyncio.Task | None = None
        self._raw_body = head.content_length is not None
        self._query = ""
        self.head_sent = False
        self.caller = ANONYMOUS
        self.params: dict[str, str] = {}
        self.args = MISSING
        self.buffering = False
        self.streaming = False
        self.continued = False
        self.body_waiter: asyncio.Future | None = None
        self.masker = None
        self.request_decoded = False
        self.recorded = False
        self.capture: list[bytes] | None = None
        self.captured = 0
        self.digest = None
        self.bytes_sent = 0
        self.response_headers = None
        self.refusal_payload: bytes | None = None
        self.refusal_error: str | None = None
        self.approval_id: str | None = None
        self.holding = False
        self.approval_wait_ms = 0.0
        self.mcp_functions: list[str] | None = None
        self.mcp_request = None
        self.sse_held = False
        self.wrap_json = False
        self.wrapped: list[bytes] = []
        self.mcp_state: dict | None = None  # the gate's own requestState, opened (2026-07-28)
        self.mcp_grant: str | None = None   # approval this MCP call runs under
        self.mcp_session: tuple[str, bool] | None = None  # (upstream session id, elicitation declared)

    # -- stages ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.task = self.client.loop.create_task(self.run())

    async def run(self) -> None:
        try:
            tables = self.tables
            if tables.forward_mode == "jwt" and self.head.target == GATEWAY_JWKS_PATH:
                raise Refusal(200, gateway_jwks())  # public keys for x-fastgate-identity: no secret here
            if self.head.target.startswith(MCP_METADATA_PREFIX) and self.head.method == b"GET":
                self.serve_mcp_metadata()
            if tables.auth.enabled:
                await self.authenticate()
            self.resolve()
            if self.mcp_functions is not None:
                await self.mcp_stage()
            else:
                redactor = tables.redact_request.get(self.function)
                needs_args = tables.policy.needs_args(self.function)
                if self.head.has_body and (redactor is not None or needs_args):
                    await self.read_body()
                    if needs_args:
                        self.parse_arguments()
                await self.decide()
                if redactor is not None and self.head.has_body:
                    self.mask_request_body(redactor)
            if self.client.state.appender is not None:
                await self.record_started()  # write-ahead: durable before anything is forwarded
            if self.head.expect_continue and not self.body_done and not self.continued:
                self.continued = True
                self.client.write(CONTINUE_100)
            await self.forward()
        except Refusal as refusal:
            self.refuse(refusal)
        except UpstreamError as exc:
            self.upstream_failed(exc)
        except asyncio.CancelledError:
            self.abandon()
        except Exception as exc:  # fail closed: an internal error is a 500, never a pass-through
            self.error = f"internal: {type(exc).__name__}"
            self.client.log_exception(exc)
            self.refuse(Refusal(500, {"error": "internal"}))

    # -- records ----------------------------------------------------------------------------------
    def _request_record(self) -> dict:
        """The request as recorded: masked body when it was buffered, never credentials."""
        body = None
        if self.body_done and not self.streaming and self.pending:
            body = b"".join(self.pending)
            audit = self.tables.audit_redactor
            if audit is not None:
                body = audit_mask(audit, body)
        return {"method": self.head.method, "path": self.path or self.head.target.decode("latin-1"),
                "query": self._query, "headers": self.head.headers, "body": body}

    async def record_started(self) -> None:
        decision = self.decision
        event = records.call_started(
            self.request_id, caller=self.caller, function=self.function, decision=decision.effect,
            rule=decision.rule, max_body_bytes=self.tables.audit_max_body, approval=self.approval_id,
            mcp=self.mcp_record(), guard=self.client.state.appender.guard, **self._request_record())
        try:
            await self.client.state.appender.append(event)
        except StoreUnavailable as exc:
            self.error = f"record not written: {exc}"
            if self.tables.fail_closed:
                raise Refusal(503, {"error": "unavailable"}) from None
            self.client.state.log.error("record not written; forwarding (audit.fail_closed is off)",
                                        request_id=self.request_id, error=str(exc))
            return
        self.recorded = True

    def record_end(self) -> None:
        """call.finished for a forwarded call, call.refused for one the gate answered itself."""
        appender = self.client.state.appender
        if appender is None or (self.status == 0 and not self.recorded):
            return  # nothing was answered and nothing started: no session to close
        gateway_ms = (time.perf_counter() - self.started) * 1000.0 - (self.upstream_ms or 0.0)
        if self.recorded:
            capture = b"".join(self.capture) if self.capture is not None else None
            audit = self.tables.audit_redactor
            if capture and audit is not None and self.masker is None:
                capture = audit_mask(audit, capture)
            event = records.call_finished(
                self.request_id, status=self.status or None, headers=self.response_headers, body=capture,
                body_bytes=self.bytes_sent, body_sha256=self.digest.hexdigest() if self.digest else None,
                max_body_bytes=self.tables.audit_max_body, gateway_ms=gateway_ms - self.approval_wait_ms,
                upstream_ms=self.upstream_ms, approval_wait_ms=self.approval_wait_ms, error=self.error,
                guard=appender.guard)
        else:
            decision = self.decision
            event = records.call_refused(
                self.request_id, status=self.status, error=self.refusal_error or self.error or "",
                caller=self.caller if self.caller is not ANONYMOUS or not self.tables.auth.enabled else None,
                function=self.function, decision=decision.effect if decision else None,
                rule=decision.rule if decision else None, response_body=self.refusal_payload, mcp=self.mcp_record(),
                max_body_bytes=self.tables.audit_max_body, gateway_ms=gateway_ms, guard=appender.guard,
                **self._request_record())
        try:
            appender.submit(event)
        except StoreUnavailable as exc:
            self.client.state.log.error("record not written", request_id=self.request_id, error=str(exc))

    async def authenticate(self) -> None:
        auth = self.tables.auth
        try:
            try:
                self.caller = auth.authenticate(self.head.headers)
            except UnknownKey:
                await auth.refresh()  # one shared, rate-limited JWKS refetch, then one more try
                self.caller = auth.authenticate(self.head.headers)
        except AuthError as exc:
            self.error = f"unauthenticated: {exc.description}"
            challenge = exc.www_authenticate()
            endpoint = self.mcp_endpoint_of_target()
            if endpoint is not None:  # MCP authorization: point the client at the resource metadata
                challenge = mcp.www_authenticate(mcp.metadata_url(self.resource_url(endpoint)),
                                                 error=exc.error if exc.error != "invalid_request" else None,
                                                 description=exc.description)
            raise Refusal(401, {"error": "unauthenticated", "detail": exc.description},
                          ((b"www-authenticate", challenge.encode()),)) from None

    async def read_body(self) -> None:
        """Buffer the body (bounded by limits.max_body_bytes) for the policy and request redaction."""
        if self.head.expect_continue and not self.body_done:
            self.continued = True  # the caller, function and size are acceptable: let the body come
            self.client.write(CONTINUE_100)
        self.buffering = True
        self.client.resume_reading_for_body()
        if not self.body_done:
            self.body_waiter = self.client.loop.create_future()
            await self.body_waiter

    def parse_arguments(self) -> None:
        """Parse the buffered body once; ambiguous JSON is refused before anything is forwarded."""
        try:
            self.args = parse_args(b"".join(self.pending), require_object=True)
        except ArgsError as exc:
            raise Refusal(400, {"error": "bad_request", "detail": f"arguments: {exc}"}) from None

    def mask_request_body(self, redactor: Redactor) -> None:
        """`redact.request`: the upstream gets the masked body (and so will the record)."""
        content_type = content_encoding = None
        for name, value in self.head.headers:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-encoding":
                content_encoding = value.decode("latin-1")
        try:
            stream = redactor.stream(content_type, content_encoding)
            masked = stream.feed(b"".join(self.pending)) + stream.close()
        except RedactionError as exc:
            raise Refusal(400, {"error": "bad_request", "detail": f"body could not be scanned: {exc}"}) from None
        self.pending[:] = [masked]
        self.pending_bytes = len(masked)
        self.request_decoded = stream.decoded

    def resolve(self) -> None:
        head = self.head
        try:
            path, query = normalize_target(head.target)
        except PathError as exc:
            self.close_after = True
            raise Refusal(400, {"error": "bad_request", "detail": f"ambiguous path: {exc}"}) from None
        self.path = path
        match = self.tables.catalog.match(head.method.decode(), path)
        if match is None:
            functions = self.tables.catalog.mcp_endpoint(path)
            if functions is not None:
                self.mcp_functions = functions
                self.route = self.tables.routes[self.tables.mcp_upstream[path]]
                self._query = query
                return
            raise Refusal(404, {"error": "unknown_function"})
        self.function = match.function
        self.params = match.params
        self.route = self.tables.routes[match.upstream]
        self._query = query

    def context(self) -> CallContext:
        policy = self.tables.policy
        caller = self.caller
        ctx = CallContext(caller.subject, caller.groups, caller.auth != "none", caller.claims, self.args,
                          self.params, {}, {})
        if policy.needs_query(self.function):
            ctx.query = parse_qs(self._query, keep_blank_values=True)
        if policy.needs_headers(self.function):
            headers: dict[str, list[str]] = {}
            for name, value in self.head.headers:
                headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
            ctx.headers = headers
        return ctx

    async def decide(self) -> None:
        decision = self.decision = self.tables.policy.decide(self.function, self.context())
        if decision.effect == "allow":
            return
        if decision.effect == "approve":
            await self.approve(decision)
            return
        raise Refusal(403, {"error": "denied", "rule": decision.rule})

    # -- MCP endpoints ----------------------------------------------------------------------------
    def mcp_record(self) -> dict | None:
        req = self.mcp_request
        if req is None:
            return None
        session = self.mcp_session[0] if self.mcp_session is not None else None
        return {"endpoint": self.path, "era": req.era, "version": req.version, "session": session,
                "jsonrpc_id": req.id, "method": req.method, "tool": req.tool}

    def client_session_headers(self, headers: list) -> list:
        """The upstream's `Mcp-Session-Id` as the client sees it: sealed to this caller."""
        if not any(n == b"mcp-session-id" for n, _ in headers):
            return headers
        req = self.mcp_request
        if req is not None and req.method == "initialize":
            elicitation = "elicitation" in req.client_capabilities
        else:
            elicitation = self.mcp_session is not None and self.mcp_session[1]
        out = []
        for name, value in headers:
            if name == b"mcp-session-id":
                try:
                    value = self.tables.mcp_sealer.session_id(
                        value.decode("latin-1").strip(), self.caller.subject, self.caller.auth, elicitation).encode()
                except ValueError:
                    raise UpstreamError(502, "upstream sent an invalid Mcp-Session-Id") from None
            out.append((name, value))
        return out

    def mcp_endpoint_of_target(self) -> str | None:
        try:
            path, _ = normalize_target(self.head.target)
        except PathError:
            return None
        return path if self.tables.catalog.mcp_endpoint(path) is not None else None

    def resource_url(self, endpoint: str) -> str:
        scheme = "https" if self.tables.tls else "http"
        return f"{scheme}://{self.head.host.decode('latin-1')}{endpoint}"

    def serve_mcp_metadata(self) -> None:
        """RFC 9728 protected-resource metadata for an MCP endpoint, before authentication."""
        endpoint = self.head.target[len(MCP_METADATA_PREFIX) - 1:].decode("latin-1")
        if self.tables.catalog.mcp_endpoint(endpoint) is None or self.tables.mcp_issuer is None:
            raise Refusal(404, {"error": "unknown_function"})
        raise Refusal(200, mcp.resource_metadata(self.resource_url(endpoint), self.tables.mcp_issuer, None))

    def visible_tools(self) -> dict[str, str]:
        """Tool name -> function for the tools at this endpoint the caller could be allowed to call."""
        allowed = self.tables.policy.visible_functions(self.context())
        tool_of = self.tables.mcp_tool_of
        return {tool_of[f]: f for f in self.mcp_functions if f in allowed}

    def in_band(self, req, kind: str, **fields) -> Refusal:
        """Policy outcomes on MCP travel as JSON-RPC (HTTP 200): clients drop sessions on a 403.
        A tool declared with `refusal: tool_result` gets them as an `isError` result the model can
        read; an unknown or hidden tool stays a protocol error, like a missing one."""
        as_result = kind != "unknown_tool" and self.function in self.tables.mcp_tool_results
        body = mcp.refusal(req, kind, request_id=self.request_id, as_tool_result=as_result, **fields)
        self.error = kind
        if body is None:  # a notification: nothing to answer
            return Refusal(202, {}, raw=b"")
        return Refusal(200, {}, (), raw=body)

    async def mcp_stage(self) -> None:
        """Gate one message to an MCP endpoint: tools/call by the same rules as HTTP functions;
        every other method only for callers allowed at least one tool here."""
        head = self.head
        session = None
        stateless = False
        for name, value in head.headers:
            if name == b"mcp-session-id":
                session = value.decode("latin-1")
            elif name == b"mcp-protocol-version" and value.strip() in (b"2026-07-28",):
                stateless = True
        if session is not None and not stateless:
            # Only the caller who opened a session can use it: anyone else's id reads as unknown
            # (404), which makes a client start a new session rather than fail.
            self.mcp_session = self.tables.mcp_sealer.open_session(session, self.caller.subject, self.caller.auth)
            if self.mcp_session is None:
                raise Refusal(404, {"error": "unknown_session"})
        if head.method in (b"GET", b"DELETE"):
            if stateless:
                raise Refusal(405, {"error": "method_not_allowed"})
            if not self.visible_tools():
                raise Refusal(403, {"error": "denied", "rule": None})
            self.decision = MCP_PASS  # servers without sessions take GET streams without an id
            return
        if head.method != b"POST":
            raise Refusal(405, {"error": "method_not_allowed"})
        await self.read_body()
        try:
            req = mcp.parse_message(b"".join(self.pending), head.headers)
        except mcp.McpError as exc:
            raise Refusal(exc.http_status, {}, raw=exc.body()) from None
        self.mcp_request = req
        if req.kind == "response" and isinstance(req.id, str) and req.id.startswith("fastgate-"):
            # The answer to the gate's own elicitation, never the server's: accepting decides
            # nothing (a reviewer does); declining withdraws the caller's own held call.
            self.decision = MCP_PASS
            result = req.message.get("result")
            approvals = self.client.state.approvals
            if (approvals is not None and type(result) is dict and result.get("action") in ("decline", "cancel")):
                try:
                    approvals.withdraw_own(req.id[len("fastgate-"):], caller=self.caller,
                                           reason="the caller declined to wait")
                except StoreUnavailable:
                    raise Refusal(503, {"error": "unavailable"}) from None
            raise Refusal(202, {}, raw=b"")
        visible = self.visible_tools()
        if req.method == "tools/call":
            function = visible.get(req.tool)
            if function is None:  # hidden tools read exactly like missing ones
                raise self.in_band(req, "unknown_tool")
            self.function = function
            self.args = req.arguments
            if req.era == "stateless":
                self.take_gate_state(req)
            try:
                await self.decide()
            except Refusal as refusal:
                raise self.mcp_refusal(req, refusal) from None
            redactor = self.tables.redact_request.get(function)
            if redactor is not None:
                self.mask_mcp_arguments(redactor)
            return
        if not visible:
            self.decision = MCP_DENY
            raise self.in_band(req, "denied")
        self.decision = MCP_PASS

    def take_gate_state(self, req) -> None:
        """A 2026-07-28 retry that carries the gate's own `requestState`: check its seal and that it
        belongs to this caller and this exact call, then give the upstream the message without the
        gate's fields (and with its own state, if the gate wrapped one)."""
        params = req.params or {}
        token = params.get("requestState")
        ours = mcp.is_gate_state(token)
        if not ours and not mcp.gate_responses(params):
            return
        if ours:
            try:
                state = self.tables.mcp_sealer.open(token, req.id)
            except mcp.McpError as exc:
                self.error = "bad_request_state"
                raise Refusal(200, {}, raw=exc.body()) from None
            caller = self.caller
            if (state.get("s"), state.get("u"), state.get("f"), state.get("h")) != (
                    caller.subject, caller.auth, self.function, self.request_hash()):
                self.error = "bad_request_state"
                raise Refusal(200, {}, raw=mcp.McpError(
                    200, mcp.INVALID_PARAMS, "Invalid params: requestState belongs to another call", req.id).body())
            self.mcp_state = state
            upstream_state, kept = state.get("up"), state.get("ui")
        else:  # answers to a gate question without its state: the upstream never sees them
            upstream_state, kept = token, None
        self.pending[:] = [mcp.strip_gate_state(req.message, upstream_state, kept)]
        self.pending_bytes = len(self.pending[0])

    def mask_mcp_arguments(self, redactor: Redactor) -> None:
        """`redact.request` on an MCP tool: selectors address the arguments, as conditions do."""
        req = self.mcp_request
        try:
            stream = redactor.stream("application/json")
            masked = orjson.loads(stream.feed(orjson.dumps(req.arguments)) + stream.close())
        except (RedactionError, orjson.JSONDecodeError) as exc:
            raise Refusal(400, {"error": "bad_request", "detail": f"arguments could not be scanned: {exc}"}) from None
        message = orjson.loads(b"".join(self.pending))
        message["params"]["arguments"] = masked
        body = orjson.dumps(message)
        self.pending[:] = [body]
        self.pending_bytes = len(body)

    def mcp_streams(self) -> bool:
        """A held MCP call answers as an SSE stream when the client accepts one."""
        req = self.mcp_request
        if req is None or req.kind != "request":
            return False
        accept = b",".join(v for n, v in self.head.headers if n == b"accept").lower()
        return b"text/event-stream" in accept

    def open_held_stream(self, aid: str, spec) -> None:
        """Answer now with an SSE stream; tell the caller, through the client, that a reviewer decides.

        With the elicitation capability declared at `initialize`, the gate sends its own
        `elicitation/create` (id `fastgate-<approval id>`): informational, the caller cannot
        approve itself; its answer is absorbed by the gate. Otherwise a comment says the same."""
        req = self.mcp_request
        text = (f"The call to tool {req.tool!r} is waiting for approval {aid} by "
                f"{', '.join(spec.reviewers)}. A reviewer decides: accept to keep waiting, decline to withdraw the call.")
        if req.era == "session" and self.mcp_session is not None and self.mcp_session[1]:
            first = sse_event(orjson.dumps({"jsonrpc": "2.0", "id": f"fastgate-{aid}", "method": "elicitation/create",
                                            "params": {"mode": "form", "message": text,
                                                       "requestedSchema": {"type": "object", "properties": {}}}}))
        else:
            first = b": " + text.encode() + b"\r\n\r\n"
        close = b"connection: close\r\n" if (self.close_after or self.client.draining) else b""
        self.client.write(http1.status_line(200) + b"content-type: text/event-stream\r\ncache-control: no-cache\r\n"
                          b"transfer-encoding: chunked\r\nx-request-id: %s\r\n%s\r\n" % (
                              self.request_id.encode(), close) + http1.chunk(first))
        self.status = 200
        self.response_started = self.head_sent = self.sse_held = True

    def mcp_refusal(self, req, refusal: Refusal) -> Refusal:
        error = refusal.body.get("error")
        if refusal.status == 202:
            return self.in_band(req, "approval_pending", approval_id=refusal.body.get("approval_id"))
        if error == "denied":
            return self.in_band(req, "denied", rule=refusal.body.get("rule"))
        if error in ("approval_denied", "approval_expired"):
            aid = refusal.body.get("approval_id")
            withdrawn = refusal.body.get("detail") == "withdrawn by the caller"
            return self.in_band(req, error, approval_id=aid,
                                message=f"approval {aid} was withdrawn by the caller" if withdrawn else None)
        return refusal  # 400/503 and friends stay HTTP answers

    # -- approvals --------------------------------------------------------------------------------
    def request_hash(self) -> str:
        """Binds an approval to this exact call: method, normalized path, query and body bytes;
        for an MCP tool, the tool and its arguments (ids and round-trip fields change on retries)."""
        req = self.mcp_request
        if req is not None and req.tool is not None:
            return mcp.call_hash(req.tool, req.arguments)
        digest = hashlib.sha256()
        digest.update(b"%s\n%s?%s\n" % (self.head.method, self.path.encode(), self._query.encode()))
        for piece in self.pending:
            digest.update(piece)
        return digest.hexdigest()

    async def approve(self, decision) -> None:
        """`effect: approve`: hold the call for reviewers, or answer 202 and redeem on the retry.
        A 2026-07-28 MCP call asks through the client instead (`input_required`) when it can."""
        approvals = self.client.state.approvals
        if approvals is None:
            raise Refusal(503, {"error": "unavailable", "detail": "approvals are not running"})
        if self.head.has_body and not self.buffering:
            await self.read_body()  # the approval is bound to the body as well
        spec = decision.approval
        request_hash = self.request_hash()
        req = self.mcp_request
        round_trips = req is not None and req.era == "stateless" and req.tool is not None
        try:
            if round_trips and self.mcp_state is not None:
                outcome = await self.resume_approval(approvals, spec, request_hash)
            elif round_trips and "elicitation" in req.client_capabilities:
                await self.ask_for_approval(approvals, decision, request_hash)
            elif spec.mode == "async":
                presented = None
                for name, value in self.head.headers:
                    if name == b"fastgate-approval":
                        presented = value.decode("latin-1").strip()
                if presented:
                    await approvals.redeem(presented, caller=self.caller, function=self.function,
                                           request_hash=request_hash, session=self.request_id)
                    self.approval_id = presented
                    return
                aid = await approvals.request(session=self.request_id, caller=self.caller, function=self.function,
                                              rule=decision.rule, spec=spec, request_hash=request_hash,
                                              summary=self.approval_summary())
                raise Refusal(202, {"status": "pending", "approval_id": aid},
                              ((b"retry-after", b"%d" % approvals.pending_retry_after(aid)),))
            else:
                self.approval_id = await approvals.request(
                    session=self.request_id, caller=self.caller, function=self.function, rule=decision.rule,
                    spec=spec, request_hash=request_hash, summary=self.approval_summary())
                outcome = await self.hold(approvals, self.approval_id, spec)
        except ApprovalRefused as refused:
            headers = ((b"retry-after", b"%d" % refused.retry_after),) if refused.retry_after else ()
            raise Refusal(refused.status, refused.body, headers) from None
        except StoreUnavailable:
            raise Refusal(503, {"error": "unavailable"}) from None
        if outcome == "approved":
            return
        error = "approval_expired" if outcome == "expired" else "approval_denied"
        body = {"error": error, "approval_id": self.approval_id}
        try:
            entry = approvals.find(self.approval_id) if outcome == "denied" else None
        except StoreUnavailable:
            entry = None
        if entry is not None and entry.state == "withdrawn":
            body["detail"] = "withdrawn by the caller"
        raise Refusal(403, body)

    async def hold(self, approvals, aid: str, spec) -> str:
        """Wait for the reviewers' outcome; an MCP caller that accepts SSE gets a stream kept alive
        meanwhile. The caller going away withdraws the request."""
        self.holding = True
        waited = time.perf_counter()
        waiter = self.client.loop.create_task(approvals.wait(aid))
        try:
            if self.mcp_streams():
                self.open_held_stream(aid, spec)
                while not waiter.done():  # keep the stream (and the client's patience) alive
                    await asyncio.wait({waiter}, timeout=MCP_KEEPALIVE_S)
                    if not waiter.done():
                        self.client.write(http1.chunk(b": waiting for approval\r\n\r\n"))
            return await waiter
        except asyncio.CancelledError:
            waiter.cancel()
            approvals.withdraw(aid, "caller disconnected")
            raise
        finally:
            self.holding = False
            self.approval_wait_ms += (time.perf_counter() - waited) * 1000.0

    async def ask_for_approval(self, approvals, decision, request_hash: str) -> None:
        """2026-07-28 with elicitation: answer `input_required` now. The elicitation tells the human
        which approval the call waits for; the sealed state brings the retry back to it."""
        spec = decision.approval
        aid = self.approval_id = await approvals.request(
            session=self.request_id, caller=self.caller, function=self.function, rule=decision.rule,
            spec=spec, request_hash=request_hash, summary=self.approval_summary())
        req = self.mcp_request
        params = req.params or {}
        upstream_state = params.get("requestState")
        state = self.tables.mcp_sealer.seal({
            "k": "pending", "a": aid, "s": self.caller.subject, "u": self.caller.auth, "f": self.function,
            "h": request_hash, "e": time.time() + float(spec.timeout),
            "up": upstream_state if isinstance(upstream_state, str) else None,
            "ui": mcp.upstream_responses(params)})
        text = (f"The call to tool {req.tool!r} is waiting for approval {aid} by {', '.join(spec.reviewers)}. "
                f"A reviewer decides: accept to keep waiting, decline to withdraw the call.")
        self.error = "approval_pending"
        raise Refusal(200, {"status": "pending", "approval_id": aid}, raw=mcp.input_required(req, aid, text, state))

    async def resume_approval(self, approvals, spec, request_hash: str) -> str:
        """The retry of a call the gate asked about: wait for (hold) or look up (async) the
        approval named in the sealed state and spend it on this call; or continue a call whose
        approval was already spent on it (the upstream asked for more input)."""
        state = self.mcp_state
        aid = self.approval_id = state.get("a")
        who = {"caller": self.caller, "function": self.function, "request_hash": request_hash}
        if state.get("k") == "grant":
            if not approvals.granted(aid, **who):
                raise ApprovalRefused(403, {"error": "approval_denied", "approval_id": aid})
            self.mcp_grant = aid
            return "approved"
        answers = mcp.gate_responses(self.mcp_request.params or {}).values()
        if any(type(a) is dict and a.get("action") in ("decline", "cancel") for a in answers):
            approvals.withdraw_own(aid, reason="the caller declined to wait", **who)
            raise ApprovalRefused(403, {"error": "approval_denied", "approval_id": aid,
                                        "detail": "withdrawn by the caller"})
        entry = approvals.find(aid)
        if entry is None:
            raise ApprovalRefused(403, {"error": "approval_expired", "approval_id": aid})
        if entry.mode == "hold" and entry.state == "pending":
            outcome = await self.hold(approvals, aid, spec)
            if outcome != "approved":
                return outcome
        await approvals.redeem(aid, session=self.request_id, any_mode=True, **who)
        self.mcp_grant = aid
        return "approved"

    def seal_grant(self, upstream_state: str | None) -> str:
        """The state around an approved call's `input_required`: its retry needs no new approval."""
        return self.tables.mcp_sealer.seal({
            "k": "grant", "a": self.mcp_grant, "s": self.caller.subject, "u": self.caller.auth,
            "f": self.function, "h": self.request_hash(), "e": time.time() + MCP_GRANT_TTL_S, "up": upstream_state})

    def approval_summary(self) -> dict:
        """What a reviewer sees: the masked request, never credentials."""
        record = self._request_record()
        body = record["body"]
        return {"method": self.head.method.decode(), "path": self.path, "query": self._query,
                "body": body[:4096].decode("utf-8", "replace") if body else None}

    async def forward(self) -> None:
        route = self.route
        while True:
            self.attempts += 1
            conn = await route.pool.acquire()
            if self.finished:  # the client went away while we connected
                route.pool.release(conn)
                return
            self.upstream = conn
            self.upstream_started = time.perf_counter()
            if self.body_done:  # the whole body is here: send it with a length, whatever its framing was
                body = self.take_pending()
                conn.start(self, self.head.method, self.upstream_head(len(body)) + body)
            else:
                self.streaming = True
                data = self.upstream_head(None)
                if self.pending:
                    data += b"".join(self.pending if self._raw_body else map(http1.chunk, self.pending))
                    self.pending.clear()
                    self.pending_bytes = 0
                conn.start(self, self.head.method, data)
            self.client.resume_reading_for_body()
            return

    # -- request toward the upstream --------------------------------------------------------------
    def upstream_head(self, length: int | None) -> bytes:
        """The head toward the upstream; `length` is the body size when the whole body is known."""
        head = self.head
        route = self.route
        drop = route.drop
        tokens = head.connection_tokens
        target = route.base_path + self.path.encode()
        if self._query:
            target += b"?" + self._query.encode()
        parts = [b"%s %s HTTP/1.1\r\n" % (head.method, target)]
        if self.function in self.tables.redact_response or self.mcp_functions is not None:
            drop = drop | _ENCODING_DROP  # the answer is masked or rewritten: ask for it uncompressed
        if self.request_decoded:
            drop = drop | {b"content-encoding"}
        session = self.mcp_session
        for name, value in head.headers:
            if name in drop or name in tokens or name.startswith(_IDENTITY_PREFIX):
                continue
            if session is not None and name == b"mcp-session-id":
                value = session[0].encode()  # the upstream's own id, unsealed
            parts.append(b"%s: %s\r\n" % (name, value))
        parts.append(route.static)
        parts.append(b"x-forwarded-for: %s\r\nx-forwarded-proto: %s\r\nx-request-id: %s\r\n" % (
            self.client.peer_ip, route.proto, self.request_id.encode()))
        if head.host:
            parts.append(b"x-forwarded-host: %s\r\n" % head.host)
        if self.tables.forward_mode != "none":
            parts.append(http1.serialize_headers(forward_headers(self.caller, self.tables.forward_mode)))
        if length is not None:
            if length or head.has_body:
                parts.append(b"content-length: %d\r\n" % length)
        elif head.chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif head.content_length is not None:
            parts.append(b"content-length: %d\r\n" % head.content_length)
        parts.append(b"\r\n")
        return b"".join(parts)

    def take_pending(self) -> bytes:
        if not self.pending:
            return b""
        data = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return data

    def on_request_data(self, data: bytes) -> None:
        if self.streaming:
            self.upstream.write(data if self._raw_body else http1.chunk(data))
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > _PENDING_BODY_LIMIT and not self.buffering:
            self.client.pause_reading_for_body()  # limits.max_body_bytes bounds what `buffering` holds

    def on_request_end(self) -> None:
        self.body_done = True
        if self.streaming:
            if self.head.chunked and self.upstream is not None:
                self.upstream.write(LAST_CHUNK)
        elif self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_result(None)

    def pause_request_body(self) -> None:
        self.client.pause_reading_for_body()

    def resume_request_body(self) -> None:
        self.client.resume_reading_for_body()

    # -- answer toward the client -----------------------------------------------------------------
    def on_response_head(self, rh: ResponseHead) -> None:
        self.upstream_ms = (time.perf_counter() - self.upstream_started) * 1000.0
        self.status = rh.status
        head = self.head
        drop = _RESPONSE_DROP
        tokens = frozenset()
        for name, value in rh.headers:
            if name == b"connection":
                tokens = tokens | frozenset(t.strip().lower() for t in value.split(b","))
        content_length = rh.content_length
        redactor = self.tables.redact_response.get(self.function) if rh.has_body else None
        req = self.mcp_request
        if redactor is None and self.function is None and self.mcp_functions is not None and rh.has_body and (
                req is None or req.method != "tools/list"):
            redactor = self.tables.mcp_redactor  # GET streams, resources, prompts: the PII detectors
        if (req is None and self.mcp_functions is not None and head.method == b"GET" and rh.has_body
                and 200 <= rh.status < 300 and not any(n in (b"mcp-session-id", b"mcp-protocol-version")
                                                       for n, _ in head.headers)):
            self.masker = LegacyProbeBody()  # no session, no version: maybe the 2024-11-05 transport
            drop = _RESPONSE_MASK_DROP
            content_length = None
        if self.mcp_functions is not None:
            rh.headers = self.client_session_headers(rh.headers)
        if req is not None:
            if req.method == "tools/list" and rh.has_body and 200 <= rh.status < 300:
                content_type = next((v.decode("latin-1") for n, v in rh.headers if n == b"content-type"), "")
                self.masker = McpBody(mcp.ToolsListFilter(self.visible_tools()), content_type)
                drop = _RESPONSE_MASK_DROP
                content_length = None
        if redactor is not None:
            content_type = content_encoding = None
            for name, value in rh.headers:
                if name == b"content-type":
                    content_type = value.decode("latin-1")
                elif name == b"content-encoding":
                    content_encoding = value.decode("latin-1")
            try:
                stream = redactor.stream(content_type, content_encoding)
            except RedactionError as exc:
                raise UpstreamError(502, f"response could not be scanned: {exc}") from None
            self.masker = stream if self.masker is None else ChainBody(self.masker, stream)
            drop = _RESPONSE_REWRITE_DROP if self.masker.decoded else _RESPONSE_MASK_DROP
            content_length = None  # masking changes the length: re-framed below
        if (self.mcp_grant is not None and req is not None and req.era == "stateless" and rh.has_body
                and 200 <= rh.status < 300):  # the upstream may ask for more input: keep the approval on it
            content_type = next((v.decode("latin-1") for n, v in rh.headers if n == b"content-type"), "")
            wrapper = McpBody(mcp.ResultStateWrapper(self.seal_grant), content_type)
            if self.masker is None:
                self.masker = wrapper
                drop = _RESPONSE_MASK_DROP
            else:
                self.masker = ChainBody(self.masker, wrapper)
            content_length = None
        if self.sse_held:  # the stream's head left while the call waited: the answer becomes events
            self.wrap_json = not any(n == b"content-type" and v.lower().startswith(b"text/event-stream")
                                     for n, v in rh.headers)
            self.rechunk = True
            if self.recorded:
                self.response_headers = rh.headers
                self.digest = hashlib.sha256()
                self.capture = []
            return
        parts = [http1.status_line(rh.status, rh.reason)]
        for name, value in rh.headers:
            if name in drop or name in tokens:
                continue
            parts.append(b"%s: %s\r\n" % (name, value))
        parts.append(b"x-request-id: %s\r\n" % self.request_id.encode())
        if self.recorded:
            self.response_headers = rh.headers
            self.digest = hashlib.sha256()
            self.capture = []
        if rh.has_body and content_length is None:
            if head.version == b"1.1":
                self.rechunk = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.close_after = True  # HTTP/1.0 client: the close delimits the body
        if not self.body_done:
            self.close_after = True  # answered before the body ended: do not reuse
        if self.close_after or self.client.draining:
            self.close_after = True
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.out.append(b"".join(parts))
        self.response_started = True

    def on_response_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self.masker is not None:
            data = self.masker.feed(data)  # RedactionError reaches the upstream side: 502 or abort
            if not data:
                return
        self.keep(data)
        if self.wrap_json:
            self.wrapped.append(data)
            return
        self.out.append(http1.chunk(data) if self.rechunk else data)
        if len(self.out) > 8:
            self.flush()

    def keep(self, data: bytes) -> None:
        """What the caller got, as the record keeps it: a bounded prefix and the sha256 of all."""
        if self.digest is None:
            return
        self.digest.update(data)
        self.bytes_sent += len(data)
        room = self.tables.audit_max_body - self.captured
        if room > 0:
            piece = data[:room]
            self.capture.append(piece)
            self.captured += len(piece)

    def flush(self) -> None:
        """Write what one upstream read produced in one go; the head counts as sent from here.

        A masked answer's head waits for the first masked bytes, so a body that cannot be scanned
        early on still gets a clean 502 instead of a cut connection."""
        if self.masker is not None and not self.head_sent and len(self.out) == 1:
            return
        if self.sse_held and not self.out:
            return
        if self.out:
            self.client.write(b"".join(self.out))
            self.out.clear()
            self.head_sent = True

    def on_response_end(self) -> None:
        if self.masker is not None:
            try:
                tail = self.masker.close()
            except Exception as exc:  # RedactionError, McpError, ...: never pass an unscanned end
                self.upstream_failed(UpstreamError(502, f"response could not be scanned: {exc}"))
                return
            if tail:
                self.keep(tail)
                if self.wrap_json:
                    self.wrapped.append(tail)
                else:
                    self.out.append(http1.chunk(tail) if self.rechunk else tail)
        if self.wrap_json:
            self.out.append(http1.chunk(sse_event(b"".join(self.wrapped))))
        if self.rechunk:
            self.out.append(LAST_CHUNK)
        self.flush()
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            if self.body_done:
                self.route.pool.release(conn)
            else:
                conn.abort()
        self.finish()

    def on_upstream_error(self, error: UpstreamError) -> None:
        conn = self.upstream
        self.upstream = None
        if (conn is not None and not self.response_started and conn.fresh and self.attempts == 1
                and self.head.method in _IDEMPOTENT and not self.head.has_body):
            # A keep-alive connection the upstream closed just before our request: retry once.
            if error.status == 502 and conn.fresh:
                self.task = self.client.loop.create_task(self._retry())
                return
        self.upstream_failed(error)

    async def _retry(self) -> None:
        try:
            await self.forward()
        except UpstreamError as exc:
            self.upstream_failed(exc)
        except asyncio.CancelledError:
            self.abandon()

    def upstream_failed(self, error: UpstreamError) -> None:
        self.error = error.reason
        if self.response_started and not self.head_sent:
            self.response_started = False  # the head never left: a clean 502/504 is still possible
            self.rechunk = False
        if self.response_started:
            # The head is gone; the only honest signal left is a broken connection.
            self.out.clear()
            self.close_after = True
            self.client.abort()
            self.finish()
            return
        self.out.clear()
        code = "upstream_timeout" if error.status == 504 else "upstream_unavailable"
        self.refuse(Refusal(error.status, error.body or {"error": code}))

    def refuse(self, refusal: Refusal) -> None:
        if self.finished:
            return
        if self.sse_held and self.upstream_started == 0.0:
            payload = refusal.raw if refusal.raw is not None else orjson.dumps(refusal.body)
            self.refusal_payload = payload
            self.refusal_error = str(refusal.body.get("error") or "refused")
            self.client.write(http1.chunk(sse_event(payload)) + LAST_CHUNK)
            self.finish()
            return
        if self.response_started:
            self.client.abort()
            self.finish()
            return
        self.status = refusal.status
        body = dict(refusal.body)
        if refusal.status >= 400:
            body.setdefault("request_id", self.request_id)
        payload = refusal.raw if refusal.raw is not None else orjson.dumps(body)
        self.refusal_payload = payload
        self.refusal_error = str(body.get("error") or body.get("status", ""))
        if not self.body_done:
            self.close_after = True
        close = self.close_after or self.client.draining
        self.close_after = close
        head = [http1.status_line(refusal.status),
                b"content-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n" % (
                    len(payload), self.request_id.encode())]
        for name, value in refusal.headers:
            head.append(b"%s: %s\r\n" % (name, value))
        if close:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if self.head.method != b"HEAD":
            head.append(payload)
        self.response_started = True
        self.head_sent = True
        self.client.write(b"".join(head))
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            conn.abort()
        self.finish()

    def abandon(self) -> None:
        """The client is gone: drop the upstream exchange half-way, never reuse it."""
        conn = self.upstream
        self.upstream = None
        if conn is not None:
            conn.abort()
        if not self.finished:
            self.error = self.error or "client disconnected"
            self.close_after = True
            self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            self.record_end()
        except Exception as exc:  # the answer is already out; the log says what the record missed
            self.client.log_exception(exc)
        self.client.call_finished(self)

    def log_record(self) -> dict:
        return {
            "request_id": self.request_id,
            "client": self.client.peer_ip.decode(),
            "method": self.head.method.decode(),
            "path": self.path or None,
            "function": self.function,
            "subject": self.caller.subject,
            "decision": self.decision.effect if self.decision else None,
            "rule": self.decision.rule if self.decision else None,
            "status": self.status,
            "bytes": self.bytes_out,
            "ms": round((time.perf_counter() - self.started) * 1000.0, 3),
            "upstream_ms": None if self.upstream_ms is None else round(self.upstream_ms, 3),
            "error": self.error,
        }
