"""MCP through the gate with the official SDK on both ends (real processes, real sockets).

`test_e2e_mcp.py` checks the gate against a hand-written upstream; the wire details that break
proxies in practice (SSE framing, the SDK's Host allow-list, session ids, the stateless era's
mirrored headers, how clients react to refusals) are only proven against the reference
implementation. So here an `MCPServer` (SDK 2.x) sits behind the gate and real SDK clients call
through it: 2.x in the session era and pinned to 2026-07-28, 1.x (its own venv, built once and
cached) and raw httpx for what no well-behaved client sends.
"""
import asyncio
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support.gateway import REPO_ROOT, Gateway, base_config
from support.sdk_server import PII, SdkServer

KEYS = {"support": "fgk_sdk-support-0123456789ab", "intern": "fgk_sdk-intern-0123456789ab"}
ACCEPT = "application/json, text/event-stream"
ALL_TOOLS = ["delete_customer", "lookup_customer", "stream_report"]
MCP1_VENV = Path(os.environ.get("FASTGATE_MCP1_VENV") or REPO_ROOT / ".venv-mcp1")


@pytest.fixture(scope="module")
def srv():
    with SdkServer.start() as server:
        yield server


@pytest.fixture(scope="module")
def gw(srv, tmp_path_factory):
    config = base_config(
        srv.port,
        limits={"upstream_timeout": "10s"},  # two slow shared cores: leave the SDK server room
        identity={"api_keys": [{"name": f"{who}-bot", "sha256": hashlib.sha256(k.encode()).hexdigest(),
                                "groups": [who]} for who, k in KEYS.items()]},
        upstreams={"mcp": {"url": f"http://127.0.0.1:{srv.port}"}},
        functions=[{"name": f, "upstream": "mcp", "mcp": {"endpoint": "/mcp", "tool": f},
                    **({"redact": {"response": ["$..ssn"]}} if f != "delete_customer" else {})}
                   for f in ALL_TOOLS],
        pii={"detectors": ["email"], "scan": ["response"]},
        rules=[{"id": "support-read", "functions": ["lookup_customer", "stream_report"], "groups": ["support"],
                "effect": "allow"},
               {"id": "support-delete-test", "functions": ["delete_customer"], "groups": ["support"],
                "when": [{"arg": "$.id", "op": "prefix", "value": "test-"}], "effect": "allow"},
               {"id": "no-intern-deletes", "functions": ["delete_customer"], "groups": ["intern"], "effect": "deny"},
               {"id": "intern-lookup", "functions": ["lookup_customer"], "groups": ["intern"], "effect": "allow"}])
    gateway = Gateway.start(config, tmp_path_factory.mktemp("mcp-sdk"))
    yield gateway
    gateway.stop()


def assert_era(out: dict, mode: str) -> None:
    if mode == "legacy":  # initialize (no version header yet), then the negotiated one; a session id
        spoken = out["versions"] - {None}
        assert spoken and all(v.startswith("2025-") for v in spoken) and len(out["sessions"] - {None}) == 1, out
    else:  # every request carries the version, no session anywhere
        assert out["versions"] == {mode} and out["sessions"] == {None}, out


def assert_masked(structured: dict, text: str, customer: str) -> None:
    """Masked in `structuredContent` and in the JSON serialized inside `content[0].text`."""
    for data in (structured, json.loads(text)):
        assert data["customer"] == customer
        assert data["email"] == "[REDACTED:email]" and "REDACTED" in data["ssn"], data
    assert PII["email"] not in text and PII["ssn"] not in text


def forwarded(gw: Gateway, response: httpx.Response) -> bool:
    """Whether the gate's access log says this request went upstream (the SDK server refuses a
    header/body mismatch by itself, so "not executed" alone would not prove the gate refused it)."""
    rid = response.headers["x-request-id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in gw.logs().splitlines():
            if rid in line and '"access"' in line:
                return json.loads(line)["upstream_ms"] is not None
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {rid}")


def new_calls(srv: SdkServer, before: int) -> list[tuple[str, str]]:
    return [(c["tool"], c["arguments"]["id"]) for c in srv.log()[before:]]


# --- SDK 2.x client, both eras ------------------------------------------------------------------

MODES = ["legacy", "2026-07-28"]


async def _sdk2_session(url: str, who: str, mode: str, steps) -> dict:
    """Run `steps(client, out)` in one SDK 2.x client session as `who`; return what it recorded."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    out: dict = {"versions": set(), "sessions": set()}  # what crossed the wire: which era was spoken

    async def on_request(request):
        out["versions"].add(request.headers.get("mcp-protocol-version"))

    async def on_response(response):
        out["sessions"].add(response.headers.get("mcp-session-id"))

    hooks = {"request": [on_request], "response": [on_response]}
    async with httpx2.AsyncClient(headers={"X-Api-Key": KEYS[who]}, event_hooks=hooks) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
            await steps(client, out)
    return out


async def _refused(coro) -> dict:
    from mcp.shared.exceptions import MCPError

    try:
        await coro
    except MCPError as exc:
        return {"code": exc.code, "message": exc.message, "data": exc.data}
    return {}


@pytest.mark.parametrize("mode", MODES)
def test_sdk2_support_masked_results_refusal_in_band(gw, srv, mode):
    """support: full list; lookup and the SSE report masked; a delete outside `test-` is a clean
    MCPError and the same session then deletes `test-…`."""
    async def steps(client, out):
        r = await client.call_tool("lookup_customer", {"id": "c-1"})
        out["lookup"] = (r.structured_content, r.content[0].text)
        progress = []

        async def on_progress(p, total, message):
            progress.append(message)
        r = await client.call_tool("stream_report", {"id": "c-2"}, progress_callback=on_progress)
        out["report"], out["progress"] = (r.structured_content, r.content[0].text), progress
        out["refused"] = await _refused(client.call_tool("delete_customer", {"id": "prod-1"}))
        out["after"] = (await client.call_tool("delete_customer", {"id": "test-1"})).structured_content

    before = len(srv.log())
    out = asyncio.run(_sdk2_session(f"{gw.url}/mcp", "support", mode, steps))
    assert_era(out, mode)
    assert out["tools"] == ALL_TOOLS
    assert_masked(*out["lookup"], customer="c-1")
    assert out["progress"] == ["halfway"]  # the notification came through: the answer was SSE
    assert_masked(*out["report"], customer="c-2")
    assert out["refused"]["code"] == -31001 and out["refused"]["data"]["error"] == "denied", out["refused"]
    assert out["after"] == {"deleted": "test-1"}
    assert new_calls(srv, before) == [("lookup_customer", "c-1"), ("stream_report", "c-2"),
                                      ("delete_customer", "test-1")]


@pytest.mark.parametrize("mode", MODES)
def test_sdk2_intern_sees_one_tool_and_delete_is_unknown(gw, srv, mode):
    """intern: only lookup is listed; delete is answered like an unknown tool; the session goes on."""
    async def steps(client, out):
        out["refused"] = await _refused(client.call_tool("delete_customer", {"id": "test-2"}))
        r = await client.call_tool("lookup_customer", {"id": "c-3"})
        out["after"] = (r.structured_content, r.content[0].text)

    before = len(srv.log())
    out = asyncio.run(_sdk2_session(f"{gw.url}/mcp", "intern", mode, steps))
    assert_era(out, mode)
    assert out["tools"] == ["lookup_customer"]
    assert out["refused"]["code"] == -32602 and "delete_customer" in out["refused"]["message"], out["refused"]
    assert_masked(*out["after"], customer="c-3")
    assert new_calls(srv, before) == [("lookup_customer", "c-3")]


# --- raw HTTP: what no well-behaved client sends ----------------------------------------------------

def _post(gw, who: str, body: dict, **headers) -> httpx.Response:
    return httpx.post(f"{gw.url}/mcp", json=body, timeout=20,
                      headers={"X-Api-Key": KEYS[who], "Accept": ACCEPT, **headers})


def test_session_opened_by_support_is_unknown_to_intern(gw, srv):
    """The SDK server would serve any holder of a session id; the gate binds it to its opener."""
    init = _post(gw, "support", {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
    assert init.status_code == 200, init.text
    sid = init.headers["mcp-session-id"]
    hdrs = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}
    assert _post(gw, "support", {"jsonrpc": "2.0", "method": "notifications/initialized"}, **hdrs).status_code == 202
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "lookup_customer", "arguments": {"id": "c-4"}}}  # a tool intern may call
    before = len(srv.log())
    assert _post(gw, "intern", call, **hdrs).status_code == 404
    assert new_calls(srv, before) == []
    own = _post(gw, "support", call, **hdrs)  # the session itself is fine for its owner
    assert own.status_code == 200 and PII["email"] not in own.text
    assert new_calls(srv, before) == [("lookup_customer", "c-4")]


def test_upstream_gets_its_own_host_not_the_callers(gw, srv):
    """The SDK server answers 421 to a Host outside its allow-list (127.0.0.1:*); the caller's
    public name for the gate must not reach it."""
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
    direct = httpx.post(srv.url, json=init, headers={"Accept": ACCEPT, "Host": "mcp.gate.example"})
    assert direct.status_code == 421  # the premise: the server does check
    via_gate = _post(gw, "support", init, Host="mcp.gate.example")
    assert via_gate.status_code == 200 and '"serverInfo"' in via_gate.text, via_gate.text


def test_stateless_mcp_name_disagreeing_with_body_never_reaches_the_server(gw, srv):
    """2026-07-28: body says delete_customer, Mcp-Name says lookup_customer: the gate answers 400/-32020."""
    def call(name_header: str) -> httpx.Response:
        body = {"jsonrpc": "2.0", "id": "s-1", "method": "tools/call",
                "params": {"name": "delete_customer", "arguments": {"id": "test-5"}, "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {}}}}
        return _post(gw, "support", body, **{"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call",
                                             "Mcp-Name": name_header})

    before = len(srv.log())
    lying = call("lookup_customer")
    assert lying.status_code == 400, lying.text
    assert lying.json()["id"] == "s-1" and lying.json()["error"]["code"] == -32020
    assert new_calls(srv, before) == [] and not forwarded(gw, lying)
    honest = call("delete_customer")  # the same request with an agreeing header is executed
    assert honest.status_code == 200 and honest.json()["result"]["structuredContent"] == {"deleted": "test-5"}
    assert forwarded(gw, honest)
    assert new_calls(srv, before) == [("delete_customer", "test-5")]


# --- SDK 1.x client (its own venv: mcp 1.x and 2.x cannot share one) ----------------------------

def _mcp1_python() -> Path:
    """The venv's python with `mcp>=1.20,<2`, built on first use (under a lock) and then reused."""
    python = MCP1_VENV / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m, mcp.client.streamable_http; "
             "assert m.version('mcp').startswith('1.')"]

    def ready() -> bool:
        return python.exists() and subprocess.run(probe, capture_output=True, timeout=120).returncode == 0

    MCP1_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{MCP1_VENV}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test sessions build it once
        if ready():
            return python
        started = time.monotonic()
        steps = [[sys.executable, "-m", "venv", "--clear", str(MCP1_VENV)],
                 [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "mcp>=1.20,<2"]]
        for step in steps:
            proc = subprocess.run(step, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                pytest.fail(f"cannot build the mcp 1.x venv at {MCP1_VENV} ({' '.join(step)}):\n"
                            f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}", pytrace=False)
        if not ready():
            pytest.fail(f"the mcp 1.x venv at {MCP1_VENV} was built but does not import mcp 1.x", pytrace=False)
        print(f"built the mcp 1.x venv at {MCP1_VENV} in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return python


@pytest.mark.timeout(900)  # the first run builds the venv (pip install from PyPI)
def test_sdk1_client_through_the_gate(gw, srv):
    """SDK 1.x raises on any non-2xx: masked lookup, a refusal as McpError, the same session goes on."""
    python = _mcp1_python()
    plan = [["lookup_customer", {"id": "c-6"}], ["delete_customer", {"id": "prod-6"}],
            ["delete_customer", {"id": "test-6"}]]
    before = len(srv.log())
    proc = subprocess.run([str(python), str(REPO_ROOT / "tests" / "support" / "sdk1_client.py"),
                           f"{gw.url}/mcp", json.dumps(plan)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MCP_API_KEY": KEYS["support"], "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    assert out["version"].startswith("1.") and sorted(out["tools"]) == ALL_TOOLS
    lookup, refused, after = out["calls"]
    assert_masked(lookup["structured"], lookup["text"], customer="c-6")
    assert refused["error"]["code"] == -31001, refused  # McpError, not a dropped session
    assert after["structured"] == {"deleted": "test-6"}
    assert new_calls(srv, before) == [("lookup_customer", "c-6"), ("delete_customer", "test-6")]
