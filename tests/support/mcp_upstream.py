"""A small MCP server (streamable HTTP, session era) for end-to-end tests of the gate.

It speaks the wire format real SDK servers use: `initialize` issues an `Mcp-Session-Id`,
notifications get 202, `tools/list` and `tools/call` answer JSON, or SSE when the client's
`Accept` lists `text/event-stream` and the tool name starts with `stream_`. A call with
`"confirm": true` in its arguments first answers `input_required` with its own `requestState`
(the 2026-07-28 multi-round trip). Tool results put
JSON inside `content[].text` and in `structuredContent`, as SDK servers do.
"""
from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOOLS = [
    {"name": "lookup_customer", "description": "find a customer", "inputSchema": {"type": "object"}},
    {"name": "delete_customer", "description": "remove a customer", "inputSchema": {"type": "object"}},
    {"name": "stream_report", "description": "a streamed report", "inputSchema": {"type": "object"}},
]


class McpUpstream:
    def __init__(self) -> None:
        self.calls: list[dict] = []       # every JSON-RPC message received, in order
        self.sessions: set[str] = set()
        self.headers: list[dict] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body leave in two writes: no 40 ms Nagle stall

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json", extra=()) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                """/sse: a 2024-11-05 server (opens with `event: endpoint`); /mcp: a server-to-client
                stream that starts with a priming event, as 2025-11-25 servers send."""
                first = (b"event: endpoint\r\ndata: /messages?session_id=abc\r\n\r\n" if self.path == "/sse"
                         else b"id: 0\r\nretry: 1000\r\ndata: \r\n\r\n")
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                note = (b'event: message\r\ndata: {"jsonrpc":"2.0","method":"notifications/message",'
                        b'"params":{"level":"info","data":"mail jane.doe@example.com"}}\r\n\r\n')
                self.wfile.write(first + b": ping\r\n\r\n" + note)
                self.close_connection = True

            def do_DELETE(self) -> None:  # noqa: N802
                upstream.sessions.discard(self.headers.get("Mcp-Session-Id", ""))
                self._send(200, b"")

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                msg = json.loads(body)
                upstream.calls.append(msg)
                upstream.headers.append({k.lower(): v for k, v in self.headers.items()})
                method = msg.get("method")
                if "id" not in msg:
                    self._send(202, b"")
                    return
                if method == "initialize":
                    sid = uuid.uuid4().hex
                    upstream.sessions.add(sid)
                    result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                              "serverInfo": {"name": "test-mcp", "version": "1"}}
                    self._send(200, json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode(),
                               extra=[("Mcp-Session-Id", sid)])
                    return
                if method == "tools/list":
                    result = {"tools": TOOLS}
                elif method == "tools/call" and msg["params"].get("arguments", {}).get("confirm"):
                    # 2026-07-28 multi-round trip of the server's own: ask, then act on the answer
                    params = msg["params"]
                    if params.get("requestState") != "up-state-1" or "confirm" not in params.get("inputResponses", {}):
                        ask = {"method": "elicitation/create",
                               "params": {"mode": "form", "message": "sure?", "requestedSchema": {"type": "object"}}}
                        result = {"resultType": "input_required", "inputRequests": {"confirm": ask},
                                  "requestState": "up-state-1"}
                    else:
                        result = {"resultType": "complete", "structuredContent": {"confirmed": params["arguments"]["id"]},
                                  "content": [{"type": "text", "text": "done"}]}
                elif method == "tools/call":
                    args = msg["params"].get("arguments", {})
                    data = {"customer": args.get("id"), "email": "jane.doe@example.com", "ssn": "123-45-6789"}
                    result = {"content": [{"type": "text", "text": json.dumps(data)}], "structuredContent": data,
                              "isError": False}
                    if msg["params"]["name"].startswith("stream_"):
                        event = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result})
                        sse = (b": ping\r\n\r\nevent: message\r\ndata: " + event.encode() + b"\r\n\r\n")
                        self._send(200, sse, "text/event-stream")
                        return
                else:
                    result = {}
                self._send(200, json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "McpUpstream":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
