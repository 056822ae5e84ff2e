"""``sealmem mcp``: an MCP server on stdin/stdout that calls a Sealmem server's REST API with a subject token.

An MCP host (Claude Desktop, an IDE, an agent framework) starts this process; everything the tools do is a
REST request to ``url`` with ``Authorization: Bearer <subject token>``, so the token alone decides whose
memories the model reaches and what it may do with them (scopes ``read`` and/or ``write``). The process holds
no keys and no data. A token given as a file is read again on every call, so whatever mints tokens can replace
it before it expires without restarting the host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from mcp.server.mcpserver import Context

from memory_store.credentials import KEY_SCHEME
from service.mcp.tools import ApiFailure, build_server

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_SECONDS = 60.0


class TokenProblem(ValueError):
    """The configured credential cannot be used (none, an API key, an unreadable file)."""


def check_token(token: str) -> str:
    token = token.strip()
    if not token:
        raise TokenProblem("no subject token: set SEALMEM_SUBJECT_TOKEN (or --token / --token-file)")
    if token.startswith(KEY_SCHEME):
        raise TokenProblem(
            "an API key is not accepted: the MCP server acts for one subject, so give it a subject token "
            "(POST /v1/tokens with an app key, scopes read and/or write)"
        )
    return token


def read_token_file(path: Path) -> str:
    try:
        return check_token(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TokenProblem(f"cannot read the token file {path}: {exc.strerror}") from None


class RemoteConnector:
    """One HTTP client to the Sealmem server for the life of the process; the token is fixed, or read from
    ``token_file`` on every call."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_file: Path | None = None,
        timeout: float = TIMEOUT_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if token is not None and token_file is not None:
            raise TokenProblem("give a subject token or a token file, not both")
        if token is None and token_file is None:
            check_token("")  # raises: no token
        self._token = check_token(token) if token is not None else None
        self._token_file = token_file
        if token_file is not None:
            read_token_file(token_file)  # fail at start, not on the first call
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"), timeout=timeout, transport=transport, headers={"User-Agent": "sealmem-mcp"}
        )

    def _current_token(self) -> str:
        if self._token is not None:
            return self._token
        assert self._token_file is not None
        return read_token_file(self._token_file)

    @asynccontextmanager
    async def __call__(self, ctx: Context) -> AsyncIterator[httpx.AsyncClient]:
        try:
            token = self._current_token()
        except TokenProblem as exc:  # nothing was sent
            raise ApiFailure("unauthorized", str(exc)) from None
        self._client.headers["Authorization"] = f"Bearer {token}"
        yield self._client

    async def aclose(self) -> None:
        await self._client.aclose()


async def serve_stdio(connector: RemoteConnector) -> None:
    """Speak MCP on this process' stdin/stdout until the host closes them."""
    server = build_server(connector)
    try:
        await server.run_stdio_async()
    finally:
        await connector.aclose()
