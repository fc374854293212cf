"""The bundled demo function server over real sockets, and the `fastgate demo` glue that
does not need a running gateway (banner, shipped config)."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

import h11
import httpx
import pytest

from fastgate.demo import CONFIG_PATH, DEMO_KEYS, banner, run_demo
from fastgate.demo.functions import serve

REPO = Path(__file__).resolve().parents[1]
TOKEN = "demo-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def with_server(body: Callable[[int], Awaitable[Any]]) -> Any:
    """Run `body(port)` against a fresh in-process server on a free port."""
    async def main() -> Any:
        server = await serve("127.0.0.1", 0, TOKEN)
        try:
            return await body(server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()
    return asyncio.run(main())


def call(method: str, path: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
    async def body(port: int) -> httpx.Response:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            return await client.request(method, path, headers=AUTH if headers is None else headers, **kw)
    return with_server(body)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": f"bearer {TOKEN}"}])
def test_wrong_or_missing_token_is_401(headers):
    res = call("GET", "/orders", headers=headers)
    assert res.status_code == 401 and res.json()["error"] == "unauthorized"


def test_refund():
    res = call("POST", "/refunds/A1001", json={"amount": 40})
    assert res.status_code == 200
    body = res.json()
    assert body["order_id"] == "A1001" and body["amount"] == 40 and body["status"] == "accepted"
    assert re.fullmatch(r"rf-\d{5}", body["refund_id"])


def test_refund_refuses_bad_json():
    assert call("POST", "/refunds/A1", content=b"{nope").status_code == 400
    assert call("POST", "/refunds/A1", json=[1, 2]).status_code == 400


def test_customer_carries_fake_pii():
    res = call("GET", "/customers/c-1001")
    assert res.status_code == 200 and res.headers["content-type"] == "application/json"
    customer = res.json()["customer"]
    assert customer["id"] == "c-1001"
    assert "@" in customer["email"] and re.fullmatch(r"\d{3}-\d{2}-\d{4}", customer["ssn"])
    digits = [int(c) for c in customer["card"]["number"] if c.isdigit()]
    checksum = sum(digits[-1::-2]) + sum(sum(divmod(2 * d, 10)) for d in digits[-2::-2])
    assert len(digits) == 16 and checksum % 10 == 0


def test_orders_list_and_filter():
    everything = call("GET", "/orders").json()
    assert isinstance(everything, list) and len(everything) >= 2
    shipped = call("GET", "/orders", params={"status": "shipped"}).json()
    assert shipped and all(o["status"] == "shipped" for o in shipped) and len(shipped) < len(everything)


def test_echo_returns_headers_and_body():
    res = call("POST", "/echo", headers={**AUTH, "X-Trace": "t-1"}, content="héllo".encode())
    body = res.json()
    assert body["body"] == "héllo"
    assert ["x-trace", "t-1"] in body["headers"]
    assert ["authorization", "(verified by the demo server)"] in body["headers"] and TOKEN not in res.text


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/nope", 404), ("GET", "/", 404), ("DELETE", "/orders", 405), ("GET", "/refunds/A1", 405),
])
def test_unknown_routes(method, path, status):
    res = call(method, path)
    assert res.status_code == status and "error" in res.json()


def test_keep_alive_serves_two_requests_on_one_connection():
    async def body(port: int) -> list[tuple[int, bytes]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = h11.Connection(h11.CLIENT)
        answers = []
        try:
            for target in (b"/orders", b"/customers/c-7"):
                writer.write(conn.send(h11.Request(method="GET", target=target,
                                                   headers=[("Host", "demo"), *AUTH.items()])))
                writer.write(conn.send(h11.EndOfMessage()))
                status, data = 0, b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await asyncio.wait_for(reader.read(65536), 5))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        data += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                answers.append((status, data))
                conn.start_next_cycle()
        finally:
            writer.close()
            await writer.wait_closed()
        return answers

    answers = with_server(body)
    assert [status for status, _ in answers] == [200, 200]
    assert b"c-7" in answers[1][1]


def test_module_entry_point_reads_token_from_env():
    """`python -m fastgate.demo.functions` is what `fastgate demo` spawns; the token comes via env."""
    env = dict(os.environ, PYTHONPATH=str(REPO), FASTGATE_DEMO_UPSTREAM_TOKEN=TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "fastgate.demo.functions", "--listen", "127.0.0.1:0"],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        port = int(line.rsplit(":", 1)[1])
        assert httpx.get(f"http://127.0.0.1:{port}/orders", headers=AUTH, timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/orders", timeout=5).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == 0


def test_shipped_demo_config_matches_configs_copy():
    assert CONFIG_PATH.read_bytes() == (REPO / "configs" / "demo.yaml").read_bytes()


def test_banner_follows_listen_override():
    text = banner("0.0.0.0:9999")
    assert "curl -s -H 'X-Api-Key: fgdemo-support' http://127.0.0.1:9999/customers/c-1001" in text
    assert "8080" not in text
    assert "http://[::1]:8181/orders" in banner("[::1]:8181")


def test_demo_keys_match_config():
    import hashlib

    from fastgate.config import load_config

    config = load_config(CONFIG_PATH, env={"FASTGATE_DEMO_UPSTREAM_TOKEN": "x", "FASTGATE_DEMO_JWKS": "jwks.json"})
    hashes = {k.sha256 for k in config.identity.api_keys}
    assert {hashlib.sha256(key.encode()).hexdigest() for key in DEMO_KEYS.values()} == hashes


def test_run_demo_refuses_bad_listen(capsys):
    assert run_demo("nowhere") == 2
    assert "--listen" in capsys.readouterr().err
