"""MCP through a real gateway (session-era streamable HTTP, driven at the wire level with httpx):
tools/list filtered per caller, tools/call gated by the same rules as HTTP functions, refusals in
band (HTTP 200 + JSON-RPC error with the request's id) so the session survives, masked results,
session ids bound to the caller who opened them, and the 401 resource-metadata challenge."""
from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from support.gateway import Gateway, base_config
from support.mcp_upstream import McpUpstream

KEYS = {"support": "fgk_mcp-support-0123456789ab", "intern": "fgk_mcp-intern-0123456789ab",
        "outsider": "fgk_mcp-outsider-0123456789"}
ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def mcp_up():
    up = McpUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gw(mcp_up, tmp_path_factory):
    config = base_config(
        mcp_up.port,
        identity={"api_keys": [{"name": f"{who}-bot", "sha256": hashlib.sha256(k.encode()).hexdigest(),
                                "groups": [who]} for who, k in KEYS.items()]},
        upstreams={"mcp": {"url": f"http://127.0.0.1:{mcp_up.port}"}},
        functions=[{"name": f, "upstream": "mcp", "mcp": {"endpoint": "/mcp", "tool": f},
                    **({"redact": {"response": ["$..ssn"], "request": ["$.card"]}} if f == "lookup_customer" else {})}
                   for f in ("lookup_customer", "delete_customer", "stream_report")]
        + [{"name": "legacy_lookup", "upstream": "mcp", "mcp": {"endpoint": "/sse", "tool": "lookup_customer"}},
           {"name": "archive_customer", "upstream": "mcp",
            "mcp": {"endpoint": "/mcp", "tool": "archive_customer", "refusal": "tool_result"}}],
        pii={"detectors": ["email"], "scan": ["response"]},
        rules=[{"id": "support-lookup", "functions": ["lookup_customer", "stream_report", "legacy_lookup"],
                "groups": ["support"], "effect": "allow"},
               {"id": "support-delete-small", "functions": ["delete_customer"], "groups": ["support"],
                "when": [{"arg": "$.id", "op": "prefix", "value": "test-"}], "effect": "allow"},
               {"id": "no-interns", "functions": ["delete_customer"], "groups": ["intern"], "effect": "deny"},
               {"id": "archive-test-only", "functions": ["archive_customer"], "groups": ["support"],
                "when": [{"arg": "$.id", "op": "prefix", "value": "test-"}], "effect": "allow"},
               {"id": "interns-lookup", "functions": ["lookup_customer"], "groups": ["intern"], "effect": "allow"}])
    gateway = Gateway.start(config, tmp_path_factory.mktemp("mcp"))
    yield gateway
    gateway.stop()


OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while OPEN:
        OPEN.pop().close()


class Session:
    """One MCP client session through the gate, as an SDK client would drive it on the wire."""

    def __init__(self, gw: Gateway, who: str) -> None:
        self.client = httpx.Client(base_url=gw.url, headers={"X-Api-Key": KEYS[who], "Accept": ACCEPT})
        OPEN.append(self.client)
        self.next_id = 1
        self.sid = None

    def rpc(self, method: str, params: dict | None = None, notify: bool = False) -> httpx.Response:
        msg = {"jsonrpc": "2.0", "method": method, "params": params or {}}
        if not notify:
            msg["id"] = self.next_id
            self.next_id += 1
        headers = {"Mcp-Session-Id": self.sid} if self.sid else {}
        return self.client.post("/mcp", json=msg, headers=headers)

    def open(self) -> "Session":
        r = self.rpc("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                    "clientInfo": {"name": "t", "version": "1"}})
        assert r.status_code == 200, r.text
        self.sid = r.headers["mcp-session-id"]
        assert self.rpc("notifications/initialized", notify=True).status_code == 202
        return self

    def tools(self) -> list[str]:
        r = self.rpc("tools/list")
        assert r.status_code == 200
        return [t["name"] for t in r.json()["result"]["tools"]]


def test_tools_list_shows_each_caller_only_what_it_may_call(gw, mcp_up):
    assert sorted(Session(gw, "support").open().tools()) == ["delete_customer", "lookup_customer", "stream_report"]
    assert Session(gw, "intern").open().tools() == ["lookup_customer"]


def test_allowed_call_is_forwarded_and_its_result_masked(gw, mcp_up):
    s = Session(gw, "support").open()
    r = s.rpc("tools/call", {"name": "lookup_customer", "arguments": {"id": "c-1"}})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert "jane.doe@example.com" not in r.text and "123-45-6789" not in r.text
    inner = json.loads(result["content"][0]["text"])  # JSON inside the string is masked too
    assert inner["customer"] == "c-1" and "REDACTED" in inner["email"] and "REDACTED" in inner["ssn"]
    assert mcp_up.calls[-1]["params"]["name"] == "lookup_customer"
    assert "x-api-key" not in mcp_up.headers[-1]  # the caller's credential stays at the gate


def test_streamed_result_masked(gw, mcp_up):
    s = Session(gw, "support").open()
    r = s.rpc("tools/call", {"name": "stream_report", "arguments": {"id": "c-2"}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert "jane.doe@example.com" not in r.text and "[REDACTED:email]" in r.text


def test_refusals_are_in_band_and_the_session_survives(gw, mcp_up):
    s = Session(gw, "intern").open()
    before = len(mcp_up.calls)
    r = s.rpc("tools/call", {"name": "delete_customer", "arguments": {"id": "c-1"}})
    assert r.status_code == 200  # never an HTTP 403: clients would drop the session
    err = r.json()
    assert err["id"] == s.next_id - 1 and err["error"]["code"] == -32602  # hidden: like an unknown tool
    s2 = Session(gw, "support").open()
    r = s2.rpc("tools/call", {"name": "delete_customer", "arguments": {"id": "prod-1"}})
    err = r.json()["error"]
    assert r.status_code == 200 and err["code"] == -31001 and err["data"]["error"] == "denied"
    assert len(mcp_up.calls) == before + 2  # the second session's initialize and notification only
    ok = s2.rpc("tools/call", {"name": "delete_customer", "arguments": {"id": "test-1"}})
    assert ok.status_code == 200 and "result" in ok.json()  # the same session goes on


def test_callers_with_no_tool_get_nothing(gw, mcp_up):
    client = httpx.Client(base_url=gw.url, headers={"X-Api-Key": KEYS["outsider"], "Accept": ACCEPT})
    OPEN.append(client)
    r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": {}})
    assert r.status_code == 200 and r.json()["id"] == 7 and r.json()["error"]["code"] == -31001


def test_session_id_bound_to_its_caller(gw, mcp_up):
    alice = Session(gw, "support").open()
    mallory = Session(gw, "intern")
    mallory.sid = alice.sid
    assert mallory.rpc("tools/list").status_code == 404
    upstream_sid, _, seal = alice.sid.rpartition(".")
    assert upstream_sid in mcp_up.sessions and seal  # the client's id is the server's, sealed to alice
    mallory.sid = upstream_sid  # the server's bare id is no key either
    assert mallory.rpc("tools/list").status_code == 404
    assert alice.rpc("tools/list").status_code == 200
    assert mcp_up.headers[-1]["mcp-session-id"] == upstream_sid  # the server gets its own id back


def test_sessions_work_through_every_worker(mcp_up, tmp_path_factory):
    """Session ids are checked by their seal, not by a table in one worker: a session opened
    through one worker goes on through the others (new connections land on any worker)."""
    config = base_config(
        mcp_up.port, workers=2,
        identity={"api_keys": [{"name": "support-bot", "sha256": hashlib.sha256(KEYS["support"].encode()).hexdigest(),
                                "groups": ["support"]}]},
        upstreams={"mcp": {"url": f"http://127.0.0.1:{mcp_up.port}"}},
        functions=[{"name": "lookup_customer", "upstream": "mcp", "mcp": {"endpoint": "/mcp", "tool": "lookup_customer"}}],
        rules=[{"id": "lookup", "functions": ["lookup_customer"], "groups": ["support"], "effect": "allow"}])
    gateway = Gateway.start(config, tmp_path_factory.mktemp("mcp-workers"))
    try:
        s = Session(gateway, "support").open()
        for i in range(12):  # a new connection each time: SO_REUSEPORT spreads them over the workers
            r = httpx.post(f"{gateway.url}/mcp", headers={"X-Api-Key": KEYS["support"], "Accept": ACCEPT,
                                                          "Mcp-Session-Id": s.sid},
                           json={"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                 "params": {"name": "lookup_customer", "arguments": {"id": f"w-{i}"}}})
            assert r.status_code == 200 and r.json()["result"]["structuredContent"]["customer"] == f"w-{i}"
        workers = {rec.get("worker") for rec in gateway.access_lines() if rec["status"] == 200 and rec["path"] == "/mcp"}
        assert workers == {0, 1}  # both workers served calls of the one session
    finally:
        gateway.stop()


def test_malformed_messages_refused_before_forwarding(gw, mcp_up):
    s = Session(gw, "support").open()
    before = len(mcp_up.calls)
    for body in (b'[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]',
                 b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}',
                 b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_customer","arguments":[]}}',
                 b'not json'):
        r = s.client.post("/mcp", content=body, headers={"Mcp-Session-Id": s.sid, "content-type": "application/json"})
        assert r.status_code in (200, 400) and "error" in r.json(), body
    assert len(mcp_up.calls) == before


def test_unauthenticated_gets_the_resource_metadata_challenge(gw, mcp_up):
    r = httpx.post(f"{gw.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})
    assert r.status_code == 401
    assert 'resource_metadata="' in r.headers["www-authenticate"]
    assert "/.well-known/oauth-protected-resource/mcp" in r.headers["www-authenticate"]


def test_official_sdk_client_through_the_gate(gw, mcp_up):
    """The MCP Python SDK (2.x) as the caller: filtered list, masked result, a hidden tool raises a
    clean MCPError, and the same session goes on working afterwards."""
    import asyncio

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def drive() -> dict:
        out: dict = {}
        async with httpx2.AsyncClient(headers={"X-Api-Key": KEYS["intern"]}) as http:
            async with Client(streamable_http_client(f"{gw.url}/mcp", http_client=http)) as client:
                out["tools"] = [t.name for t in (await client.list_tools()).tools]
                first = await client.call_tool("lookup_customer", {"id": "c-9"})
                out["first"] = first.structured_content
                try:
                    await client.call_tool("delete_customer", {"id": "c-9"})
                except Exception as exc:  # the SDK raises MCPError for a JSON-RPC error answer
                    out["refused"] = f"{type(exc).__name__}: {exc}"
                out["after"] = (await client.call_tool("lookup_customer", {"id": "c-10"})).structured_content
        return out

    out = asyncio.run(drive())
    assert out["tools"] == ["lookup_customer"]
    assert out["first"]["customer"] == "c-9" and "REDACTED" in out["first"]["email"]
    assert out["refused"].startswith("MCPError") and "delete_customer" in out["refused"]
    assert out["after"]["customer"] == "c-10"


def _stateless(gw, who: str, body: dict, timeout: float = 5.0, **headers) -> httpx.Response:
    """A 2026-07-28 (stateless) request: no session, the method and tool mirrored in headers."""
    base = {"X-Api-Key": KEYS[who], "Accept": ACCEPT, "MCP-Protocol-Version": "2026-07-28",
            "Mcp-Method": body["method"]}
    if body["method"] == "tools/call":
        base["Mcp-Name"] = body["params"]["name"]
    body["params"].setdefault("_meta", {})["io.modelcontextprotocol/protocolVersion"] = "2026-07-28"
    return httpx.post(f"{gw.url}/mcp", json=body, headers={**base, **headers}, timeout=timeout)


def test_stateless_era_headers_must_agree_with_the_body(gw, mcp_up):
    call = {"jsonrpc": "2.0", "id": "s-1", "method": "tools/call",
            "params": {"name": "lookup_customer", "arguments": {"id": "c-3"}}}
    ok = _stateless(gw, "support", dict(call, params=dict(call["params"])))
    assert ok.status_code == 200 and ok.json()["id"] == "s-1" and "result" in ok.json()
    before = len(mcp_up.calls)
    lying = _stateless(gw, "support", dict(call, params=dict(call["params"])), **{"Mcp-Name": "delete_customer"})
    assert lying.status_code == 400 and lying.json()["error"]["code"] == -32020
    assert len(mcp_up.calls) == before  # the mismatch never reached the server
    get = httpx.get(f"{gw.url}/mcp", headers={"X-Api-Key": KEYS["support"], "MCP-Protocol-Version": "2026-07-28"})
    assert get.status_code == 405


def test_records_name_the_mcp_session_id_era_and_tool(gw, mcp_up):
    import os
    import subprocess
    import sys
    import time

    from support.gateway import REPO_ROOT

    s = Session(gw, "intern").open()
    r = s.rpc("tools/call", {"name": "delete_customer", "arguments": {"id": "c-1"}})
    rid = r.headers["x-request-id"]
    time.sleep(0.3)
    proc = subprocess.run([sys.executable, "-m", "fastgate", "admin", "--socket", str(gw.workdir / "var" / "admin.sock"),
                           "--json", "sessions", "show", rid], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    view = json.loads(proc.stdout)
    assert view["mcp"] == {"endpoint": "/mcp", "era": "session", "version": view["mcp"]["version"],
                           "session": s.sid.rpartition(".")[0], "jsonrpc_id": s.next_id - 1, "method": "tools/call",
                           "tool": "delete_customer"}
    assert view["events"][0]["type"] == "call.refused"


@pytest.fixture(scope="module")
def held_gw(mcp_up, tmp_path_factory):
    config = base_config(
        mcp_up.port,
        identity={"api_keys": [{"name": f"{who}-bot", "sha256": hashlib.sha256(k.encode()).hexdigest(),
                                "groups": [who]} for who, k in KEYS.items()]},
        approvals={"reviewers": {"bob": ["leads"]}},
        upstreams={"mcp": {"url": f"http://127.0.0.1:{mcp_up.port}"}},
        functions=[{"name": f, "upstream": "mcp", "mcp": {"endpoint": "/mcp", "tool": f}}
                   for f in ("lookup_customer", "delete_customer")],
        pii={"detectors": ["email"], "scan": ["response"]},
        rules=[{"id": "lookup", "functions": ["lookup_customer"], "groups": ["support"], "effect": "allow"},
               {"id": "deletes-need-a-lead", "functions": ["delete_customer"], "groups": ["support"],
                "effect": "approve", "approval": {"reviewers": ["leads"], "timeout": "20s", "mode": "hold"}}])
    gateway = Gateway.start(config, tmp_path_factory.mktemp("mcp-held"))
    yield gateway
    gateway.stop()




@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_held_tool_call_asks_through_elicitation_and_a_reviewer_decides(held_gw, mcp_up, decision):
    """Session era with the elicitation capability: the gate holds the POST as SSE, tells the caller
    (through the client) which approval it waits for, absorbs the client's answer, and forwards the
    call only when a reviewer (never the caller) approves."""
    import asyncio

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types import ElicitResult

    seen: dict = {}
    decided: dict = {}

    async def on_elicit(context, params):
        seen["message"] = params.message
        return ElicitResult(action="accept", content={})

    async def drive() -> dict:
        async with httpx2.AsyncClient(headers={"X-Api-Key": KEYS["support"]}) as http:
            async with Client(streamable_http_client(f"{held_gw.url}/mcp", http_client=http),
                              elicitation_callback=on_elicit) as client:
                t = held_gw.decide_soon('"c-7"', decision, seen=decided)
                try:
                    result = await client.call_tool("delete_customer", {"id": "c-7"})
                    seen["result"] = result.structured_content
                except Exception as exc:
                    seen["error"] = f"{type(exc).__name__}: {exc}"
                t.join(20)
                seen["after"] = (await client.call_tool("lookup_customer", {"id": "c-8"})).structured_content
        return seen

    before = len(mcp_up.calls)
    out = asyncio.run(drive())
    assert decided["id"] in out["message"]  # the caller learns what it waits for
    assert decided["answer"][0] == 0
    deletes = [c for c in mcp_up.calls[before:] if c.get("params", {}).get("name") == "delete_customer"]
    if decision == "approve":
        assert out["result"]["customer"] == "c-7" and "REDACTED" in out["result"]["email"]
        assert len(deletes) == 1
    else:
        assert "error" in out and not deletes
    assert not any(str(c.get("id", "")).startswith("fastgate-") for c in mcp_up.calls)  # answer absorbed
    assert out["after"]["customer"] == "c-8"  # the session goes on


def test_held_tool_call_without_elicitation_streams_keepalive_then_result(held_gw, mcp_up):

    s = Session(held_gw, "support").open()  # no elicitation capability declared
    t = held_gw.decide_soon('"c-5"')
    r = s.rpc("tools/call", {"name": "delete_customer", "arguments": {"id": "c-5"}})
    t.join(20)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    lines = r.text.splitlines()
    assert lines[0].startswith(": The call to tool 'delete_customer' is waiting for approval ap_")
    data = json.loads("".join(line[len("data: "):] for line in lines if line.startswith("data: ")))
    assert data["id"] == s.next_id - 1 and data["result"]["structuredContent"]["customer"] == "c-5"
    assert "jane.doe@example.com" not in r.text


def test_get_stream_without_session_reaches_the_server_only_for_callers_with_a_tool(gw, mcp_up):
    ok = httpx.get(f"{gw.url}/mcp", headers={"X-Api-Key": KEYS["support"], "Accept": "text/event-stream"})
    assert ok.status_code == 200 and ok.text.startswith("id: 0\r\nretry: 1000\r\ndata: \r\n\r\n: ping\r\n\r\n")
    [note] = [json.loads(line[len("data: "):]) for line in ok.text.splitlines() if line.startswith("data: {")]
    assert note["method"] == "notifications/message" and "jane.doe" not in note["params"]["data"]  # masked
    nope = httpx.get(f"{gw.url}/mcp", headers={"X-Api-Key": KEYS["outsider"], "Accept": "text/event-stream"})
    assert nope.status_code == 403


# -- 2026-07-28: approval as a multi-round trip (input_required + the gate's sealed requestState) ----

ELICIT = {"io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}


def _messages(r: httpx.Response) -> list[dict]:
    """The JSON-RPC messages of a JSON or SSE answer."""
    if r.headers["content-type"].startswith("application/json"):
        return [r.json()]
    out, data = [], []
    for line in r.text.replace("\r\n", "\n").split("\n"):
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        elif not line and data:
            out.append(json.loads("\n".join(data)))
            data = []
    return out


def _call(gw, who: str, args: dict, *, rid: str = "r-1", meta: dict | None = None, **extra) -> httpx.Response:
    params = {"name": "delete_customer", "arguments": args, "_meta": dict(ELICIT if meta is None else meta), **extra}
    return _stateless(gw, who, {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params},
                      timeout=30)


def test_stateless_held_call_asks_input_then_runs_once_a_reviewer_approves(held_gw, mcp_up):
    before = len(mcp_up.calls)
    first = _call(held_gw, "support", {"id": "c-21"})
    result = first.json()["result"]
    assert first.status_code == 200 and first.json()["id"] == "r-1"
    assert result["resultType"] == "input_required" and result["requestState"].startswith("fastgate1.")
    [(key, ask)] = result["inputRequests"].items()
    aid = key[len("fastgate-"):]
    assert key.startswith("fastgate-ap_") and ask["method"] == "elicitation/create" and aid in ask["params"]["message"]
    assert len(mcp_up.calls) == before  # nothing reached the server while the call waits
    assert held_gw.admin("approvals", "show", aid)[1]["state"] == "pending"

    t = held_gw.decide_soon('"c-21"')
    retry = _call(held_gw, "support", {"id": "c-21"}, rid="r-2", requestState=result["requestState"],
                  inputResponses={key: {"action": "accept", "content": {}}})
    t.join(20)
    [answer] = [m for m in _messages(retry) if "id" in m]
    assert "result" in answer, answer
    assert answer["id"] == "r-2" and answer["result"]["structuredContent"]["customer"] == "c-21"
    forwarded = mcp_up.calls[-1]["params"]
    assert forwarded["arguments"] == {"id": "c-21"}
    assert "requestState" not in forwarded and "inputResponses" not in forwarded  # the gate's fields stay here
    assert held_gw.admin("approvals", "show", aid)[1]["state"] == "used"

    again = _call(held_gw, "support", {"id": "c-21"}, rid="r-3", requestState=result["requestState"],
                  inputResponses={key: {"action": "accept", "content": {}}})
    assert again.json()["error"]["code"] == -31002  # a copied state does not run the call twice
    assert [c["params"]["arguments"] for c in mcp_up.calls[before:]] == [{"id": "c-21"}]  # ran exactly once


def test_stateless_request_state_is_sealed_and_bound_to_the_call(held_gw, mcp_up):
    first = _call(held_gw, "support", {"id": "c-22"})
    state = first.json()["result"]["requestState"]
    before = len(mcp_up.calls)
    body, _, mac = state.rpartition(".")
    forged = body + "." + ("A" if mac[0] != "A" else "B") + mac[1:]
    bad = _call(held_gw, "support", {"id": "c-22"}, rid="r-9", requestState=forged)
    assert bad.status_code == 200 and bad.json()["error"]["code"] == -32602 and bad.json()["id"] == "r-9"
    other = _call(held_gw, "support", {"id": "c-other"}, requestState=state)
    assert other.json()["error"]["code"] == -32602 and "another call" in other.json()["error"]["message"]
    assert len(mcp_up.calls) == before


def test_stateless_caller_declining_withdraws_its_call(held_gw, mcp_up):
    first = _call(held_gw, "support", {"id": "c-23"})
    result = first.json()["result"]
    [key] = result["inputRequests"]
    before = len(mcp_up.calls)
    declined = _call(held_gw, "support", {"id": "c-23"}, requestState=result["requestState"],
                     inputResponses={key: {"action": "decline"}})
    error = declined.json()["error"]
    assert error["code"] == -31002 and "withdrawn by the caller" in error["message"]
    assert len(mcp_up.calls) == before
    import time
    time.sleep(0.3)  # the withdrawal is recorded in the background
    assert held_gw.admin("approvals", "show", key[len("fastgate-"):])[1]["state"] == "withdrawn"


def test_stateless_without_elicitation_holds_with_a_stream(held_gw, mcp_up):
    t = held_gw.decide_soon('"c-24"')
    r = _call(held_gw, "support", {"id": "c-24"}, meta={})
    t.join(20)
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.startswith(": The call to tool 'delete_customer' is waiting for approval ap_")
    [answer] = _messages(r)
    assert answer["result"]["structuredContent"]["customer"] == "c-24"


def test_stateless_upstream_round_trips_continue_under_the_same_approval(held_gw, mcp_up):
    """After approval the server asks its own question: the gate wraps the server's state in its
    sealed one, so the retry runs without a second approval and the server gets its state back."""
    first = _call(held_gw, "support", {"id": "c-25", "confirm": True}).json()["result"]
    [key] = first["inputRequests"]
    t = held_gw.decide_soon('"c-25"')
    second = _call(held_gw, "support", {"id": "c-25", "confirm": True}, requestState=first["requestState"],
                   inputResponses={key: {"action": "accept", "content": {}}})
    t.join(20)
    [asked] = [m for m in _messages(second) if "id" in m]
    wrapped = asked["result"]
    assert wrapped["resultType"] == "input_required" and "confirm" in wrapped["inputRequests"]
    assert wrapped["requestState"].startswith("fastgate1.") and "up-state-1" not in wrapped["requestState"]
    pending_before = [a for a in held_gw.admin("approvals", "list")[1] or [] if a["state"] == "pending"]
    third = _call(held_gw, "support", {"id": "c-25", "confirm": True}, rid="r-3", requestState=wrapped["requestState"],
                  inputResponses={"confirm": {"action": "accept", "content": {"ok": True}}})
    [done] = [m for m in _messages(third) if "id" in m]
    assert done["result"]["structuredContent"] == {"confirmed": "c-25"}
    forwarded = mcp_up.calls[-1]["params"]
    assert forwarded["requestState"] == "up-state-1" and set(forwarded["inputResponses"]) == {"confirm"}
    pending_after = [a for a in held_gw.admin("approvals", "list")[1] or [] if a["state"] == "pending"]
    assert len(pending_after) == len(pending_before)  # no second approval was asked for


def test_the_2024_11_05_sse_transport_is_refused_clearly(gw, mcp_up):
    """Its answers would arrive on the GET stream, past every per-call check: 501, nothing relayed."""
    r = httpx.get(f"{gw.url}/sse", headers={"X-Api-Key": KEYS["support"], "Accept": "text/event-stream"})
    assert r.status_code == 501
    assert r.json()["error"] == "unsupported_transport" and "2024-11-05" in r.json()["detail"]
    assert "endpoint" not in r.text and "session_id" not in r.text


def test_request_redaction_addresses_the_tool_arguments(gw, mcp_up):
    s = Session(gw, "support").open()
    r = s.rpc("tools/call", {"name": "lookup_customer", "arguments": {"id": "c-31", "card": "4111 1111 1111 1111"}})
    assert r.status_code == 200 and "result" in r.json()
    sent = mcp_up.calls[-1]
    assert sent["params"]["arguments"]["id"] == "c-31" and sent["id"] == s.next_id - 1
    assert "4111" not in json.dumps(sent) and sent["params"]["arguments"]["card"] != "4111 1111 1111 1111"


def test_refusal_as_a_tool_result_the_model_can_read(gw, mcp_up):
    """`refusal: tool_result`: the model gets an isError result explaining the refusal (and the
    contract's fields in `_meta`); an unknown tool stays a protocol error."""
    s = Session(gw, "support").open()
    before = len(mcp_up.calls)
    r = s.rpc("tools/call", {"name": "archive_customer", "arguments": {"id": "prod-1"}})
    result = r.json()["result"]
    assert r.status_code == 200 and result["isError"] is True and "resultType" not in result
    assert result["content"][0]["text"] == "denied: no rule allows this call"
    assert result["_meta"]["fastgate"]["error"] == "denied" and result["_meta"]["fastgate"]["request_id"]
    stateless = _stateless(gw, "support", {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                                           "params": {"name": "archive_customer", "arguments": {"id": "prod-2"}}})
    assert stateless.json()["result"]["isError"] is True and stateless.json()["result"]["resultType"] == "complete"
    assert len(mcp_up.calls) == before
    ok = s.rpc("tools/call", {"name": "archive_customer", "arguments": {"id": "test-1"}})
    assert "error" not in ok.json() and not ok.json()["result"].get("isError")
