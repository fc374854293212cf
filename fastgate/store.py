"""The LMDB store of session records, and the group-commit writer that appends to it.

One LMDB environment (`store.path`) holds three named databases:

- `events`:   8-byte big-endian seq -> the event's canonical bytes (see `fastgate.records`);
- `sessions`: session id + NUL + 8-byte seq -> b"" (which events belong to a session);
- `meta`:     `head` -> 8-byte seq + 32-byte sha256 of the last event.

Every process opens the environment itself, after fork (`Store.open(config.store)`); a `Store`
used in another process than the one that opened it raises `StoreForked`. A parent may keep its
own Store open (the admin socket) while it forks workers: before each fork, new transactions
wait and open ones finish (at most 10 s), so the child can close the environment it inherited
without touching the parent's reader slots or write lock in the shared lock file, and open its
own (py-lmdb refuses a second open of the same files in one process). LMDB serializes write
transactions across processes; each append transaction reads the head inside the transaction
and writes seq+1 with prev = head hash, so the chain stays gapless however many workers append.
`reader_check()` runs at open and every 30 s in the writer (`maintenance()` does it on demand) to
free the reader slots of killed processes.

Failures are `StoreUnavailable` (the pipeline answers 503 when `audit.fail_closed`): a full map
(`lmdb.MapFullError`: nothing is half-written and the store stays readable; raise
`store.map_size` and restart), disk and permission errors (`lmdb.Error`, `OSError`), a store that
cannot be opened for writing.

## Wiring

    store = Store.open(config.store)                       # in each worker, after fork
    appender = Appender.from_config(store, config.audit, secrets=config.secret_values,
                                    drop_headers=injected_header_names, log=log).start()
    await appender.append(records.call_started(...))       # before forwarding; StoreUnavailable -> 503
    appender.submit(records.call_finished(...))            # after answering; never delays the client
    await appender.close()                                 # on drain: commit, sync, final export head

## Group commit and durability

`Appender` (one per process) queues events; a writer thread drains the queue in batches of up to
1024, seals and writes a batch in one write transaction, makes it durable per
`store.durability`, and wakes every waiting call with one `call_soon_threadsafe`. The event loop
never touches the disk; its share is encoding the event (~4 us for 1 KB).

- `sync`: the waiter wakes only after the transaction is committed **and fsynced**, by LMDB's own
  commit sync (data pages, fdatasync, meta page, fdatasync). Power loss loses nothing that was
  acknowledged. (Committing with MDB_NOSYNC and one `env.sync()` measured ~35% faster, but it
  flushes data and meta together, so a power cut in the middle can leave a meta page pointing at
  unwritten pages; we keep LMDB's ordering.)
- `batch`: the waiter wakes after the commit (MDB_NOSYNC): the event is visible to every process
  and survives a crash or kill -9 of any process (it is in the OS page cache); the environment is
  fsynced every 50 ms. A power cut or kernel crash may lose what was committed in the last
  ~50 ms: calls that were already forwarded. LMDB keeps its integrity under NOSYNC only on file
  systems that preserve write order, so such a cut can also leave the environment unopenable;
  the export files (fsynced on the same tick) then hold the evidence.
- `none`: the waiter wakes as soon as the event is queued; the commit follows within a batch
  (usually < 1 ms). A crash of the process also loses what was still queued; power loss as
  `batch`. A failed commit cannot reach the call that queued the event: it is logged and, with
  `audit.fail_closed`, later appends are refused until a commit succeeds again.

Measured on the 2-core shared VM this was written on (1 KB events, `bench/test_micro_store.py`;
quiet-machine figures, a busy neighbour halves them): `sync` ~1,500 appends/s one at a time,
~10,000/s in groups of 10, ~38,000/s in groups of 100, and 22,000-24,000/s with 32 concurrent
callers (the gateway's shape: commit groups of 32; export on or off); `batch` ~5,000/s,
~26,000/s, ~50,000/s and ~41,000/s. One durable commit costs ~0.6 ms here, which is the latency
a call pays before it is forwarded.

## Export

Each committed batch is handed to a second thread that appends it to `audit.export_dir`
(`records.Exporter`). Whatever was committed in the meantime goes out in the same write, at most
one write per 5 ms, fsynced before the next with `sync` (on the 50 ms tick otherwise), so the
export's fsync overlaps LMDB commits instead of following each one. The export never delays a
waiter: with `sync`, power loss can cost the export its last few milliseconds, which the next
start copies again from the store (the exporter always catches up from the store, so the export
stays gapless and in seq order across workers). If the export fails (disk full, permissions,
volume gone), the error is logged and retried every second; while it fails and
`audit.fail_closed` is set, `append()` refuses (StoreUnavailable): no call is forwarded while its
record cannot reach the export.
"""
from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple, cast

import lmdb
import orjson

from fastgate.records import Exporter, Guard, Prepared, prepare, seal

__all__ = ["Appender", "Committed", "Snapshot", "Store", "StoreForked", "StoreUnavailable"]

MAX_READERS = 512
_HEAD = b"head"
_ORPHANED: list[Any] = []   # environments inherited through fork: kept alive, never closed


class StoreUnavailable(Exception):
    """The store cannot take (or serve) records now; the pipeline answers 503."""


class StoreForked(RuntimeError):
    """A Store was used in a process other than the one that opened it."""


class Committed(NamedTuple):
    seq: int
    hash: str


def _seq_key(seq: int) -> bytes:
    return seq.to_bytes(8, "big")


class Store:
    """One process's handle on the LMDB environment. Open it after fork, in each process."""

    def __init__(self, path: str | os.PathLike[str], *, map_size: int = 4 * 2**30,
                 durability: str = "sync") -> None:
        if durability not in ("sync", "batch", "none"):
            raise ValueError(f"durability must be sync, batch or none, not {durability!r}")
        self.path = os.fspath(path)
        self.map_size = map_size
        self.durability = durability
        self._pid = os.getpid()
        self._gate = threading.Condition()
        self._active = 0        # open transactions (see _before_fork)
        self._forking = False
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            self.env = lmdb.open(self.path, map_size=map_size, max_dbs=8, subdir=True,
                                 sync=durability == "sync", metasync=durability == "sync",
                                 writemap=False, lock=True, max_readers=MAX_READERS)
            self.events_db = self.env.open_db(b"events")
            self.sessions_db = self.env.open_db(b"sessions")
            self.meta_db = self.env.open_db(b"meta")
            self.env.reader_check()
        except lmdb.Error as exc:
            raise StoreUnavailable(f"cannot open the store at {self.path}: {exc}") from None
        except OSError as exc:
            raise StoreUnavailable(f"cannot open the store at {self.path}: {exc.strerror or exc}") from None
        _LIVE.append(self)

    @classmethod
    def open(cls, config: Any) -> Store:
        """From a `config.Store` section: `Store.open(config.store)`."""
        return cls(config.path, map_size=config.map_size, durability=config.durability)

    def _check(self) -> None:
        if os.getpid() != self._pid:
            raise StoreForked(f"the store at {self.path} was opened in process {self._pid}; "
                              "open it again in this process (after fork)")

    def _enter(self) -> None:
        """Count a call into LMDB in (transactions, sync, stat); waits while a fork is in progress.

        Every environment call goes through here: py-lmdb holds internal locks during them
        (e.g. its close lock during `sync()`), and a fork that caught one held would leave the
        child's `close()` waiting forever."""
        self._check()
        with self._gate:
            while self._forking:
                self._gate.wait()
            self._active += 1

    def _leave(self) -> None:
        with self._gate:
            self._active -= 1
            if self._active == 0:
                self._gate.notify_all()

    def close(self) -> None:
        if os.getpid() == self._pid and self in _LIVE:
            _LIVE.remove(self)
            self.env.close()

    # -- reading -------------------------------------------------------------------------------
    def read(self) -> Snapshot:
        """A consistent read-only view; use as a context manager (it holds a reader slot)."""
        self._enter()
        try:
            return Snapshot(self, self.env.begin(buffers=False))
        except lmdb.Error as exc:
            self._leave()
            raise StoreUnavailable(f"store read failed: {exc}") from None

    def head(self) -> tuple[int, str | None]:
        with self.read() as snap:
            return snap.head()

    def read_range(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """Stored events start..end (inclusive) that exist."""
        with self.read() as snap:
            return list(snap.events(start, end))

    # -- writing (called by the Appender's writer thread) ----------------------------------------
    def commit(self, batch: list[Prepared]) -> list[tuple[int, str, bytes]]:
        """Seal and write a batch in one write transaction: [(seq, hash, bytes)], in order."""
        self._enter()
        try:
            with self.env.begin(write=True) as txn:
                seq, prev = _decode_head(cast("bytes | None", txn.get(_HEAD, db=self.meta_db)))
                out = []
                for p in batch:
                    seq += 1
                    data, digest = seal(p, seq, prev)
                    key = _seq_key(seq)
                    if not txn.put(key, data, db=self.events_db, overwrite=False):
                        raise StoreUnavailable(f"store meta head is behind its events (seq {seq} exists); "
                                               "run `fastgate admin sessions verify`")
                    txn.put(p.session.encode() + b"\x00" + key, b"", db=self.sessions_db)
                    out.append((seq, digest, data))
                    prev = digest
                if out:
                    txn.put(_HEAD, _seq_key(seq) + bytes.fromhex(prev or ""), db=self.meta_db)
            return out
        except lmdb.MapFullError:
            raise StoreUnavailable(f"store full: map_size {self.map_size} bytes reached "
                                   "(raise store.map_size and restart)") from None
        except lmdb.MapResizedError:
            raise StoreUnavailable("another process grew the store's map; restart the gateway") from None
        except lmdb.Error as exc:
            raise StoreUnavailable(f"store write failed: {exc}") from None
        except OSError as exc:
            raise StoreUnavailable(f"store write failed: {exc.strerror or exc}") from None
        finally:
            self._leave()

    def sync(self) -> None:
        """Force written transactions to disk (used by `batch`/`none` on their tick)."""
        self._enter()
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            raise StoreUnavailable(f"store sync failed: {exc}") from None
        finally:
            self._leave()

    # -- upkeep (each call also counted by the fork gate) ---------------------------------------
    def reader_check(self) -> int:
        """Free reader slots left by dead processes (kill -9 with an open read txn); returns how many."""
        self._enter()
        try:
            return int(self.env.reader_check())
        finally:
            self._leave()

    def maintenance(self) -> dict[str, Any]:
        cleared = self.reader_check()
        return {"stale_readers_cleared": cleared, **self.stat()}

    def stat(self) -> dict[str, Any]:
        self._enter()
        try:
            info = self.env.info()
            page = self.env.stat()["psize"]
        finally:
            self._leave()
        return {"path": self.path, "durability": self.durability, "map_size": info["map_size"],
                "used_bytes": (info["last_pgno"] + 1) * page, "readers": info["num_readers"],
                "max_readers": info["max_readers"]}


_LIVE: list[Store] = []
FORK_WAIT = 10.0
_quiet: list[Store] = []     # stores with no open transaction at the moment of the fork


def _before_fork() -> None:
    """Hold new LMDB calls and let running ones finish, so the child inherits none in flight."""
    _quiet.clear()
    deadline = time.monotonic() + FORK_WAIT
    for store in _LIVE:
        if store._pid != os.getpid():
            continue
        with store._gate:
            store._forking = True
            while store._active and store._gate.wait(max(0.0, deadline - time.monotonic())):
                pass
            if store._active == 0:
                _quiet.append(store)


def _after_fork_in_parent() -> None:
    for store in _LIVE:
        with store._gate:
            store._forking = False
            store._gate.notify_all()


def _after_fork_in_child() -> None:
    # An environment with no transaction open can be closed here: LMDB then clears only this
    # process's reader slots (none), and its shared-lock probe fails while the parent lives.
    # One that had a transaction open is parked forever instead (closing it would abort the
    # parent's transaction in the shared lock file); this process then cannot open the store.
    for store in _LIVE:
        if store in _quiet:
            try:
                store.env.close()
            except lmdb.Error:
                _ORPHANED.append(store.env)
        else:
            _ORPHANED.append(store.env)
    _LIVE.clear()
    _quiet.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def _decode_head(raw: bytes | None) -> tuple[int, str | None]:
    if not raw:
        return 0, None
    return int.from_bytes(raw[:8], "big"), bytes(raw[8:]).hex() or None


class Snapshot:
    """Reads from one read transaction. Cheap to open; close it soon (it pins old pages)."""

    def __init__(self, store: Store, txn: lmdb.Transaction) -> None:
        self.store = store
        self.txn = txn
        self._open = True

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._open and os.getpid() == self.store._pid:
            self._open = False
            self.txn.abort()
            self.store._leave()

    def __del__(self) -> None:
        self.close()   # a forgotten snapshot must not hold up the next fork

    def head(self) -> tuple[int, str | None]:
        return _decode_head(cast("bytes | None", self.txn.get(_HEAD, db=self.store.meta_db)))

    def raw(self, seq: int) -> bytes | None:
        return cast("bytes | None", self.txn.get(_seq_key(seq), db=self.store.events_db))

    def event(self, seq: int) -> dict[str, Any] | None:
        raw = self.raw(seq)
        return None if raw is None else orjson.loads(raw)

    def events(self, start: int = 1, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(seq, stored bytes) in key order from `start`, through `end` if given."""
        cur = self.txn.cursor(db=self.store.events_db)
        if not cur.set_range(_seq_key(max(start, 0))):
            return
        for key, value in cur.iternext():
            seq = int.from_bytes(key, "big")
            if end is not None and seq > end:
                return
            yield seq, cast(bytes, value)

    def session_seqs(self, session: str) -> list[int]:
        prefix = session.encode() + b"\x00"
        cur = self.txn.cursor(db=self.store.sessions_db)
        out: list[int] = []
        if cur.set_range(prefix):
            for key in cast("Iterator[bytes]", cur.iternext(values=False)):
                if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                    break
                out.append(int.from_bytes(key[-8:], "big"))
        return out

    def session_events(self, session: str) -> list[dict[str, Any]]:
        return [e for e in (self.event(s) for s in self.session_seqs(session)) if e is not None]

    def sessions_desc(self, before: str | None = None) -> Iterator[tuple[str, list[int]]]:
        """(session id, its seqs ascending), in descending id order, ids < `before` if given."""
        cur = self.txn.cursor(db=self.store.sessions_db)
        if before is not None:
            if cur.set_range(before.encode() + b"\x00"):
                if not cur.prev():
                    return
            elif not cur.last():
                return
        elif not cur.last():
            return
        sid: bytes | None = None
        seqs: list[int] = []
        for key in cast("Iterator[bytes]", cur.iterprev(values=False)):
            this, seq = key[:-9], int.from_bytes(key[-8:], "big")
            if this != sid:
                if sid is not None:
                    yield sid.decode(), seqs[::-1]
                sid, seqs = this, []
            seqs.append(seq)
        if sid is not None:
            yield sid.decode(), seqs[::-1]

    def count(self) -> int:
        return int(self.txn.stat(self.store.events_db)["entries"])


# --------------------------------------------------------------------------- group commit

class Appender:
    """Per-process group commit: `await appender.append(event)` returns once the event is
    as durable as `store.durability` promises (see the module docstring).

    Futures, not callbacks: a call awaits its own event with cancellation and timeouts working
    as usual, `submit()` gives the same future for fire-and-forget events (`call.finished`), and
    the writer wakes a whole batch with one `call_soon_threadsafe`.
    """

    def __init__(self, store: Store, *, exporter: Exporter | None = None, fail_closed: bool = True,
                 guard: Guard | None = None, log: Any = None, sync_interval: float = 0.05,
                 max_batch: int = 1024, max_pending: int = 65536, maintenance_interval: float = 30.0,
                 export_retry: float = 1.0, export_interval: float | None = None, linger: float | None = None) -> None:
        self.store = store
        self.durability = store.durability
        self.exporter = exporter
        self.fail_closed = fail_closed
        self.guard = guard or Guard()
        self.log = log
        self.sync_interval = sync_interval
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.maintenance_interval = maintenance_interval
        self.export_retry = export_retry
        # Nobody waits on a commit with `batch`/`none`: gather longer, wake the GIL less often.
        relaxed = store.durability != "sync"
        self.export_interval = export_interval if export_interval is not None else (0.02 if relaxed else 0.005)
        self.linger = linger if linger is not None else (0.010 if relaxed else 0.002)
        self.stats = {"events": 0, "batches": 0, "syncs": 0, "failed_batches": 0, "exported": 0,
                      "export_failures": 0, "max_batch": 0}
        self.export_error: str | None = None
        self.commit_error: str | None = None
        self.commit_failed_at = 0.0   # time.monotonic() of the last failed commit
        self._queue: collections.deque[tuple[Prepared, asyncio.Future | None]] = collections.deque()
        self._wake = threading.Event()
        self._export_queue: collections.deque[list[tuple[int, str, bytes]]] = collections.deque()
        self._export_wake = threading.Event()
        self._export_closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False

    @classmethod
    def from_config(cls, store: Store, audit: Any, *, secrets: Any = (), drop_headers: Any = (),
                    log: Any = None) -> Appender:
        """The gateway's wiring: `Appender.from_config(store, config.audit, secrets=config.secret_values)`."""
        exporter = None
        if audit.export_dir:
            exporter = Exporter(audit.export_dir, fsync=store.durability == "sync")
        return cls(store, exporter=exporter, fail_closed=audit.fail_closed,
                   guard=Guard(secrets, drop_headers), log=log)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> Appender:
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="fastgate-store-writer", daemon=True)
        self._thread.start()
        return self

    # -- loop side ------------------------------------------------------------------------------
    def _enqueue(self, event: dict[str, Any]) -> asyncio.Future | None:
        if self._closing or self._thread is None:
            raise StoreUnavailable("the store writer is not running")
        if self.fail_closed and self.export_error is not None:
            raise StoreUnavailable(f"audit export failing: {self.export_error}")
        if self.durability == "none" and self.fail_closed and self.commit_error is not None:
            raise StoreUnavailable(f"store failing: {self.commit_error}")
        if len(self._queue) >= self.max_pending:
            raise StoreUnavailable("store writer overloaded")
        prepared = prepare(event, self.guard)
        fut = None
        if self.durability != "none":
            assert self._loop is not None
            fut = self._loop.create_future()
        self._queue.append((prepared, fut))
        if not self._wake.is_set():   # queued before the check: a writer that cleared it drains us
            self._wake.set()
        return fut

    def problem(self, recent: float = 10.0) -> str | None:
        """Why an append would be refused or fail now, or None: for `/readyz` and metrics.

        Mirrors `_enqueue`; a failed commit counts for `recent` seconds only (with `sync`/`batch` the
        next commit may succeed, and an instance taken out of rotation must get calls to find out)."""
        if self._closing or self._thread is None or not self._thread.is_alive():
            return "the store writer is not running"
        if self.fail_closed and self.export_error is not None:
            return f"audit export failing: {self.export_error}"
        if self.commit_error is not None and (
                (self.durability == "none" and self.fail_closed)
                or time.monotonic() - self.commit_failed_at < recent):
            return f"store failing: {self.commit_error}"
        if len(self._queue) >= self.max_pending:
            return "store writer overloaded"
        return None

    async def append(self, event: dict[str, Any]) -> Committed | None:
        """Queue `event`; return when it is durable (sync), committed (batch) or queued (none: None).

        Raises StoreUnavailable if it cannot be recorded, ValueError if the event is malformed.
        """
        fut = self._enqueue(event)
        if fut is None:
            return None
        return await fut

    def submit(self, event: dict[str, Any]) -> asyncio.Future | None:
        """Queue without waiting. The future (None with `none`) resolves like `append`; a failed
        commit is also logged, so callers may drop it. Refusals at enqueue raise like `append`."""
        fut = self._enqueue(event)
        if fut is not None:
            fut.add_done_callback(_consume)
        return fut

    @staticmethod
    def _resolve(waiters: list[asyncio.Future], results: list[Committed] | None,
                 error: BaseException | None) -> None:
        for i, fut in enumerate(waiters):
            if fut.done():
                continue  # cancelled: the call went away; its event is committed all the same
            if error is not None:
                fut.set_exception(StoreUnavailable(str(error)))
            else:
                assert results is not None
                fut.set_result(results[i])

    async def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, sync, write a final export head, stop the writer."""
        if self._thread is None or self._closed:
            return
        self._closing = True
        self._wake.set()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)
        self._closed = True

    # -- writer thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        exporting = None
        if self.exporter is not None:
            exporting = threading.Thread(target=self._run_export, name="fastgate-audit-export", daemon=True)
            exporting.start()
        next_maint = time.monotonic() + self.maintenance_interval
        next_sync: float | None = None
        last_batch = 0
        while True:
            now = time.monotonic()
            self._wake.wait(max(0.0, min(next_maint, next_sync or next_maint, now + 1.0) - now))
            if last_batch > 1 and not self._closing and len(self._queue) < self.max_batch:
                # Under load, let a batch gather: one GIL hand-off and one commit per `linger`
                # instead of one per event (a lone event, as at one connection, never waits).
                time.sleep(self.linger)
            self._wake.clear()
            batch: list[tuple[Prepared, asyncio.Future | None]] = []
            while self._queue and len(batch) < self.max_batch:
                batch.append(self._queue.popleft())
            if self._queue:
                self._wake.set()
            last_batch = len(batch)
            if batch:
                committed = self._commit(batch)
                if committed:
                    if self.durability != "sync" and next_sync is None:
                        next_sync = time.monotonic() + self.sync_interval
                    if exporting is not None:
                        self._export_queue.append(committed)
                        self._export_wake.set()
            now = time.monotonic()
            if next_sync is not None and (now >= next_sync or self._closing):
                self._sync()
                next_sync = None
            if now >= next_maint:
                next_maint = now + self.maintenance_interval
                self._maintain()
            if self._closing and not self._queue:
                if self.durability != "sync":
                    self._sync()
                self._export_closing = True
                self._export_wake.set()
                if exporting is not None:
                    exporting.join()
                return

    def _commit(self, batch: list[tuple[Prepared, asyncio.Future | None]]) -> list[tuple[int, str, bytes]]:
        waiters = [f for _, f in batch if f is not None]
        try:
            committed = self.store.commit([p for p, _ in batch])
        except (StoreUnavailable, StoreForked) as exc:
            self.stats["failed_batches"] += 1
            self.commit_error = str(exc)
            self.commit_failed_at = time.monotonic()
            self._log("error", "store commit failed", error=str(exc), events=len(batch))
            self._wake_waiters(waiters, None, exc)
            return []
        except Exception as exc:  # noqa: BLE001 - a writer that dies silently would hang every call
            self.stats["failed_batches"] += 1
            self.commit_error = f"internal: {type(exc).__name__}: {exc}"
            self.commit_failed_at = time.monotonic()
            self._log("error", "store commit failed", error=self.commit_error, events=len(batch))
            self._wake_waiters(waiters, None, exc)
            return []
        self.commit_error = None
        self.stats["events"] += len(committed)
        self.stats["batches"] += 1
        self.stats["max_batch"] = max(self.stats["max_batch"], len(committed))
        results = [Committed(seq, h) for (seq, h, _), (_, f) in zip(committed, batch) if f is not None]
        self._wake_waiters(waiters, results, None)
        return committed

    def _wake_waiters(self, waiters: list[asyncio.Future], results: list[Committed] | None,
                      error: BaseException | None) -> None:
        if not waiters:
            return
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._resolve, waiters, results, error)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _sync(self) -> None:
        try:
            self.store.sync()
            self.stats["syncs"] += 1
        except (StoreUnavailable, StoreForked) as exc:
            self._log("error", "store sync failed", error=str(exc))

    def _maintain(self) -> None:
        try:
            cleared = self.store.reader_check()
            if cleared:
                self._log("warning", "cleared stale store readers", count=cleared)
        except (lmdb.Error, StoreForked) as exc:
            self._log("error", "store maintenance failed", error=str(exc))

    # -- export thread ------------------------------------------------------------------------------
    def _run_export(self) -> None:
        """Exports committed batches, coalescing whatever queued up while the last export ran."""
        assert self.exporter is not None
        next_sync: float | None = None
        next_retry: float | None = None
        last_write = 0.0
        if not self._export([]):          # catch up on what an earlier run committed but never exported
            next_retry = time.monotonic() + self.export_retry
        while True:
            now = time.monotonic()
            due = min(t for t in (next_sync, next_retry, now + 1.0) if t is not None)
            self._export_wake.wait(max(0.0, due - now))
            # Let a few commits gather: one write+fsync per export_interval, not per commit.
            pause = last_write + self.export_interval - time.monotonic()
            if pause > 0 and not self._export_closing:
                time.sleep(pause)
            self._export_wake.clear()
            batches: list[tuple[int, str, bytes]] = []
            while self._export_queue:
                batches.extend(self._export_queue.popleft())
            now = time.monotonic()
            exported = bool(batches) and next_retry is None and self._export(batches)
            if batches:
                last_write = now
            if exported and not self.exporter.fsync and next_sync is None:
                next_sync = now + self.sync_interval
            if self.export_error is not None and next_retry is None:
                next_retry = now + self.export_retry
            elif next_retry is not None and now >= next_retry:
                next_retry = None if self._export([]) else now + self.export_retry
            if next_sync is not None and (now >= next_sync or self._export_closing):
                try:
                    self.exporter.sync()
                except OSError as exc:
                    self._export_failed(exc)
                next_sync = None
            if self._export_closing and not self._export_queue:
                self._export([], force_head=True)
                try:
                    self.exporter.close()
                except OSError as exc:
                    self._log("error", "audit export close failed", error=str(exc))
                return

    def _export(self, committed: list[tuple[int, str, bytes]], force_head: bool = False) -> bool:
        assert self.exporter is not None
        try:
            head = committed[-1][:2] if committed else self.store.head()
            self.stats["exported"] += self.exporter.export(committed, head, self.store.read_range,
                                                           force_head=force_head)
        except (OSError, StoreUnavailable, ValueError) as exc:
            self._export_failed(exc)
            return False
        if self.export_error is not None:
            self._log("info", "audit export recovered", export_dir=self.exporter.dir)
        self.export_error = None
        return True

    def _export_failed(self, exc: BaseException) -> None:
        assert self.exporter is not None
        self.stats["export_failures"] += 1
        if self.export_error is None:
            self._log("error", "audit export failed", error=str(exc), export_dir=self.exporter.dir)
        self.export_error = str(exc) or type(exc).__name__

    def _log(self, level: str, msg: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.event(level, msg, **fields)


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # mark retrieved: a dropped submit() future must not warn
