"""Processes and signals: one worker, or a parent supervising N workers on one port.

Each worker owns its own listening socket (SO_REUSEPORT: the kernel spreads connections),
its own event loop (uvloop) and its own upstream pools. The parent holds the port, forwards
signals and restarts a worker that dies. SIGTERM drains: stop accepting, finish the calls in
flight (up to `limits.drain_timeout`), exit. SIGHUP reloads: a config that fails validation is
refused and the running one stays.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import sys
import time

from fastgate.config import Config, ConfigError, load_config, parse_hostport
from fastgate.approvals import Approvals
from fastgate import mcp
from fastgate.admin import AdminError, AdminServer, AdminSocketError, RecordCommands
from fastgate.identity import Authenticator, gateway_jwks
from fastgate.store import Appender, Store, StoreUnavailable
from fastgate.listener import ClientConnection, ServerState
from fastgate.log import Log
from fastgate.metrics import AdminHttp, Metrics, MULTIPROC_ENV, multiprocess_dir, process_exited, \
    remove_multiprocess_dir
from fastgate.pipeline import PoolRegistry, Tables


def _print_config_error(path: str, exc: ConfigError) -> None:
    print(f"{path}: invalid configuration", file=sys.stderr)
    for line in exc.errors:
        print(f"  {line}", file=sys.stderr)


def run(config_path: str, workers: int | None = None, listen: str | None = None) -> int:
    try:
        config = load_config(config_path)
        if listen:
            parse_hostport(listen)
    except ConfigError as exc:
        _print_config_error(config_path, exc)
        return 2
    except ValueError as exc:
        print(f"--listen: {exc}", file=sys.stderr)
        return 2
    host, port = parse_hostport(listen or config.listen)
    n = workers if workers is not None else config.workers
    if n < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    admin_http = None
    if config.admin.http is not None:  # bound here, once: a taken port stops the start, not a worker
        try:
            admin_http = make_listen_socket(*parse_hostport(config.admin.http), reuse_port=False)
        except OSError as exc:
            Log(config.log.level, config.secret_values).error(
                "admin.http: cannot listen; not starting", address=config.admin.http, error=str(exc))
            return 1
    if n == 1:
        return Worker(config_path, config, host, port, listen, index=None, reuse_port=False,
                      admin_http=admin_http).run()
    return Supervisor(config_path, config, host, port, listen, n, admin_http=admin_http).run()


def make_listen_socket(host: str, port: int, reuse_port: bool, listen: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(1024)
    sock.setblocking(False)
    return sock


def _tls_context(config: Config) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.tls.cert, config.tls.key)
    return ctx


class Worker:
    def __init__(self, config_path: str, config: Config, host: str, port: int, listen_override: str | None,
                 index: int | None, reuse_port: bool, admin_http: socket.socket | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.host = host
        self.port = port
        self.listen_override = listen_override
        self.index = index
        self.reuse_port = reuse_port
        self.log = Log(config.log.level, config.secret_values, worker=index)
        self.workers_hint = 1 if index is None else "supervised"
        self.last_reload_errors: list[str] = []
        self.admin_http = admin_http  # the listening admin.http socket, in the process that serves it
        self.listening = False

    def run(self) -> int:
        import uvloop

        try:
            return uvloop.run(self.serve())
        except KeyboardInterrupt:
            return 0

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        config = self.config
        metrics = None
        if config.admin.http is not None:  # supervised workers add up through the supervisor's directory
            metrics = Metrics(os.environ.get(MULTIPROC_ENV) if self.index is not None else None)
        http = await self.start_admin_http(metrics) if self.admin_http is not None else None
        pools = PoolRegistry(loop)
        tls = _tls_context(config)
        auth = await self.start_auth(config)
        try:
            store = Store.open(config.store)
        except (StoreUnavailable, OSError) as exc:
            self.log.error("the record store cannot be opened", path=config.store.path, error=str(exc))
            return 1
        injected = {k.lower() for up in config.upstreams.values() for k in up.inject_headers}
        appender = Appender.from_config(store, config.audit, secrets=config.secret_values,
                                        drop_headers=injected, log=self.log).start()
        state = ServerState(loop, Tables(config, pools, tls=tls is not None, auth=auth), self.log)
        state.appender = appender
        state.metrics = metrics
        approvals = Approvals(store, appender, config, log=self.log)
        await approvals.start()
        state.approvals = approvals
        self.state, self.pools, self.store = state, pools, store
        admin = await self.start_admin(config, store) if self.index in (None, 0) else None
        try:
            sock = make_listen_socket(self.host, self.port, self.reuse_port)
        except OSError as exc:
            self.log.error("cannot listen", address=f"{self.host}:{self.port}", error=str(exc))
            return 1
        server = await loop.create_server(lambda: ClientConnection(state), sock=sock, ssl=tls, backlog=1024)
        host, port = sock.getsockname()[:2]
        self.listening = True
        from fastgate._core import IMPLEMENTATIONS
        self.log.info("listening", address=f"{host}:{port}", tls=tls is not None, pid=os.getpid(),
                      cores=dict(IMPLEMENTATIONS))
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        await stop
        self.log.info("draining", connections=len(state.connections))
        server.close()
        state.drain()
        deadline = loop.time() + config.limits.drain_timeout
        while state.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(state.connections):
            conn.abort()
        for pool in pools.pools.values():
            pool.close()
        if admin is not None:
            await admin.close()
        if http is not None:
            await http.close()
        await approvals.close()
        await appender.close()
        store.close()
        self.log.info("stopped")
        return 0

    async def start_admin(self, config: Config, store: Store) -> AdminServer | None:
        """The admin socket, in the only worker or in worker 0 (all workers share the store)."""
        admin = AdminServer(config.admin.socket, log=self.log)
        RecordCommands(store, export_dir=config.audit.export_dir, max_body_bytes=config.audit.max_body_bytes,
                       status_extra=self.status_extra, mask_response=self.mask_replayed).install(admin)
        approvals = self.state.approvals
        admin.register("approvals.list", approvals.admin_list)
        admin.register("approvals.show", approvals.admin_show)
        admin.register("approvals.approve", approvals.admin_approve)
        admin.register("approvals.deny", approvals.admin_deny)
        admin.register("policy.explain", self.policy_explain)
        admin.register("config.reload", self.config_reload)
        try:
            await admin.start()
        except (AdminSocketError, OSError) as exc:
            self.log.error("admin socket not started", path=config.admin.socket, error=str(exc))
            return None
        self.log.info("admin socket", path=config.admin.socket)
        return admin

    async def start_admin_http(self, metrics: Metrics | None) -> AdminHttp:
        """/metrics, /healthz, /readyz on admin.http, in the only worker or worker 0 (as the admin
        socket). Started first, so /healthz answers and /readyz says "starting" while the rest loads."""
        http = AdminHttp(metrics, self.not_ready, log=self.log)
        if metrics is not None:
            metrics.serve_state(self.scrape_state)
        await http.start(self.admin_http)
        self.log.info("admin http", address=self.config.admin.http)
        return http

    def not_ready(self) -> str | None:
        """Why /readyz answers 503, or None: listening with a loaded config, not draining, and (when a
        call whose record cannot be written is refused) a store that takes appends."""
        state: ServerState | None = getattr(self, "state", None)  # set in serve() once loaded
        if state is None or not self.listening:
            return "starting"
        if state.draining:
            return "draining"
        if state.appender is not None and state.tables.fail_closed:
            problem = state.appender.problem()
            if problem is not None:
                return f"store unavailable: {problem}"
        return None

    def scrape_state(self) -> dict:
        """What /metrics reads at scrape time from this process (see metrics.StateCollector)."""
        out: dict = {"ready": self.not_ready() is None}
        state: ServerState | None = getattr(self, "state", None)
        if state is None:
            return out
        if state.approvals is not None:
            out["approvals_pending"] = state.approvals.stats["pending"]
        if state.appender is not None:
            out["store_writable"] = state.appender.problem() is None
            try:
                stat = state.appender.store.stat()
            except Exception:  # a scrape never fails on a store read: the gauges are left out
                pass
            else:
                out["store_used_bytes"], out["store_map_size_bytes"] = stat["used_bytes"], stat["map_size"]
        return out

    def mask_replayed(self, function: str | None, body: bytes) -> bytes:
        """A replayed answer is masked as the live pipeline would mask it."""
        from fastgate.pipeline import audit_mask

        tables = self.state.tables
        redactor = tables.redact_response.get(function or "") or tables.audit_redactor
        return audit_mask(redactor, body) if redactor is not None and body else body

    async def status_extra(self) -> dict:
        from fastgate._core import IMPLEMENTATIONS

        tables = self.state.tables
        return {"workers": self.workers_hint, "connections": len(self.state.connections),
                "functions": sorted(tables.catalog.names), "cores": dict(IMPLEMENTATIONS),
                "store_stats": dict(self.state.appender.stats),
                "approvals": dict(self.state.approvals.stats) if self.state.approvals else None}

    async def policy_explain(self, args: dict) -> dict:
        from fastgate.policy import MISSING, CallContext

        function = args.get("function")
        if not isinstance(function, str) or not function:
            raise AdminError("bad_request", "function is required")
        groups = args.get("groups") or []
        if isinstance(groups, str):
            groups = [g for g in groups.split(",") if g]
        call_args = args.get("args", MISSING)
        if isinstance(call_args, str):
            try:
                import orjson

                call_args = orjson.loads(call_args)
            except ValueError:
                raise AdminError("bad_request", "args must be JSON") from None
        subject = args.get("subject") or "anonymous"
        ctx = CallContext(subject, frozenset(groups), subject != "anonymous", args.get("claims") or {},
                          call_args, args.get("params") or {}, args.get("query") or {}, args.get("headers") or {})
        return self.state.tables.policy.explain(function, ctx)

    async def config_reload(self, args: dict) -> dict:
        if self.index is not None:  # a supervised worker: the parent reloads every worker
            os.kill(os.getppid(), signal.SIGHUP)
            return {"reloading": True, "workers": "all"}
        ok = await self.reload()
        if not ok:
            raise AdminError("bad_request", "reload refused: " + "; ".join(self.last_reload_errors))
        return {"reloaded": True, "functions": len(self.config.functions)}

    async def start_auth(self, config: Config) -> Authenticator:
        """Load the identity provider's keys; an unreachable provider is logged, not fatal:
        tokens are refused until a refresh succeeds (fail closed)."""
        auth = Authenticator.from_config(config.identity)
        try:
            await auth.start()
        except Exception as exc:
            self.log.error("identity keys not loaded; tokens are refused until a refresh works",
                           error=str(exc))
        return auth

    async def reload(self) -> bool:
        try:
            config = load_config(self.config_path)
            auth = await self.start_auth(config)
            tables = Tables(config, self.pools, tls=self.config.tls is not None, auth=auth)
        except ConfigError as exc:
            self.last_reload_errors = exc.errors
            self.log.error("reload refused: keeping the running config", errors=exc.errors)
            return False
        except Exception as exc:  # a config that validates but cannot be compiled
            self.last_reload_errors = [str(exc)]
            self.log.error("reload refused: keeping the running config", errors=[str(exc)])
            return False
        if ((config.listen != self.config.listen and not self.listen_override) or config.tls != self.config.tls
                or config.admin.http != self.config.admin.http):
            self.log.warning("listen, tls and admin.http changes take effect on restart")
        self.config = config
        self.log.set_secrets(config.secret_values)
        self.log.level = Log(config.log.level).level
        if self.state.appender is not None:
            injected = {k.lower() for up in config.upstreams.values() for k in up.inject_headers}
            self.state.appender.guard.set_secrets(config.secret_values, injected)
        if self.state.approvals is not None:
            self.state.approvals.reconfigure(config)
        old = self.state.tables.auth
        self.state.tables = tables
        old.close()
        self.log.info("reloaded", functions=len(config.functions))
        return True


class Supervisor:
    """The parent of N workers: holds the port, relays signals, restarts the dead."""

    def __init__(self, config_path: str, config: Config, host: str, port: int, listen: str | None,
                 workers: int, admin_http: socket.socket | None = None) -> None:
        self.config_path = config_path
        self.config = config
        self.listen = listen
        self.n = workers
        self.log = Log(config.log.level, config.secret_values)
        # Bound but not listening: reserves the port (and resolves port 0) without taking connections.
        self.placeholder = make_listen_socket(host, port, reuse_port=True, listen=False)
        self.host, self.port = host, self.placeholder.getsockname()[1]
        self.children: dict[int, int] = {}  # pid -> index
        if config.identity.forward == "jwt":
            gateway_jwks()  # one signing key, made before fork, shared by every worker
        mcp.process_state_key()  # likewise the key sealing MCP approval round trips
        self.stopping = False
        self.pending: list[int] = []
        # admin.http is served by worker 0 from this socket, held here so a restarted worker 0 takes
        # it over; the workers' counts meet in a private directory made before the first fork.
        self.admin_http = admin_http
        self.metrics_dir = multiprocess_dir() if admin_http is not None else None

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                self.placeholder.close()
                admin_http = self.admin_http if index == 0 else None
                if self.admin_http is not None and index != 0:
                    self.admin_http.close()
                code = Worker(self.config_path, self.config, self.host, self.port, self.listen,
                              index=index, reuse_port=True, admin_http=admin_http).run()
            finally:
                os._exit(code)
        self.children[pid] = index

    def run(self) -> int:
        try:
            return self._run()
        finally:
            if self.admin_http is not None:
                self.admin_http.close()
            if self.metrics_dir is not None:
                remove_multiprocess_dir(self.metrics_dir)

    def _run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.pending.append(signal.SIGTERM))
        signal.signal(signal.SIGINT, lambda *_: self.pending.append(signal.SIGTERM))
        signal.signal(signal.SIGHUP, lambda *_: self.pending.append(signal.SIGHUP))
        for i in range(self.n):
            self._spawn(i)
        self.log.info("supervising", workers=self.n, address=f"{self.host}:{self.port}", pid=os.getpid())
        deadline = None
        while self.children:
            while self.pending:
                sig = self.pending.pop(0)
                if sig == signal.SIGTERM and not self.stopping:
                    self.stopping = True
                    deadline = time.monotonic() + self.config.limits.drain_timeout + 5
                    self._signal_all(signal.SIGTERM)
                elif sig == signal.SIGHUP and not self.stopping:
                    self._reload()
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                index = self.children.pop(pid)
                if self.metrics_dir is not None:
                    process_exited(pid, self.metrics_dir)
                if not self.stopping:
                    self.log.error("worker exited; restarting", worker=index,
                                   status=os.waitstatus_to_exitcode(status))
                    time.sleep(0.2)
                    self._spawn(index)
                continue
            if deadline is not None and time.monotonic() > deadline:
                self._signal_all(signal.SIGKILL)
                deadline = None
            time.sleep(0.05)
        self.placeholder.close()
        return 0

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _reload(self) -> None:
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            self.log.error("reload refused: keeping the running config", errors=exc.errors)
            return
        self.config = config  # workers restarted later start from the new config
        self.log.set_secrets(config.secret_values)
        self._signal_all(signal.SIGHUP)
