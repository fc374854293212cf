"""Start and stop a real gateway process (`python -m fastgate run -c CONFIG`) for end-to-end tests."""
from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
UP_TOKEN = "tok-upstream-canary"
INJECTED_SECRET = "s3cr3t-injected"
GATEWAY_ENV = {"UP_TOKEN": UP_TOKEN}
START_TIMEOUT = 15.0


def wait_for(predicate, timeout: float = 10.0) -> bool:
    """Poll `predicate` until it is true or `timeout` passes; the last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# (name, method, path) of the functions in base_config; each behaviour path of the recording upstream
UP_FUNCTIONS = [
    ("get_item", "GET", "/items/{item_id}"),
    ("head_item", "HEAD", "/items/{item_id}"),
    ("create_item", "POST", "/items"),
    ("echo", "POST", "/echo/{x}"),
    ("chunked", "GET", "/chunked/{x}"),
    ("stream", "GET", "/stream/{x}"),
    ("slow_head", "GET", "/slow-head/{x}"),
    ("slow_body", "GET", "/slow-body/{x}"),
    ("close", "GET", "/close/{x}"),
    ("malformed", "GET", "/malformed/{x}"),
    ("bad_cl", "GET", "/bad-cl/{x}"),
    ("big", "GET", "/big/{n}"),
    ("status", "GET", "/status/{code}"),
    ("te_cl", "GET", "/te-cl/{x}"),
    ("hop", "GET", "/hop/{x}"),
    ("head_response", "HEAD", "/head-response/{x}"),
    ("switch", "GET", "/switch/{x}"),
]


def base_config(upstream_port: int, dead_port: int | None = None, **overrides) -> dict:
    """The common test config. `overrides` are deep-merged (dicts merge, other values replace).

    Upstream `dead` points at a port nothing listens on (function `dead`: GET /dead/{x}).
    """
    if dead_port is None:
        dead_port = free_port()
    config = {
        "version": 1,
        "listen": "127.0.0.1:0",  # replaced by Gateway.start
        "limits": {
            "header_timeout": "1s", "body_timeout": "1s", "idle_timeout": "5s",
            "upstream_timeout": "2s", "connect_timeout": "1s",
            "max_body_bytes": "64KiB", "max_header_bytes": "8KiB", "max_request_line_bytes": "4KiB",
            "max_header_count": 50,
        },
        "upstreams": {
            "up": {"url": f"http://127.0.0.1:{upstream_port}",
                   "inject_headers": {"Authorization": "Bearer ${env:UP_TOKEN}",
                                      "X-Api-Secret": INJECTED_SECRET}},
            "dead": {"url": f"http://127.0.0.1:{dead_port}"},
        },
        "functions": [{"name": name, "upstream": "up", "http": {"method": method, "path": path}}
                      for name, method, path in UP_FUNCTIONS]
        + [{"name": "dead", "upstream": "dead", "http": {"method": "GET", "path": "/dead/{x}"}}],
        # the contract denies when no rule matches; the data-plane suite wants everything allowed
        "rules": [{"id": "allow-all", "functions": ["*"], "effect": "allow"}],
    }
    return _merge(config, overrides)


class GatewayStartError(RuntimeError):
    pass


class Gateway:
    def __init__(self, proc: subprocess.Popen, port: int, workdir: Path, config_path: Path,
                 stdout_path: Path, stderr_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.host = "127.0.0.1"
        self.workdir = workdir
        self.config_path = config_path
        self._stdout_path = stdout_path
        self._stderr_path = stderr_path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def start(cls, config: dict, tmp_path: Path, env: dict[str, str] | None = None,
              timeout: float = START_TIMEOUT) -> Gateway:
        tmp_path = Path(tmp_path)
        workdir = tmp_path
        if (workdir / "fastgate.yaml").exists():  # several gateways in one tmp_path: one folder each
            n = 2
            while (tmp_path / f"gw{n}").exists():
                n += 1
            workdir = tmp_path / f"gw{n}"
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config = dict(config, listen=f"127.0.0.1:{port}")
        config_path = workdir / "fastgate.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        full_env = dict(os.environ)
        full_env.update(GATEWAY_ENV)
        full_env["PYTHONPATH"] = str(REPO_ROOT)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        stdout_path, stderr_path = workdir / "stdout.log", workdir / "stderr.log"
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "fastgate", "run", "-c", str(config_path)],
                                    cwd=workdir, env=full_env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err)
        gw = cls(proc, port, workdir, config_path, stdout_path, stderr_path)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise GatewayStartError(f"gateway exited with {proc.returncode} before listening:\n"
                                        f"{gw.stderr_text()[-4000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return gw
            except OSError:
                pass
            if time.monotonic() > deadline:
                gw.stop()
                raise GatewayStartError(f"gateway not listening on {port} after {timeout}s:\n"
                                        f"{gw.stderr_text()[-4000:]}")
            time.sleep(0.05)

    def stderr_text(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout_text(self) -> str:
        try:
            return self._stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logs(self) -> str:
        return self.stdout_text() + self.stderr_text()

    def access_lines(self) -> list[dict]:
        """The JSON access-log records written so far (one per call)."""
        out = []
        for line in self.stderr_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("log") == "access":
                out.append(rec)
        return out

    def decide_soon(self, needle: str, decision: str = "approve", reviewer: str = "bob",
                    seen: dict | None = None) -> threading.Thread:
        """A reviewer deciding, from a thread, the first pending approval whose request body
        contains `needle` (e.g. '"c-7"'), once it exists; `seen` gets its `id` and the admin
        reply as `answer` (exit code, parsed output). Join the thread before asserting."""
        seen = {} if seen is None else seen

        def run() -> None:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                for a in self.admin("approvals", "list")[1] or []:
                    if a["state"] == "pending" and needle in ((a.get("summary") or {}).get("body") or ""):
                        seen["id"] = a["id"]
                        seen["answer"] = self.admin("approvals", decision, a["id"], "--reviewer", reviewer)
                        return
                time.sleep(0.1)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def admin(self, *args: str) -> tuple[int, object]:
        """`fastgate admin --json ARGS` against this gateway's socket: (exit code, parsed output)."""
        proc = subprocess.run([sys.executable, "-m", "fastgate", "admin", "--socket",
                               str(self.workdir / "var" / "admin.sock"), "--json", *args],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        out = proc.stdout if proc.returncode == 0 else proc.stderr
        return proc.returncode, json.loads(out) if out.strip() else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode
