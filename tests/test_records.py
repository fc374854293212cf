"""Session records: canonical sealing, the credential guard, views, tamper detection, export files.

Real LMDB environments in temp dirs; tampering is done the way an attacker with file access would
(bytes flipped in data.mdb, keys deleted or swapped, the tail cut with the head rewritten).
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgate import records
from fastgate.ids import new_request_id
from fastgate.records import Exporter, Guard
from fastgate.store import Appender, Store, _seq_key

CALLER = {"subject": "alice", "groups": ["support"], "auth": "jwt"}


def started(sid: str, *, body: bytes = b'{"amount": 5}', subject: str = "alice", function: str = "refund",
            decision: str = "allow", headers=None, guard: Guard | None = None, **kw) -> dict:
    return records.call_started(
        sid, caller={**CALLER, "subject": subject}, function=function, decision=decision, rule="r1",
        method="POST", path="/refunds/A1", headers=headers or [(b"content-type", b"application/json")],
        body=body, max_body_bytes=1024, guard=guard or Guard(), **kw)


def finished(sid: str, *, status: int = 200, body: bytes = b'{"ok": true}', **kw) -> dict:
    return records.call_finished(sid, status=status, headers={"content-type": "application/json"},
                                 body=body, max_body_bytes=1024, gateway_ms=0.31, upstream_ms=4.2, **kw)


def append_all(store: Store, events: list[dict], **kw) -> list:
    async def run() -> list:
        app = Appender(store, **kw).start()
        try:
            return [await app.append(e) for e in events]
        finally:
            await app.close()
    return asyncio.run(run())


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "db", map_size=2**24, durability="batch")
    yield s
    s.close()


_NOW = new_request_id()[:10]   # ULID time part: list --since stops at ids minted long before


def sid(i: int) -> str:
    return f"{_NOW}{i:016d}"


# --------------------------------------------------------------------------- canonical sealing

_scalar = st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=20) | \
    st.floats(allow_nan=False, allow_infinity=False)
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)
_names = st.sampled_from(["aaa", "caller", "function", "hash_x", "hat", "other", "path", "pre", "prev_x",
                          "rule", "se", "seq_", "session_x", "status", "z", "zz_top"])


@settings(max_examples=150, deadline=None)
@given(extra=st.dictionaries(_names, _json, max_size=8), seq=st.integers(1, 2**40),
       prev=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64))
def test_seal_is_canonical_encoding_with_the_right_hash(extra, seq, prev):
    event = {**extra, "type": "call.started", "session": "S1", "ts": records.now_ts()}
    stored, digest = records.seal(records.prepare(event), seq, prev)
    full = {**event, "seq": seq, "prev": prev}
    assert digest == hashlib.sha256(records.canonical(full)).hexdigest()
    assert stored == records.canonical({**full, "hash": digest})
    assert records.event_hash(orjson.loads(stored)) == digest


@pytest.mark.parametrize("bad", [
    {"type": "call.nope", "session": "S", "ts": "t"},
    {"type": "call.started", "session": "", "ts": "t"},
    {"type": "call.started", "session": "a\x00b", "ts": "t"},
    {"type": "call.started", "session": "S", "ts": "t", "seq": 3},
    {"type": "call.started", "session": "S", "ts": "t", "hash": "x"},
    {"type": "call.started", "session": "S", "ts": "t", "Bad-Key": 1},
    {"type": "call.started", "session": "S", "ts": "t", "x": object()},
])
def test_prepare_refuses_malformed_events(bad):
    with pytest.raises(ValueError):
        records.prepare(bad)


def test_now_ts_is_rfc3339_utc_millis():
    assert records.now_ts(0) == "1970-01-01T00:00:00.000Z"
    assert records.now_ts(1_764_205_323.456) == "2025-11-27T01:02:03.456Z"
    assert records.parse_since("2025-11-27T02:02:03+01:00") == "2025-11-27T01:02:03.000Z"
    assert records.parse_since("2025-11-27") == "2025-11-27T00:00:00.000Z"
    assert records.parse_since("15m", now=1000.0) == records.now_ts(100.0)
    with pytest.raises(ValueError):
        records.parse_since("yesterday")


# --------------------------------------------------------------------------- bodies

def test_body_record_json_text_binary_and_truncation():
    rec = records.body_record(b'{"b": 1, "a": [1, 2]}', 1024)
    assert rec == {"body": {"b": 1, "a": [1, 2]}, "bytes": 21, "truncated": False,
                   "sha256": hashlib.sha256(b'{"b": 1, "a": [1, 2]}').hexdigest()}
    assert records.body_record(b"plain text", 1024)["body"] == "plain text"
    binary = records.body_record(b"\xff\x00\xfe", 1024)
    assert binary["body_encoding"] == "base64" and binary["body"] == "/wD+"
    whole = ("é" * 100).encode()   # 200 bytes; a cut at 51 splits a character
    cut = records.body_record(whole, 51)
    assert cut["truncated"] is True and cut["bytes"] == 200 and cut["body"] == "é" * 25
    assert cut["sha256"] == hashlib.sha256(whole).hexdigest()
    # A streaming caller passes the prefix it kept plus the total and the hash of the whole.
    pre = records.body_record(b"abc", 3, total=10, sha256="ab" * 32)
    assert pre == {"body": "abc", "bytes": 10, "sha256": "ab" * 32, "truncated": True}
    assert records.body_record(None, 10)["body"] is None
    assert records.body_record(b"", 10)["body"] is None


# --------------------------------------------------------------------------- guard

def test_guard_drops_credential_headers_and_scrubs_secrets():
    g = Guard({"s3cr3t-upstream-token", 'q"uo\\te-secret', "abc"}, drop_headers={"X-Upstream-Key"})
    headers = g.headers([(b"Authorization", b"Bearer caller-token"), (b"Cookie", b"sid=1"),
                         (b"Proxy-Authorization", b"Basic x"), (b"X-Api-Key", b"k"), (b"X-Upstream-Key", b"u"),
                         (b"X-Fastgate-Subject", b"forged"), (b"Accept", b"a"), (b"accept", b"b")])
    assert headers == {"accept": "a, b"}
    event = started("S1", body=orjson.dumps({"note": "the s3cr3t-upstream-token leaked",
                                             "s3cr3t-upstream-token": ['q"uo\\te-secret'], "short": "abc"}))
    event["request"]["headers"]["Authorization"] = "Bearer smuggled"
    cleaned = g.clean(event)
    encoded = orjson.dumps(cleaned)
    assert b"s3cr3t-upstream-token" not in encoded and b"uo\\\\te-secret" not in encoded
    assert b"smuggled" not in encoded
    assert cleaned["request"]["body"] == {"note": "the [secret] leaked", "[secret]": ["[secret]"], "short": "abc"}
    assert event["request"]["headers"]["Authorization"] == "Bearer smuggled"  # the caller's dict is untouched
    assert Guard({"12345678"}).clean({"n": 1234567890, "x": 5})["n"] == "[secret]"


# --------------------------------------------------------------------------- views

def test_merged_session_matches_the_contract_shape(store: Store):
    s = sid(1)
    append_all(store, [started(s), started(sid(2)), finished(s)])
    with store.read() as snap:
        view = records.merge_session(snap.session_events(s))
    assert list(view) == ["id", "ts", "caller", "function", "decision", "rule", "approval", "request",
                          "response", "timing_ms", "error", "events"]
    assert view["id"] == s and view["caller"] == CALLER
    assert (view["function"], view["decision"], view["rule"], view["approval"]) == ("refund", "allow", "r1", None)
    assert {k: view["request"][k] for k in ("method", "path", "headers", "body")} == {
        "method": "POST", "path": "/refunds/A1", "headers": {"content-type": "application/json"},
        "body": {"amount": 5}}
    assert view["response"]["status"] == 200 and view["response"]["body"] == {"ok": True}
    assert view["response"]["bytes"] == 12
    assert view["timing_ms"] == {"gateway": 0.31, "upstream": 4.2, "approval_wait": None}
    assert [list(e) for e in view["events"]] == [["seq", "type", "ts", "prev", "hash"]] * 2
    assert [e["seq"] for e in view["events"]] == [1, 3]
    assert view["events"][1]["prev"] != view["events"][0]["hash"]  # seq 2 sits between them in the chain


def test_merged_views_for_refusals_approvals_and_lost_finish():
    refused = records.call_refused("R", status=403, error="denied", caller=CALLER, function="refund",
                                   decision="deny", rule="no-interns", method="POST", path="/refunds/A1",
                                   response_body=b'{"error":"denied"}', max_body_bytes=100, gateway_ms=0.2)
    refused.update(seq=1, prev=None, hash="h1")
    view = records.merge_session([refused])
    assert view["decision"] == "deny" and view["response"]["status"] == 403
    assert view["response"]["body"] == {"error": "denied"} and view["timing_ms"]["gateway"] == 0.2
    evs = [started("A", decision="approve"),
           records.approval_requested("A", approval_id="AP1", rule="big", reviewers=["finance-leads"]),
           records.approval_decided("A", approval_id="AP1", outcome="approved", reviewer="bob", comment="ok")]
    for i, e in enumerate(evs, 1):
        e.update(seq=i, prev=None, hash=f"h{i}")
    view = records.merge_session(evs)
    assert view["approval"]["id"] == "AP1" and view["approval"]["status"] == "approved"
    assert view["approval"]["decisions"][0]["reviewer"] == "bob"
    assert view["response"] is None  # the call has not finished (or its finish was lost)
    replay = records.replay_view(evs)
    assert replay[0]["t_ms"] == 0 and all(e["t_ms"] >= 0 for e in replay)
    method, target, headers, body = records.replay_request(view)
    assert headers == {"content-type": "application/json"}
    assert (method, target, body) == ("POST", "/refunds/A1", b'{"amount":5}')


# --------------------------------------------------------------------------- tampering

def _seed(store: Store, n: int = 10, export_dir: Path | None = None) -> None:
    events = [started(sid(i)) if i % 2 == 0 else finished(sid(i - 1)) for i in range(n)]
    exporter = Exporter(export_dir, head_every_events=3) if export_dir else None
    append_all(store, events, exporter=exporter)


def test_intact_chain_verifies(store: Store, tmp_path: Path):
    _seed(store, 10, tmp_path / "audit")
    with store.read() as snap:
        result = records.verify(snap, tmp_path / "audit")
        head = snap.head()
    assert result["ok"] is True and result["events"] == 10
    assert result["head"] == {"seq": 10, "hash": head[1]}
    assert result["export"]["last_exported_seq"] == 10 and result["export"]["heads"] >= 1
    last_head = orjson.loads((tmp_path / "audit" / "heads.jsonl").read_bytes().splitlines()[-1])
    assert last_head["head"] == {"seq": 10, "hash": head[1]}     # written at close at the latest


def test_flipped_byte_in_the_data_file_is_detected(store: Store, tmp_path: Path):
    _seed(store, 10)
    with store.read() as snap:
        target = bytes(snap.raw(5))           # a call.started event
    blob = (tmp_path / "db" / "data.mdb").read_bytes()
    offset = target.index(b"/refunds/A1") + len(b"/refunds/")
    # Copy-on-write leaves stale copies of the page in the file; flip the byte in every copy.
    spots = [i + offset for i in range(len(blob)) if blob.startswith(target, i)]
    assert spots
    with open(tmp_path / "db" / "data.mdb", "r+b") as f:   # "/refunds/A1" -> "/refunds/B1", on disk
        for where in spots:
            f.seek(where)
            f.write(b"B")
    with store.read() as snap:
        assert b"/refunds/B1" in bytes(snap.raw(5))
        assert records.verify(snap) == {"ok": False, "seq": 5,
                                        "reason": "hash mismatch: the event's content was altered"}


def test_deleted_event_is_detected(store: Store):
    _seed(store, 10)
    with store.env.begin(write=True) as txn:
        txn.delete(_seq_key(5), db=store.events_db)
    with store.read() as snap:
        result = records.verify(snap)
    assert result["ok"] is False and result["seq"] == 5 and "gap" in result["reason"]


def test_swapped_events_are_detected(store: Store):
    _seed(store, 10)
    with store.env.begin(write=True) as txn:
        a, b = txn.get(_seq_key(3), db=store.events_db), txn.get(_seq_key(4), db=store.events_db)
        txn.put(_seq_key(3), b, db=store.events_db)
        txn.put(_seq_key(4), a, db=store.events_db)
    with store.read() as snap:
        result = records.verify(snap)
    assert result["ok"] is False and result["seq"] == 3 and "swapped" in result["reason"]


def test_rewritten_event_with_recomputed_hash_breaks_the_next_link(store: Store):
    _seed(store, 10)
    with store.read() as snap:
        ev = snap.event(4)
    ev["response"]["status"] = 500
    ev.pop("hash")
    ev["hash"] = records.event_hash(ev)
    with store.env.begin(write=True) as txn:
        txn.put(_seq_key(4), records.canonical(ev), db=store.events_db)
    with store.read() as snap:
        assert records.verify(snap) == {"ok": False, "seq": 5,
                                        "reason": "prev does not match the hash of the previous event"}


def test_cut_tail_is_detected_by_the_head_and_by_the_export(store: Store, tmp_path: Path):
    audit = tmp_path / "audit"
    _seed(store, 10, audit)
    with store.env.begin(write=True) as txn:   # cut 8..10, leave the head alone
        for seq in (8, 9, 10):
            txn.delete(_seq_key(seq), db=store.events_db)
    with store.read() as snap:
        result = records.verify(snap)
    assert result["ok"] is False and result["seq"] == 8 and "truncated" in result["reason"]
    with store.env.begin(write=True) as txn:   # a careful attacker also rewrites the head
        ev7 = orjson.loads(txn.get(_seq_key(7), db=store.events_db))
        txn.put(b"head", _seq_key(7) + bytes.fromhex(ev7["hash"]), db=store.meta_db)
    with store.read() as snap:
        assert records.verify(snap)["ok"] is True          # the store alone cannot tell
        result = records.verify(snap, audit)                # the export (another volume) can
    assert result["ok"] is False and result["seq"] == 8 and "truncated" in result["reason"]
    # heads.jsonl alone (the event files gone too) still catches it
    for f in audit.glob("events-*.jsonl"):
        f.unlink()
    with store.read() as snap:
        result = records.verify(snap, audit)
    assert result["ok"] is False and result["seq"] == 8


# --------------------------------------------------------------------------- credentials never stored

def test_seeded_canaries_never_reach_the_store_or_the_export(tmp_path: Path):
    store = Store(tmp_path / "db", map_size=2**24, durability="sync")
    canaries = {"authorization": "CANARY-AUTHZ-7f3a", "cookie": "CANARY-COOKIE-91bd",
                "x-api-key": "CANARY-APIKEY-55e0", "proxy-authorization": "CANARY-PROXY-0c1e",
                "upstream": "CANARY-UPSTREAM-SECRET-d00d"}
    guard = Guard({canaries["upstream"]}, drop_headers={"x-upstream-auth"})
    headers = [(b"Authorization", f"Bearer {canaries['authorization']}".encode()),
               (b"Cookie", f"session={canaries['cookie']}".encode()),
               (b"X-Api-Key", canaries["x-api-key"].encode()),
               (b"Proxy-Authorization", canaries["proxy-authorization"].encode()),
               (b"X-Upstream-Auth", canaries["upstream"].encode()),
               (b"Content-Type", b"application/json")]
    body = orjson.dumps({"echo": f"token={canaries['upstream']}"})
    events = [records.call_started("C1", caller=CALLER, function="refund", decision="allow", rule="r",
                                   method="POST", path="/x", headers=headers, body=body,
                                   max_body_bytes=1024, guard=guard),
              records.call_finished("C1", status=200, headers=[(b"Set-Cookie", canaries["cookie"].encode())],
                                    body=body, max_body_bytes=1024, guard=guard)]
    # Even an event built without the guard's help is cleaned by the appender.
    raw = started("C2")
    raw["request"]["headers"] = {"Authorization": canaries["authorization"], "x-upstream-auth": "v"}
    raw["request"]["body"] = {"k": canaries["upstream"]}
    append_all(store, events + [raw], exporter=Exporter(tmp_path / "audit"), guard=guard)
    with store.read() as snap:
        assert records.verify(snap)["ok"] is True
        assert snap.count() == 3
    store.close()
    files = [tmp_path / "db" / "data.mdb"] + sorted((tmp_path / "audit").iterdir())
    for f in files:
        blob = f.read_bytes()
        for name, canary in canaries.items():
            assert canary.encode() not in blob, f"{name} canary found in {f.name}"


# --------------------------------------------------------------------------- export files

def test_export_rotates_by_size_and_day_and_stays_in_seq_order(store: Store, tmp_path: Path):
    now = [1_764_205_323.0]   # 2025-11-27
    audit = tmp_path / "audit"
    exporter = Exporter(audit, max_file_bytes=1500, clock=lambda: now[0])
    append_all(store, [started(sid(i)) for i in range(6)])
    with store.read() as snap:
        items = [(s, orjson.loads(r)["hash"], bytes(r)) for s, r in snap.events()]
    for item in items[:4]:
        exporter.export([item], item[:2], store.read_range)
    now[0] += 86400                    # next day: a new file numbered 001
    exporter.export(items[4:], items[-1][:2], store.read_range)
    exporter.close()
    names = sorted(p.name for p in audit.glob("events-*.jsonl"))
    assert names[0].startswith("events-20251127-001") and names[-1] == "events-20251128-001.jsonl"
    assert len([n for n in names if "20251127" in n]) >= 2   # ~600-byte events, 1500-byte files
    lines = b"".join((audit / n).read_bytes() for n in names).splitlines()
    assert lines == [data for _, _, data in items]


def test_export_recovers_a_torn_line_and_catches_up_from_the_store(store: Store, tmp_path: Path):
    audit = tmp_path / "audit"
    append_all(store, [started(sid(i)) for i in range(5)], exporter=Exporter(audit))
    current = next(audit.glob("events-*.jsonl"))
    with open(current, "ab") as f:
        f.write(b'{"seq":6,"torn')      # a crash mid-write
    append_all(store, [started(sid(i)) for i in range(5, 8)])   # committed while the export was down
    exporter = Exporter(audit)
    head = store.head()
    exporter.export([], head, store.read_range, force_head=True)
    exporter.close()
    lines = current.read_bytes().splitlines()
    assert [orjson.loads(line)["seq"] for line in lines] == list(range(1, 9))
    with store.read() as snap:
        assert records.verify(snap, audit)["ok"] is True


def test_export_failure_refuses_appends_when_fail_closed_and_recovers(store: Store, tmp_path: Path):
    from fastgate.store import StoreUnavailable
    audit = tmp_path / "audit"
    audit.write_text("not a directory")      # the export cannot be created: like a missing volume

    async def wait_for(predicate) -> None:
        for _ in range(300):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("condition not reached")

    async def open_fail() -> None:         # fail_closed off: calls go on, the export falls behind
        app = Appender(store, exporter=Exporter(audit), fail_closed=False).start()
        try:
            for i in range(3):
                await app.append(started(sid(i)))
            await wait_for(lambda: app.export_error is not None)
        finally:
            await app.close()

    async def closed_fail() -> None:       # fail_closed on: refused until the export works again
        app = Appender(store, exporter=Exporter(audit), fail_closed=True, export_retry=0.05).start()
        try:
            await wait_for(lambda: app.export_error is not None)   # noticed at start (catch-up)
            with pytest.raises(StoreUnavailable, match="export"):
                await app.append(started(sid(3)))
            audit.unlink()                                          # the volume is back
            await wait_for(lambda: app.export_error is None)
            await app.append(started(sid(4)))
        finally:
            await app.close()
    asyncio.run(open_fail())
    asyncio.run(closed_fail())
    lines = b"".join(p.read_bytes() for p in sorted(audit.glob("events-*.jsonl"))).splitlines()
    assert [orjson.loads(line)["session"] for line in lines] == [sid(0), sid(1), sid(2), sid(4)]
    assert [orjson.loads(line)["seq"] for line in lines] == [1, 2, 3, 4]   # caught up, gapless
    with store.read() as snap:
        assert records.verify(snap, audit)["ok"] is True


def test_list_sessions_filters_and_pages(store: Store):
    events = []
    for i in range(12):
        events.append(started(sid(i), subject="bob" if i % 3 == 0 else "alice",
                              decision="deny" if i % 4 == 0 else "allow"))
        events.append(finished(sid(i)))
    append_all(store, events)
    with store.read() as snap:
        page1 = records.list_sessions(snap, limit=5)
        page2 = records.list_sessions(snap, limit=5, cursor=page1[-1]["id"])
        page3 = records.list_sessions(snap, limit=5, cursor=page2[-1]["id"])
        assert [v["id"] for v in page1 + page2 + page3] == [sid(i) for i in range(11, -1, -1)]
        bobs = records.list_sessions(snap, subject="bob")
        assert [v["id"] for v in bobs] == [sid(9), sid(6), sid(3), sid(0)]
        assert [v["id"] for v in records.list_sessions(snap, decision="deny")] == [sid(8), sid(4), sid(0)]
        assert records.list_sessions(snap, function="nope") == []
        assert len(records.list_sessions(snap, since="2000-01-01T00:00:00.000Z")) == 12
        assert records.list_sessions(snap, since="2999-01-01T00:00:00.000Z") == []


def test_verify_never_writes_the_export(tmp_path: Path, store: Store):
    """verify reads the export dir; it never writes to it (no command alters a record)."""
    audit = tmp_path / "audit"
    _seed(store, 4, audit)
    before = {p.name: p.read_bytes() for p in audit.iterdir()}
    with store.read() as snap:
        records.verify(snap, audit)
    assert {p.name: p.read_bytes() for p in audit.iterdir()} == before
    shutil.rmtree(audit)
    with store.read() as snap:
        assert records.verify(snap, audit)["export"]["heads"] == 0
    assert not os.path.exists(audit)
