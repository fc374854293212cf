"""`fastgate demo`: the gateway in front of the bundled demo functions, no set-up needed.

`run_demo` generates the upstream token, starts `python -m fastgate.demo.functions` in a
subprocess (the token travels in its environment, not its argv), prints curl lines that
work against the chosen listen address, serves `demo.yaml` (shipped next to this file)
and stops the subprocess when the gateway exits.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastgate.units import parse_hostport

__all__ = ["CONFIG_PATH", "DEMO_KEYS", "banner", "run_demo"]

CONFIG_PATH = Path(__file__).with_name("demo.yaml")
TOKEN_ENV = "FASTGATE_DEMO_UPSTREAM_TOKEN"
DEMO_KEYS = {"support": "fgdemo-support", "intern": "fgdemo-intern"}
"""The demo's API keys (their sha256 is in demo.yaml). Public on purpose: demo only."""


def _base_url(listen: str) -> str:
    host, port = parse_hostport(listen)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def banner(listen: str, admin_socket: str = "var/demo/admin.sock", tokens: dict[str, str] | None = None) -> str:
    """The text printed at start: what runs where, and curl lines that work as printed."""
    url = _base_url(listen)
    token_lines = []
    if tokens:
        token_lines = ["  # the same with the demo identity provider's tokens (JWT, 12 h):"]
        for user, token in tokens.items():
            token_lines.append(f"  export {user.upper()}='{token}'")
        token_lines.append(f"  curl -s -H \"Authorization: Bearer $ALICE\" {url}/customers/c-1001")
        token_lines.append(f"  curl -s -H \"Authorization: Bearer $IVAN\" {url}/customers/c-1001")
    support = f"curl -s -H 'X-Api-Key: {DEMO_KEYS['support']}'"
    intern = f"curl -s -H 'X-Api-Key: {DEMO_KEYS['intern']}'"
    json_post = "-H 'content-type: application/json' -X POST"
    return "\n".join([
        f"fastgate demo: gateway on {url}, demo functions behind it",
        "",
        "  # allowed, with the SSN and card number masked in the answer:",
        f"  {support} {url}/customers/c-1001",
        f"  {support} '{url}/orders?status=shipped'",
        "  # a small refund is allowed; a large one waits for a reviewer (202):",
        f"  {support} {json_post} -d '{{\"amount\": 40}}' {url}/refunds/A1001",
        f"  {support} {json_post} -d '{{\"amount\": 400}}' {url}/refunds/A1002",
        f"  fastgate admin --socket {admin_socket} approvals list",
        "  # interns are denied everything (403), strangers are unauthenticated (401):",
        f"  {intern} {url}/customers/c-1001",
        f"  curl -s {url}/orders",
        "  # the headers the function received (Authorization was injected by the gateway):",
        f"  {support} -X POST -d 'hello' {url}/echo",
        *token_lines,
        "",
    ])


def _wait_listening(host: str, port: int, proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def run_demo(listen: str = "127.0.0.1:8080") -> int:
    """Run the demo in the foreground; returns the gateway's exit code."""
    from fastgate.config import ConfigError, load_config

    try:
        parse_hostport(listen)
    except ValueError as exc:
        print(f"fastgate demo: --listen: {exc}", file=sys.stderr)
        return 2
    os.environ[TOKEN_ENV] = secrets.token_urlsafe(32)
    from fastgate.demo.identity import DemoIdentity

    idp_dir = tempfile.mkdtemp(prefix="fastgate-demo-idp-")
    identity = DemoIdentity(idp_dir)
    os.environ["FASTGATE_DEMO_JWKS"] = str(identity.jwks_path)
    tokens = {user: identity.token(user) for user in identity.users}
    try:
        config = load_config(CONFIG_PATH)
    except ConfigError as exc:
        print(f"fastgate demo: {CONFIG_PATH}: invalid configuration\n{exc}", file=sys.stderr)
        return 2
    upstream = config.upstreams["demo"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastgate.demo.functions", "--listen", f"{upstream.host}:{upstream.port}"],
        env=dict(os.environ))
    try:
        if not _wait_listening(upstream.host, upstream.port, proc):
            print(f"fastgate demo: the demo functions did not start on {upstream.host}:{upstream.port}",
                  file=sys.stderr)
            return 1
        print(banner(listen, config.admin.socket, tokens), flush=True)
        from fastgate.server import run

        return run(str(CONFIG_PATH), workers=None, listen=listen)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
