"""Policy through a real gateway: who may call what with which arguments, and what reached the upstream.

Decisions are checked at the socket (status, rule id, request id) and at the upstream (a refused call
never arrives; an allowed one arrives with exactly the bytes the policy judged).
"""
from __future__ import annotations

import hashlib

import httpx
import pytest

from support.gateway import base_config

KEYS = {"support": "fgk_support-0123456789abcdef", "intern": "fgk_intern-0123456789abcdef",
        "lead": "fgk_lead-0123456789abcdefgh", "nogroup": "fgk_nogroup-0123456789abcd"}
GROUPS = {"support": ["support"], "intern": ["interns", "support"], "lead": ["finance-leads"], "nogroup": []}

RULES = [
    {"id": "support-small-refunds", "functions": ["refund"], "groups": ["support"],
     "when": [{"arg": "$.amount", "op": "<=", "value": 100}], "effect": "allow"},
    {"id": "support-large-refunds", "functions": ["refund"], "groups": ["support"],
     "when": [{"arg": "$.amount", "op": ">", "value": 100}], "effect": "approve",
     "approval": {"reviewers": ["finance-leads"], "mode": "async"}},
    {"id": "no-blocked-currency", "functions": ["refund"],
     "when": [{"arg": "$.currency", "op": "in", "value": ["XXX", "BTC"]}], "effect": "deny"},
    {"id": "orders-by-region", "functions": ["get_order"], "authenticated": True,
     "when": [{"param": "order_id", "op": "prefix", "value": "EU-"},
              {"query": "view", "op": "in", "value": ["summary", "full"]}], "effect": "allow"},
    {"id": "leads-read-anything", "functions": ["get_*"], "groups": ["finance-leads"], "effect": "allow"},
    {"id": "no-interns", "functions": ["*"], "groups": ["interns"], "effect": "deny"},
]
FUNCTIONS = [
    {"name": "refund", "upstream": "up", "http": {"method": "POST", "path": "/refunds/{order_id}"}},
    {"name": "get_order", "upstream": "up", "http": {"method": "GET", "path": "/orders/{order_id}"}},
]


@pytest.fixture(scope="module")
def gw(upstream_server, tmp_path_factory):
    from support.gateway import Gateway

    config = base_config(upstream_server.port, rules=RULES, functions=FUNCTIONS, identity={"api_keys": [
        {"name": f"{who}-bot", "sha256": hashlib.sha256(key.encode()).hexdigest(), "groups": GROUPS[who]}
        for who, key in KEYS.items()]})
    gateway = Gateway.start(config, tmp_path_factory.mktemp("policy"))
    yield gateway
    gateway.stop()


def call(gw, who: str | None, method: str, path: str, body: bytes | None = None, **headers) -> httpx.Response:
    if who:
        headers["X-Api-Key"] = KEYS[who]
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    return httpx.request(method, f"{gw.url}{path}", content=body, headers=headers)


def denied(r: httpx.Response, rule: str | None) -> None:
    assert r.status_code == 403, r.text
    assert r.json() == {"error": "denied", "rule": rule, "request_id": r.headers["x-request-id"]} or \
        (r.json()["error"] == "denied" and r.json()["rule"] == rule)


@pytest.mark.parametrize("amount,status,rule", [
    (100, 200, None), (99.5, 200, None), (0, 200, None), (-1, 200, None),
    (101, 202, "support-large-refunds"), (100.0001, 202, "support-large-refunds"),
])
def test_amount_condition_both_sides(gw, upstream, amount, status, rule):
    body = b'{"amount": %s, "currency": "EUR"}' % str(amount).encode()
    r = call(gw, "support", "POST", "/refunds/A1", body)
    assert r.status_code == status, r.text
    if status == 200:
        assert upstream.requests[-1].body == body  # exactly the bytes the policy judged
    else:  # the approve rule: an async approval is pending, nothing forwarded
        assert r.json()["status"] == "pending" and r.json()["approval_id"]
        assert not upstream.requests


@pytest.mark.parametrize("body,why", [
    (b'{"amount": "100"}', "string is not a number"),
    (b'{"amount": [1]}', "array is not a number"),
    (b'{"amount": {"v": 1}}', "object is not a number"),
    (b'{"amount": true}', "bool is not a number"),
    (b'{"amount": null}', "null is not a number"),
    (b'{"amount": 1e400}', "not finite"),
    (b'{"currency": "EUR"}', "missing argument"),
])
def test_type_confusion_never_allows(gw, upstream, body, why):
    r = call(gw, "support", "POST", "/refunds/A1", body)
    assert r.status_code in (400, 403), (why, r.text)
    assert not upstream.requests


@pytest.mark.parametrize("body", [
    b'{"amount": 5, "amount": 500}',            # duplicate keys: which one would the upstream use?
    b'{"amount": 5, "\\u0061mount": 500}',      # the same key, escaped
    b'[{"amount": 5}]',                          # not an object
    b'{"amount": 5',                             # invalid
    b'\xef\xbb\xbf{"amount": 5}',                # BOM
    b'{"amount": NaN}',
    b'{"a":' * 200 + b'1' + b'}' * 200,          # depth bomb
])
def test_ambiguous_arguments_refused_before_forwarding(gw, upstream, body):
    """threats.md §4: the gate and the function must read the same arguments, or refuse."""
    r = call(gw, "support", "POST", "/refunds/A1", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_request"
    assert not upstream.requests


def test_deny_wins_over_allow(gw, upstream):
    r = call(gw, "support", "POST", "/refunds/A1", b'{"amount": 5, "currency": "BTC"}')
    denied(r, "no-blocked-currency")
    denied(call(gw, "intern", "POST", "/refunds/A1", b'{"amount": 5, "currency": "EUR"}'), "no-interns")
    assert not upstream.requests


def test_missing_argument_matches_a_deny_rule(gw, upstream):
    """Fail closed: a deny condition that cannot be evaluated (here: no currency) counts as met."""
    denied(call(gw, "support", "POST", "/refunds/A1", b'{"amount": 5}'), "no-blocked-currency")
    assert not upstream.requests


def test_no_matching_rule_denies_with_null_rule(gw, upstream):
    denied(call(gw, "nogroup", "POST", "/refunds/A1", b'{"amount": 5, "currency": "EUR"}'), None)
    assert not upstream.requests


def test_path_and_query_conditions(gw, upstream):
    assert call(gw, "support", "GET", "/orders/EU-1?view=summary").status_code == 200
    assert upstream.requests[-1].target == "/orders/EU-1?view=summary"
    denied(call(gw, "support", "GET", "/orders/US-1?view=summary"), None)
    denied(call(gw, "support", "GET", "/orders/EU-1?view=secret"), None)
    denied(call(gw, "support", "GET", "/orders/EU-1"), None)
    # a repeated key must not let one good value carry a bad one past an allow rule
    denied(call(gw, "support", "GET", "/orders/EU-1?view=summary&view=secret"), None)
    # the param is judged after normalization: the upstream gets the same path
    assert call(gw, "support", "GET", "/orders/./EU-2?view=full").status_code == 200
    assert upstream.requests[-1].target == "/orders/EU-2?view=full"


def test_globs_and_groups(gw, upstream):
    assert call(gw, "lead", "GET", "/orders/US-9").status_code == 200
    denied(call(gw, "lead", "POST", "/refunds/A1", b'{"amount": 1, "currency": "EUR"}'), None)


def test_method_override_cannot_turn_a_read_into_a_write(gw, upstream):
    r = call(gw, "lead", "GET", "/orders/US-9", **{"X-HTTP-Method-Override": "POST"})
    assert r.status_code == 400
    assert not upstream.requests


def test_decision_and_rule_in_access_log(gw, upstream):
    r = call(gw, "intern", "GET", "/orders/EU-1?view=full")
    rid = r.headers["x-request-id"]
    import json
    import time

    deadline = time.monotonic() + 5
    while rid not in gw.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [json.loads(ln) for ln in gw.stderr_text().splitlines() if rid in ln]
    assert lines and lines[-1]["decision"] == "deny" and lines[-1]["rule"] == "no-interns"
    assert lines[-1]["subject"] == "intern-bot"


def test_check_warns_about_unreachable_functions_and_dead_rules(tmp_path, upstream):
    import os
    import subprocess
    import sys

    import yaml

    from support.gateway import REPO_ROOT

    config = base_config(upstream.port, functions=FUNCTIONS, rules=[
        {"id": "never", "functions": ["refund"], "effect": "allow",
         "when": [{"arg": "$.amount", "op": "<=", "value": 1}, {"arg": "$.amount", "op": ">", "value": 5}]}])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "fastgate", "check", "-c", str(path)], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "UP_TOKEN": "t"})
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stdout and "never" in proc.stdout and "get_order" in proc.stdout


def test_client_gone_mid_body_leaves_no_waiting_call(gw, upstream):
    """A call buffering its arguments whose client half-closes is dropped, and the gateway goes on."""
    import socket

    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", gw.port))
        sock.sendall(b"POST /refunds/A1 HTTP/1.1\r\nHost: gw\r\nX-Api-Key: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"amount\": 1" % KEYS["support"].encode())
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        # the half-closed client may still read: a 400 for the truncated body, then the close
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer
        sock.close()
    assert not upstream.requests
    assert call(gw, "support", "POST", "/refunds/A2", b'{"amount": 5, "currency": "EUR"}').status_code == 200
