"""Session records: events, their canonical encoding and hash chain, views, verification, export.

An event is a flat JSON object. The store (`fastgate.store`) gives it three fields inside its
write transaction, so the chain stays gapless across worker processes:

- `seq`: 1, 2, 3, ... store-wide, no gaps;
- `prev`: the `hash` of event `seq - 1` (null for seq 1);
- `hash`: sha256 hex over the canonical encoding of the event without `hash`.

**Canonical encoding** = `orjson.dumps(event, option=OPT_SORT_KEYS)`: UTF-8 JSON with no
whitespace, object keys sorted by code point at every depth, strings escaped the way orjson
always escapes them (`"`, `\\` and control characters; other text as raw UTF-8), integers in
decimal and floats in their shortest round-trip form. The stored value, the export line and
the admin socket's event are all exactly these bytes with `hash` included; anyone can
re-check a line with `sha256(canonical(line_without_hash))`.

Everything here is sans-IO except `Exporter` (files) and `verify`/`list_sessions`, which read
through a `fastgate.store` snapshot. Builders take plain values; bodies arrive already masked by
the pipeline. `Guard` is the last line of defence against credentials: it drops credential
headers and scrubs the config's secret values from every event before it is sealed.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from fastgate.store import Snapshot

__all__ = [
    "CREDENTIAL_HEADERS", "EVENT_TYPES", "Exporter", "Guard", "Prepared",
    "approval_decided", "approval_requested", "body_record", "call_finished", "call_refused",
    "call_started", "canonical", "event_hash", "list_sessions", "merge_session", "now_ts",
    "parse_since", "prepare", "replay_request", "replay_view", "seal", "verify",
]

EVENT_TYPES = frozenset({"call.started", "call.refused", "approval.requested", "approval.decided",
                         "call.finished"})
# Never recorded, whatever the pipeline hands over: caller credentials and session cookies.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
SECRET_MASK = "[secret]"
MIN_SECRET_LEN = 4          # shorter "secrets" would shred every record; config refuses them anyway
MAX_EVENT_BYTES = 16 * 2**20
_OPT = orjson.OPT_SORT_KEYS
_TOP_KEY = re.compile(r"[a-z_]{1,32}")
_RESERVED = frozenset({"seq", "prev", "hash"})
_KNOWN_KEYS: dict[str, int] = {}   # checked top-level names -> their run in Prepared


def canonical(obj: Any) -> bytes:
    return orjson.dumps(obj, option=_OPT)


def event_hash(event: Mapping[str, Any]) -> str:
    """The hash an event must carry: sha256 over its canonical encoding without `hash`."""
    return hashlib.sha256(canonical({k: v for k, v in event.items() if k != "hash"})).hexdigest()


def now_ts(t: float | None = None) -> str:
    """RFC 3339 UTC with milliseconds and `Z`: fixed width, so strings sort as times."""
    ms = int((time.time() if t is None else t) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def ts_to_epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: float | None = None) -> str:
    """`since` filter: an RFC 3339 time (offset or Z; date alone = midnight UTC) or `15m` = 15 minutes ago."""
    value = value.strip()
    m = _DURATION.fullmatch(value)
    if m:
        return now_ts((time.time() if now is None else now) - int(m.group(1)) * _UNIT_S[m.group(2)])
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"invalid time {value!r}: use RFC 3339 (2026-11-27T01:02:03Z) or a duration "
                         "like 15m, 2h, 1d") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return now_ts(dt.timestamp())


# --------------------------------------------------------------------------- credential guard

def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)


class Guard:
    """Keeps credentials out of records.

    `headers()` turns header pairs into the recorded mapping without credential headers (plus
    any extra names, e.g. the upstreams' injected headers). `clean()` runs on every event before
    it is sealed: it drops credential headers again and replaces every occurrence of a secret
    value (expanded `${env:}`/`${file:}` values from the config) with `[secret]`, in keys and
    values at any depth. The fast path is one substring scan of the encoded event per secret.
    """

    def __init__(self, secrets: Iterable[str] = (), drop_headers: Iterable[str] = ()) -> None:
        self.set_secrets(secrets, drop_headers)

    def set_secrets(self, secrets: Iterable[str], drop_headers: Iterable[str] = ()) -> None:
        """Swap in a reloaded config's secrets (atomic: one attribute assignment each)."""
        kept = sorted({s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LEN},
                      key=len, reverse=True)
        # What a secret looks like inside canonical JSON (escaped), for the fast scan.
        self._secrets = tuple((s, orjson.dumps(s)[1:-1]) for s in kept)
        self._drop = CREDENTIAL_HEADERS | frozenset(h.lower() for h in drop_headers)

    def headers(self, headers: Mapping[str, Any] | Iterable[tuple[Any, Any]] | None) -> dict[str, str]:
        if not headers:
            return {}
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        out: dict[str, str] = {}
        for name, value in pairs:
            key = _text(name).lower()
            if key in self._drop or key.startswith("x-fastgate-"):
                continue
            text = _text(value)
            out[key] = f"{out[key]}, {text}" if key in out else text
        return out

    def clean(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        """The event with credential headers dropped and secrets scrubbed (a copy if anything changed)."""
        for section in ("request", "response"):
            part = event.get(section)
            if isinstance(part, dict) and isinstance(part.get("headers"), dict) and part["headers"]:
                headers = part["headers"]
                names = [str(k).lower() for k in headers]
                if not self._drop.isdisjoint(names) or any(n.startswith("x-fastgate-") for n in names):
                    event = {**event, section: {**part, "headers": {
                        k: v for k, v in headers.items()
                        if k.lower() not in self._drop and not k.lower().startswith("x-fastgate-")}}}
        if self._secrets:
            encoded = orjson.dumps(event)
            if any(escaped in encoded for _, escaped in self._secrets):
                event = self._scrub(event)
        return event

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret, _ in self._secrets:
                if secret in value:
                    value = value.replace(secret, SECRET_MASK)
            return value
        if isinstance(value, dict):
            return {self._scrub(k): self._scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._scrub(v) for v in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            text = repr(value)
            return SECRET_MASK if any(s in text for s, _ in self._secrets) else value
        return value


_NO_GUARD = Guard()


# --------------------------------------------------------------------------- builders

def body_record(data: bytes | None, limit: int, *, total: int | None = None,
                sha256: str | None = None) -> dict[str, Any]:
    """How a (masked) body is recorded: `body`, `bytes`, `sha256` of the whole, `truncated`.

    A body that is valid JSON and fits is kept as its JSON value (so `sessions show` prints it
    as JSON); otherwise as text, or base64 (`body_encoding: "base64"`) when it is not UTF-8.
    Past `limit` bytes it is cut (`truncated: true`) and only `sha256` speaks for the rest.
    `data` may be a prefix already cut by a streaming caller: pass `total` and `sha256` then.
    """
    if data is None:
        return {"body": None, "bytes": total or 0, "sha256": sha256, "truncated": bool(total)}
    data = bytes(data)
    whole = total is None or total == len(data)
    total = len(data) if total is None else total
    if sha256 is None and whole:
        sha256 = hashlib.sha256(data).hexdigest()
    truncated = total > limit or len(data) > limit
    kept = data[:limit] if truncated else data
    rec: dict[str, Any] = {"bytes": total, "sha256": sha256, "truncated": truncated}
    if not kept:
        rec["body"] = None
        return rec
    if not truncated:
        try:
            rec["body"] = orjson.loads(kept)
            return rec
        except orjson.JSONDecodeError:
            pass
    for cut in range(4 if truncated else 1):  # a cut may split one UTF-8 character
        try:
            rec["body"] = kept[:len(kept) - cut].decode("utf-8")
            return rec
        except UnicodeDecodeError:
            continue
    rec["body"] = base64.b64encode(kept).decode("ascii")
    rec["body_encoding"] = "base64"
    return rec


def _caller(caller: Any) -> dict[str, Any] | None:
    if caller is None:
        return None
    get = caller.get if isinstance(caller, Mapping) else (lambda k, d=None: getattr(caller, k, d))
    groups = get("groups", ()) or ()
    return {"subject": get("subject"), "groups": [str(g) for g in groups], "auth": get("auth")}


def _request(method: str | bytes, path: str, query: str, headers: Any, body: bytes | None,
             max_body_bytes: int, guard: Guard) -> dict[str, Any]:
    return {"method": _text(method), "path": path, "query": query or "",
            "headers": guard.headers(headers), **body_record(body, max_body_bytes)}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def call_started(session: str, *, caller: Any, function: str | None, decision: str, rule: str | None,
                 mcp: Mapping[str, Any] | None = None,
                 method: str | bytes, path: str, query: str = "", headers: Any = None,
                 body: bytes | None = None, max_body_bytes: int, approval: str | None = None,
                 guard: Guard = _NO_GUARD, ts: str | None = None) -> dict[str, Any]:
    """The write-ahead event: who calls what, the decision, and the masked request."""
    extra = {"mcp": dict(mcp)} if mcp else {}
    return {**extra, "type": "call.started", "session": session, "ts": ts or now_ts(),
            "caller": _caller(caller), "function": function, "decision": decision, "rule": rule,
            "approval": approval,
            "request": _request(method, path, query, headers, body, max_body_bytes, guard)}


def call_refused(session: str, *, status: int, error: str, caller: Any = None, function: str | None = None,
                 mcp: Mapping[str, Any] | None = None,
                 decision: str | None = None, rule: str | None = None, method: str | bytes = "",
                 path: str = "", query: str = "", headers: Any = None, body: bytes | None = None,
                 response_body: bytes | None = None, max_body_bytes: int, gateway_ms: float | None = None,
                 approval_wait_ms: float | None = None, guard: Guard = _NO_GUARD,
                 ts: str | None = None) -> dict[str, Any]:
    """A call answered by the gate itself (401, 403, 404, 4xx, 503): nothing was forwarded."""
    extra = {"mcp": dict(mcp)} if mcp else {}
    return {**extra, "type": "call.refused", "session": session, "ts": ts or now_ts(),
            "caller": _caller(caller), "function": function, "decision": decision, "rule": rule,
            "status": int(status), "error": error,
            "request": _request(method, path, query, headers, body, max_body_bytes, guard),
            "response": {"status": int(status), "headers": {},
                         **body_record(response_body, max_body_bytes)},
            "timing_ms": {"gateway": _ms(gateway_ms), "upstream": None,
                          "approval_wait": _ms(approval_wait_ms)}}


def call_finished(session: str, *, status: int | None, headers: Any = None, body: bytes | None = None,
                  body_bytes: int | None = None, body_sha256: str | None = None, max_body_bytes: int,
                  gateway_ms: float | None = None, upstream_ms: float | None = None,
                  approval_wait_ms: float | None = None, error: str | None = None,
                  guard: Guard = _NO_GUARD, ts: str | None = None) -> dict[str, Any]:
    """After the answer: status, masked response (a prefix is fine: pass body_bytes/body_sha256)."""
    return {"type": "call.finished", "session": session, "ts": ts or now_ts(),
            "status": status, "error": error,
            "response": {"status": status, "headers": guard.headers(headers),
                         **body_record(body, max_body_bytes, total=body_bytes, sha256=body_sha256)},
            "timing_ms": {"gateway": _ms(gateway_ms), "upstream": _ms(upstream_ms),
                          "approval_wait": _ms(approval_wait_ms)}}


def approval_requested(session: str, *, approval_id: str, rule: str | None, reviewers: Iterable[str],
                       quorum: int = 1, timeout_s: float | None = None, mode: str = "hold",
                       ts: str | None = None) -> dict[str, Any]:
    return {"type": "approval.requested", "session": session, "ts": ts or now_ts(),
            "approval_id": approval_id, "rule": rule, "reviewers": list(reviewers), "quorum": quorum,
            "timeout_s": timeout_s, "mode": mode}


def approval_decided(session: str, *, approval_id: str, outcome: str, reviewer: str | None = None,
                     comment: str | None = None, ts: str | None = None) -> dict[str, Any]:
    """`outcome`: approved | denied | expired (one event per reviewer decision)."""
    return {"type": "approval.decided", "session": session, "ts": ts or now_ts(),
            "approval_id": approval_id, "outcome": outcome, "reviewer": reviewer, "comment": comment}


# --------------------------------------------------------------------------- sealing

@dataclass(slots=True)
class Prepared:
    """An event encoded up to the three fields the store assigns (`seq`, `prev`, `hash`).

    The canonical encoding sorts top-level keys, so the fixed fields fall between four runs of
    `"key":value` fragments: `a` < "hash" < `b` < "prev" < `c` < "seq" < `d` (each run is the
    canonical encoding of those fields without its braces). Sealing inside the write
    transaction is then two joins and one sha256, not a re-encoding.
    """

    session: str
    a: bytes
    b: bytes
    c: bytes
    d: bytes
    size: int


def prepare(event: Mapping[str, Any], guard: Guard = _NO_GUARD) -> Prepared:
    """Check and encode an event (outside the store's write lock). Raises ValueError if malformed."""
    if not isinstance(event, Mapping):
        raise ValueError("an event is a mapping")
    etype, session, ts = event.get("type"), event.get("session"), event.get("ts")
    if etype not in EVENT_TYPES:
        raise ValueError(f"unknown event type {etype!r}")
    if not isinstance(session, str) or not 0 < len(session) <= 128 or "\x00" in session:
        raise ValueError("an event needs a session id of 1-128 characters without NUL")
    if not isinstance(ts, str):
        raise ValueError("an event needs a ts string")
    event = guard.clean(event if isinstance(event, dict) else dict(event))
    runs: tuple[dict[str, Any], ...] = ({}, {}, {}, {})
    for key, value in event.items():
        run = _KNOWN_KEYS.get(key)
        if run is None:
            if key in _RESERVED:
                raise ValueError(f"{key!r} is assigned by the store")
            if not isinstance(key, str) or not _TOP_KEY.fullmatch(key):
                raise ValueError(f"invalid event field name {key!r}")
            run = 0 if key < "hash" else 1 if key < "prev" else 2 if key < "seq" else 3
            if len(_KNOWN_KEYS) < 1024:
                _KNOWN_KEYS[key] = run
        runs[run][key] = value
    try:
        a, b, c, d = (orjson.dumps(run, option=_OPT)[1:-1] for run in runs)
    except TypeError as exc:
        raise ValueError(f"event cannot be encoded: {exc}") from None
    size = len(a) + len(b) + len(c) + len(d)
    if size > MAX_EVENT_BYTES:
        raise ValueError(f"event of {size} bytes exceeds {MAX_EVENT_BYTES}")
    return Prepared(session, a, b, c, d, size)


def seal(p: Prepared, seq: int, prev: str | None) -> tuple[bytes, str]:
    """(stored bytes, hash) of a prepared event placed at `seq` after `prev`."""
    prev_f = b'"prev":"' + prev.encode() + b'"' if prev else b'"prev":null'
    seq_f = b'"seq":' + str(seq).encode()
    unhashed = b"{" + b",".join([x for x in (p.a, p.b, prev_f, p.c, seq_f, p.d) if x]) + b"}"
    digest = hashlib.sha256(unhashed).hexdigest()
    hash_f = b'"hash":"' + digest.encode() + b'"'
    stored = b"{" + b",".join([x for x in (p.a, hash_f, p.b, prev_f, p.c, seq_f, p.d) if x]) + b"}"
    return stored, digest


# --------------------------------------------------------------------------- views

def _event_ref(ev: Mapping[str, Any]) -> dict[str, Any]:
    return {"seq": ev.get("seq"), "type": ev.get("type"), "ts": ev.get("ts"), "prev": ev.get("prev"),
            "hash": ev.get("hash")}


def merge_session(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The contract's `sessions.show` view of one session's events (in any order).

    Keys are always present (null when the session has no event that sets them): a session
    whose `call.finished` is missing (in flight, or lost in a crash) has `response: null`.
    `error` is an addition to the contract's shape: why a call failed (upstream_timeout, ...).
    """
    evs = sorted(events, key=lambda e: e.get("seq") or 0)
    if not evs:
        raise ValueError("a session has at least one event")
    view: dict[str, Any] = {
        "id": evs[0].get("session"), "ts": evs[0].get("ts"), "caller": None, "function": None,
        "decision": None, "rule": None, "approval": None, "request": None, "response": None,
        "timing_ms": {"gateway": None, "upstream": None, "approval_wait": None}, "error": None,
        "events": [_event_ref(e) for e in evs]}
    for ev in evs:
        etype = ev.get("type")
        if etype in ("call.started", "call.refused"):
            if ev.get("mcp"):  # an addition for MCP calls: session, JSON-RPC id, era, method, tool
                view["mcp"] = ev["mcp"]
            for key in ("caller", "function", "decision", "rule", "request"):
                if ev.get(key) is not None:
                    view[key] = ev[key]
        if etype in ("call.refused", "call.finished"):
            if ev.get("response") is not None:
                view["response"] = ev["response"]
            timing = ev.get("timing_ms") or {}
            view["timing_ms"].update({k: v for k, v in timing.items() if v is not None})
            if ev.get("error") is not None:
                view["error"] = ev["error"]
        elif etype == "approval.requested":
            view["approval"] = {"id": ev.get("approval_id"), "status": "pending", "rule": ev.get("rule"),
                                "reviewers": ev.get("reviewers"), "quorum": ev.get("quorum") or 1,
                                "requested_ts": ev.get("ts"), "decided_ts": None, "decisions": []}
        elif etype == "approval.decided":
            approval = view["approval"] or {"id": ev.get("approval_id"), "status": "pending",
                                            "rule": None, "reviewers": None, "requested_ts": None,
                                            "decided_ts": None, "decisions": []}
            approval["decisions"].append({"outcome": ev.get("outcome"), "reviewer": ev.get("reviewer"),
                                          "comment": ev.get("comment"), "ts": ev.get("ts")})
            # The same reading as the approvals engine: the first decisive event wins, an approval
            # vote counts once per reviewer, and a grant is approved only at `quorum` votes.
            outcome, status, new = ev.get("outcome"), approval["status"], None
            if outcome == "approved" and status == "pending":
                voters = {d["reviewer"] for d in approval["decisions"] if d["outcome"] == "approved"}
                new = "approved" if len(voters) >= (approval.get("quorum") or 1) else None
            elif outcome in ("denied", "withdrawn", "expired") and status == "pending":
                new = outcome
            elif outcome in ("used", "expired") and status == "approved":
                new = outcome
            if new is not None:
                approval["status"], approval["decided_ts"] = new, ev.get("ts")
            view["approval"] = approval
    return view


def replay_view(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The session's events in order, each with `t_ms`: milliseconds since the first one."""
    evs = sorted(events, key=lambda e: e.get("seq") or 0)
    if not evs:
        return []
    t0 = ts_to_epoch(evs[0]["ts"])
    return [{**ev, "t_ms": round((ts_to_epoch(ev["ts"]) - t0) * 1000, 3)} for ev in evs]


def replay_request(view: Mapping[str, Any]) -> tuple[str, str, dict[str, str], bytes]:
    """(method, path?query, headers, body) to re-send a session's recorded (masked) request."""
    req = view.get("request")
    if not req:
        raise ValueError("the session has no recorded request")
    if req.get("truncated"):
        raise ValueError(f"the recorded body was truncated ({req.get('bytes')} bytes); it cannot be re-sent")
    body = req.get("body")
    if body is None:
        data = b""
    elif req.get("body_encoding") == "base64":
        data = base64.b64decode(body)
    elif isinstance(body, str) and not _looks_json(req):
        data = body.encode()
    else:
        data = orjson.dumps(body)
    target = req.get("path") or "/"
    if req.get("query"):
        target += "?" + req["query"]
    return str(req.get("method") or "GET"), target, dict(req.get("headers") or {}), data


def _looks_json(req: Mapping[str, Any]) -> bool:
    ctype = (req.get("headers") or {}).get("content-type", "")
    return "json" in ctype


# --------------------------------------------------------------------------- reading

def list_sessions(snap: Snapshot, *, since: str | None = None, subject: str | None = None,
                  function: str | None = None, decision: str | None = None, limit: int = 50,
                  cursor: str | None = None) -> list[dict[str, Any]]:
    """Merged views, newest session first. Page on with `cursor` = the last item's `id`.

    Sessions are visited in descending id order (request ids are ULIDs, so by time) and filtered
    on their merged view. With `since`, the walk stops at the first ULID minted more than an
    hour before `since` (a session's first event follows its id within the request's own
    handling time); other filters scan until `limit` views matched.
    """
    since_stop_ms = None
    if since is not None:
        since_stop_ms = ts_to_epoch(since) * 1000 - 3_600_000
    out: list[dict[str, Any]] = []
    for sid, seqs in snap.sessions_desc(before=cursor):
        if since_stop_ms is not None:
            minted = _ulid_ms(sid)
            if minted is not None and minted < since_stop_ms:
                break
        events = [e for e in (snap.event(s) for s in seqs) if e is not None]
        if not events:
            continue
        view = merge_session(events)
        if since is not None and (view["ts"] or "") < since:
            continue
        if subject is not None and (view["caller"] or {}).get("subject") != subject:
            continue
        if function is not None and view["function"] != function:
            continue
        if decision is not None and view["decision"] != decision:
            continue
        out.append(view)
        if len(out) >= limit:
            break
    return out


_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def _ulid_ms(sid: str) -> int | None:
    if len(sid) != 26:
        return None
    value = 0
    for ch in sid[:10]:
        digit = _CROCKFORD.get(ch)
        if digit is None:
            return None
        value = value * 32 + digit
    return value


def verify(snap: Snapshot, export_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Walk the chain in one snapshot; report the first broken event.

    Checked per event: stored under its own `seq`, no gap, `prev` = the previous `hash`, `hash`
    = sha256 of the canonical encoding without `hash`, and the stored bytes are canonical. Then
    the meta head must name the last event (a deleted tail with an untouched head is caught).
    With `export_dir`, every head in `heads.jsonl` and the newest exported event must exist in
    the store with the same hash, which catches a tail cut together with a rewritten head.
    """
    wanted: dict[int, tuple[str, str]] = {}
    export_info: dict[str, Any] | None = None
    if export_dir is not None:
        export_info, wanted = _export_claims(export_dir)
    expected, prev, n = 1, None, 0
    for seq, raw in snap.events():
        if seq != expected:
            return _broken(expected, f"seq gap: event {expected} is missing (next stored is {seq})")
        try:
            ev = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _broken(seq, "event is not valid JSON")
        if not isinstance(ev, dict) or ev.get("seq") != seq:
            got = ev.get("seq") if isinstance(ev, dict) else None
            return _broken(seq, f"event stored as seq {seq} says seq {got} (moved or swapped)")
        if ev.get("prev") != prev:
            return _broken(seq, "prev does not match the hash of the previous event")
        claimed = ev.pop("hash", None)
        actual = hashlib.sha256(canonical(ev)).hexdigest()
        if claimed != actual:
            return _broken(seq, "hash mismatch: the event's content was altered")
        ev["hash"] = claimed
        if canonical(ev) != bytes(raw):
            return _broken(seq, "stored bytes are not the canonical encoding")
        claim = wanted.get(seq)
        if claim is not None and claim[0] != actual:
            return _broken(seq, f"hash differs from the one exported in {claim[1]}")
        prev, expected, n = actual, seq + 1, n + 1
    head_seq, head_hash = snap.head()
    last = expected - 1
    if head_seq > last:
        return _broken(last + 1, f"truncated: the store's head is seq {head_seq} but the last event is {last}")
    if head_seq < last:
        return _broken(head_seq + 1, f"events after the recorded head seq {head_seq}")
    if head_hash != prev:
        return _broken(last, "the store's head hash does not match the last event")
    beyond = [s for s in wanted if s > last]
    if beyond:
        s = min(beyond)
        return _broken(last + 1, f"truncated: {wanted[s][1]} records seq {s} but the store ends at {last}")
    result: dict[str, Any] = {"ok": True, "events": n, "head": {"seq": last, "hash": prev}}
    if export_info is not None:
        result["export"] = export_info
    return result


def _broken(seq: int, reason: str) -> dict[str, Any]:
    return {"ok": False, "seq": seq, "reason": reason}


def _export_claims(export_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[int, tuple[str, str]]]:
    """seq -> (hash, where) for every head line and the newest exported event."""
    claims: dict[int, tuple[str, str]] = {}
    heads = 0
    path = os.path.join(export_dir, HEADS_FILE)
    if os.path.exists(path):
        with open(path, "rb") as f:
            for line in f:
                try:
                    head = orjson.loads(line)["head"]
                    claims[int(head["seq"])] = (str(head["hash"]), HEADS_FILE)
                    heads += 1
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue  # a torn last line; the lines before it still count
    last_exported = None
    for name in reversed(_export_files(export_dir)):
        last = _last_line(os.path.join(export_dir, name))
        if last is not None:
            ev = orjson.loads(last)
            last_exported = int(ev["seq"])
            claims.setdefault(last_exported, (str(ev["hash"]), name))
            break
    return {"dir": os.fspath(export_dir), "heads": heads, "last_exported_seq": last_exported}, claims


# --------------------------------------------------------------------------- export

HEADS_FILE = "heads.jsonl"
_STATE_FILE = ".state"
_LOCK_FILE = ".lock"
_STATE_BYTES = 512
_EXPORT_RE = re.compile(r"events-(\d{8})-(\d{3,})\.jsonl")


def _export_files(directory: str | os.PathLike[str]) -> list[str]:
    """Export file names, oldest first (by day, then number)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(m.group(1), int(m.group(2)), n) for n in names if (m := _EXPORT_RE.fullmatch(n))]
    return [n for _, _, n in sorted(found)]


def _last_line(path: str) -> bytes | None:
    """The last complete (newline-terminated) line of a file, or None. Reads backwards."""
    with open(path, "rb") as f:
        pos = f.seek(0, os.SEEK_END)
        tail = b""
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
            last_nl = tail.rfind(b"\n")
            if last_nl < 0:
                continue
            prev_nl = tail.rfind(b"\n", 0, last_nl)
            if prev_nl >= 0 or pos == 0:
                return tail[prev_nl + 1:last_nl] or None
    return None


class Exporter:
    """Appends committed events to `export_dir/events-YYYYMMDD-NNN.jsonl`, one stored event per line.

    Several worker processes export into one directory. Each export call takes an exclusive
    `flock` on `.lock`, reads the shared `.state` (file, size, last exported seq), writes every
    event after that seq up to the caller's head (from the caller's batch, or read back from the
    store for events other processes committed), and updates `.state`. Lines are therefore in seq
    order with no duplicates, and a failed export is caught up by the next successful one:
    the store, not memory, is the backlog. Files rotate by UTC day and past `max_file_bytes`
    (at a batch boundary). A torn tail line from a crash is cut on recovery.

    `heads.jsonl` receives `{"head": {"seq", "hash"}, "ts"}` every `head_every_events` events or
    `head_every_s` seconds (and at close), so that cutting the store's tail shows from outside.
    With `fsync` every export is fsynced before `.state` moves; without it `sync()` does it.
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_file_bytes: int = 64 * 2**20,
                 head_every_events: int = 1000, head_every_s: float = 10.0, fsync: bool = True,
                 max_catchup: int = 50_000, clock: Callable[[], float] = time.time) -> None:
        self.dir = os.fspath(directory)
        self.max_file_bytes = max_file_bytes
        self.head_every_events = head_every_events
        self.head_every_s = head_every_s
        self.fsync = fsync
        self.max_catchup = max_catchup
        self.clock = clock
        self._lock_fd = -1
        self._fd = -1
        self._name = ""
        self._heads_fd = -1
        self._state_fd = -1
        self._dirty = False

    # -- files -------------------------------------------------------------------------------
    def _open(self) -> None:
        if self._lock_fd < 0:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            self._lock_fd = os.open(os.path.join(self.dir, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        if self._heads_fd < 0:
            self._heads_fd = os.open(os.path.join(self.dir, HEADS_FILE),
                                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if self._state_fd < 0:
            self._state_fd = os.open(os.path.join(self.dir, _STATE_FILE), os.O_RDWR | os.O_CREAT, 0o600)

    def _use(self, name: str, create: bool = False) -> None:
        if self._name == name and self._fd >= 0:
            return
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT | os.O_EXCL if create else 0)
        self._fd = os.open(os.path.join(self.dir, name), flags, 0o600)
        self._name = name
        if create and self.fsync:
            _fsync_dir(self.dir)

    def _read_state(self) -> dict[str, Any]:
        try:
            state = orjson.loads(os.pread(self._state_fd, _STATE_BYTES, 0))
            size = os.stat(os.path.join(self.dir, state["file"])).st_size
            if size == state["size"]:
                return state
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            pass
        return self._recover()

    def _recover(self) -> dict[str, Any]:
        """Rebuild `.state` from the files: cut torn lines, find the last exported seq and head."""
        state: dict[str, Any] = {"file": "", "size": 0, "seq": 0, "head_seq": 0, "head_ts": 0.0}
        names = _export_files(self.dir)
        for name in reversed(names):
            path = os.path.join(self.dir, name)
            _cut_torn_tail(path)
            line = _last_line(path)
            if not state["file"]:
                state["file"], state["size"] = name, os.stat(path).st_size
            if line is not None:
                state["seq"] = int(orjson.loads(line)["seq"])
                break
        heads = os.path.join(self.dir, HEADS_FILE)
        if os.path.exists(heads):
            _cut_torn_tail(heads)
            line = _last_line(heads)
            if line is not None:
                state["head_seq"] = int(orjson.loads(line)["head"]["seq"])
        return state

    def _write_state(self, state: dict[str, Any]) -> None:
        # One fixed-size pwrite in place (JSON allows the trailing blanks): no rename per batch.
        data = orjson.dumps(state)
        os.pwrite(self._state_fd, data + b" " * (_STATE_BYTES - len(data)), 0)

    # -- export --------------------------------------------------------------------------------
    def export(self, batch: list[tuple[int, str, bytes]], head: tuple[int, str | None],
               read_range: Callable[[int, int], list[tuple[int, bytes]]], *, force_head: bool = False) -> int:
        """Export up to `head` (inclusive). `batch`: (seq, hash, bytes) this process just committed.

        Returns the number of lines written. Raises OSError (disk full, ...) with nothing marked done.
        """
        self._open()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            state = self._read_state()
            start, end = state["seq"] + 1, min(head[0], state["seq"] + self.max_catchup)
            written = 0
            last_hash: str | None = None
            if end >= start:
                mine = {seq: (h, data) for seq, h, data in batch}
                lines: list[bytes] = []
                seq = start
                while seq <= end:
                    if seq in mine:
                        lines.append(mine[seq][1])
                        seq += 1
                        continue
                    run_end = seq
                    while run_end < end and run_end + 1 not in mine:
                        run_end += 1
                    got = read_range(seq, run_end)
                    if [s for s, _ in got] != list(range(seq, run_end + 1)):
                        raise OSError(f"store read back seq {seq}..{run_end} incomplete")
                    lines.extend(bytes(d) for _, d in got)
                    seq = run_end + 1
                data = b"\n".join(lines) + b"\n"
                self._rotate(state, len(data))
                _write_all(self._fd, data)
                if self.fsync:
                    os.fsync(self._fd)
                else:
                    self._dirty = True
                state["size"] += len(data)
                state["seq"] = end
                written = len(lines)
                last_hash = mine[end][0] if end in mine else str(orjson.loads(lines[-1])["hash"])
            now = self.clock()
            if state["seq"] > state["head_seq"] and (
                    force_head or state["seq"] - state["head_seq"] >= self.head_every_events
                    or now - state["head_ts"] >= self.head_every_s):
                if last_hash is None:
                    last_hash = self._hash_of(state["seq"], read_range)
                line = canonical({"head": {"seq": state["seq"], "hash": last_hash}, "ts": now_ts(now)})
                _write_all(self._heads_fd, line + b"\n")
                if self.fsync:
                    os.fsync(self._heads_fd)
                state["head_seq"], state["head_ts"] = state["seq"], now
            self._write_state(state)
            return written
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _hash_of(self, seq: int, read_range: Callable[[int, int], list[tuple[int, bytes]]]) -> str:
        got = read_range(seq, seq)
        if not got:
            raise OSError(f"store has no seq {seq}")
        return str(orjson.loads(got[0][1])["hash"])

    def _rotate(self, state: dict[str, Any], incoming: int) -> None:
        today = time.strftime("%Y%m%d", time.gmtime(self.clock()))
        m = _EXPORT_RE.fullmatch(state["file"]) if state["file"] else None
        if m and m.group(1) == today and (state["size"] == 0 or state["size"] + incoming <= self.max_file_bytes):
            self._use(state["file"])
            return
        number = 1
        for name in _export_files(self.dir):
            mm = _EXPORT_RE.fullmatch(name)
            if mm and mm.group(1) == today:
                number = max(number, int(mm.group(2)) + 1)
        name = f"events-{today}-{number:03d}.jsonl"
        if self._fd >= 0 and self._dirty:
            os.fsync(self._fd)
        self._use(name, create=True)
        state["file"], state["size"] = name, 0

    def sync(self) -> None:
        """fsync what non-fsync mode wrote since the last call."""
        if self._dirty:
            if self._fd >= 0:
                os.fsync(self._fd)
            if self._heads_fd >= 0:
                os.fsync(self._heads_fd)
            self._dirty = False

    def close(self) -> None:
        self.sync()
        for fd in (self._fd, self._heads_fd, self._lock_fd, self._state_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._heads_fd = self._lock_fd = self._state_fd = -1
        self._name = ""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _cut_torn_tail(path: str) -> None:
    """Drop a last line without its newline (a write cut short by a crash or a full disk)."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        pos = end
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            if pos + len(chunk) == end and chunk.endswith(b"\n"):
                return
            i = chunk.rfind(b"\n")
            if i >= 0:
                f.truncate(pos + i + 1)
                return
        f.truncate(0)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
