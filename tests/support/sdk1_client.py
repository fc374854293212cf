"""Drive an MCP server with the official SDK **1.x** client (run by the mcp 1.x venv's python).

    MCP_API_KEY=... python sdk1_client.py URL '[["tool", {"arg": 1}], ...]'

One session: initialize, tools/list, then each call in order. Prints one JSON document:
{"version": ..., "tools": [...], "calls": [{"tool", "structured", "text", "is_error"} or {"tool", "error": {"code",
"message", "data"}}]}. An McpError on one call is recorded and the session goes on.
"""
import asyncio
import importlib.metadata
import json
import os
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError


async def main(url: str, plan: list) -> dict:
    out: dict = {"version": importlib.metadata.version("mcp"), "calls": []}
    async with streamablehttp_client(url, headers={"X-Api-Key": os.environ["MCP_API_KEY"]}) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            out["tools"] = [t.name for t in (await session.list_tools()).tools]
            for tool, arguments in plan:
                try:
                    r = await session.call_tool(tool, arguments)
                except McpError as exc:
                    out["calls"].append({"tool": tool, "error": exc.error.model_dump(exclude_none=True)})
                    continue
                out["calls"].append({"tool": tool, "structured": r.structuredContent, "is_error": r.isError,
                                     "text": r.content[0].text if r.content else None})
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))))
