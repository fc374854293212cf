"""The LMDB store and its group-commit writer: real environments in temp dirs, real processes.

Multi-process tests fork children that open the environment themselves (as workers do) and
report through their exit status; nothing in a child touches the parent's Store.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import orjson
import pytest

from fastgate import records
from fastgate.records import Exporter
from fastgate.store import Appender, Committed, Store, StoreForked, StoreUnavailable

EV_BODY = b'{"amount": 5, "note": "' + b"x" * 200 + b'"}'


def event(sid: str, body: bytes = EV_BODY) -> dict:
    return records.call_started(sid, caller={"subject": "alice", "groups": ["g"], "auth": "jwt"},
                                function="refund", decision="allow", rule="r1", method="POST",
                                path="/refunds/A1", body=body, max_body_bytes=2**20)


def _fork() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads; children exec nothing
        return os.fork()


def _child(fn) -> int:
    """Run fn in a forked child; its return value (0-255) is the exit status."""
    pid = _fork()
    if pid == 0:
        code = 99
        try:
            code = fn()
        except BaseException:  # noqa: BLE001 - report through the exit status
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not finish")


def verify(store: Store, export_dir: Path | None = None) -> dict:
    with store.read() as snap:
        return records.verify(snap, export_dir)


# --------------------------------------------------------------------------- basics

def test_append_read_gapless_and_chained(tmp_path: Path):
    store = Store(tmp_path / "db", map_size=2**24, durability="sync")

    async def run() -> list[Committed | None]:
        app = Appender(store).start()
        try:
            return [await app.append(event(f"S{i}")) for i in range(5)]
        finally:
            await app.close()
    got = asyncio.run(run())
    assert [c.seq for c in got] == [1, 2, 3, 4, 5]
    with store.read() as snap:
        evs = [orjson.loads(raw) for _, raw in snap.events()]
        assert snap.head() == (5, got[-1].hash)
        assert snap.session_seqs("S3") == [4]
    assert [e["seq"] for e in evs] == [1, 2, 3, 4, 5]
    assert evs[0]["prev"] is None
    assert all(evs[i]["prev"] == evs[i - 1]["hash"] for i in range(1, 5))
    assert all(e["hash"] == c.hash for e, c in zip(evs, got))
    assert verify(store)["ok"] is True
    store.close()


def test_group_commit_batches_concurrent_appends(tmp_path: Path):
    store = Store(tmp_path / "db", map_size=2**26, durability="sync")

    async def run() -> tuple[list[Committed | None], dict]:
        app = Appender(store).start()
        try:
            got = await asyncio.gather(*(app.append(event(f"S{i}")) for i in range(400)))
            return list(got), dict(app.stats)
        finally:
            await app.close()
    got, stats = asyncio.run(run())
    assert sorted(c.seq for c in got) == list(range(1, 401))
    assert len({c.hash for c in got}) == 400
    assert stats["events"] == 400 and stats["batches"] <= 10 and stats["max_batch"] >= 100
    assert verify(store)["ok"] is True
    store.close()


@pytest.mark.parametrize("durability", ["batch", "none"])
def test_batch_and_none_commit_everything_by_close(tmp_path: Path, durability: str):
    store = Store(tmp_path / "db", map_size=2**24, durability=durability)

    async def run() -> tuple[list, dict]:
        app = Appender(store, sync_interval=0.01).start()
        try:
            got = [await app.append(event(f"S{i}")) for i in range(20)]
            got += await asyncio.gather(*(app.append(event(f"T{i}")) for i in range(50)))
            fut = app.submit(event("fire-and-forget"))
            if fut is not None:
                await fut
            await asyncio.sleep(0.05)
            return got, dict(app.stats)
        finally:
            await app.close()
    got, stats = asyncio.run(run())
    if durability == "none":
        assert got == [None] * 70       # woken at enqueue: no seq known yet
    else:
        assert [c.seq for c in got[:20]] == list(range(1, 21))
        assert stats["syncs"] >= 1
    assert verify(store)["events"] == 71
    store.close()


def test_malformed_event_fails_its_caller_not_the_batch(tmp_path: Path):
    store = Store(tmp_path / "db", map_size=2**24)

    async def run() -> None:
        app = Appender(store).start()
        try:
            good = app.append(event("ok"))
            with pytest.raises(ValueError):
                await app.append({"type": "call.started", "session": "x", "ts": "t", "seq": 9})
            assert (await good).seq == 1
        finally:
            await app.close()
    asyncio.run(run())
    store.close()


# --------------------------------------------------------------------------- processes

def test_two_processes_append_concurrently_into_one_gapless_chain(tmp_path: Path):
    path, audit = tmp_path / "db", tmp_path / "audit"
    Store(path, map_size=2**26).close()  # create it; each child opens its own environment
    go_r, go_w = os.pipe()

    def worker(name: str):
        def run() -> int:
            os.close(go_w)
            store = Store(path, map_size=2**26, durability="sync")
            os.read(go_r, 1)  # start together

            async def go() -> None:
                app = Appender(store, exporter=Exporter(audit)).start()
                try:
                    for i in range(15):
                        await asyncio.gather(*(app.append(event(f"{name}-{i}-{k}")) for k in range(20)))
                finally:
                    await app.close()
            asyncio.run(go())
            return 0
        return run

    pids = [_child(worker("A")), _child(worker("B"))]
    os.close(go_r)
    os.write(go_w, b"gg")
    os.close(go_w)
    assert [_wait(p) for p in pids] == [0, 0]
    store = Store(path, map_size=2**26)
    result = verify(store, audit)
    assert result["ok"] is True and result["events"] == 600, result
    with store.read() as snap:
        sessions = [orjson.loads(raw)["session"] for _, raw in snap.events()]
    assert sum(s.startswith("A-") for s in sessions) == 300 and sum(s.startswith("B-") for s in sessions) == 300
    owners = [s[0] for s in sessions]
    assert sum(owners[i] != owners[i - 1] for i in range(1, 600)) >= 2  # really interleaved
    lines = b"".join(p.read_bytes() for p in sorted(audit.glob("events-*.jsonl"))).splitlines()
    assert [orjson.loads(line)["seq"] for line in lines] == list(range(1, 601))  # ordered, no dups
    store.close()


def test_kill_9_under_load_loses_no_acknowledged_event(tmp_path: Path):
    """Three rounds: a worker appends under load and reports each acknowledged append; it is
    killed mid-flight; every acknowledged event is in the store and the chain verifies."""
    path, audit = tmp_path / "db", tmp_path / "audit"
    acked: list[str] = []
    for round_ in range(3):
        r, w = os.pipe()

        def worker(rnd: int = round_, r: int = r, w: int = w) -> int:
            os.close(r)
            store = Store(path, map_size=2**26, durability="sync")

            async def go() -> None:
                app = Appender(store, exporter=Exporter(audit)).start()

                async def conn(k: int) -> None:
                    for i in range(10_000):
                        name = f"r{rnd}-c{k}-{i}"
                        await app.append(event(name))
                        os.write(w, name.encode() + b"\n")   # the caller got its answer
                await asyncio.gather(*(conn(k) for k in range(16)))
            asyncio.run(go())
            return 0
        pid = _child(worker)
        os.close(w)
        buf = b""
        while buf.count(b"\n") < 300:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            buf += chunk
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        while chunk := os.read(r, 65536):
            buf += chunk
        os.close(r)
        acked += [line.decode() for line in buf.split(b"\n")[:-1]]   # complete lines only
        store = Store(path, map_size=2**26)
        try:
            result = verify(store, audit)
            assert result["ok"] is True, result
            with store.read() as snap:
                missing = [name for name in acked if not snap.session_seqs(name)]
            assert missing == [] and result["events"] >= len(acked)
        finally:
            store.close()


def test_fork_while_the_parent_reads_and_writes(tmp_path: Path):
    """A parent that keeps its Store busy (writer thread, reader thread) forks workers that open
    the same environment and append; nobody corrupts anybody (the fork gate)."""
    import threading
    path = tmp_path / "db"
    store = Store(path, map_size=2**26, durability="batch")
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with store.read() as snap:
                for _ in snap.events(max(1, snap.head()[0] - 20)):
                    pass

    def worker(n: int):
        def run() -> int:
            mine = Store(path, map_size=2**26, durability="batch")

            async def go() -> None:
                app = Appender(mine).start()
                try:
                    await asyncio.gather(*(app.append(event(f"child{n}-{k}")) for k in range(30)))
                finally:
                    await app.close()
            asyncio.run(go())
            return 0
        return run

    async def parent() -> list[int]:
        app = Appender(store, sync_interval=0.01).start()
        t = threading.Thread(target=reader)
        t.start()
        codes = []
        try:
            for n in range(4):
                pending = [asyncio.ensure_future(app.append(event(f"parent-{n}-{k}"))) for k in range(20)]
                await asyncio.sleep(0)
                pid = _child(worker(n))
                await asyncio.gather(*pending)
                codes.append(await asyncio.to_thread(_wait, pid))
        finally:
            stop.set()
            t.join()
            await app.close()
        return codes
    assert asyncio.run(parent()) == [0, 0, 0, 0]
    result = verify(store)
    assert result["ok"] is True and result["events"] == 4 * 20 + 4 * 30, result
    store.close()


def test_store_used_after_fork_refuses(tmp_path: Path):
    store = Store(tmp_path / "db", map_size=2**24)

    def child() -> int:
        try:
            store.head()
        except StoreForked:
            pass
        else:
            return 1
        try:
            store.commit([records.prepare(event("x"))])
        except (StoreForked, StoreUnavailable):
            return 0
        return 2
    assert _wait(_child(child)) == 0
    assert store.head() == (0, None)   # the parent's environment is untouched by the child's exit
    store.close()


def test_stale_reader_of_a_killed_process_is_cleared(tmp_path: Path):
    path = tmp_path / "db"
    store = Store(path, map_size=2**24)
    ready_r, ready_w = os.pipe()

    def child() -> int:
        mine = Store(path, map_size=2**24)
        snap = mine.read()
        snap.head()
        os.write(ready_w, b"r")
        time.sleep(60)
        return 0
    pid = _child(child)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"r"
        assert str(pid) in store.env.readers()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
    assert store.maintenance()["stale_readers_cleared"] >= 1
    assert str(pid) not in store.env.readers()
    store.close()


# --------------------------------------------------------------------------- failures

def test_map_full_refuses_and_the_store_stays_readable(tmp_path: Path):
    store = Store(tmp_path / "db", map_size=256 * 1024)

    async def run() -> tuple[int, str]:
        app = Appender(store).start()
        ok = 0
        try:
            for i in range(200):
                try:
                    await app.append(event(f"S{i}", body=b'"' + b"y" * 8000 + b'"'))
                    ok += 1
                except StoreUnavailable as exc:
                    error = str(exc)
                    break
            else:
                raise AssertionError("the map never filled up")
            with pytest.raises(StoreUnavailable, match="full"):   # still full: refused again
                await app.append(event("again", body=b'"' + b"y" * 8000 + b'"'))
            return ok, error
        finally:
            await app.close()
    ok, error = asyncio.run(run())
    assert ok > 0 and "store full" in error
    result = verify(store)
    assert result["ok"] is True and result["events"] == ok   # nothing half-written
    assert store.head()[0] == ok
    store.close()


def test_commit_error_with_durability_none_refuses_later_appends(tmp_path: Path):
    store = Store(tmp_path / "db", map_size=256 * 1024, durability="none")

    async def run() -> None:
        app = Appender(store, fail_closed=True).start()
        try:
            big = b'"' + b"y" * 8000 + b'"'
            refused = None
            for i in range(300):
                try:
                    await app.append(event(f"S{i}", body=big))   # returns at enqueue
                except StoreUnavailable as exc:
                    refused = exc
                    break
                await asyncio.sleep(0.002)
            assert refused is not None and "full" in str(refused) and "full" in (app.commit_error or "")
        finally:
            await app.close()
    asyncio.run(run())
    assert verify(store)["ok"] is True
    store.close()


def _read_only_open(path: Path) -> int:
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)  # nobody: the store directory belongs to root
    try:
        Store(path, map_size=2**24)
    except StoreUnavailable:
        return 0
    return 1


def test_read_only_store_is_refused_at_open(tmp_path: Path):
    path = tmp_path / "db"
    Store(path, map_size=2**24).close()
    os.chmod(path, 0o555)
    for name in ("data.mdb", "lock.mdb"):
        os.chmod(path / name, 0o444)
    tmp_path.chmod(0o755)  # nobody may reach it, not write it
    try:
        if os.geteuid() == 0:
            assert _wait(_child(lambda: _read_only_open(path))) == 0
        else:
            assert _read_only_open(path) == 0
    finally:
        os.chmod(path, 0o700)
        for name in ("data.mdb", "lock.mdb"):
            os.chmod(path / name, 0o600)


def test_unwritable_store_path_is_refused_at_open(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreUnavailable, match="cannot open"):
        Store(tmp_path / "file" / "db")


def test_closed_appender_refuses(tmp_path: Path):
    store = Store(tmp_path / "db", map_size=2**24)

    async def run() -> None:
        app = Appender(store).start()
        await app.close()
        with pytest.raises(StoreUnavailable):
            await app.append(event("late"))
    asyncio.run(run())
    store.close()


def test_store_open_from_config_section(tmp_path: Path):
    from fastgate.config import Store as StoreConfig
    cfg = StoreConfig(path=str(tmp_path / "db"), map_size="16MiB", durability="batch")
    store = Store.open(cfg)
    assert store.durability == "batch" and store.stat()["map_size"] == 16 * 2**20
    assert store.env.flags()["sync"] is False
    store.close()
    assert sys.platform.startswith("linux")
