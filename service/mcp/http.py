"""The streamable-HTTP MCP endpoint of the app (``/mcp``), for subject tokens only.

Every MCP HTTP request carries ``Authorization: Bearer <subject token>``. The gate in front of the SDK's
transport answers, in the API's error body: 401 ``unauthorized`` without a credential or with a token whose
signature, expiry or claims are wrong; 403 ``forbidden`` for an API key (an API key is not bound to one subject,
and the tools never take a subject: mint a subject token with ``POST /v1/tokens`` and use that). The gate only
checks the token's signature (no database lookup, no rate-limit bucket): each tool call then goes through the
REST API of this same app, in process, with the request's token, where the full authentication (minting key
still active, rate limits), scopes, subject binding, limits and audit apply exactly as for any REST request.

The transport is stateless (a fresh MCP transport per HTTP request, JSON responses, no session id), so any
worker process or replica can serve any request, and nothing outlives a request. Only POST is routed: with no
session there is nothing to DELETE and no server-initiated message to stream on a GET (405 for both). Past the
gate, a request the SDK cannot parse is answered in JSON-RPC's error format, as MCP clients expect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import httpx
from mcp.server.mcpserver import Context
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from memory_store.credentials import KEY_SCHEME
from service.errors import REQUEST_ID_HEADER, error_response
from service.mcp.tools import build_server
from service.tokens import InvalidToken

if TYPE_CHECKING:
    from service.services import Services

MCP_PATH = "/mcp"
_INTERNAL_BASE = "http://sealmem.internal"
_NOT_A_KEY = (
    "the MCP endpoint takes a subject token, not an API key: mint one with POST /v1/tokens "
    "(scopes read and/or write) and send it as the bearer credential"
)


def _request_of(ctx: Context) -> Request:
    request = ctx.request_context.request
    if not isinstance(request, Request):  # the HTTP transport always sets it
        raise RuntimeError("MCP tool called outside an HTTP request")
    return request


class InProcessConnector:
    """Opens clients to the app itself (``httpx.ASGITransport``) carrying the MCP request's credential, client
    address and request id (kept in the REST request's audit record as ``client_request_id``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    @asynccontextmanager
    async def __call__(self, ctx: Context) -> AsyncIterator[httpx.AsyncClient]:
        request = _request_of(ctx)
        headers = {"Authorization": request.headers.get("Authorization", ""), "User-Agent": "sealmem-mcp"}
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            headers[REQUEST_ID_HEADER] = str(request_id)
        client = (request.client.host, request.client.port) if request.client else ("127.0.0.1", 0)
        transport = httpx.ASGITransport(app=self.app, client=client, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url=_INTERNAL_BASE, headers=headers) as http:
            yield http


class McpEndpoint:
    """The ASGI app of ``/mcp``: the subject-token gate, then the SDK's streamable-HTTP transport."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        # POST only: a stateless server never sends on its own, so there is no GET stream (a GET would be held
        # open with nothing to say) and no session to DELETE; both are 405 in the API's error body.
        self.route = Route(MCP_PATH, self, methods=["POST"])
        self.server = build_server(InProcessConnector(app))
        self.manager = StreamableHTTPSessionManager(
            app=self.server._lowlevel_server,  # the SDK's own mounting (MCPServer.streamable_http_app) does this
            stateless=True,
            json_response=True,
            max_request_body_size=max_body_bytes,
        )

    def run(self) -> AbstractAsyncContextManager[None]:
        """The transport's task group: to be entered in the app's lifespan."""
        return self.manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # pragma: no cover (a Route only passes http)
            return
        scope["route"] = self.route  # the route template of the access log and request metrics
        refusal = self._refusal(scope)
        if refusal is not None:
            status, message, code = refusal
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            request_id = str(scope.get("state", {}).get("request_id", ""))
            await error_response(request_id, status, message, code=code, headers=headers)(scope, receive, send)
            return
        await self.manager.handle_request(scope, receive, send)

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        services: Services = scope["app"].state.services
        scheme, _, credential = Headers(scope=scope).get("Authorization", "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            services.metrics.auth_failures.labels(reason="missing").inc()
            return 401, "missing or invalid credential", "unauthorized"
        if credential.startswith(KEY_SCHEME):
            return 403, _NOT_A_KEY, "forbidden"
        try:
            claims = services.signer.verify(credential)
        except InvalidToken as exc:
            services.metrics.auth_failures.labels(reason=f"token_{exc.reason}").inc()
            return 401, "missing or invalid credential", "unauthorized"
        state = scope.setdefault("state", {})
        state["tenant_id"] = claims.tenant_id  # for the access log, as the REST routes do
        state["credential_id"] = claims.key_id
        return None
