"""The bundled demo functions: a small HTTP/1.1 service for `fastgate demo` to guard.

Every request must carry `Authorization: Bearer TOKEN`; the gateway injects it, so a
successful call proves credential injection. All data is made up; customers carry fake
PII (a Luhn-valid test card, an SSN-shaped number) so redaction has something to mask.

    python -m fastgate.demo.functions --listen 127.0.0.1:9001 --token TOKEN

Without --token the token is read from FASTGATE_DEMO_UPSTREAM_TOKEN (keeps it out of `ps`).
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import itertools
import os
import signal
import sys
from urllib.parse import parse_qsl

import h11
import orjson

from fastgate.units import parse_hostport

MAX_BODY = 1 << 20
IDLE_TIMEOUT = 60.0
ORDERS = [
    {"order_id": "A1001", "customer_id": "c-1001", "amount": 42.5, "status": "shipped"},
    {"order_id": "A1002", "customer_id": "c-1001", "amount": 250.0, "status": "delivered"},
    {"order_id": "A1003", "customer_id": "c-1002", "amount": 19.99, "status": "processing"},
]
_refund_ids = itertools.count(1)


def _customer(customer_id: str) -> dict:
    return {"customer": {
        "id": customer_id, "name": "Ada Lovelace", "email": "ada.lovelace@example.com",
        "phone": "+1 202-555-0143", "ssn": "123-45-6789", "tier": "gold",
        "card": {"number": "4111 1111 1111 1111", "brand": "visa", "expiry": "12/30"},
        "address": {"city": "London", "country": "GB"},
    }}


def route(method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, object]:
    """Pure request -> (status, JSON payload) mapping, after the token check."""
    path, _, query = target.partition("?")
    parts = path.strip("/").split("/")
    if method == "POST" and len(parts) == 2 and parts[0] == "refunds" and parts[1]:
        try:
            request = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError:
            return 400, {"error": "invalid_json"}
        if not isinstance(request, dict):
            return 400, {"error": "expected a JSON object"}
        return 200, {"refund_id": f"rf-{next(_refund_ids):05d}", "order_id": parts[1],
                     "amount": request.get("amount"), "status": "accepted"}
    if method == "GET" and len(parts) == 2 and parts[0] == "customers" and parts[1]:
        return 200, _customer(parts[1])
    if method == "GET" and parts == ["orders"]:
        wanted = dict(parse_qsl(query))
        return 200, [o for o in ORDERS if all(str(o.get(k)) == v for k, v in wanted.items())]
    if method == "POST" and parts == ["echo"]:
        # The credential the gateway injected was already checked; echoing it would hand it to the caller.
        return 200, {"headers": [[k.decode("latin-1"),
                                  "(verified by the demo server)" if k == b"authorization" else v.decode("latin-1")]
                                 for k, v in headers],
                     "body": body.decode("utf-8", "replace")}
    if parts[0] in ("refunds", "customers", "orders", "echo"):
        return 405, {"error": "method_not_allowed"}
    return 404, {"error": "not_found", "path": path}


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, expected: bytes) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request, body = None, bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT))
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > MAX_BODY:
                        raise h11.RemoteProtocolError("body too large", error_status_hint=413)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:  # ConnectionClosed
                    return
            assert request is not None
            auth = dict(request.headers).get(b"authorization", b"")
            if hmac.compare_digest(auth, expected):
                status, payload = route(request.method.decode(), request.target.decode("latin-1"),
                                        list(request.headers), bytes(body))
            else:
                status, payload = 401, {"error": "unauthorized", "detail": "missing or wrong bearer token"}
            writer.write(_response(conn, status, payload, head=request.method == b"HEAD"))
            await writer.drain()
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            writer.write(_response(conn, exc.error_status_hint, {"error": "bad_request"}))
    except (asyncio.TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


def _response(conn: h11.Connection, status: int, payload: object, head: bool = False) -> bytes:
    data = orjson.dumps(payload)
    headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
    out = [conn.send(h11.Response(status_code=status, headers=headers))]
    if not head:
        out.append(conn.send(h11.Data(data=data)))
    out.append(conn.send(h11.EndOfMessage()))
    return b"".join(out)


async def serve(host: str, port: int, token: str) -> asyncio.Server:
    """Start listening (port 0: any free port) and return the running server."""
    expected = b"Bearer " + token.encode()
    return await asyncio.start_server(lambda r, w: _handle(r, w, expected), host, port)


async def _serve_forever(host: str, port: int, token: str) -> None:
    server = await serve(host, port, token)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    print(f"demo functions listening on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastgate.demo.functions",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:9001", help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--token", default=os.environ.get("FASTGATE_DEMO_UPSTREAM_TOKEN"),
                        help="bearer token callers must present (default: $FASTGATE_DEMO_UPSTREAM_TOKEN)")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is required: --token or FASTGATE_DEMO_UPSTREAM_TOKEN")
    try:
        host, port = parse_hostport(args.listen)
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(_serve_forever(host, port, args.token))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
