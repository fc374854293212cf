"""Approvals through a real gateway and the admin CLI: a held call waits for a reviewer, an async
call is redeemed once by the same caller with the same request, and reviewers are who the rule says."""
from __future__ import annotations

import hashlib
import json
import threading
import time

import httpx
import pytest

from support.gateway import Gateway, base_config

KEYS = {"alice": "fgk_alice-approvals-0123456789", "carol": "fgk_carol-approvals-0123456789"}




@pytest.fixture(scope="module")
def gw(upstream_server, tmp_path_factory):
    config = base_config(
        upstream_server.port,
        identity={"api_keys": [{"name": name, "sha256": hashlib.sha256(k.encode()).hexdigest(), "groups": ["support"]}
                               for name, k in KEYS.items()]},
        approvals={"reviewers": {"bob": ["finance-leads"], "alice": ["finance-leads"], "dave": ["finance-leads"]}},
        functions=[{"name": "refund", "upstream": "up", "http": {"method": "POST", "path": "/echo/{order_id}"}},
                   {"name": "wire", "upstream": "up", "http": {"method": "POST", "path": "/items"}}],
        rules=[{"id": "refunds-need-a-lead", "functions": ["refund"], "groups": ["support"], "effect": "approve",
                "approval": {"reviewers": ["finance-leads"], "timeout": "3s", "mode": "hold"}},
               {"id": "wires-need-two", "functions": ["wire"], "groups": ["support"], "effect": "approve",
                "approval": {"reviewers": ["finance-leads", "user:erin"], "quorum": 2, "timeout": "20s",
                             "mode": "async"}}])
    gateway = Gateway.start(config, tmp_path_factory.mktemp("approvals"))
    yield gateway
    gateway.stop()


def pending_id(gw: Gateway, function: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        code, items = gw.admin("approvals", "list")
        assert code == 0, items
        ids = [a["id"] for a in items if a["function"] == function and a["state"] == "pending"]
        if ids:
            return ids[0]
        time.sleep(0.1)
    raise AssertionError("no pending approval appeared")


def held_call(gw, who: str, body: bytes, out: dict) -> threading.Thread:
    def run():
        out["r"] = httpx.post(f"{gw.url}/echo/A1", content=body, timeout=30,
                              headers={"X-Api-Key": KEYS[who], "content-type": "application/json"})
    t = threading.Thread(target=run)
    t.start()
    return t


def test_hold_approved_by_a_lead_is_forwarded(gw, upstream):
    out: dict = {}
    t = held_call(gw, "alice", b'{"amount": 500}', out)
    aid = pending_id(gw, "refund")
    assert not upstream.requests  # nothing reaches the function while it waits
    code, err = gw.admin("approvals", "approve", aid, "--reviewer", "alice")
    assert code == 1 and err["code"] == "forbidden"  # alice cannot approve her own call
    code, err = gw.admin("approvals", "approve", aid, "--reviewer", "mallory")
    assert code == 1 and err["code"] == "forbidden"  # not a reviewer of this rule
    code, view = gw.admin("approvals", "approve", aid, "--reviewer", "bob", "--comment", "ok")
    assert code == 0, view
    t.join(15)
    assert out["r"].status_code == 200 and upstream.requests[-1].body == b'{"amount": 500}'
    time.sleep(0.3)
    code, session = gw.admin("sessions", "show", out["r"].headers["x-request-id"])
    types = [e["type"] for e in session["events"]]
    assert types[:3] == ["approval.requested", "approval.decided", "call.started"] and types[-1] == "call.finished"


def test_hold_denied_and_expired(gw, upstream):
    out: dict = {}
    t = held_call(gw, "carol", b'{"amount": 9}', out)
    aid = pending_id(gw, "refund")
    assert gw.admin("approvals", "deny", aid, "--reviewer", "bob", "--reason", "no")[0] == 0
    t.join(15)
    assert out["r"].status_code == 403 and out["r"].json()["error"] == "approval_denied"
    out2: dict = {}
    t2 = held_call(gw, "carol", b'{"amount": 10}', out2)
    t2.join(15)  # nobody decides: the rule's 3 s timeout
    assert out2["r"].status_code == 403 and out2["r"].json()["error"] == "approval_expired"
    assert not upstream.requests


def test_async_quorum_redeem_once_same_caller_same_request(gw, upstream):
    body = b'{"to": "DE89370400440532013000", "amount": 10}'
    headers = {"X-Api-Key": KEYS["carol"], "content-type": "application/json"}
    r = httpx.post(f"{gw.url}/items", content=body, headers=headers)
    assert r.status_code == 202 and int(r.headers["retry-after"]) >= 1
    aid = r.json()["approval_id"]
    retry = {**headers, "Fastgate-Approval": aid}
    assert httpx.post(f"{gw.url}/items", content=body, headers=retry).status_code == 202  # still pending
    assert gw.admin("approvals", "approve", aid, "--reviewer", "bob")[0] == 0
    assert gw.admin("approvals", "approve", aid, "--reviewer", "bob")[0] == 0  # counted once
    assert httpx.post(f"{gw.url}/items", content=body, headers=retry).status_code == 202
    assert gw.admin("approvals", "approve", aid, "--reviewer", "dave")[0] == 0  # quorum of 2
    changed = httpx.post(f"{gw.url}/items", content=body.replace(b"10", b"99"), headers=retry)
    assert changed.status_code == 403 and changed.json()["error"] == "approval_denied"
    other = httpx.post(f"{gw.url}/items", content=body, headers={**retry, "X-Api-Key": KEYS["alice"]})
    assert other.status_code == 403
    assert not upstream.requests
    ok = httpx.post(f"{gw.url}/items", content=body, headers=retry)
    assert ok.status_code == 200 and upstream.requests[-1].body == body
    again = httpx.post(f"{gw.url}/items", content=body, headers=retry)
    assert again.status_code == 403 and again.json()["error"] == "approval_denied"
    assert len(upstream.requests) == 1


def test_caller_disconnect_withdraws_the_approval(gw, upstream):
    import socket

    body = b'{"amount": 7}'
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(b"POST /echo/A9 HTTP/1.1\r\nHost: gw\r\nX-Api-Key: %s\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (KEYS["carol"].encode(), len(body), body))
    aid = pending_id(gw, "refund")
    sock.close()
    deadline = time.monotonic() + 10
    state = None
    while time.monotonic() < deadline:
        state = gw.admin("approvals", "show", aid)[1]["state"]
        if state == "withdrawn":
            break
        time.sleep(0.1)
    assert state == "withdrawn"
    assert not upstream.requests


def test_decision_reaches_a_call_held_in_another_worker(upstream, gateway_factory):
    """The admin socket lives in worker 0; a held call in worker 1 is woken through the shared store."""
    config = base_config(
        upstream.port, workers=2,
        identity={"api_keys": [{"name": "carol", "sha256": hashlib.sha256(KEYS["carol"].encode()).hexdigest(),
                                "groups": ["support"]}]},
        approvals={"reviewers": {"bob": ["finance-leads"]}},
        functions=[{"name": "refund", "upstream": "up", "http": {"method": "POST", "path": "/echo/{order_id}"}}],
        rules=[{"id": "r", "functions": ["refund"], "groups": ["support"], "effect": "approve",
                "approval": {"reviewers": ["finance-leads"], "timeout": "20s"}}])
    gw = gateway_factory(config)
    workers: set = set()
    for _ in range(20):  # until a call was held by worker 1, which does not serve the admin socket
        out: dict = {}
        t = held_call(gw, "carol", b'{"amount": 1}', out)
        aid = pending_id(gw, "refund")
        started = time.monotonic()
        assert gw.admin("approvals", "approve", aid, "--reviewer", "bob")[0] == 0
        t.join(15)
        assert out["r"].status_code == 200, out["r"].text
        assert time.monotonic() - started < 5
        rid = out["r"].headers["x-request-id"]
        deadline = time.monotonic() + 5
        while rid not in gw.stderr_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        for line in gw.stderr_text().splitlines():
            if rid in line and '"access"' in line:
                workers.add(json.loads(line).get("worker"))
        if 1 in workers:
            break
    assert 1 in workers


def test_session_view_counts_votes_against_the_quorum():
    from fastgate import records

    events = [records.approval_requested("s", approval_id="ap_1", rule="r", reviewers=["g"], quorum=2),
              records.approval_decided("s", approval_id="ap_1", outcome="approved", reviewer="bob")]
    assert records.merge_session(events)["approval"]["status"] == "pending"
    events.append(records.approval_decided("s", approval_id="ap_1", outcome="approved", reviewer="bob"))
    assert records.merge_session(events)["approval"]["status"] == "pending"  # the same reviewer twice
    events.append(records.approval_decided("s", approval_id="ap_1", outcome="approved", reviewer="dave"))
    assert records.merge_session(events)["approval"]["status"] == "approved"
    events.append(records.approval_decided("s", approval_id="ap_1", outcome="denied", reviewer="erin"))
    assert records.merge_session(events)["approval"]["status"] == "approved"  # the first decisive event wins
    events.append(records.approval_decided("s", approval_id="ap_1", outcome="used"))
    assert records.merge_session(events)["approval"]["status"] == "used"
