"""Redaction through a real gateway: declared fields and PII masked toward the upstream and toward the
caller, streamed and re-framed, a 5 MB answer with bounded memory, and a body that lies about being
JSON refused rather than passed through unscanned. (SSE, NDJSON and gzip framing are covered
sans-IO in test_redact.py.)"""
from __future__ import annotations

import json

import httpx
import pytest

from support.gateway import base_config

CARD = "4111 1111 1111 1111"
SSN = "123-45-6789"
EMAIL = "jane.doe@example.com"


@pytest.fixture(scope="module")
def gw(upstream_server, tmp_path_factory):
    from support.gateway import Gateway

    functions = [
        {"name": "pay", "upstream": "up", "http": {"method": "POST", "path": "/echo/{x}"},
         "redact": {"request": ["$.card.number"], "response": ["$..ssn"]}},
        {"name": "plain", "upstream": "up", "http": {"method": "GET", "path": "/items/{item_id}"}},
        {"name": "echo_raw", "upstream": "up", "http": {"method": "POST", "path": "/echo/{x}/raw"}},
        {"name": "chunked", "upstream": "up", "http": {"method": "GET", "path": "/chunked/{x}"}},
    ]
    config = base_config(upstream_server.port, functions=functions, limits={"max_body_bytes": "8MiB"},
                         pii={"detectors": ["email", "credit_card", "us_ssn", "secret_token"],
                              "scan": ["response"]})
    gateway = Gateway.start(config, tmp_path_factory.mktemp("redact"))
    yield gateway
    gateway.stop()


def test_request_field_masked_before_forwarding(gw, upstream):
    body = json.dumps({"card": {"number": CARD, "cvc": "123"}, "ssn": SSN, "note": EMAIL}).encode()
    r = httpx.post(f"{gw.url}/echo/1", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    sent = upstream.requests[-1].body
    assert CARD.encode() not in sent and json.loads(sent)["card"]["cvc"] == "123"
    # the answer echoes what the upstream got; the response side masks the rest
    assert SSN not in r.text and EMAIL not in r.text and CARD not in r.text
    answer = r.json()
    assert answer["card"]["cvc"] == "123"
    assert "REDACTED" in answer["ssn"] and "REDACTED" in answer["note"]


def test_response_masked_when_split_across_chunks(gw, upstream):
    """The JSON tokenizer holds back only an incomplete token: a value split by chunking is still caught."""
    doc = {"items": [{"ssn": SSN, "contact": EMAIL, "id": i} for i in range(200)]}
    body = json.dumps(doc).encode()
    r = httpx.post(f"{gw.url}/echo/2", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert r.headers.get("transfer-encoding") == "chunked"  # re-framed: masking changes the length
    out = r.json()
    assert len(out["items"]) == 200 and all(SSN not in json.dumps(it) for it in out["items"])
    assert EMAIL not in r.text


def test_request_that_is_not_json_refused(gw, upstream):
    r = httpx.post(f"{gw.url}/echo/3", content=b'{"card": {"number": "' + CARD.encode() + b'"}, oops',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and CARD not in r.text
    assert not upstream.requests


def test_response_that_is_not_json_fails_closed(gw, upstream):
    """issue 5: a body that claims JSON but is not is never passed through unscanned."""
    r = httpx.post(f"{gw.url}/echo/3/raw", content=b'{"ssn": "' + SSN.encode() + b'", oops',
                   headers={"content-type": "application/json"})
    assert SSN not in r.text
    assert r.status_code == 502
    assert r.json()["error"] == "upstream_unavailable"


def test_accept_encoding_not_forwarded_for_masked_functions(gw, upstream):
    httpx.post(f"{gw.url}/echo/4", content=b'{"a": 1}', headers={"content-type": "application/json",
                                                                 "accept-encoding": "gzip"})
    assert upstream.requests[-1].header("accept-encoding") is None


def test_pii_scan_applies_to_every_function(gw, upstream):
    """pii.scan: [response] covers functions without their own selectors; clean answers arrive intact."""
    r = httpx.get(f"{gw.url}/items/A1")
    assert r.status_code == 200 and r.json()["ok"] is True


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_5mb_streamed_answer_masked_with_bounded_memory(gw, upstream):
    """issue 5: a 5 MB streamed response through the gateway grows its RSS by under 20 MB."""
    row = b'{"id": %d, "contact": "' + EMAIL.encode() + b'", "pad": "' + b"x" * 200 + b'"}'
    body = b'{"rows": [' + b",".join(row % i for i in range(20000)) + b"]}"
    assert len(body) > 5_000_000
    httpx.post(f"{gw.url}/echo/warm/raw", content=b'{"a": 1}', headers={"content-type": "application/json"})
    before = _rss_kb(gw.proc.pid)
    with httpx.stream("POST", f"{gw.url}/echo/big/raw", content=body,
                      headers={"content-type": "application/json"}, timeout=60) as r:
        assert r.status_code == 200
        out = b"".join(r.iter_bytes())
    growth_mb = (_rss_kb(gw.proc.pid) - before) / 1024
    assert EMAIL.encode() not in out and out.count(b"[REDACTED:email]") == 20000
    assert len(json.loads(out)["rows"]) == 20000
    print(f"gateway RSS growth for a 5 MB masked stream: {growth_mb:.1f} MB")
    assert growth_mb < 20, growth_mb


def test_mask_formats_from_config_keep_last4_and_correlate_by_keyed_hash():
    """pii.mask may keep the last four characters and add a keyed hash, so equal values can be
    correlated across records without being revealed (pii.hash_key keeps tokens stable)."""
    from fastgate.config import parse_config
    from fastgate.redaction import Redactor

    config = parse_config({"version": 1, "pii": {"detectors": ["credit_card"], "scan": ["response"],
                                                 "mask": "[{type}:{last4}:{hash}]", "hash_key": "${env:K}"}},
                          env={"K": "correlation-key-123"})
    key = config.pii.hash_key.get_secret_value().encode()
    out = []
    for k in (key, key, b"another-key"):
        stream = Redactor.build([], ["credit_card"], config.pii.mask, hash_key=k).stream("application/json")
        out.append(json.loads(stream.feed(b'{"a": "4111 1111 1111 1111"}') + stream.close())["a"])
    assert out[0] == out[1] and out[0].startswith("[credit_card:1111:") and out[2] != out[0]
    assert "4111" not in out[0]
