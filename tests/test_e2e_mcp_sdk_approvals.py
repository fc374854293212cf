"""Approvals inside the MCP protocol, end to end: the official SDK 2.x client calling a real SDK
server through the gate, with a reviewer deciding over the admin socket.

Stateless era (2026-07-28): the gate answers `input_required` whose elicitation names the
approval; the SDK's own round-trip driver shows it to the "human" (the callback), retries with the
gate's sealed `requestState`, and the retry waits for the reviewer. Session era: the gate's own
`elicitation/create` on the held stream. In both, declining withdraws the caller's call and
accepting decides nothing: only a reviewer lets the call through.
"""
from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from support.gateway import Gateway, base_config
from support.sdk_server import SdkServer

KEY = "fgk_mcp-approvals-0123456789"


@pytest.fixture(scope="module")
def server():
    with SdkServer.start() as srv:
        yield srv


@pytest.fixture(scope="module")
def gw(server, tmp_path_factory):
    config = base_config(
        server.port,
        identity={"api_keys": [{"name": "support-bot", "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                                "groups": ["support"]}]},
        approvals={"reviewers": {"bob": ["leads"]}},
        upstreams={"sdk": {"url": f"http://127.0.0.1:{server.port}"}},
        functions=[{"name": f, "upstream": "sdk", "mcp": {"endpoint": "/mcp", "tool": f}}
                   for f in ("lookup_customer", "delete_customer")],
        rules=[{"id": "lookup", "functions": ["lookup_customer"], "groups": ["support"], "effect": "allow"},
               {"id": "deletes-need-a-lead", "functions": ["delete_customer"], "groups": ["support"],
                "effect": "approve", "approval": {"reviewers": ["leads"], "timeout": "20s", "mode": "hold"}}])
    gateway = Gateway.start(config, tmp_path_factory.mktemp("mcp-sdk-approvals"))
    yield gateway
    gateway.stop()




def delete_through_gate(gw, mode: str, customer: str, answer: str, decision: str | None) -> dict:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types import ElicitResult

    seen: dict = {}
    decided: dict = {}

    async def on_elicit(context, params):
        seen["message"] = params.message
        return ElicitResult(action=answer, content={} if answer == "accept" else None)

    async def drive() -> None:
        async with httpx2.AsyncClient(headers={"X-Api-Key": KEY}, timeout=30) as http:
            async with Client(streamable_http_client(f"{gw.url}/mcp", http_client=http), mode=mode,
                              elicitation_callback=on_elicit) as client:
                t = gw.decide_soon(f'"{customer}"', decision, seen=decided) if decision else None
                try:
                    seen["result"] = (await client.call_tool("delete_customer", {"id": customer})).structured_content
                except Exception as exc:  # the SDK raises MCPError for a JSON-RPC error answer
                    seen["error"] = f"{type(exc).__name__}: {exc}"
                if t is not None:
                    t.join(20)
                seen["after"] = (await client.call_tool("lookup_customer", {"id": "c-after"})).structured_content

    asyncio.run(drive())
    if "answer" in decided:
        seen["decided"] = decided["answer"][1]
    return seen


def executed(server, customer: str) -> int:
    return sum(1 for c in server.log() if c == {"tool": "delete_customer", "arguments": {"id": customer}})


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
def test_reviewer_approval_lets_the_call_run_once(gw, server, mode):
    customer = f"c-ok-{mode}"
    seen = delete_through_gate(gw, mode, customer, "accept", "approve")
    assert "ap_" in seen["message"] and "waiting for approval" in seen["message"]  # the human learns why
    assert seen["decided"]["state"] == "approved"
    era = gw.admin("sessions", "show", seen["decided"]["session"])[1]["mcp"]["era"]
    assert era == ("stateless" if mode == "2026-07-28" else "session")
    assert seen.get("result") == {"deleted": customer}, seen
    assert executed(server, customer) == 1
    assert seen["after"]["customer"] == "c-after"  # the client goes on working


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
def test_reviewer_denial_is_a_clean_error_and_nothing_runs(gw, server, mode):
    customer = f"c-no-{mode}"
    seen = delete_through_gate(gw, mode, customer, "accept", "deny")
    assert seen["error"].startswith("MCPError") and "denied" in seen["error"], seen
    assert executed(server, customer) == 0
    assert seen["after"]["customer"] == "c-after"


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy"])
def test_caller_declining_withdraws_its_own_call(gw, server, mode):
    customer = f"c-decline-{mode}"
    seen = delete_through_gate(gw, mode, customer, "decline", None)
    assert seen["error"].startswith("MCPError") and "withdrawn by the caller" in seen["error"], seen
    assert executed(server, customer) == 0
    ours = [a for a in gw.admin("approvals", "list")[1] or []
            if f'"{customer}"' in ((a.get("summary") or {}).get("body") or "")]
    deadline = time.monotonic() + 5
    while ours and ours[0]["state"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.1)
        ours = [a for a in gw.admin("approvals", "list")[1] or []
                if f'"{customer}"' in ((a.get("summary") or {}).get("body") or "")]
    assert [a["state"] for a in ours] == ["withdrawn"]
