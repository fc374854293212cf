"""Micro-benchmarks of the write-ahead record path: appends per second through `Appender`.

One round awaits `batch` concurrent appends of a ~1 KB `call.started` event (what the pipeline
writes before forwarding), so `batch` is the group-commit size the writer sees. `load32` is the
gateway's shape: 32 tasks (connections), each awaiting its own append, then the next. Every case
runs on uvloop (as the workers do) against a fresh LMDB environment in a temp dir, with and
without the JSONL export. `extra_info.appends_per_s` is the figure to read; nothing is asserted
about time (shared cores). Run: python -m pytest bench/test_micro_store.py --benchmark-only
"""
from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from fastgate import records
from fastgate.records import Exporter
from fastgate.store import Appender, Store

BODY = b'{"order_id": "A1", "amount": 42.5, "reason": "' + b"r" * 700 + b'"}'


def _event(i: int) -> dict:
    return records.call_started(
        f"01JDBENCH{i:017d}", caller={"subject": "alice", "groups": ["support"], "auth": "jwt"},
        function="refund", decision="allow", rule="support-small-refunds", method="POST",
        path="/refunds/A1", headers=[(b"content-type", b"application/json"), (b"accept", b"*/*")],
        body=BODY, max_body_bytes=64 * 1024)


class _Rig:
    def __init__(self, tmp_path, durability: str, export: bool) -> None:
        self.loop = uvloop.new_event_loop()
        self.store = Store(tmp_path / "db", map_size=2**30, durability=durability)
        exporter = Exporter(tmp_path / "audit", fsync=durability == "sync") if export else None

        async def start() -> Appender:
            return Appender(self.store, exporter=exporter).start()
        self.app = self.loop.run_until_complete(start())
        self.events = [_event(i) for i in range(100)]

    def burst(self, n: int) -> None:
        async def go() -> None:
            await asyncio.gather(*(self.app.append(self.events[i % 100]) for i in range(n)))
        self.loop.run_until_complete(go())

    def load(self, tasks: int, per_task: int) -> None:
        async def conn(k: int) -> None:
            for i in range(per_task):
                await self.app.append(self.events[(k + i) % 100])

        async def go() -> None:
            await asyncio.gather(*(conn(k) for k in range(tasks)))
        self.loop.run_until_complete(go())

    def close(self) -> dict:
        stats = dict(self.app.stats)
        self.loop.run_until_complete(self.app.close())
        self.loop.close()
        self.store.close()
        return stats


@pytest.fixture
def rig(tmp_path, request):
    made: list[_Rig] = []

    def make(durability: str, export: bool) -> _Rig:
        r = _Rig(tmp_path, durability, export)
        made.append(r)
        return r
    yield make
    for r in made:
        if not r.loop.is_closed():
            r.close()


@pytest.mark.parametrize("export", [False, True], ids=["store", "store+export"])
@pytest.mark.parametrize("batch", [1, 10, 100])
@pytest.mark.parametrize("durability", ["sync", "batch"])
def test_append(benchmark, rig, durability: str, batch: int, export: bool) -> None:
    r = rig(durability, export)
    r.burst(batch)  # warm: environment grown, files created
    rounds = {1: 200, 10: 60, 100: 20}[batch]
    benchmark.pedantic(r.burst, args=(batch,), rounds=rounds, iterations=1)
    stats = r.close()
    benchmark.extra_info["appends_per_s"] = round(batch / benchmark.stats.stats.mean)
    benchmark.extra_info["avg_commit_batch"] = round(stats["events"] / max(1, stats["batches"]), 1)
    assert stats["failed_batches"] == 0 and stats["events"] == batch * (rounds + 1)


@pytest.mark.parametrize("export", [False, True], ids=["store", "store+export"])
@pytest.mark.parametrize("durability", ["sync", "batch"])
def test_append_load32(benchmark, rig, durability: str, export: bool) -> None:
    r = rig(durability, export)
    r.load(32, 2)
    started = time.perf_counter()
    benchmark.pedantic(r.load, args=(32, 25), rounds=5, iterations=1)
    elapsed = time.perf_counter() - started
    stats = r.close()
    benchmark.extra_info["appends_per_s"] = round(32 * 25 / benchmark.stats.stats.mean)
    benchmark.extra_info["avg_commit_batch"] = round(stats["events"] / max(1, stats["batches"]), 1)
    benchmark.extra_info["wall_s"] = round(elapsed, 2)
    assert stats["failed_batches"] == 0
