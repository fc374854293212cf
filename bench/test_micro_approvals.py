"""Cost of many held calls waiting for approval: memory, event-loop latency, expiry burst, wake time.

One scenario (uvloop, a fresh LMDB store in a temp dir, durability `batch`, one process):

1. 10,000 `approval.requested` appended concurrently (100 callers x 100), each then held by a
   task awaiting `wait()`; RSS is read before and after (index + futures + waiting tasks);
2. for 2 s a probe task sleeps 1 ms at a time and records how late it wakes, while the 10,000
   wait, the watcher polls every 50 ms and the expiry timer is armed (baseline: the same probe
   before any approval exists);
3. 100 are approved one by one through `admin_approve`; time from the call to the held task running;
4. the other 9,900 reach their deadlines (within the ~1 s their requests took); how late after its
   deadline each held call got `expired` (each expiry is an appended, committed event), and the
   probe's lag during that burst.

`test_index_heap_per_approval` counts the Python heap of the index alone with tracemalloc (RSS
also holds the LMDB pages this process touched, which the kernel can drop).

Figures go to `extra_info` and are printed; nothing is asserted about time (shared cores).
Run: python -m pytest bench/test_micro_approvals.py --benchmark-only -s
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import statistics
import time
from typing import Any

import uvloop

from fastgate.approvals import Approvals
from fastgate.config import ApprovalSpec, parse_config
from fastgate.identity import Caller
from fastgate.ids import new_request_id
from fastgate.store import Appender, Store

N = 10_000
SUMMARY = {"method": "POST", "path": "/refunds/A1", "args": {"amount": 500, "order_id": "A1", "note": "x" * 80}}


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def _probe(seconds: float, stop: asyncio.Event | None = None) -> list[float]:
    """Lateness (ms) of 1 ms sleeps over `seconds` (or until `stop`)."""
    lags: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not (stop is not None and stop.is_set()):
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append((time.perf_counter() - t0) * 1000 - 1.0)
    return lags


def _lag(lags: list[float]) -> dict[str, float]:
    lags = sorted(lags)
    return {"p50_ms": round(statistics.median(lags), 3), "p99_ms": round(lags[int(len(lags) * 0.99)], 3),
            "max_ms": round(lags[-1], 3)}


async def _scenario(path: Any) -> dict[str, Any]:
    cfg = parse_config({"version": 1, "approvals": {"reviewers": {"bob": ["leads"]}, "max_pending": 20000,
                                                    "max_pending_per_caller": 200}})
    store = Store(path, map_size=2**30, durability="batch")
    appender = Appender(store).start()
    ap = Approvals(store, appender, cfg)
    await ap.start()
    out: dict[str, Any] = {}
    try:
        out["loop_lag_idle"] = _lag(await _probe(1.0))
        callers = [Caller(f"agent-{i}", frozenset({"support"}), "jwt", {}) for i in range(100)]
        timeout = 12.0
        spec = ApprovalSpec(reviewers=["leads"], quorum=1, timeout=timeout, mode="hold")
        digest = hashlib.sha256(b"x").hexdigest()
        gc.collect()
        rss0 = _rss_kib()
        t0 = time.perf_counter()

        async def one(i: int) -> str:
            return await ap.request(session=new_request_id(), caller=callers[i % 100], function="refund",
                                    rule="big-refunds", spec=spec, request_hash=digest, summary=SUMMARY)
        ids: list[str] = []
        for start in range(0, N, 1000):       # arrivals in waves, as calls come in
            ids += await asyncio.gather(*(one(i) for i in range(start, start + 1000)))
        out["request_per_s"] = round(N / (time.perf_counter() - t0))
        gc.collect()
        rss_index = _rss_kib()
        held = [asyncio.ensure_future(ap.wait(aid)) for aid in ids]
        await asyncio.sleep(0.1)
        gc.collect()
        rss1 = _rss_kib()
        out["rss_index_kib"] = rss_index - rss0
        out["rss_total_kib"] = rss1 - rss0
        out["bytes_per_held_approval"] = round((rss1 - rss0) * 1024 / N)
        out["stats"] = ap.stats
        out["loop_lag_10k_waiting"] = _lag(await _probe(2.0))

        wakes = []
        for i in range(100):
            t = time.perf_counter()
            await ap.admin_approve({"id": ids[i], "reviewer": "bob"})
            await asyncio.wait_for(asyncio.shield(held[i]), 5)
            wakes.append((time.perf_counter() - t) * 1000)
        out["approve_to_wake_ms"] = {"p50": round(statistics.median(wakes), 3), "max": round(max(wakes), 3)}

        rest, resolved = held[100:], {}
        for aid, fut in zip(ids[100:], rest):
            fut.add_done_callback(lambda f, aid=aid: resolved.__setitem__(aid, time.time()))
        deadlines = {aid: ap._index[aid].deadline for aid in ids[100:]}
        stop = asyncio.Event()
        probe = asyncio.ensure_future(_probe(timeout + 30, stop))
        results = await asyncio.gather(*rest)
        stop.set()
        late = sorted((resolved[aid] - deadlines[aid]) * 1000 for aid in ids[100:])
        out["expiry_burst"] = {"approvals": len(rest), "all_expired": all(r == "expired" for r in results),
                               "deadlines_span_ms": round((max(deadlines.values()) - min(deadlines.values())) * 1000),
                               "late_p50_ms": round(statistics.median(late), 1),
                               "late_p99_ms": round(late[int(len(late) * 0.99)], 1),
                               "late_max_ms": round(late[-1], 1)}
        out["loop_lag_during_expiry"] = _lag(await probe)
    finally:
        await ap.close()
        await appender.close()
        store.close()
    return out


def test_10k_pending_held_approvals(benchmark, tmp_path):
    result: dict[str, Any] = {}

    def scenario() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result.update(runner.run(_scenario(tmp_path / "db")))

    benchmark.pedantic(scenario, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    for key, value in result.items():
        print(f"{key}: {value}")


def test_index_heap_per_approval(benchmark, tmp_path):
    """Python heap per pending approval in the index (tracemalloc), without waiting tasks."""
    import tracemalloc
    result: dict[str, Any] = {}

    async def measure() -> None:
        cfg = parse_config({"version": 1, "approvals": {"max_pending": 20000, "max_pending_per_caller": 200}})
        store = Store(tmp_path / "db2", map_size=2**30, durability="batch")
        appender = Appender(store).start()
        ap = Approvals(store, appender, cfg)
        await ap.start()
        callers = [Caller(f"agent-{i}", frozenset({"support"}), "jwt", {}) for i in range(100)]
        spec = ApprovalSpec(reviewers=["leads"], quorum=1, timeout=600, mode="hold")
        digest = hashlib.sha256(b"x").hexdigest()
        try:
            tracemalloc.start()
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            for start in range(0, N, 1000):
                await asyncio.gather(*(ap.request(
                    session=new_request_id(), caller=callers[i % 100], function="refund", rule="big-refunds",
                    spec=spec, request_hash=digest, summary=SUMMARY) for i in range(start, start + 1000)))
            await asyncio.sleep(0.05)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            result["index_heap_bytes_per_pending"] = round((after - before) / N)
            one = next(iter(ap._index))
            held = asyncio.ensure_future(ap.wait(one))
            await asyncio.sleep(0)
            tracemalloc.start()
            gc.collect()
            b0 = tracemalloc.get_traced_memory()[0]
            extra = [asyncio.ensure_future(ap.wait(one)) for _ in range(1000)]
            await asyncio.sleep(0)
            result["waiter_heap_bytes"] = round((tracemalloc.get_traced_memory()[0] - b0) / 1000)
            tracemalloc.stop()
            for fut in [held, *extra]:
                fut.cancel()
            await asyncio.gather(held, *extra, return_exceptions=True)
        finally:
            await ap.close()
            await appender.close()
            store.close()

    def scenario() -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(measure())

    benchmark.pedantic(scenario, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    for key, value in result.items():
        print(f"{key}: {value}")
