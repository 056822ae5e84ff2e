"""Sealmem's MCP tools from the official MCP Python SDK, over both transports.

Mints a subject token with an app key (the step your backend does for each end user), then:

1. streamable HTTP: connects to the server's ``/mcp`` endpoint with the token as the bearer credential
   (the configuration in ``streamable_http.json``), remembers a fact and recalls it;
2. stdio: starts ``sealmem mcp`` exactly as ``claude_desktop_config.json`` describes it (the token in a file),
   lists the memories and forgets the one it added.

    SEALMEM_URL=http://127.0.0.1:8080 SEALMEM_API_KEY=smk_... python examples/mcp/quickstart.py

Needs only the ``mcp`` package (and a ``sealmem`` command on PATH or beside this Python for the stdio part).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

HERE = Path(__file__).resolve().parent


def mint_token(url: str, app_key: str, subject: str) -> str:
    """POST /v1/tokens with the app key: a token for one subject, scopes read and write, 15 minutes."""
    request = urllib.request.Request(  # noqa: S310 (the URL is the operator's)
        f"{url}/v1/tokens",
        data=json.dumps({"subject": subject, "scopes": ["read", "write"], "ttl_seconds": 900}).encode(),
        headers={"Authorization": f"Bearer {app_key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return str(json.load(response)["token"])


def checked(result: Any) -> dict[str, Any]:
    """The structured content of a successful tool call (a tool error ends the quickstart)."""
    assert isinstance(result, CallToolResult)
    text = result.content[0].text if result.content and result.content[0].type == "text" else ""
    if result.is_error:
        raise SystemExit(f"tool error: {text}")
    print(text)
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def over_http(url: str, token: str) -> str:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
        tools = await client.list_tools()
        print("tools:", ", ".join(tool.name for tool in tools.tools))
        added = checked(await client.call_tool("remember", {"text": "I am allergic to peanuts.", "kind": "fact"}))
        checked(await client.call_tool("recall", {"query": "what food should I avoid?", "k": 3}))
        return str(added["memory"]["id"])


def sealmem_command(configured: str) -> str:
    """The configured command, or ``sealmem`` from PATH or beside this Python (the example has a placeholder)."""
    if Path(configured).exists():
        return configured
    found = shutil.which("sealmem") or shutil.which("sealmem", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("no `sealmem` command: install Sealmem (pip install -e .) or edit the configuration")
    return found


async def over_stdio(url: str, token: str, memory_id: str) -> None:
    config = json.loads((HERE / "claude_desktop_config.json").read_text(encoding="utf-8"))["mcpServers"]["sealmem"]
    with tempfile.TemporaryDirectory() as folder:
        token_file = Path(folder) / "subject.token"
        token_file.touch(mode=0o600)
        token_file.write_text(token, encoding="utf-8")
        env = {**config["env"], "SEALMEM_URL": url, "SEALMEM_SUBJECT_TOKEN_FILE": str(token_file)}
        if "PYTHONPATH" in os.environ:  # running from a checkout without installing
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        params = StdioServerParameters(command=sealmem_command(config["command"]), args=config["args"], env=env)
        async with Client(params) as client:
            checked(await client.call_tool("list_memories", {"limit": 10}))
            checked(await client.call_tool("forget", {"memory_id": memory_id}))


async def main() -> None:
    url = os.environ.get("SEALMEM_URL", "http://127.0.0.1:8080").rstrip("/")
    app_key = os.environ.get("SEALMEM_API_KEY")
    if not app_key:
        raise SystemExit("set SEALMEM_API_KEY to an admin or app key (POST /v1/admin/keys {'role': 'app'})")
    token = mint_token(url, app_key, os.environ.get("SEALMEM_SUBJECT", "quickstart-user"))
    print("== streamable HTTP ==")
    memory_id = await over_http(url, token)
    print("== stdio (sealmem mcp) ==")
    await over_stdio(url, token, memory_id)


if __name__ == "__main__":
    asyncio.run(main())
