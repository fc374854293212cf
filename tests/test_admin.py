"""The admin socket and `fastgate admin`: real Unix sockets, a real store, the CLI end to end.

The server runs on its own event loop in a thread (as it runs on the gateway parent's loop);
the CLI (`admin_cli.main`) talks to it over the socket exactly as a shell user would.
"""
from __future__ import annotations

import asyncio
import http.server
import os
import socket
import stat
import tempfile
import threading
import time
import warnings
from pathlib import Path

import orjson
import pytest

from fastgate import admin_cli, records
from fastgate.admin import AdminError, AdminServer, AdminSocketError, RecordCommands
from fastgate.admin_client import AdminClient
from fastgate.ids import new_request_id
from fastgate.records import Exporter
from fastgate.store import Appender, Store, _seq_key

CALLER = {"subject": "alice", "groups": ["support"], "auth": "jwt"}


_NOW = new_request_id()[:10]   # ULID time part: list --since stops at ids minted long before


def sid(i: int) -> str:
    return f"{_NOW}{i:016d}"


def seed(store: Store, n: int, audit: Path, start: int = 0) -> None:
    async def run() -> None:
        app = Appender(store, exporter=Exporter(audit)).start()
        try:
            for i in range(start, start + n):
                await app.append(records.call_started(
                    sid(i), caller={**CALLER, "subject": "bob" if i % 2 else "alice"}, function="refund",
                    decision="allow", rule="r1", method="POST", path=f"/refunds/A{i}",
                    headers={"content-type": "application/json"}, body=orjson.dumps({"amount": i}),
                    max_body_bytes=1024))
                await app.append(records.call_finished(
                    sid(i), status=200, headers={"content-type": "application/json"},
                    body=orjson.dumps({"refunded": i}), max_body_bytes=1024, gateway_ms=0.5, upstream_ms=2.0))
        finally:
            await app.close()
    asyncio.run(run())


class ServerThread:
    """An AdminServer on a private event loop in a thread."""

    def __init__(self, path: Path, store: Store | None, audit: Path | None = None, **server_kw) -> None:
        self.path = str(path)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.calls: list[tuple[str, dict]] = []

        async def start() -> AdminServer:
            server = AdminServer(self.path, **server_kw)
            if store is not None:
                RecordCommands(store, export_dir=str(audit) if audit else None, poll_interval=0.02,
                               status_extra=lambda: {"workers": 1}).install(server)
            for name in ("approvals.list", "approvals.show", "approvals.approve", "approvals.deny",
                         "config.reload", "policy.explain"):
                server.register(name, self._echo(name))
            await server.start()
            return server
        try:
            self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        except BaseException:
            self._stop_loop()
            raise

    def _echo(self, name: str):
        async def handler(args: dict) -> object:
            self.calls.append((name, args))
            if args.get("id") == "missing":
                raise AdminError("not_found", f"no approval {args['id']!r}")
            if name == "approvals.list":
                return [{"id": "AP1", "function": "refund", "status": "pending"}]
            return {"cmd": name, "args": args}
        return handler

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


@pytest.fixture
def env(tmp_path: Path):
    store = Store(tmp_path / "db", map_size=2**24, durability="batch")
    audit = tmp_path / "audit"
    seed(store, 6, audit)
    srv = ServerThread(tmp_path / "run" / "admin.sock", store, audit)
    yield srv, store, audit
    srv.stop()
    store.close()


def cli(srv: ServerThread, *argv: str, capsys) -> tuple[int, str, str]:
    code = admin_cli.main(["--socket", srv.path, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(srv: ServerThread, *argv: str, capsys) -> object:
    code, out, err = cli(srv, "--json", *argv, capsys=capsys)
    assert code == 0, err
    return orjson.loads(out)


# --------------------------------------------------------------------------- socket safety

def test_socket_is_mode_0600_and_replaced_only_when_stale(tmp_path: Path):
    path = tmp_path / "s" / "admin.sock"
    srv = ServerThread(path, None)
    try:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        with pytest.raises(AdminSocketError, match="in use"):   # a live gateway answers on it
            ServerThread(path, None)
    finally:
        srv.stop()
    assert not path.exists()                                    # removed on close
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))                                       # bound, never listening: stale
    stale.close()
    ServerThread(path, None).stop()
    path.write_text("precious")                                 # not a socket: never replaced
    with pytest.raises(AdminSocketError, match="not a socket"):
        ServerThread(path, None)
    assert path.read_text() == "precious"


def _connect_as_nobody(path: str) -> bytes:
    """Fork, become uid 65534, connect, return what the server said (or the error)."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        out = b"child failed"
        try:
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            try:
                s.connect(path)
                out = b""   # a refused peer is told on accept, before it sends anything
                while not out.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    out += chunk
                out = out or b"closed"
            except PermissionError:
                out = b"EACCES"
        finally:
            os.write(w, out)
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another uid")
def test_another_uid_is_refused():
    base = tempfile.mkdtemp(prefix="fg-admin-")
    try:
        os.chmod(base, 0o711)      # nobody may traverse to the socket, not list the directory
        path = os.path.join(base, "admin.sock")
        srv = ServerThread(Path(path), None)
        try:
            assert _connect_as_nobody(path) == b"EACCES"    # mode 0600 stops it at the file system
            os.chmod(path, 0o666)                           # a mistaken chmod: SO_PEERCRED still refuses
            said = _connect_as_nobody(path)
            assert said.endswith(b"\n"), said
            answer = orjson.loads(said)
            assert answer["ok"] is False and answer["error"]["code"] == "forbidden"
            assert "65534" in answer["error"]["message"]
        finally:
            srv.stop()
    finally:
        os.rmdir(base)


def _raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    return s


def _lines(s: socket.socket, n: int = 1) -> list[dict]:
    buf = b""
    while buf.count(b"\n") < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return [orjson.loads(x) for x in buf.splitlines()]


def test_oversized_line_is_refused_and_the_connection_closed(tmp_path: Path):
    srv = ServerThread(tmp_path / "admin.sock", None, max_line=4096)
    try:
        s = _raw(srv.path)
        s.sendall(b'{"id":1,"cmd":"status","args":{"x":"' + b"a" * 10000 + b'"}}\n')
        answer = _lines(s)[0]
        assert answer["ok"] is False and answer["error"]["code"] == "bad_request"
        assert "exceeds 4096" in answer["error"]["message"]
        assert s.recv(100) == b""   # closed
        s.close()
    finally:
        srv.stop()


def test_bad_requests_are_answered_and_the_connection_kept(tmp_path: Path):
    srv = ServerThread(tmp_path / "admin.sock", None)
    try:
        s = _raw(srv.path)
        s.sendall(b'not json\n{"id":2,"cmd":"sessions.delete","args":{"id":"x"}}\n[1]\n'
                  b'{"id":4,"cmd":"config.reload","args":[]}\n{"id":5,"cmd":"config.reload"}\n')
        answers = _lines(s, 5)
        assert [a["ok"] for a in answers] == [False, False, False, False, True]
        assert [a["id"] for a in answers] == [None, 2, None, 4, 5]
        assert all(a["error"]["code"] == "bad_request" for a in answers[:4])
        assert "unknown command 'sessions.delete'" in answers[1]["error"]["message"]
        s.close()
    finally:
        srv.stop()


def test_connection_cap(tmp_path: Path):
    srv = ServerThread(tmp_path / "admin.sock", None, max_connections=2)
    try:
        held = [_raw(srv.path), _raw(srv.path)]
        for s in held:
            s.sendall(b'{"id":1,"cmd":"config.reload"}\n')
            assert _lines(s)[0]["ok"] is True
        extra = _raw(srv.path)
        answer = _lines(extra)[0]
        assert answer["error"]["code"] == "unavailable" and "too many" in answer["error"]["message"]
        extra.close()
        held[0].close()
        deadline = time.monotonic() + 10  # the server frees the slot once it sees the close
        while True:
            again = _raw(srv.path)
            again.sendall(b'{"id":1,"cmd":"config.reload"}\n')
            answer = _lines(again)[0]
            if answer["ok"] or time.monotonic() > deadline:
                break
            again.close()
            time.sleep(0.05)
        assert answer["ok"] is True
        for s in held[1:] + [again]:
            s.close()
    finally:
        srv.stop()


def test_idle_connection_is_closed(tmp_path: Path):
    srv = ServerThread(tmp_path / "admin.sock", None, idle_timeout=0.2)
    try:
        s = _raw(srv.path)
        assert s.recv(10) == b""
        s.close()
    finally:
        srv.stop()


def test_no_command_can_delete_or_alter_a_record(env):
    srv, store, _ = env
    record_cmds = [c for c in srv.server.commands if c.startswith("sessions.") or c == "status"]
    assert record_cmds == ["sessions.export", "sessions.list", "sessions.replay", "sessions.show",
                           "sessions.tail", "sessions.verify", "status"]
    before = store.head()
    with AdminClient(srv.path) as client:
        for cmd in record_cmds:
            if cmd in ("sessions.tail", "sessions.export"):
                continue
            try:
                client.call(cmd, {"id": sid(1), "to": None})
            except AdminError:
                pass
    assert store.head() == before


# --------------------------------------------------------------------------- CLI end to end

def test_status(env, capsys):
    srv, store, _ = env
    result = cli_json(srv, "status", capsys=capsys)
    assert result["pid"] == os.getpid() and result["events"] == 12 and result["workers"] == 1
    assert result["head"] == {"seq": 12, "hash": store.head()[1]}
    assert result["store"]["durability"] == "batch" and result["cores"] >= 1
    code, out, _ = cli(srv, "status", capsys=capsys)
    assert code == 0 and "events" in out and "uptime_s" in out


def test_sessions_list_filters_paging_and_table(env, capsys):
    srv, _, _ = env
    result = cli_json(srv, "sessions", "list", capsys=capsys)
    assert [v["id"] for v in result] == [sid(i) for i in range(5, -1, -1)]
    assert result[0]["response"]["status"] == 200 and result[0]["caller"]["subject"] == "bob"
    page = cli_json(srv, "sessions", "list", "--limit", "4", capsys=capsys)
    rest = cli_json(srv, "sessions", "list", "--limit", "4", "--cursor", page[-1]["id"], capsys=capsys)
    assert [v["id"] for v in page + rest] == [v["id"] for v in result]
    alice = cli_json(srv, "sessions", "list", "--subject", "alice", "--since", "1h", capsys=capsys)
    assert [v["id"] for v in alice] == [sid(4), sid(2), sid(0)]
    assert cli_json(srv, "sessions", "list", "--function", "nope", capsys=capsys) == []
    code, out, _ = cli(srv, "sessions", "list", "--decision", "allow", capsys=capsys)
    assert code == 0
    header, first = out.splitlines()[:2]
    assert header.split() == ["ID", "TIME", "SUBJECT", "FUNCTION", "DECISION", "RULE", "STATUS", "MS"]
    assert first.split()[0] == sid(5) and first.split()[2:7] == ["bob", "refund", "allow", "r1", "200"]
    code, _, err = cli(srv, "--json", "sessions", "list", "--since", "yesterday", capsys=capsys)
    assert code == 1 and orjson.loads(err)["code"] == "bad_request"


def test_sessions_show(env, capsys):
    srv, _, _ = env
    view = cli_json(srv, "sessions", "show", sid(3), capsys=capsys)
    assert list(view) == ["id", "ts", "caller", "function", "decision", "rule", "approval", "request",
                          "response", "timing_ms", "error", "events"]
    assert view["request"]["path"] == "/refunds/A3" and view["request"]["body"] == {"amount": 3}
    assert view["response"]["body"] == {"refunded": 3}
    assert [e["seq"] for e in view["events"]] == [7, 8]
    code, out, _ = cli(srv, "sessions", "show", sid(3), capsys=capsys)
    assert code == 0 and "POST /refunds/A3" in out and "call.finished" in out and "bob (jwt)" in out
    code, _, err = cli(srv, "--json", "sessions", "show", "01JDNOPE", capsys=capsys)
    assert code == 1 and orjson.loads(err) == {"code": "not_found", "message": "no session '01JDNOPE'"}
    code, _, err = cli(srv, "sessions", "show", "01JDNOPE", capsys=capsys)
    assert code == 1 and err.startswith("error (not_found)")


def test_sessions_tail_streams_backlog_and_new_events(env, capsys):
    srv, store, audit = env
    code, out, _ = cli(srv, "--json", "sessions", "tail", "--from", "11", "--limit", "2", capsys=capsys)
    assert code == 0 and [orjson.loads(x)["seq"] for x in out.splitlines()] == [11, 12]
    with store.read() as snap:
        assert out.splitlines()[0].encode() == bytes(snap.raw(11))   # exactly the stored bytes

    done: dict[str, object] = {}

    def follow() -> None:
        done["code"] = admin_cli.main(["--socket", srv.path, "sessions", "tail", "--limit", "3"])
    t = threading.Thread(target=follow)
    t.start()
    time.sleep(0.2)                     # the tail is waiting for new events
    seed(store, 2, audit, start=100)    # another "worker" appends
    t.join(10)
    assert not t.is_alive() and done["code"] == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "TIME", "TYPE"]
    assert [line.split()[0] for line in lines[1:]] == ["13", "14", "15"]
    assert lines[1].split()[3] == sid(100)


def test_tail_ends_when_the_client_goes_away(env):
    srv, _, _ = env
    s = _raw(srv.path)
    s.sendall(b'{"id":1,"cmd":"sessions.tail"}\n')
    time.sleep(0.1)
    s.close()
    deadline = time.monotonic() + 5
    while srv.server._tasks and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not srv.server._tasks


def test_sessions_verify_ok_and_broken(env, capsys):
    srv, store, audit = env
    result = cli_json(srv, "sessions", "verify", capsys=capsys)
    assert result["ok"] is True and result["events"] == 12 and result["export"]["last_exported_seq"] == 12
    code, out, _ = cli(srv, "sessions", "verify", capsys=capsys)
    assert code == 0 and out.startswith("chain ok: 12 events")
    with store.env.begin(write=True) as txn:
        txn.delete(_seq_key(6), db=store.events_db)
    result = cli_json(srv, "sessions", "verify", "--no-export", capsys=capsys)   # --json: exit 0
    assert result == {"ok": False, "seq": 6, "reason": "seq gap: event 6 is missing (next stored is 7)"}
    code, out, _ = cli(srv, "sessions", "verify", "--export-dir", str(audit), capsys=capsys)
    assert code == 1 and "BROKEN at seq 6" in out


def test_sessions_export_writes_the_stored_bytes(env, tmp_path: Path, capsys):
    srv, store, _ = env
    out_file = tmp_path / "out" / "events.jsonl"
    out_file.parent.mkdir()
    result = cli_json(srv, "sessions", "export", "--out", str(out_file), capsys=capsys)
    assert result == {"events": 12, "first_seq": 1, "last_seq": 12, "out": str(out_file)}
    with store.read() as snap:
        assert out_file.read_bytes() == b"".join(bytes(r) + b"\n" for _, r in snap.events())
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    code, _, err = cli(srv, "sessions", "export", "--out", str(out_file), capsys=capsys)
    assert code == 1 and "exists" in err                            # never overwrites
    one = tmp_path / "out" / "one.jsonl"
    code, out, _ = cli(srv, "sessions", "export", "--out", str(one), "--session", sid(2), capsys=capsys)
    assert code == 0 and "wrote 2 events (seq 5..6)" in out
    assert [orjson.loads(x)["session"] for x in one.read_bytes().splitlines()] == [sid(2), sid(2)]
    part = tmp_path / "out" / "part.jsonl"
    assert cli_json(srv, "sessions", "export", "--out", str(part), "--from", "3", "--to", "4",
                    capsys=capsys)["events"] == 2
    missing = tmp_path / "out" / "missing.jsonl"
    code, _, _ = cli(srv, "sessions", "export", "--out", str(missing), "--session", "nope", capsys=capsys)
    assert code == 1 and not missing.exists()                        # no partial file left behind


class _Echo(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        answer = orjson.dumps({"refunded": orjson.loads(body)["amount"], "path": self.path,
                               "auth": self.headers.get("authorization")})
        self.send_response(201)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


def test_sessions_replay_with_and_without_target(env, capsys):
    srv, _, _ = env
    result = cli_json(srv, "sessions", "replay", sid(2), capsys=capsys)
    assert [(e["seq"], e["type"]) for e in result["events"]] == [(5, "call.started"), (6, "call.finished")]
    assert result["events"][0]["t_ms"] == 0 and result["events"][1]["t_ms"] >= 0 and result["replay"] is None
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    t = threading.Thread(target=upstream.serve_forever)
    t.start()
    try:
        base = f"http://127.0.0.1:{upstream.server_address[1]}/staging"
        result = cli_json(srv, "sessions", "replay", sid(2), "--to", base, capsys=capsys)
        rep = result["replay"]
        assert rep["url"] == base + "/refunds/A2" and rep["method"] == "POST"
        assert rep["recorded"] == {"status": 200, "body": {"refunded": 2}}
        assert rep["new"]["status"] == 201
        assert rep["new"]["body"] == {"refunded": 2, "path": "/staging/refunds/A2", "auth": None}
        assert rep["same_status"] is False and rep["same_body"] is False
        code, out, _ = cli(srv, "sessions", "replay", sid(2), "--to", base, capsys=capsys)
        assert code == 0 and "recorded 200  now 201  (DIFFERENT)" in out
    finally:
        upstream.shutdown()
        upstream.server_close()
        t.join()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    result = cli_json(srv, "sessions", "replay", sid(2), "--to", f"http://127.0.0.1:{port}", capsys=capsys)
    assert "ConnectionRefusedError" in result["replay"]["error"]
    code, _, err = cli(srv, "--json", "sessions", "replay", sid(2), "--to", "ftp://x", capsys=capsys)
    assert code == 1 and orjson.loads(err)["code"] == "bad_request"


def test_other_groups_forward_to_registered_commands(env, capsys):
    srv, _, _ = env
    assert cli_json(srv, "approvals", "list", capsys=capsys) == [{"id": "AP1", "function": "refund",
                                                                   "status": "pending"}]
    code, out, _ = cli(srv, "approvals", "list", capsys=capsys)
    assert code == 0 and out.split() == ["ID", "FUNCTION", "STATUS", "AP1", "refund", "pending"]
    assert cli_json(srv, "approvals", "approve", "AP1", "--reviewer", "bob", "--comment", "ok",
                    capsys=capsys)["args"] == {"id": "AP1", "reviewer": "bob", "comment": "ok"}
    assert cli_json(srv, "approvals", "deny", "AP1", "--reviewer", "bob", capsys=capsys)["args"] == {
        "id": "AP1", "reviewer": "bob"}
    assert cli_json(srv, "approvals", "show", "AP1", "--json", capsys=capsys)["cmd"] == "approvals.show"
    assert cli_json(srv, "config", "reload", capsys=capsys) == {"cmd": "config.reload", "args": {}}
    explained = cli_json(srv, "policy", "explain", "--subject", "alice", "--groups", "support,ops",
                         "--function", "refund", "--args", '{"amount": 150}', capsys=capsys)
    assert explained["args"] == {"subject": "alice", "groups": ["support", "ops"], "function": "refund",
                                 "args": {"amount": 150}}
    code, _, err = cli(srv, "--json", "approvals", "show", "missing", capsys=capsys)
    assert code == 1 and orjson.loads(err)["code"] == "not_found"
    code, _, err = cli(srv, "policy", "explain", "--subject", "a", "--function", "f", "--args", "{",
                       capsys=capsys)
    assert code == 2 and "--args" in err


def test_cli_without_a_gateway_and_usage_errors(tmp_path: Path, capsys):
    code = admin_cli.main(["--socket", str(tmp_path / "none.sock"), "--json", "status"])
    err = capsys.readouterr().err
    assert code == 1 and orjson.loads(err)["code"] == "unavailable"
    assert admin_cli.main(["sessions"]) == 2
    assert admin_cli.main(["sessions", "frobnicate"]) == 2
    capsys.readouterr()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"version: 1\nadmin:\n  socket: {tmp_path / 'cfg.sock'}\n")
    code = admin_cli.main(["-c", str(cfg), "status"])
    assert code == 1 and str(tmp_path / "cfg.sock") in capsys.readouterr().err
