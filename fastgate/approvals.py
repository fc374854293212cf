"""Just-in-time approvals: one call, bound to its caller, function and request hash, decided by people.

The store is the truth: an approval is the `approval.requested` event plus the `approval.decided`
events that name its `approval_id`. Every process (each worker, and the parent that serves the
admin socket) keeps an in-memory index derived from those events:

- `start()` rebuilds it by scanning the store once (only events whose bytes start with
  `{"approval_id":` are decoded: see `_MARK`);
- a watcher polls the store head every `poll_interval` (50 ms) and applies only the new range,
  so a decision taken in one process reaches a call held in another within ~one poll;
- a process applies its own appends at once (it reads up to the committed seq right after the
  append returns), so its own answers never lag.

## Events written

`approval.requested` (records.approval_requested plus `caller` {subject, groups, auth, name},
`function`, `request_hash`, `summary` (the masked method/path/args reviewers see) and `deadline`);
`approval.decided` (records.approval_decided) with outcome `approved` / `denied` (one per reviewer,
with the reviewer and comment), `expired`, `withdrawn` (comment = why), `used` (`used_in` = the
retried call's request id). All in the session of the call that asked, so `sessions.show` of that
call tells the whole story.

## Derivation (the same in every process, because it depends on event order only)

    requested -> pending
    pending   + approved by R  -> R counted once; quorum distinct reviewers -> approved
    pending   + denied | expired | withdrawn -> that state (first decisive event wins)
    approved  + used                  -> used        (consumed by the retried call: async mode,
                                                    or an MCP 2026-07-28 retry in either mode)
    approved  + expired (async mode)  -> expired     (granted but not used before the deadline)

Anything else (a second vote by the same reviewer, a decision after the outcome, a second `used`
from another worker) stays in the record as history but changes nothing. Races between
processes are therefore settled by the store's seq order: a process that appends a decision
reads back up to that event's seq and answers by whether it counted. This is how a second
redeem of one approval, in any worker, is refused even when both raced.

Hold mode: `approved` is final (the held call is forwarded; an MCP retry spends it); async mode:
`approved` until used or the deadline. One deadline (`spec.timeout` after the request) bounds both deciding and, in
async mode, using the approval.

## Expiry

One heap of deadlines and one timer per process (not one per approval). The process that
created an approval closes it at its deadline (appending `approval.decided` outcome `expired`);
every other process would do so only 1-2 s later (randomized per process) if the approval is
still open then, which covers a crashed creator without a writer election. Duplicates are
possible in a race and harmless (first decisive event wins). If the store refuses the expiry,
the local held calls are answered `expired` anyway (fail closed) and the write is retried.

## Notifications

Sent by the process whose append was decisive (the requester for new approvals, the admin
process for decisions, the expiring or withdrawing process), so N workers do not send N copies.
See `fastgate.notify`.

## Memory

An index entry is a slotted object with the event's strings; request summaries larger than
4 KiB stay in the store and are read back when shown. Terminal approvals are dropped from
memory `retain` (24 h) after their deadline; an unknown id is refused like a denied one.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import math
import os
import random
import sys
import time
from collections.abc import Iterable
from typing import Any

import lmdb
import orjson

from fastgate import records
from fastgate.admin import AdminError
from fastgate.notify import Notifier, Target
from fastgate.store import StoreForked, StoreUnavailable

__all__ = ["ApprovalRefused", "Approvals", "new_approval_id"]

# Stored events are canonical JSON with sorted keys, and no key of an approval event sorts before
# `approval_id`, so every approval event starts with these bytes; other events do not (call.started
# has `approval`, which sorts first). An O(1) filter: the watcher reads every event of every worker.
_MARK = b'{"approval_id":'
_MAX_READ = 4096             # events per store read in the event loop (more: next loop turn)
_EXPIRE_BATCH = 256          # expiries started per timer turn (a burst is spread over loop turns)
_IN_STORE = object()
_ID_MAX = 64
_TEXT_MAX = 4096
OUTCOMES = ("approved", "denied", "expired", "withdrawn", "used")


class ApprovalRefused(Exception):
    """What the pipeline answers instead of forwarding: `status`, contract `body`, `retry_after` (s)."""

    def __init__(self, status: int, body: dict[str, Any], retry_after: int | None = None) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body
        self.retry_after = retry_after


def new_approval_id() -> str:
    """`ap_` + 26 base32 characters: 128 random bits, so ids cannot be guessed or enumerated."""
    return "ap_" + base64.b32encode(os.urandom(16)).decode("ascii").rstrip("=").lower()


def _denied(detail: str) -> ApprovalRefused:
    return ApprovalRefused(403, {"error": "approval_denied", "detail": detail})


def _expired() -> ApprovalRefused:
    return ApprovalRefused(403, {"error": "approval_expired"})


def _caller_dict(caller: Any) -> dict[str, Any]:
    get = caller.get if isinstance(caller, dict) else (lambda k, d=None: getattr(caller, k, d))
    return {"subject": str(get("subject")), "groups": sorted(str(g) for g in get("groups", ()) or ()),
            "auth": str(get("auth")), "name": get("name")}


def _clamp(seconds: float, lo: int, hi: int) -> int:
    return int(max(lo, min(hi, math.ceil(seconds))))


class _Approval:
    """One approval as derived from its events (see the module docstring)."""

    __slots__ = (
        "caller",
        "claimed",
        "deadline",
        "deadline_ts",
        "decided_at",
        "decided_by",
        "expiring",
        "function",
        "history",
        "id",
        "mode",
        "own",
        "quorum",
        "request_hash",
        "requested_at",
        "reviewers",
        "rule",
        "seq",
        "session",
        "state",
        "summary",
        "votes",
        "waiters",
    )

    def __init__(self, ev: dict[str, Any], seq: int | None, caller: dict[str, Any],
                 reviewers: tuple[str, ...], summary: Any) -> None:
        self.id: str = ev["approval_id"]
        self.seq = seq
        self.session: str = ev["session"]
        self.function: str | None = _intern(ev.get("function"))
        self.rule: str | None = _intern(ev.get("rule"))
        self.caller = caller
        self.reviewers = reviewers
        self.quorum: int = int(ev.get("quorum") or 1)
        self.mode: str = "async" if ev.get("mode") == "async" else "hold"
        self.requested_at: str = ev["ts"]
        self.deadline_ts: str = ev["deadline"]
        self.deadline: float = records.ts_to_epoch(self.deadline_ts)
        self.request_hash: str | None = ev.get("request_hash")
        self.summary = summary     # _IN_STORE: read back from event `seq` when shown
        self.state = "pending"
        self.votes: list[str] | None = None
        self.history: list[tuple[int | None, str, str | None, str | None, str, bool]] | None = None
        self.decided_at: str | None = None
        self.decided_by: str | None = None
        self.own = False           # requested by this process in this run: it expires it on time
        self.claimed = False       # a redeem is in flight in this process
        self.expiring = False      # an expiry append is in flight in this process
        self.waiters: list[asyncio.Future] | None = None

    @property
    def caller_key(self) -> tuple[str | None, str | None]:
        return (self.caller.get("subject"), self.caller.get("auth"))

    def open(self) -> bool:
        """Can still change by expiry: pending, or granted in async mode and not yet used."""
        return self.state == "pending" or (self.state == "approved" and self.mode == "async")


def _intern(value: Any) -> Any:
    return sys.intern(value) if isinstance(value, str) else value


def _wait_result(state: str) -> str | None:
    if state in ("approved", "used"):
        return "approved"
    if state in ("denied", "withdrawn"):
        return "denied"
    if state == "expired":
        return "expired"
    return None


class Approvals:
    """The approval engine of one process. See the module docstring for the model."""

    def __init__(self, store: Any, appender: Any, config: Any, log: Any = None, *,
                 poll_interval: float = 0.05, expiry_grace: float = 1.0, retain: float = 86400.0,
                 notify_backoff: float = 0.5, notify_timeout: float = 5.0, notify_queue: int = 1000) -> None:
        self.store = store
        self.appender = appender
        self.log = log
        self.poll_interval = poll_interval
        self.retain = retain
        self._grace = expiry_grace * (1.0 + random.random())   # spread the fallback writers apart
        self._notify_backoff, self._notify_timeout, self._notify_queue = notify_backoff, notify_timeout, notify_queue
        self._index: dict[str, _Approval] = {}
        self._heap: list[tuple[float, str]] = []
        self._interned: dict[Any, Any] = {}
        self._callers: dict[tuple, dict[str, Any]] = {}
        self._last_seq = 0
        self._pending = 0
        self._pending_by: dict[tuple[str | None, str | None], int] = {}
        self._reserved = 0
        self._reserved_by: dict[tuple[str | None, str | None], int] = {}
        self._waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._watcher: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._notifier: Notifier | None = None
        self._target: Target | None = None
        self._read_error: str | None = None
        self._closed = False
        self._counts = {"requested": 0, "decided": 0, "expired": 0, "withdrawn": 0, "used": 0, "refused_cap": 0}
        self.reconfigure(config)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Rebuild the index from the store, then start the expiry timer, the watcher and the notifier."""
        await asyncio.to_thread(self._rebuild)
        self._loop = asyncio.get_running_loop()
        if self._target is not None and self._notifier is None:
            self._notifier = self._new_notifier(self._target)
        if self._notifier is not None:
            self._notifier.start()
        if self._heap:
            self._arm(self._heap[0][0])
        self._watcher = self._loop.create_task(self._watch(), name="fastgate-approvals-watch")

    async def close(self) -> None:
        """Let in-flight expiry/withdraw appends finish (2 s at most), stop, fail held calls with 503."""
        if self._closed:
            return
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for task in list(self._tasks):
            task.cancel()
        for entry in self._index.values():
            for fut in entry.waiters or ():
                if not fut.done():
                    fut.set_exception(StoreUnavailable("the gateway is shutting down"))
            entry.waiters = None
        if self._notifier is not None:
            await self._notifier.close()

    def reconfigure(self, config: Any) -> None:
        """Take a reloaded config's reviewer map, caps and webhook. Pending approvals keep the
        reviewers, quorum, deadline and mode they were requested with (those are in their event)."""
        section = config.approvals
        self._reviewer_groups = {name: frozenset(groups) for name, groups in section.reviewers.items()}
        self.max_pending = section.max_pending
        self.max_pending_per_caller = section.max_pending_per_caller
        target = Target.from_config(section.notify)
        if target == self._target:
            return
        self._target = target
        if self._notifier is None:
            if target is not None and self._loop is not None and not self._closed:
                self._notifier = self._new_notifier(target).start()
        elif target is None:
            old, self._notifier = self._notifier, None
            self._spawn(old.close())
        else:
            self._notifier.target = target

    def _new_notifier(self, target: Target) -> Notifier:
        return Notifier(target, log=self.log, max_queue=self._notify_queue, backoff=self._notify_backoff,
                        timeout=self._notify_timeout)

    @property
    def stats(self) -> dict[str, Any]:
        """For `status`: open approvals store-wide (as this process sees them) and this process's work."""
        out: dict[str, Any] = {"pending": self._pending, "held_here": self._waiting,
                               "tracked": len(self._index), "seen_seq": self._last_seq, **self._counts}
        if self._notifier is not None:
            out["notify"] = {"queued": self._notifier.queued, **self._notifier.stats}
        if self._read_error is not None:
            out["read_error"] = self._read_error
        return out

    # ------------------------------------------------------------------ reading the store
    def _rebuild(self) -> None:
        try:
            with self.store.read() as snap:
                head, _ = snap.head()
                for seq, raw in snap.events(1, head):
                    if raw.startswith(_MARK):
                        self._apply_raw(seq, raw)
                self._last_seq = head
        except lmdb.Error as exc:
            raise StoreUnavailable(f"store read failed: {exc}") from None
        self._prune(time.time())

    def _apply_raw(self, seq: int, raw: bytes) -> None:
        try:
            ev = orjson.loads(raw)
            self._apply(ev, seq)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            self._log("warning", "skipped a malformed approval event", seq=seq, error=str(exc))

    def _read_new(self, limit: int = _MAX_READ) -> int:
        """Apply up to `limit` new events; return how many remain after them. Raises StoreUnavailable."""
        try:
            with self.store.read() as snap:
                head, _ = snap.head()
                if head <= self._last_seq:
                    return 0
                end = min(head, self._last_seq + limit)
                for seq, raw in snap.events(self._last_seq + 1, end):
                    if raw.startswith(_MARK):
                        self._apply_raw(seq, raw)
                self._last_seq = end
                return head - end
        except (lmdb.Error, StoreForked) as exc:
            raise StoreUnavailable(f"store read failed: {exc}") from None

    def _catch_up_to(self, seq: int) -> None:
        while self._last_seq < seq:
            before = self._last_seq
            self._read_new(1 << 30)
            if self._last_seq == before:
                raise StoreUnavailable(f"event {seq} was committed but is not visible in the store")

    def _poll(self) -> None:
        if self._closed:
            return
        try:
            remaining = self._read_new()
        except StoreUnavailable as exc:
            if self._read_error is None:
                self._log("error", "approvals cannot read the store", error=str(exc))
            self._read_error = str(exc)
            return
        if self._read_error is not None:
            self._log("info", "approvals read the store again")
            self._read_error = None
        if remaining and self._loop is not None:
            self._loop.call_soon(self._poll)

    async def _watch(self) -> None:
        next_prune = time.monotonic() + 60.0
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                self._poll()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + 60.0
                    self._prune(time.time())
            except Exception as exc:  # noqa: BLE001 - a dead watcher would strand every held call
                self._log("error", "approvals watcher failed; continuing", error=repr(exc))

    def _prune(self, now: float) -> None:
        gone = [aid for aid, e in self._index.items()
                if not e.open() and not e.waiters and e.deadline + self.retain < now]
        for aid in gone:
            del self._index[aid]

    # ------------------------------------------------------------------ derivation
    def _shared(self, value: Any) -> Any:
        """One copy of values that repeat across approvals (reviewer lists)."""
        if len(self._interned) > 50_000:
            self._interned.clear()
        return self._interned.setdefault(value, value)

    def _shared_caller(self, caller: Any) -> dict[str, Any]:
        """One (read-only) caller dict per distinct caller, not one per approval."""
        c = caller if isinstance(caller, dict) else {}
        key = (c.get("subject"), c.get("auth"), c.get("name"), tuple(c.get("groups") or ()))
        found = self._callers.get(key)
        if found is None:
            if len(self._callers) > 50_000:
                self._callers.clear()
            found = self._callers[key] = {"subject": _intern(key[0]), "groups": list(key[3]),
                                          "auth": _intern(key[1]), "name": key[2]}
        return found

    def _apply(self, ev: dict[str, Any], seq: int | None) -> None:
        etype, aid = ev.get("type"), ev.get("approval_id")
        if not isinstance(aid, str):
            return
        if etype == "approval.requested":
            if aid in self._index:
                return
            entry = _Approval(ev, seq, self._shared_caller(ev.get("caller")),
                              self._shared(tuple(str(r) for r in ev.get("reviewers") or ())),
                              _IN_STORE if seq is not None else ev.get("summary"))
            self._index[aid] = entry
            self._pending += 1
            key = entry.caller_key
            self._pending_by[key] = self._pending_by.get(key, 0) + 1
            heapq.heappush(self._heap, (entry.deadline, aid))
            self._arm(entry.deadline)
            return
        if etype != "approval.decided":
            return
        found = self._index.get(aid)
        if found is None:
            return
        entry = found
        outcome, reviewer = ev.get("outcome"), ev.get("reviewer")
        before = entry.state
        counted = False
        if before == "pending":
            if outcome == "approved" and isinstance(reviewer, str) and reviewer not in (entry.votes or ()):
                entry.votes = [*(entry.votes or ()), reviewer]
                counted = True
                if len(entry.votes) >= entry.quorum:
                    entry.state = "approved"
            elif outcome in ("denied", "expired", "withdrawn"):
                entry.state = outcome
                counted = True
        elif before == "approved" and (outcome == "used" or (entry.mode == "async" and outcome == "expired")):
            entry.state = outcome
            counted = True
        hist = (seq, str(outcome), reviewer, ev.get("comment"), str(ev.get("ts")), counted)
        entry.history = [*(entry.history or ()), hist]
        if entry.state == before:
            return
        if before == "pending":
            entry.decided_at, entry.decided_by = ev.get("ts"), reviewer
            self._pending -= 1
            key = entry.caller_key
            left = self._pending_by.get(key, 1) - 1
            if left > 0:
                self._pending_by[key] = left
            else:
                self._pending_by.pop(key, None)
        result = _wait_result(entry.state)
        if entry.waiters and result is not None:
            for fut in entry.waiters:
                if not fut.done():
                    fut.set_result(result)
            entry.waiters = None

    # ------------------------------------------------------------------ expiry
    def _arm(self, when: float) -> None:
        if self._loop is None or self._closed or when >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_later(max(0.0, when - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self._poll()                          # another process may have closed some already
        now = time.time()
        due: list[_Approval] = []
        while self._heap and self._heap[0][0] <= now and len(due) < _EXPIRE_BATCH:
            when, aid = heapq.heappop(self._heap)
            entry = self._index.get(aid)
            if entry is None or not entry.open() or entry.expiring:
                continue
            if not entry.own and when < entry.deadline + self._grace:
                heapq.heappush(self._heap, (entry.deadline + self._grace, aid))
                continue
            entry.expiring = True
            due.append(entry)
        if due:
            self._spawn(self._expire(due))
        if self._heap:
            self._arm(self._heap[0][0])

    async def _expire(self, due: list[_Approval]) -> None:
        events = [records.approval_decided(
            e.session, approval_id=e.id, outcome="expired",
            comment="no decision before the deadline" if e.state == "pending" else "approved but not used before the deadline")
            for e in due]
        results = await asyncio.gather(*(self._append(ev) for ev in events), return_exceptions=True)
        for entry, ev, result in zip(due, events, results):
            entry.expiring = False
            counted = False
            if not isinstance(result, BaseException):
                try:
                    counted = await self._settle(entry, result, ev)
                except StoreUnavailable as exc:
                    result = exc
            if isinstance(result, BaseException):
                self._log("error", "could not record an approval's expiry; retrying in 1 s",
                          approval=entry.id, error=str(result))
                for fut in entry.waiters or ():     # fail closed: the held call is refused anyway
                    if not fut.done():
                        fut.set_result("expired")
                entry.waiters = None
                heapq.heappush(self._heap, (time.time() + 1.0, entry.id))
                self._arm(self._heap[0][0])
                continue
            if counted:
                self._counts["expired"] += 1
                self._notify("approval.decided", entry)

    # ------------------------------------------------------------------ appending
    async def _append(self, event: dict[str, Any]) -> Any:
        return await self.appender.append(event)

    async def _settle(self, entry: _Approval, committed: Any, ev: dict[str, Any]) -> bool:
        """After appending `ev`: read the store up to it; did it count (first decisive event wins)?"""
        if committed is not None:
            self._catch_up_to(committed.seq)
            for hist in reversed(entry.history or ()):
                if hist[0] == committed.seq:
                    return hist[5]
            return False
        # durability "none": the event is only queued; wait (briefly) until it is in the store
        key = (ev["outcome"], ev.get("reviewer"), ev["ts"])
        give_up = time.monotonic() + 2.0
        while True:
            self._read_new(1 << 30)
            for hist in entry.history or ():
                if (hist[1], hist[2], hist[4]) == key:
                    return hist[5]
            if time.monotonic() > give_up:
                raise StoreUnavailable("the decision did not reach the store")
            await asyncio.sleep(0.002)

    def _spawn(self, coro: Any) -> None:
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log("error", "approval background task failed", error=repr(task.exception()))

    # ------------------------------------------------------------------ data plane
    async def request(self, *, session: str, caller: Any, function: str, rule: str | None, spec: Any,
                      request_hash: str, summary: dict[str, Any]) -> str:
        """Record `approval.requested` durably and return the new approval id.

        Raises ApprovalRefused(429, too_many_pending) past `max_pending` (all callers) or
        `max_pending_per_caller`, and StoreUnavailable when it cannot be recorded."""
        who = _caller_dict(caller)
        key = (who["subject"], who["auth"])
        now = time.time()
        if (self._pending + self._reserved >= self.max_pending
                or self._pending_by.get(key, 0) + self._reserved_by.get(key, 0) >= self.max_pending_per_caller):
            self._counts["refused_cap"] += 1
            soonest = self._heap[0][0] - now if self._heap else 60.0
            raise ApprovalRefused(429, {"error": "too_many_pending"}, retry_after=_clamp(soonest, 1, 60))
        aid = new_approval_id()
        deadline = math.floor((now + float(spec.timeout)) * 1000) / 1000
        ev = records.approval_requested(session, approval_id=aid, rule=rule, reviewers=list(spec.reviewers),
                                        quorum=int(spec.quorum), timeout_s=float(spec.timeout), mode=spec.mode,
                                        ts=records.now_ts(now))
        ev.update(caller=who, function=function, request_hash=request_hash, summary=summary,
                  deadline=records.now_ts(deadline))
        self._reserved += 1
        self._reserved_by[key] = self._reserved_by.get(key, 0) + 1
        try:
            committed = await self._append(ev)
        finally:
            self._reserved -= 1
            left = self._reserved_by[key] - 1
            if left:
                self._reserved_by[key] = left
            else:
                del self._reserved_by[key]
        if committed is not None:
            self._catch_up_to(committed.seq)
        else:
            self._apply(ev, None)
        entry = self._index[aid]
        entry.own = True
        self._counts["requested"] += 1
        self._notify("approval.requested", entry, summary=summary)
        return aid

    def pending_retry_after(self, approval_id: str) -> int:
        """A Retry-After (seconds) for a 202 on this approval: 1-5 s, never past its deadline."""
        entry = self._index.get(approval_id)
        remaining = entry.deadline - time.time() if entry is not None else 5.0
        return _clamp(remaining, 1, 5)

    async def wait(self, approval_id: str) -> str:
        """Hold mode: "approved" | "denied" | "expired" once decided. One future per waiter, resolved
        by whichever read of the store applies the outcome; the deadline comes from the expiry timer.
        KeyError for an unknown id; StoreUnavailable if the engine closes meanwhile."""
        entry = self._index.get(approval_id)
        if entry is None:
            raise KeyError(f"unknown approval {approval_id!r}")
        result = _wait_result(entry.state)
        if result is not None:
            return result
        if self._closed:
            raise StoreUnavailable("the gateway is shutting down")
        fut = (self._loop or asyncio.get_running_loop()).create_future()
        entry.waiters = [*(entry.waiters or ()), fut]
        self._waiting += 1
        try:
            return await fut
        finally:
            self._waiting -= 1
            if entry.waiters and fut in entry.waiters:
                entry.waiters.remove(fut)

    def withdraw(self, approval_id: str, reason: str) -> None:
        """The held caller went away: record `withdrawn` in the background (if still pending)."""
        entry = self._index.get(approval_id)
        if entry is None or entry.state != "pending" or self._closed:
            return
        ev = records.approval_decided(entry.session, approval_id=approval_id, outcome="withdrawn",
                                      comment=str(reason)[:_TEXT_MAX])
        self._spawn(self._record(entry, ev, "withdrawn"))

    async def _record(self, entry: _Approval, ev: dict[str, Any], what: str) -> None:
        try:
            committed = await self._append(ev)
            counted = await self._settle(entry, committed, ev)
        except (StoreUnavailable, ValueError) as exc:
            self._log("error", f"could not record an approval {what}", approval=entry.id, error=str(exc))
            return
        if counted:
            self._counts[what] += 1
            self._notify("approval.decided", entry)

    def find(self, approval_id: str) -> _Approval | None:
        """The approval, reading the store once more if another worker made it a moment ago."""
        entry = self._index.get(approval_id)
        if entry is None and not self._closed:
            self._read_new(1 << 30)
            entry = self._index.get(approval_id)
        return entry

    def _owned(self, approval_id: Any, caller: Any, function: str | None,
               request_hash: str | None) -> _Approval | None:
        """The approval if `caller` requested it (for this function and call, when given)."""
        entry = self.find(approval_id) if isinstance(approval_id, str) else None
        if entry is None:
            return None
        who = _caller_dict(caller)
        if ((who["subject"], who["auth"]) != entry.caller_key
                or (function is not None and entry.function != function)
                or (request_hash is not None and entry.request_hash != request_hash)):
            return None
        return entry

    def granted(self, approval_id: str, *, caller: Any, function: str, request_hash: str) -> bool:
        """True when this caller already used this approval for this exact call (an MCP call the
        upstream continues over more round trips after the approval was spent on it)."""
        entry = self._owned(approval_id, caller, function, request_hash)
        return entry is not None and entry.state == "used"

    def withdraw_own(self, approval_id: str, *, caller: Any, reason: str, function: str | None = None,
                     request_hash: str | None = None) -> bool:
        """The requester takes its own pending call back (it declined to wait): never a vote."""
        entry = self._owned(approval_id, caller, function, request_hash)
        if entry is None or entry.state != "pending":
            return False
        self.withdraw(approval_id, reason)
        return True

    async def redeem(self, approval_id: str, *, caller: Any, function: str, request_hash: str,
                     session: str | None = None, any_mode: bool = False) -> None:
        """Async mode: consume a granted approval for this exact retry, or raise ApprovalRefused.

        Identity is checked before state, so another caller learns nothing about the approval.
        `session` (optional) is the retried call's request id, recorded as `used_in`.
        `any_mode` also takes hold-mode approvals: an MCP retry (2026-07-28) is the call that
        waited, and spending the approval keeps a copied `requestState` from running it twice."""
        entry = self.find(approval_id) if isinstance(approval_id, str) else None
        if entry is None:
            raise _denied("unknown")
        who = _caller_dict(caller)
        if (who["subject"], who["auth"]) != entry.caller_key:
            raise _denied("mismatch")
        if (entry.function != function or entry.request_hash != request_hash
                or (entry.mode != "async" and not any_mode)):
            raise _denied("mismatch")
        now = time.time()
        state = entry.state
        if state == "expired" or (entry.open() and now >= entry.deadline):
            raise _expired()
        if state == "pending":
            raise ApprovalRefused(202, {"status": "pending", "approval_id": approval_id},
                                  retry_after=_clamp(entry.deadline - now, 1, 5))
        if state != "approved":
            raise _denied(state)
        if entry.claimed:
            raise _denied("used")
        entry.claimed = True
        ev = records.approval_decided(entry.session, approval_id=approval_id, outcome="used")
        if session is not None:
            ev["used_in"] = session
        try:
            committed = await self._append(ev)
            counted = await self._settle(entry, committed, ev)
        except BaseException:
            entry.claimed = entry.state == "used"
            raise
        if not counted:                  # another worker used it first, or it expired meanwhile
            raise _expired() if entry.state == "expired" else _denied("used")
        self._counts["used"] += 1

    # ------------------------------------------------------------------ admin socket
    def _lookup(self, args: dict[str, Any]) -> _Approval:
        aid = args.get("id")
        if not isinstance(aid, str) or not aid:
            raise AdminError("bad_request", "args.id must be an approval id")
        entry = self._index.get(aid)
        if entry is None:
            raise AdminError("not_found", f"no approval {aid[:_ID_MAX]!r} (decided approvals are kept "
                             f"{self.retain / 3600:g} h in memory; see sessions show for older ones)")
        return entry

    def _admitted(self, entry: _Approval, reviewer: str) -> bool:
        allowed = entry.reviewers
        return f"user:{reviewer}" in allowed or not self._reviewer_groups.get(reviewer, frozenset()).isdisjoint(allowed)

    async def admin_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """`approvals.list [state] [limit]`: pending first (soonest deadline first), then the rest newest first."""
        want = args.get("state")
        if want is not None and want not in ("pending", *OUTCOMES):
            raise AdminError("bad_request", f"args.state must be pending or one of {', '.join(OUTCOMES)}")
        limit = args.get("limit", 200)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise AdminError("bad_request", "args.limit must be an integer from 1 to 100000")
        self._poll()
        pending = sorted((e for e in self._index.values() if e.state == "pending"), key=lambda e: e.deadline)
        rest = sorted((e for e in self._index.values() if e.state != "pending"),
                      key=lambda e: e.requested_at, reverse=True)
        chosen: Iterable[_Approval] = pending + rest
        if want is not None:
            chosen = (e for e in chosen if e.state == want)
        out: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            try:
                snap = stack.enter_context(self.store.read())      # one read for every summary
            except StoreUnavailable:
                snap = None
            for entry in chosen:
                if len(out) >= limit:
                    break
                out.append(self._view(entry, snap=snap))
        return out

    async def admin_show(self, args: dict[str, Any]) -> dict[str, Any]:
        """`approvals.show {id}`: the view plus every decision event (counted or not) and the hash."""
        self._poll()
        return self._view(self._lookup(args), full=True)

    async def admin_approve(self, args: dict[str, Any]) -> dict[str, Any]:
        """`approvals.approve {id, reviewer, comment?}`."""
        return await self._decide(args, "approved", args.get("comment"))

    async def admin_deny(self, args: dict[str, Any]) -> dict[str, Any]:
        """`approvals.deny {id, reviewer, reason?}`."""
        return await self._decide(args, "denied", args.get("reason"))

    async def _decide(self, args: dict[str, Any], outcome: str, comment: Any) -> dict[str, Any]:
        self._poll()
        entry = self._lookup(args)
        reviewer = args.get("reviewer")
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise AdminError("bad_request", "args.reviewer must name the reviewer")
        if comment is not None and (not isinstance(comment, str) or len(comment) > _TEXT_MAX):
            raise AdminError("bad_request", f"the comment/reason must be a string of at most {_TEXT_MAX} characters")
        if not self._admitted(entry, reviewer):
            raise AdminError("forbidden", f"{reviewer!r} may not decide approval {entry.id}: rule "
                             f"{entry.rule!r} admits {', '.join(entry.reviewers)} (see approvals.reviewers)")
        if reviewer in (entry.caller.get("subject"), entry.caller.get("name")):
            raise AdminError("forbidden", f"{reviewer!r} cannot decide their own call")
        if entry.state == "pending" and time.time() >= entry.deadline:
            raise AdminError("bad_request", f"approval {entry.id} is already expired")
        if entry.state != "pending":
            raise AdminError("bad_request", f"approval {entry.id} is already {entry.state}")
        if outcome == "approved" and reviewer in (entry.votes or ()):
            return {**self._view(entry), "note": f"{reviewer} already approved; each reviewer counts once"}
        ev = records.approval_decided(entry.session, approval_id=entry.id, outcome=outcome, reviewer=reviewer,
                                      comment=comment)
        committed = await self._append(ev)
        counted = await self._settle(entry, committed, ev)
        if not counted:
            if outcome == "approved" and reviewer in (entry.votes or ()):
                return {**self._view(entry), "note": f"{reviewer} already approved; each reviewer counts once"}
            raise AdminError("bad_request", f"approval {entry.id} is already {entry.state} "
                             "(the decision is recorded but did not count)")
        self._counts["decided"] += 1
        if entry.state != "pending":
            self._notify("approval.decided", entry)
        return self._view(entry, full=True)

    # ------------------------------------------------------------------ views
    def _summary(self, entry: _Approval, snap: Any = None) -> Any:
        if entry.summary is not _IN_STORE:
            return entry.summary
        if entry.seq is None:
            return None
        try:
            if snap is not None:
                ev = snap.event(entry.seq)
            else:
                with self.store.read() as own:
                    ev = own.event(entry.seq)
        except (StoreUnavailable, lmdb.Error, StoreForked):
            return None
        return ev.get("summary") if ev else None

    def _view(self, entry: _Approval, *, full: bool = False, summary: Any = _IN_STORE,
              snap: Any = None) -> dict[str, Any]:
        votes = [{"reviewer": h[2], "comment": h[3], "ts": h[4]}
                 for h in entry.history or () if h[5] and h[1] == "approved"]
        view: dict[str, Any] = {
            "id": entry.id, "state": entry.state, "function": entry.function, "caller": dict(entry.caller),
            "rule": entry.rule, "requested_at": entry.requested_at, "deadline": entry.deadline_ts,
            "quorum": entry.quorum, "approvals": votes, "reviewers": list(entry.reviewers), "mode": entry.mode,
            "decided_at": entry.decided_at, "decided_by": entry.decided_by, "session": entry.session,
            "summary": self._summary(entry, snap) if summary is _IN_STORE else summary}
        if full:
            view["request_hash"] = entry.request_hash
            view["decisions"] = [{"seq": h[0], "outcome": h[1], "reviewer": h[2], "comment": h[3], "ts": h[4],
                                  "counted": h[5]} for h in entry.history or ()]
        return view

    def _notify(self, event: str, entry: _Approval, *, summary: Any = _IN_STORE) -> None:
        if self._notifier is not None:
            self._notifier.post(event, self._view(entry, summary=summary))

    def _log(self, level: str, msg: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.event(level, msg, **fields)
