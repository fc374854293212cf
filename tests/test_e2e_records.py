"""Session records through a real gateway: written ahead, merged, verified, exported, never holding a
credential, refusing calls (503) when they cannot be written, and surviving kill -9 under load."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time

import httpx

from support.gateway import Gateway, base_config

KEY = "fgk_records-test-key-0123456789"
CALLER_SECRET = "caller-cookie-canary-77"




def records_config(upstream_port: int, **extra) -> dict:
    return base_config(
        upstream_port,
        identity={"api_keys": [{"name": "rec-bot", "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                                "groups": ["support"]}]},
        functions=[{"name": "pay", "upstream": "up", "http": {"method": "POST", "path": "/echo/{x}"},
                    "redact": {"request": ["$.card"]}},
                   {"name": "get_item", "upstream": "up", "http": {"method": "GET", "path": "/items/{item_id}"}}],
        rules=[{"id": "support-all", "functions": ["*"], "groups": ["support"], "effect": "allow"}],
        pii={"detectors": ["email", "credit_card"], "scan": ["response", "audit"]},
        **extra)


def test_session_is_written_ahead_merged_and_verified(upstream, gateway_factory):
    gw = gateway_factory(records_config(upstream.port))
    r = httpx.post(f"{gw.url}/echo/1", content=b'{"card": "4111 1111 1111 1111", "note": "a@b.example"}',
                   headers={"X-Api-Key": KEY, "Cookie": CALLER_SECRET, "content-type": "application/json"})
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    refused = httpx.get(f"{gw.url}/items/A1")  # no credentials: a call.refused record
    time.sleep(0.3)  # call.finished is written after the answer
    code, session = gw.admin("sessions", "show", rid)
    assert code == 0, session
    assert session["id"] == rid and session["function"] == "pay" and session["decision"] == "allow"
    assert session["caller"] == {"subject": "rec-bot", "groups": ["support"], "auth": "api_key"}
    assert [e["type"] for e in session["events"]] == ["call.started", "call.finished"]
    assert session["response"]["status"] == 200
    text = json.dumps(session)
    assert "4111 1111 1111 1111" not in text and "a@b.example" not in text
    code, other = gw.admin("sessions", "show", refused.headers["x-request-id"])
    assert code == 0 and other["events"][0]["type"] == "call.refused"
    code, verdict = gw.admin("sessions", "verify")
    assert code == 0 and verdict["ok"] is True and verdict["events"] >= 3
    code, listed = gw.admin("sessions", "list", "--function", "pay")
    assert code == 0 and [s["id"] for s in listed] == [rid]


def test_no_credential_reaches_the_store_or_the_export(upstream, gateway_factory):
    gw = gateway_factory(records_config(upstream.port))
    for i in range(5):
        httpx.post(f"{gw.url}/echo/{i}", content=b'{"a": 1}',
                   headers={"X-Api-Key": KEY, "Cookie": CALLER_SECRET, "content-type": "application/json"})
    httpx.get(f"{gw.url}/items/A1", headers={"Authorization": f"Bearer {KEY}"})
    gw.stop()  # drains: the export is flushed
    blobs = [p.read_bytes() for p in (gw.workdir / "var").rglob("*") if p.is_file()]
    assert blobs
    for canary in (KEY, CALLER_SECRET, "tok-upstream-canary", "s3cr3t-injected"):
        assert not any(canary.encode() in b for b in blobs), canary
    exported = [json.loads(line) for p in (gw.workdir / "var" / "audit").glob("events-*.jsonl")
                for line in p.read_text().splitlines()]
    assert len(exported) >= 11 and [e["seq"] for e in exported] == sorted(e["seq"] for e in exported)


def test_full_store_refuses_calls_with_503_and_nothing_is_forwarded(upstream, gateway_factory):
    gw = gateway_factory(records_config(upstream.port, store={"map_size": "256KiB"},
                                        audit={"max_body_bytes": "64KiB"}))
    big = json.dumps({"pad": "x" * 40000}).encode()
    statuses = []
    for i in range(40):
        r = httpx.post(f"{gw.url}/echo/{i}", content=big,
                       headers={"X-Api-Key": KEY, "content-type": "application/json"})
        statuses.append(r.status_code)
        if r.status_code == 503:
            assert r.json()["error"] == "unavailable"
            break
    assert statuses[-1] == 503, statuses
    forwarded = len(upstream.requests)
    assert forwarded == len(statuses) - 1  # the refused call never reached the function
    assert gw.alive()


def test_kill_9_under_load_loses_no_acknowledged_call(upstream, tmp_path):
    """threats.md §6: every call that got an answer has its call.started; the chain verifies."""
    store = tmp_path / "shared"  # every restart opens the same store and export
    config = records_config(upstream.port, store={"path": str(store / "fastgate.lmdb")},
                            audit={"export_dir": str(store / "audit")})
    for round_ in range(2):
        gw = Gateway.start(config, tmp_path)
        answered: list[str] = []
        stop = threading.Event()

        def load():
            with httpx.Client(timeout=5) as client:
                while not stop.is_set():
                    try:
                        r = client.get(f"{gw.url}/items/A1", headers={"X-Api-Key": KEY})
                    except httpx.HTTPError:
                        return
                    if r.status_code == 200:
                        answered.append(r.headers["x-request-id"])

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        os.kill(gw.proc.pid, signal.SIGKILL)
        gw.proc.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
        assert answered, "no call was answered before the kill"
        gw = Gateway.start(config, tmp_path)
        try:
            code, verdict = gw.admin("sessions", "verify")
            assert code == 0 and verdict["ok"] is True, verdict
            for rid in answered[-20:] + answered[:5]:
                code, session = gw.admin("sessions", "show", rid)
                assert code == 0, (round_, rid, session)
                assert session["events"][0]["type"] == "call.started"
        finally:
            gw.stop()
        assert (store / "fastgate.lmdb").exists()  # the next round appends to the same store
