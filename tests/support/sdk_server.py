"""A real MCP server built with the official Python SDK (2.x `MCPServer`), run in a subprocess.

The hand-written `mcp_upstream.py` imitates the wire; this one *is* the reference implementation,
so the gate is tested against what deployed servers actually send: session-era streamable HTTP
(`initialize`, `Mcp-Session-Id`, SSE answers unless `json_response`) and the stateless 2026-07-28
era (the SDK picks it per request from the `MCP-Protocol-Version` header), a Host allow-list for
127.0.0.1, JSON inside `content[].text` next to `structuredContent`.

    with SdkServer.start() as srv:      # srv.port, srv.url == "http://127.0.0.1:PORT/mcp"
        ...
        srv.log()                       # [{"tool": "lookup_customer", "arguments": {"id": "c-1"}}, ...]

Run directly: `python sdk_server.py PORT LOGFILE [--json]` (the parent does this).
"""
# no `from __future__ import annotations`: the SDK evaluates tool annotations (Context) at runtime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 30.0
PII = {"email": "jane.doe@example.com", "ssn": "123-45-6789"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SdkServer:
    def __init__(self, proc: subprocess.Popen, port: int, tmpdir: tempfile.TemporaryDirectory) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}/mcp"
        self._tmp = tmpdir
        self._log = Path(tmpdir.name) / "calls.jsonl"
        self._err = Path(tmpdir.name) / "stderr.log"

    @classmethod
    def start(cls, *, json_response: bool = False) -> "SdkServer":
        tmp = tempfile.TemporaryDirectory(prefix="sdk-mcp-")
        port = _free_port()
        args = [sys.executable, __file__, str(port), str(Path(tmp.name) / "calls.jsonl")]
        with open(Path(tmp.name) / "stderr.log", "wb") as err:
            proc = subprocess.Popen(args + (["--json"] if json_response else []), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        srv = cls(proc, port, tmp)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                err = srv.stderr_text()[-4000:]
                srv.stop()
                raise RuntimeError(f"SDK server exited with {proc.returncode}:\n{err}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return srv
            except OSError:
                if time.monotonic() > deadline:
                    err = srv.stderr_text()[-4000:]
                    srv.stop()
                    raise RuntimeError(f"SDK server not listening after {START_TIMEOUT}s:\n{err}")
                time.sleep(0.05)

    def log(self) -> list[dict]:
        """Tool invocations the server executed, in order."""
        try:
            return [json.loads(line) for line in self._log.read_text().splitlines() if line]
        except FileNotFoundError:
            return []

    def stderr_text(self) -> str:
        try:
            return self._err.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._tmp.cleanup()

    def __enter__(self) -> "SdkServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _serve(port: int, log_path: str, json_response: bool) -> None:
    import uvicorn
    from mcp.server.mcpserver import Context, MCPServer

    server = MCPServer("fastgate-test-sdk")

    def record(tool: str, **arguments) -> None:
        with open(log_path, "a") as f:  # one short line per call: append is atomic enough here
            f.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")

    @server.tool(description="find a customer")
    def lookup_customer(id: str) -> dict[str, str]:  # noqa: A002 - the wire name
        record("lookup_customer", id=id)
        return {"customer": id, **PII}

    @server.tool(description="remove a customer")
    def delete_customer(id: str) -> dict[str, str]:  # noqa: A002
        record("delete_customer", id=id)
        return {"deleted": id}

    @server.tool(description="a report that reports progress first")
    async def stream_report(id: str, ctx: Context) -> dict[str, str]:  # noqa: A002
        record("stream_report", id=id)
        await ctx.report_progress(0.5, 1.0, "halfway")  # a notification: the SDK answers as SSE
        return {"customer": id, "report": "ok", **PII}

    app = server.streamable_http_app(json_response=json_response, host="127.0.0.1")  # Host allow-list on
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2], "--json" in sys.argv[3:])
