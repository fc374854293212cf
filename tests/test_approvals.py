"""The approval engine over a real LMDB store (temp dirs), real processes and a real webhook receiver.

Each test runs its own uvloop loop (as the workers do). The two-process test forks a child that
opens the store itself, like a second worker or the admin parent, and decides there.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import random
import signal
import ssl
import tempfile
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop
from support.oidc import _self_signed_cert

from fastgate import records
from fastgate.admin import AdminError
from fastgate.approvals import _MARK, ApprovalRefused, Approvals, new_approval_id
from fastgate.config import ApprovalSpec, parse_config
from fastgate.identity import Caller
from fastgate.ids import new_request_id
from fastgate.notify import Notifier, Target
from fastgate.store import Appender, Store, StoreUnavailable

ALICE = Caller("alice", frozenset({"support"}), "jwt", {})
MALLORY = Caller("mallory", frozenset({"support"}), "jwt", {})
BOT = Caller("ci-bot", frozenset({"automation"}), "api_key", {}, name="ci-bot")
SUMMARY = {"method": "POST", "path": "/refunds/A1", "args": {"amount": 500, "card": "[REDACTED]"}}
HASH = hashlib.sha256(b"POST /refunds/A1 {amount:500}").hexdigest()


def config(**approvals: Any) -> Any:
    section = {"reviewers": {"bob": ["finance-leads"], "dave": ["other"], "ci-bot": ["finance-leads"]},
               **approvals}
    return parse_config({"version": 1, "approvals": section})


def spec(**kw: Any) -> ApprovalSpec:
    return ApprovalSpec(**{"reviewers": ["finance-leads", "user:erin"], **kw})


def run(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


class Rig:
    """One process's store + appender + engine over `path`."""

    def __init__(self, path: Path, cfg: Any = None, durability: str = "batch", **kw: Any) -> None:
        self.path, self.cfg, self.durability, self.kw = path, cfg or config(), durability, kw

    async def __aenter__(self) -> Approvals:
        self.store = Store(self.path, map_size=2**26, durability=self.durability)
        self.appender = Appender(self.store).start()
        self.ap = Approvals(self.store, self.appender, self.cfg, **{"poll_interval": 0.02, **self.kw})
        await self.ap.start()
        return self.ap

    async def __aexit__(self, *exc: object) -> None:
        await self.ap.close()
        await self.appender.close()
        self.store.close()


async def ask(ap: Approvals, caller: Caller = ALICE, *, session: str | None = None, h: str = HASH,
              **kw: Any) -> str:
    return await ap.request(session=session or new_request_id(),
                            caller=caller, function="refund", rule="support-large-refunds", spec=spec(**kw),
                            request_hash=h, summary=SUMMARY)


def events_of(path: Path) -> list[dict]:
    store = Store(path, map_size=2**26)
    try:
        with store.read() as snap:
            return [orjson.loads(raw) for _, raw in snap.events()]
    finally:
        store.close()


async def refused(coro: Any) -> ApprovalRefused:
    with pytest.raises(ApprovalRefused) as info:
        await coro
    return info.value


async def admin_error(coro: Any) -> AdminError:
    with pytest.raises(AdminError) as info:
        await coro
    return info.value


# --------------------------------------------------------------------------- hold mode

def test_hold_approve_wakes_the_held_call_and_records_the_story(tmp_path: Path):
    async def go() -> None:
        async with Rig(tmp_path) as ap:
            aid = await ask(ap)
            assert aid.startswith("ap_") and len(aid) == 29 and aid != new_approval_id()
            held = asyncio.ensure_future(ap.wait(aid))
            await asyncio.sleep(0.05)
            assert not held.done() and ap.stats["held_here"] == 1 and ap.stats["pending"] == 1
            listed = await ap.admin_list({})
            assert [v["id"] for v in listed] == [aid]
            assert listed[0]["summary"] == SUMMARY and listed[0]["caller"]["subject"] == "alice"
            view = await ap.admin_approve({"id": aid, "reviewer": "bob", "comment": "ok, known customer"})
            assert view["state"] == "approved" and view["approvals"][0]["reviewer"] == "bob"
            assert await asyncio.wait_for(held, 1) == "approved"
            assert ap.stats["pending"] == 0 and ap.stats["held_here"] == 0
    run(go())
    evs = [e for e in events_of(tmp_path) if e["type"].startswith("approval.")]
    assert [(e["type"], e.get("outcome")) for e in evs] == [("approval.requested", None),
                                                            ("approval.decided", "approved")]
    assert evs[0]["request_hash"] == HASH and evs[0]["caller"]["subject"] == "alice"
    assert evs[1]["reviewer"] == "bob" and evs[1]["comment"] == "ok, known customer"
    view = records.merge_session(evs)
    assert view["approval"]["status"] == "approved" and view["approval"]["decisions"][0]["reviewer"] == "bob"


def test_hold_deny_refuses_and_a_late_decision_is_a_bad_request(tmp_path: Path):
    async def go() -> None:
        async with Rig(tmp_path) as ap:
            aid = await ask(ap)
            held = asyncio.ensure_future(ap.wait(aid))
            await ap.admin_deny({"id": aid, "reviewer": "erin", "reason": "too large"})
            assert await asyncio.wait_for(held, 1) == "denied"
            err = await admin_error(ap.admin_approve({"id": aid, "reviewer": "bob"}))
            assert err.code == "bad_request" and "denied" in err.message
            show = await ap.admin_show({"id": aid})
            assert show["state"] == "denied" and show["decided_by"] == "erin"
            assert show["decisions"] == [{"seq": show["decisions"][0]["seq"], "outcome": "denied",
                                          "reviewer": "erin", "comment": "too large",
                                          "ts": show["decisions"][0]["ts"], "counted": True}]
    run(go())


def test_hold_expires_at_the_deadline_by_timer(tmp_path: Path):
    async def go() -> None:
        async with Rig(tmp_path) as ap:
            aid = await ask(ap, timeout=0.3)
            t0 = time.monotonic()
            assert await asyncio.wait_for(ap.wait(aid), 3) == "expired"
            assert 0.25 <= time.monotonic() - t0 < 1.5
            err = await admin_error(ap.admin_approve({"id": aid, "reviewer": "bob"}))
            assert err.code == "bad_request" and "expired" in err.message
    run(go())
    assert [e.get("outcome") for e in events_of(tmp_path) if e["type"] == "approval.decided"] == ["expired"]


def test_withdraw_when_the_held_caller_goes_away(tmp_path: Path):
    async def go() -> None:
        async with Rig(tmp_path) as ap:
            aid = await ask(ap)
            held = asyncio.ensure_future(ap.wait(aid))
            await asyncio.sleep(0.01)
            held.cancel()
            ap.withdraw(aid, "client disconnected")
            for _ in range(100):
                await asyncio.sleep(0.01)
                if (await ap.admin_show({"id": aid}))["state"] == "withdrawn":
                    break
            assert (await ap.admin_show({"id": aid}))["state"] == "withdrawn"
            assert ap.stats["held_here"] == 0 and ap.stats["pending"] == 0
            ap.withdraw(aid, "again")     # not pending any more: nothing recorded
            await asyncio.sleep(0.05)
    run(go())
    decided = [e for e in events_of(tmp_path) if e["type"] == "approval.decided"]
    assert [(e["outcome"], e["comment"]) for e in decided] == [("withdrawn", "client disconnected")]


# --------------------------------------------------------------------------- reviewers

def test_quorum_of_two_counts_each_reviewer_once(tmp_path: Path):
    async def go() -> None:
        async with Rig(tmp_path) as ap:
            aid = await ask(ap, quorum=2)
            held = asyncio.ensure_future(ap.wait(aid))
            first = await ap.admin_approve({"id": aid, "reviewer": "bob"})
            assert first["state"] == "pending" and len(first["approvals"]) == 1
            again = await ap.admin_approve({"id": aid, "reviewer": "bob", "comment": "really"})
            assert again["state"] == "pending" and len(again["approvals"]) == 1 and "once" in again["note"]
            await asyncio.sleep(0.05)
            assert not held.done()
            done = await ap.admin_approve({"id": aid, "reviewer": "erin"})
            assert done["state"] == "approved" and [a["reviewer"] for a in done["approvals"]] == ["bob", "erin"]
            assert await asyncio.wait_for(held, 1) == "approved"
    run(go())
    assert [e["reviewer"] for e in events_of(tmp_path) if e["type"] == "approval.decided"] == ["bob", "erin"]


def test_a_reviewer_cannot_decide_their_own_call(tmp_path: Path):
    async def go() -> None:
        async with Rig(tmp_path) as ap:
            mine = await ask(ap, Caller("erin", frozenset({"support"}), "jwt", {}))
            err = await admin_error(ap.admin_approve({"id": mine, "reviewer": "erin"}))
            assert err.code == "forbidden" and "own call" in err.message
            err = await admin_error(ap.admin_deny({"id": mine, "reviewer": "erin"}))
            assert err.code == "forbidden"
            by_key = await ask(ap, BOT)       # an API key's name counts as the caller's own name
            err = await admin_error(ap.admin_approve({"id": by_key, "reviewer": "ci-bot"}))
            assert err.code == "forbidden" and "own call" in err.message
            assert (await ap.admin_approve({"id": by_key, "reviewer": "bob"}))["state"] == "approved"
    run(go())


def test_reviewer_must_be_admitted_by_the_rule(tmp_path: Path):
    async def go() -> None:
        async with Rig(tmp_path) as ap:
            aid = await ask(ap)
            for name in ("carol", "dave", "finance-leads", "user:erin"):   # unknown, wrong group, raw names
                err = await admin_error(ap.admin_approve({"id": aid, "reviewer": name}))
                assert err.code == "forbidden", name
            assert (await admin_error(ap.admin_approve({"id": aid}))).code == "bad_request"
            assert (await admin_error(ap.admin_approve({"id": "ap_nope", "reviewer": "bob"}))).code == "not_found"
            assert (await admin_error(ap.admin_show({}))).code == "bad_request"
            assert (await admin_error(ap.admin_list({"state": "maybe"}))).code == "bad_request"
            # a reload changes who may decide (the approval keeps its own reviewers list)
            ap.reconfigure(config(reviewers={"carol": ["finance-leads"]}))
            assert (await ap.admin_approve({"id": aid, "reviewer": "carol"}))["state"] == "approved"
    run(go())


# --------------------------------------------------------------------------- async mode

def test_async_redeem_is_bound_to_caller_function_and_hash_and_used_once(tmp_path: Path):
    async def go() -> None:
        async with Rig(tmp_path) as ap:
            aid = await ask(ap, mode="async")
            pending = await refused(ap.redeem(aid, caller=ALICE, function="refund", request_hash=HASH))
            assert pending.status == 202 and pending.body == {"status": "pending", "approval_id": aid}
            assert 1 <= pending.retry_after <= 5 and ap.pending_retry_after(aid) == pending.retry_after
            await ap.admin_approve({"id": aid, "reviewer": "bob"})
            for caller, fn, h in ((MALLORY, "refund", HASH), (BOT, "refund", HASH),
                                  (Caller("alice", frozenset(), "api_key", {}), "refund", HASH),
                                  (ALICE, "refund", "0" * 64), (ALICE, "transfer", HASH)):
                r = await refused(ap.redeem(aid, caller=caller, function=fn, request_hash=h))
                assert (r.status, r.body) == (403, {"error": "approval_denied", "detail": "mismatch"})
            unknown = await refused(ap.redeem("ap_" + "a" * 26, caller=ALICE, function="refund", request_hash=HASH))
            assert unknown.body == {"error": "approval_denied", "detail": "unknown"}
            await ap.redeem(aid, caller=ALICE, function="refund", request_hash=HASH, session="01RETRY")
            again = await refused(ap.redeem(aid, caller=ALICE, function="refund", request_hash=HASH))
            assert (again.status, again.body) == (403, {"error": "approval_denied", "detail": "used"})
            assert (await ap.admin_show({"id": aid}))["state"] == "used"
            held = await ask(ap)           # a hold-mode approval is never redeemable
            await ap.admin_approve({"id": held, "reviewer": "bob"})
            r = await refused(ap.redeem(held, caller=ALICE, function="refund", request_hash=HASH))
            assert r.body["detail"] == "mismatch"
            denied = await ask(ap, mode="async")
            await ap.admin_deny({"id": denied, "reviewer": "bob"})
            r = await refused(ap.redeem(denied, caller=ALICE, function="refund", request_hash=HASH))
            assert (r.status, r.body) == (403, {"error": "approval_denied", "detail": "denied"})
    run(go())
    used = [e for e in events_of(tmp_path) if e.get("outcome") == "used"]
    assert len(used) == 1 and used[0]["used_in"] == "01RETRY"


def test_concurrent_redeems_in_two_engines_only_one_wins(tmp_path: Path):
    """Two engines (as two workers) over one store race to use one approval: the store's order decides."""
    async def go() -> None:
        async with Rig(tmp_path) as one:
            other = Approvals(one.store, one.appender, config(), poll_interval=0.02)
            await other.start()
            try:
                for _ in range(5):
                    aid = await ask(one, mode="async")
                    await one.admin_approve({"id": aid, "reviewer": "bob"})
                    other._poll()
                    results = await asyncio.gather(
                        *(e.redeem(aid, caller=ALICE, function="refund", request_hash=HASH) for e in (one, other)),
                        return_exceptions=True)
                    assert sorted(type(r).__name__ for r in results) == ["ApprovalRefused", "NoneType"]
                    loser = next(r for r in results if r is not None)
                    assert loser.body == {"error": "approval_denied", "detail": "used"}
            finally:
                await other.close()
    run(go())


def test_async_approval_not_used_before_the_deadline_expires(tmp_path: Path):
    async def go() -> None:
        async with Rig(tmp_path) as ap:
            aid = await ask(ap, mode="async", timeout=0.3)
            await ap.admin_approve({"id": aid, "reviewer": "bob"})
            await asyncio.sleep(0.45)
            r = await refused(ap.redeem(aid, caller=ALICE, function="refund", request_hash=HASH))
            assert (r.status, r.body) == (403, {"error": "approval_expired"})
            late = await ask(ap, mode="async", timeout=0.2)
            await asyncio.sleep(0.35)
            r = await refused(ap.redeem(late, caller=ALICE, function="refund", request_hash=HASH))
            assert r.body == {"error": "approval_expired"}
            assert (await ap.admin_show({"id": aid}))["state"] == "expired"
    run(go())
    outcomes = [e["outcome"] for e in events_of(tmp_path) if e["type"] == "approval.decided"]
    assert outcomes == ["approved", "expired", "expired"]


def test_caps_refuse_with_429_and_retry_after(tmp_path: Path):
    async def go() -> None:
        async with Rig(tmp_path, config(max_pending=3, max_pending_per_caller=2)) as ap:
            a1 = await ask(ap, timeout=30)
            await ask(ap, timeout=30)
            r = await refused(ask(ap))
            assert (r.status, r.body) == (429, {"error": "too_many_pending"}) and 1 <= r.retry_after <= 60
            await ask(ap, MALLORY)
            r = await refused(ask(ap, BOT))                 # global cap
            assert r.status == 429
            await ap.admin_deny({"id": a1, "reviewer": "bob"})
            await ask(ap)                                    # room again
            assert ap.stats["pending"] == 3 and ap.stats["refused_cap"] == 2
    run(go())


def test_restart_keeps_pending_and_decided_state(tmp_path: Path):
    async def first() -> tuple[str, str, str]:
        async with Rig(tmp_path) as ap:
            pending = await ask(ap, mode="async")
            denied = await ask(ap, mode="async")
            await ap.admin_deny({"id": denied, "reviewer": "bob"})
            half = await ask(ap, quorum=2)
            await ap.admin_approve({"id": half, "reviewer": "bob"})
            return pending, denied, half

    pending, denied, half = run(first())

    async def second() -> None:
        async with Rig(tmp_path) as ap:
            states = {v["id"]: v["state"] for v in await ap.admin_list({})}
            assert states == {pending: "pending", denied: "denied", half: "pending"}
            assert [v["id"] for v in await ap.admin_list({})][2] == denied       # pending first
            assert ap.stats["pending"] == 2
            again = await ap.admin_approve({"id": half, "reviewer": "bob"})    # still counted once
            assert again["state"] == "pending" and "note" in again
            assert (await ap.admin_approve({"id": half, "reviewer": "erin"}))["state"] == "approved"
            await ap.admin_approve({"id": pending, "reviewer": "bob"})
            await ap.redeem(pending, caller=ALICE, function="refund", request_hash=HASH)
            r = await refused(ap.redeem(denied, caller=ALICE, function="refund", request_hash=HASH))
            assert r.body["detail"] == "denied"
    run(second())


def test_durability_none_settles_by_reading_back(tmp_path: Path):
    async def go() -> None:
        async with Rig(tmp_path, durability="none") as ap:
            aid = await ask(ap, mode="async")
            await ap.admin_approve({"id": aid, "reviewer": "bob"})
            await ap.redeem(aid, caller=ALICE, function="refund", request_hash=HASH)
            r = await refused(ap.redeem(aid, caller=ALICE, function="refund", request_hash=HASH))
            assert r.body["detail"] == "used"
    run(go())


def test_another_process_expires_what_a_dead_creator_left_open(tmp_path: Path):
    """The creator's timer is gone (it stopped before the deadline); any other engine closes the
    approval after its grace, and a held call there is answered."""
    async def go() -> None:
        async with Rig(tmp_path, expiry_grace=0.1) as survivor:
            creator = Approvals(survivor.store, survivor.appender, config(), poll_interval=0.02)
            await creator.start()
            aid = await ask(creator, timeout=0.2)
            await creator.close()
            survivor._poll()
            t0 = time.monotonic()
            assert await asyncio.wait_for(survivor.wait(aid), 3) == "expired"
            assert 0.1 < time.monotonic() - t0 < 2.0
    run(go())
    assert [e["outcome"] for e in events_of(tmp_path) if e["type"] == "approval.decided"] == ["expired"]


def test_close_fails_held_calls_as_unavailable(tmp_path: Path):
    async def go() -> None:
        async with Rig(tmp_path) as ap:
            aid = await ask(ap)
            held = asyncio.ensure_future(ap.wait(aid))
            await asyncio.sleep(0.01)
            await ap.close()
            with pytest.raises(StoreUnavailable):
                await held
            with pytest.raises(KeyError):
                await ap.wait("ap_unknown")
    run(go())


def test_only_approval_events_carry_the_watcher_prefix(tmp_path: Path):
    """The watcher decodes only events starting with `{"approval_id":` (canonical, sorted keys):
    every event type the gateway writes must fall on the right side of that test."""
    async def go() -> None:
        async with Rig(tmp_path) as ap:
            sid = new_request_id()
            aid = await ask(ap, session=sid, mode="async")
            await ap.admin_approve({"id": aid, "reviewer": "bob", "comment": "fine"})
            await ap.redeem(aid, caller=ALICE, function="refund", request_hash=HASH, session="01X")
            common = {"caller": ALICE, "function": "refund", "max_body_bytes": 1024}
            for ev in (records.call_started(sid, decision="approve", rule="r", method="POST", path="/p",
                                            approval=aid, body=b'{"approval_id": "ap_x"}', **common),
                       records.call_refused(sid, status=403, error="approval_denied", **common),
                       records.call_finished(sid, status=200, max_body_bytes=1024)):
                await ap.appender.append(ev)
            gone = await ask(ap)
            ap.withdraw(gone, "client went away")
            await asyncio.sleep(0.1)
    run(go())
    store = Store(tmp_path, map_size=2**26)
    try:
        with store.read() as snap:
            seen = [(orjson.loads(raw)["type"], raw.startswith(_MARK)) for _, raw in snap.events()]
    finally:
        store.close()
    assert {t for t, _ in seen} == set(records.EVENT_TYPES)
    assert all(marked == t.startswith("approval.") for t, marked in seen), seen


def test_admin_socket_and_cli_verbs(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """`fastgate admin approvals list|show|approve|deny` through a real admin socket."""
    from fastgate import admin_cli
    from fastgate.admin import AdminServer

    sock = str(tmp_path / "a.sock")

    def cli(*argv: str) -> tuple[int, str, str]:
        code = admin_cli.main(["--socket", sock, *argv]) if argv[0] != "--json" else \
            admin_cli.main(["--json", "--socket", sock, *argv[1:]])
        out, err = capsys.readouterr()
        return code, out, err

    async def go() -> None:
        async with Rig(tmp_path / "db") as ap:
            server = AdminServer(sock)
            for name, handler in (("approvals.list", ap.admin_list), ("approvals.show", ap.admin_show),
                                  ("approvals.approve", ap.admin_approve), ("approvals.deny", ap.admin_deny)):
                server.register(name, handler)
            await server.start()
            try:
                one, two = await ask(ap), await ask(ap, MALLORY)
                code, out, _ = await asyncio.to_thread(cli, "approvals", "list", "--json")
                assert code == 0 and {v["id"] for v in orjson.loads(out)} == {one, two}
                code, out, _ = await asyncio.to_thread(cli, "approvals", "show", one, "--json")
                shown = orjson.loads(out)
                assert code == 0 and shown["summary"] == SUMMARY and shown["caller"]["subject"] == "alice"
                code, out, err = await asyncio.to_thread(cli, "approvals", "approve", one, "--reviewer", "carol",
                                                         "--json")
                assert code == 1 and orjson.loads(err)["code"] == "forbidden"
                code, out, _ = await asyncio.to_thread(cli, "approvals", "approve", one, "--reviewer", "bob",
                                                       "--comment", "ok", "--json")
                assert code == 0 and orjson.loads(out)["approvals"] == [
                    {"reviewer": "bob", "comment": "ok", "ts": orjson.loads(out)["approvals"][0]["ts"]}]
                code, out, _ = await asyncio.to_thread(cli, "approvals", "deny", two, "--reviewer", "erin",
                                                       "--reason", "not today")
                assert code == 0 and "denied" in out and "not today" in out
                code, out, _ = await asyncio.to_thread(cli, "approvals", "list")
                assert code == 0 and one in out and two in out
            finally:
                await server.close()
    run(go())


# --------------------------------------------------------------------------- two processes

def _fork() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def test_decision_in_another_process_wakes_the_held_call(tmp_path: Path):
    """The held calls sit here; a forked child (its own Store + Appender + engine, like the admin
    parent) approves them one by one at random moments. Measured per call: the child's admin
    answer (decision durable) -> wait() returns here."""
    n = 8
    id_r, id_w = os.pipe()
    t_r, t_w = os.pipe()
    pid = _fork()
    if pid == 0:
        code = 1
        try:
            os.close(id_w)
            os.close(t_r)
            ids = orjson.loads(os.read(id_r, 4096))

            async def decide() -> None:
                async with Rig(tmp_path, durability="sync") as ap:
                    answered = {}
                    for aid in ids:
                        await asyncio.sleep(random.uniform(0.0, 0.06))
                        view = await ap.admin_approve({"id": aid, "reviewer": "bob"})
                        answered[aid] = time.time()
                        assert view["state"] == "approved"
                    os.write(t_w, orjson.dumps(answered))
            run(decide())
            code = 0
        except BaseException:  # noqa: BLE001 - report through the exit status
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(id_r)
    os.close(t_w)
    try:
        async def hold() -> dict[str, float]:
            async with Rig(tmp_path, durability="sync", poll_interval=0.05) as ap:
                ids = [await ask(ap, timeout=30) for _ in range(n)]
                woke: dict[str, float] = {}

                async def one(aid: str) -> None:
                    assert await ap.wait(aid) == "approved"
                    woke[aid] = time.time()
                held = asyncio.gather(*(one(aid) for aid in ids))
                await asyncio.sleep(0.02)
                os.write(id_w, orjson.dumps(ids))
                await asyncio.wait_for(held, 20)
                return woke
        woke = run(hold())
        answered = orjson.loads(os.read(t_r, 4096))
        deadline = time.monotonic() + 20
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        os.close(id_w)
        os.close(t_r)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    lat = sorted((woke[aid] - answered[aid]) * 1000 for aid in woke)
    print(f"\ncross-process decision -> wake over {n} calls (poll 50 ms, durability sync): "
          f"median {lat[n // 2]:.1f} ms, max {lat[-1]:.1f} ms, min {lat[0]:.1f} ms")
    assert lat[-1] < 1000.0


# --------------------------------------------------------------------------- webhook

class Receiver:
    """A real local HTTP server that records deliveries; can fail N times or hang."""

    def __init__(self, fail: int = 0, hang: bool = False, tls: bool = False) -> None:
        self.fail, self.hang = fail, hang
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.attempts: list[float] = []
        self.release = threading.Event()
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                rec.attempts.append(time.monotonic())
                if rec.hang:
                    rec.release.wait(10)
                    return
                if rec.fail > 0:
                    rec.fail -= 1
                    self.send_response(500)
                else:
                    rec.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.client_ssl: ssl.SSLContext | None = None
        if tls:
            cert_pem, key_pem = _self_signed_cert()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.TemporaryDirectory() as tmp:
                Path(tmp, "c.pem").write_bytes(cert_pem)
                Path(tmp, "k.pem").write_bytes(key_pem)
                ctx.load_cert_chain(Path(tmp, "c.pem"), Path(tmp, "k.pem"))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.client_ssl = ssl.create_default_context(cadata=cert_pem.decode())
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/hooks/fastgate?x=1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


async def until(cond: Any, timeout: float = 5.0) -> None:
    give_up = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < give_up, "timed out"
        await asyncio.sleep(0.01)


def test_webhook_posts_signed_request_and_outcome(tmp_path: Path):
    secret = "s3cret-for-hmac"
    with Receiver() as rx:
        async def go() -> str:
            cfg = config(notify={"url": rx.url, "secret": secret, "format": "json"})
            async with Rig(tmp_path, cfg) as ap:
                aid = await ask(ap)
                await ap.admin_approve({"id": aid, "reviewer": "bob"})
                await until(lambda: len(rx.got) == 2)
                return aid
        aid = run(go())
    for headers, body in rx.got:
        want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-fastgate-signature"], want)
        assert abs(int(headers["x-fastgate-timestamp"]) - time.time()) < 30
        assert headers["content-type"] == "application/json"
    first, second = (orjson.loads(b) for _, b in rx.got)
    assert first["event"] == "approval.requested" and first["approval_id"] == aid
    assert (first["function"], first["caller"], first["rule"], first["state"]) == (
        "refund", "alice", "support-large-refunds", "pending")
    assert first["summary"] == SUMMARY and first["deadline"]
    assert (second["event"], second["state"], second["reviewer"]) == ("approval.decided", "approved", "bob")


def test_webhook_slack_format_and_retry_after_failures(tmp_path: Path):
    with Receiver(fail=2) as rx:
        async def go() -> dict:
            cfg = config(notify={"url": rx.url, "format": "slack"})
            async with Rig(tmp_path, cfg, notify_backoff=0.05) as ap:
                await ask(ap)
                await until(lambda: len(rx.got) == 1)
                return ap.stats["notify"]
        stats = run(go())
    assert len(rx.attempts) == 3 and stats["retries"] == 2 and stats["sent"] == 1
    assert rx.attempts[2] - rx.attempts[1] >= rx.attempts[1] - rx.attempts[0] >= 0.04   # backoff doubles
    headers, body = rx.got[0]
    assert "x-fastgate-signature" not in headers        # no secret configured
    text = orjson.loads(body)["text"]
    assert "requested" in text and "refund" in text and "alice" in text and "approvals approve" in text


def test_a_hanging_webhook_never_blocks_the_call_path(tmp_path: Path):
    with Receiver(hang=True) as rx:
        async def go() -> None:
            cfg = config(notify={"url": rx.url, "format": "json"})
            async with Rig(tmp_path, cfg, notify_timeout=5.0, notify_queue=3) as ap:
                t0 = time.monotonic()
                ids = [await ask(ap, BOT if i % 2 else ALICE) for i in range(4)]
                await ap.admin_approve({"id": ids[0], "reviewer": "bob"})
                held = asyncio.ensure_future(ap.wait(ids[2]))
                await ap.admin_deny({"id": ids[2], "reviewer": "bob"})
                assert await held == "denied"
                assert time.monotonic() - t0 < 1.0      # the receiver has not answered anything
                await until(lambda: len(rx.attempts) == 1)
                assert ap.stats["notify"]["dropped"] >= 1   # bounded queue: oldest dropped
        run(go())


def test_notifier_delivers_over_https(tmp_path: Path):
    with Receiver(tls=True) as rx:
        async def go() -> dict:
            notifier = Notifier(Target(rx.url, b"k3y-k3y", "json"), ssl_context=rx.client_ssl).start()
            try:
                notifier.post("approval.requested", {"id": "ap_x", "caller": {"subject": "alice"}, "state": "pending"})
                await until(lambda: len(rx.got) == 1)
                return notifier.stats
            finally:
                await notifier.close()
        stats = run(go())
    headers, body = rx.got[0]
    assert stats["sent"] == 1 and orjson.loads(body)["approval_id"] == "ap_x"
    assert headers["x-fastgate-signature"] == "sha256=" + hmac.new(b"k3y-k3y", body, hashlib.sha256).hexdigest()
