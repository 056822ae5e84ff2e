"""The MCP server (issue 13, item 6), driven by the official ``mcp`` SDK's own client over both transports
against one real ``sealmem serve`` process (hashing embedder): stdio (``sealmem mcp`` spawned as a subprocess,
calling the server's REST API) and streamable HTTP (the server's own ``/mcp`` endpoint).

Each tool call is bound to the one subject of its subject token: tools are listed without a subject argument,
a token for one subject never sees another's memories, a read-only token cannot remember (a tool error with
the API's code), and every tool call leaves the REST API's audit record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult
from typer.testing import CliRunner

from memory_store.embedder import HashingEmbedder
from service.app import create_app
from service.cli import make_cli
from service.mcp.stdio import RemoteConnector
from service.mcp.tools import build_server
from tests.harness import bearer, make_settings
from tests.proofs.process import REPO, ServerProcess, create_tenant, free_port, secret_env

TOOLS = {"remember", "recall", "list_memories", "forget"}


@dataclass
class Server:
    """The served process, an admin key and an app key of its one tenant."""

    process: ServerProcess
    admin: str
    app: str

    @property
    def url(self) -> str:
        return self.process.url

    def token(self, subject: str, scopes: list[str]) -> str:
        with self.process.client() as client:
            response = client.post("/v1/tokens", json={"subject": subject, "scopes": scopes}, headers=bearer(self.app))
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def audit(self, subject: str) -> list[dict[str, Any]]:
        with self.process.client() as client:
            response = client.get(
                "/v1/admin/audit", params={"subject": subject, "limit": 200}, headers=bearer(self.admin)
            )
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("mcp")
    env = secret_env(folder / "secrets", folder / "data")
    tenant = create_tenant(env, "acme")
    process = ServerProcess(env, folder / "server.log").start()
    try:
        with process.client() as client:
            response = client.post(
                "/v1/admin/keys", json={"role": "app", "name": "mcp"}, headers=bearer(tenant["admin_key"])
            )
        assert response.status_code == 201, response.text
        yield Server(process, tenant["admin_key"], response.json()["key"])
    finally:
        process.stop()


# ---- the two transports -----------------------------------------------------------------------------------


@asynccontextmanager
async def http_client(server: Server, token: str, *, mode: str = "auto") -> AsyncIterator[Client]:
    """The SDK's client on the server's streamable-HTTP endpoint, the token as the bearer credential."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    async with http, Client(streamable_http_client(f"{server.url}/mcp", http_client=http), mode=mode) as client:
        yield client


@asynccontextmanager
async def stdio_client(server: Server, token_file: Path) -> AsyncIterator[Client]:
    """The SDK's client on ``sealmem mcp`` (the CLI's entry point) spawned with a token file."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-c", "from service.cli import main; main()", "mcp"],
        env={"PYTHONPATH": str(REPO), "SEALMEM_URL": server.url, "SEALMEM_SUBJECT_TOKEN_FILE": str(token_file)},
        cwd=REPO,
    )
    async with Client(params, read_timeout_seconds=60) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> CallToolResult:
    result = await client.call_tool(tool, arguments)
    assert isinstance(result, CallToolResult)
    return result


def ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.content and result.content[0].type == "text" and result.content[0].text
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def error_code(result: CallToolResult) -> str:
    assert result.is_error
    assert isinstance(result.structured_content, dict), result.content
    error = result.structured_content["error"]
    text = result.content[0].text  # type: ignore[union-attr]
    assert text.startswith(f"{error['code']}: {error['message']}")
    assert "Traceback" not in text and 'File "' not in text
    return str(error["code"])


def run(main: Callable[[], Awaitable[None]]) -> None:
    anyio.run(main)


# ---- one scenario, both transports ------------------------------------------------------------------------


async def scenario(
    open_as: Callable[[str], Any], swap: Callable[[str], None] | None, server: Server, tag: str
) -> dict[str, str]:
    """Remember, recall, paginate, forget as ``alice-<tag>``; ``bob-<tag>`` sees none of it; a read-only token
    cannot remember. ``open_as(token)`` opens a client; with ``swap``, one client is kept and its token replaced
    instead (stdio: the token file). Returns the memory ids by text."""
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    tokens = {
        "alice": server.token(alice, ["read", "write"]),
        "alice-ro": server.token(alice, ["read"]),
        "bob": server.token(bob, ["read", "write"]),
    }
    texts = ["My dog is named Biscuit.", "I live in Lisbon.", "I prefer window seats on long flights."]
    ids: dict[str, str] = {}

    async def as_alice(client: Client) -> None:
        listed = await client.list_tools()
        assert {tool.name for tool in listed.tools} == TOOLS
        for tool in listed.tools:  # no tool lets the model choose whose memories it touches
            assert "subject" not in tool.input_schema.get("properties", {}), tool.name
            assert tool.output_schema is not None, tool.name
        for number, text in enumerate(texts):
            memory = ok(await call(client, "remember", text=text, kind="fact", metadata={"n": number}))["memory"]
            assert memory["text"] == text and memory["metadata"] == {"n": number} and "subject" not in memory
            ids[text] = memory["id"]
        found = ok(await call(client, "recall", query="what is my dog called?", k=3))["results"]
        assert found and found[0]["text"] == texts[0]
        first = await call(client, "list_memories", limit=2)
        page = ok(first)
        assert len(page["items"]) == 2 and page["next_cursor"]
        assert page["next_cursor"] in first.content[0].text  # type: ignore[union-attr]
        rest = ok(await call(client, "list_memories", limit=2, cursor=page["next_cursor"]))
        assert len(rest["items"]) == 1 and rest["next_cursor"] is None
        listed_ids = {m["id"] for m in page["items"] + rest["items"]}
        assert listed_ids == set(ids.values())
        forgotten = ok(await call(client, "forget", memory_id=ids[texts[1]]))
        assert forgotten == {"deleted": ids[texts[1]]}
        assert error_code(await call(client, "forget", memory_id=ids[texts[1]])) == "not_found"
        left = ok(await call(client, "list_memories"))["items"]
        assert {m["id"] for m in left} == {ids[texts[0]], ids[texts[2]]}

    async def as_bob(client: Client) -> None:
        assert ok(await call(client, "list_memories"))["items"] == []
        found = ok(await call(client, "recall", query="what is my dog called?", k=10))["results"]
        assert all(m["id"] not in ids.values() for m in found)
        assert error_code(await call(client, "forget", memory_id=ids[texts[0]])) == "not_found"

    async def as_reader(client: Client) -> None:
        assert error_code(await call(client, "remember", text="I moved to Porto.")) == "forbidden"
        assert ok(await call(client, "recall", query="dog", k=1))["results"]

    steps = [("alice", as_alice), ("bob", as_bob), ("alice-ro", as_reader)]
    if swap is None:
        for who, step in steps:
            async with open_as(tokens[who]) as client:
                await step(client)
    else:
        swap(tokens["alice"])
        async with open_as(tokens["alice"]) as client:
            for who, step in steps:
                swap(tokens[who])
                await step(client)
    # The memories bob's calls could not reach are intact.
    with server.process.client() as rest:
        response = rest.get("/v1/memories", params={"subject": alice}, headers=bearer(server.app))
    assert {m["id"] for m in response.json()["items"]} == {ids[texts[0]], ids[texts[2]]}
    return ids


def assert_audited(server: Server, subject: str, ids: dict[str, str]) -> list[dict[str, Any]]:
    """Every tool call left the REST API's audit record, under the subject token (role ``subject``)."""
    records = server.audit(subject)
    actions = {r["action"] for r in records if r["role"] == "subject" and r["token_id"]}
    assert {"memory.add", "memory.search", "memory.list", "memory.delete"} <= actions
    added = {i for r in records if r["action"] == "memory.add" and r["outcome"] == "ok" for i in r["memory_ids"]}
    assert set(ids.values()) <= added
    return records


def test_stdio_transport(server: Server, tmp_path: Path) -> None:
    token_file = tmp_path / "token"

    def swap(token: str) -> None:
        token_file.write_text(token + "\n", encoding="utf-8")

    async def main() -> None:
        ids = await scenario(lambda _token: stdio_client(server, token_file), swap, server, "stdio")
        assert_audited(server, "alice-stdio", ids)

    run(main)


def test_http_transport(server: Server) -> None:
    async def main() -> None:
        ids = await scenario(lambda token: http_client(server, token), None, server, "http")
        records = assert_audited(server, "alice-http", ids)
        # The REST request of each tool call carries the /mcp request's id, for correlation.
        assert all(r["detail"].get("client_request_id") for r in records if r["action"] == "memory.add")

    run(main)


def test_http_transport_with_the_initialize_handshake(server: Server) -> None:
    """Clients of the 2025 protocol versions (initialize handshake) are served too."""
    token = server.token("carol", ["read", "write"])

    async def main() -> None:
        async with http_client(server, token, mode="legacy") as client:
            assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
            memory = ok(await call(client, "remember", text="Carol plays the cello."))["memory"]
            found = ok(await call(client, "recall", query="cello", k=1))["results"]
            assert found[0]["id"] == memory["id"]

    run(main)


def test_http_endpoint_takes_subject_tokens_only(server: Server) -> None:
    """API keys and bad or missing credentials are refused before MCP, in the API's error body."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream"}
    with server.process.client() as client:
        for credential, status, code in [
            (None, 401, "unauthorized"),
            ("not-a-token", 401, "unauthorized"),
            (server.token("dave", ["read"])[:-4] + "AAAA", 401, "unauthorized"),
            (server.app, 403, "forbidden"),
            (server.admin, 403, "forbidden"),
        ]:
            auth = bearer(credential) if credential else {}
            response = client.post("/mcp", json=body, headers={**headers, **auth})
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert error["code"] == code and error["request_id"] == response.headers["X-Request-ID"]
            if status == 401:
                assert response.headers["WWW-Authenticate"] == "Bearer"
            else:
                assert "subject token" in error["message"]
        # Stateless: no server-initiated stream to GET, no session to DELETE.
        token = server.token("dave", ["read"])
        for method in ("GET", "DELETE"):
            response = client.request(method, "/mcp", headers={**headers, **bearer(token)}, timeout=10)
            assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_revoked_key_surfaces_as_a_tool_error(server: Server) -> None:
    """The gate checks only the signature; the REST call behind the tool refuses a token whose minting key
    was revoked, and the model gets that as a tool error."""
    with server.process.client() as client:
        created = client.post("/v1/admin/keys", json={"role": "app", "name": "short"}, headers=bearer(server.admin))
        key = created.json()
        minted = client.post(
            "/v1/tokens", json={"subject": "erin", "scopes": ["read"]}, headers=bearer(key["key"])
        ).json()["token"]
        assert client.delete(f"/v1/admin/keys/{key['id']}", headers=bearer(server.admin)).is_success

    async def main() -> None:
        async with http_client(server, minted) as mcp:
            assert error_code(await call(mcp, "recall", query="anything")) == "unauthorized"

    run(main)


# ---- without a server -------------------------------------------------------------------------------------


def test_unreachable_server_is_a_tool_error() -> None:
    connector = RemoteConnector(f"http://127.0.0.1:{free_port()}", token="header.payload.signature", timeout=5)

    async def main() -> None:
        async with Client(build_server(connector)) as client:
            result = await call(client, "recall", query="anything")
            assert error_code(result) == "unavailable"
            assert "cannot reach the Sealmem server" in result.content[0].text  # type: ignore[union-attr]
        await connector.aclose()

    run(main)


def test_cli_refuses_a_missing_token_or_an_api_key(tmp_path: Path) -> None:
    runner = CliRunner()
    cli = make_cli()
    missing = runner.invoke(cli, ["mcp"], env={"SEALMEM_SUBJECT_TOKEN": "", "SEALMEM_SUBJECT_TOKEN_FILE": ""})
    assert missing.exit_code == 1 and "no subject token" in missing.output
    key = runner.invoke(cli, ["mcp", "--token", "smk_" + "a" * 43])
    assert key.exit_code == 1 and "API key is not accepted" in key.output
    absent = runner.invoke(cli, ["mcp", "--token-file", str(tmp_path / "absent")])
    assert absent.exit_code == 1 and "cannot read the token file" in absent.output


def test_endpoint_can_be_switched_off(tmp_path: Path) -> None:
    def paths(**overrides: Any) -> set[str]:
        app = create_app(make_settings(tmp_path, **overrides), embedder=HashingEmbedder())
        return {getattr(route, "path", "") for route in app.routes}

    assert "/mcp" in paths()
    assert "/mcp" not in paths(mcp_enabled=False)


def test_quickstart_example(server: Server) -> None:
    """examples/mcp/quickstart.py runs against a real server: both transports, the stdio one started from
    examples/mcp/claude_desktop_config.json."""
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "SEALMEM_URL": server.url,
        "SEALMEM_API_KEY": server.app,
        "SEALMEM_SUBJECT": "quickstart",
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "mcp" / "quickstart.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Remembered as memory" in done.stdout and "Forgot memory" in done.stdout
    for name in ("claude_desktop_config.json", "streamable_http.json"):
        config = json.loads((REPO / "examples" / "mcp" / name).read_text(encoding="utf-8"))
        assert set(config["mcpServers"]) == {"sealmem"}
