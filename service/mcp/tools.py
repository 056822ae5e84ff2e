"""The MCP tools, written once for both transports: each calls the REST API with the caller's subject token.

A :data:`Connector` hands a tool an ``httpx.AsyncClient`` that already carries the credential: the stdio
server's client talks to a remote Sealmem with the token it was started with, the HTTP endpoint's client talks
to the same app in process with the token of the MCP request. Authentication, the subject, scopes, limits,
validation, audit records and error codes are therefore exactly those of the REST API; no tool takes a subject.

Results are a short text for the model plus ``structured_content`` (the tool's output schema). A refused call
is an MCP tool error (``is_error``) whose text is ``<code>: <message>`` and whose structured content is the
API's error object, ``{"error": {"code", "message", "request_id"}}``; never a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field

from service.errors import DEFAULT_CODES

log = logging.getLogger("sealmem.mcp")

Connector = Callable[[Context], AbstractAsyncContextManager[httpx.AsyncClient]]
"""Opens the HTTP client one tool call talks to the REST API with (base URL and ``Authorization`` set)."""

SERVER_NAME = "sealmem"
INSTRUCTIONS = (
    "Long-term memory of the user you are talking with, kept encrypted by Sealmem. The credential this server "
    "was given decides whose memories these are: no tool takes a user or subject. Use `recall` before answering "
    "questions that may depend on what the user told you earlier, `remember` for durable facts and preferences "
    "the user shares, `list_memories` to browse, and `forget` to delete one memory by its id."
)


# ---- structured results -----------------------------------------------------------------------------------


class Memory(BaseModel):
    """A memory as the tools return it (the REST memory object without the subject, which is the caller's)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    text: str
    kind: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: str = Field(description="active, or superseded")
    created_at: str
    updated_at: str
    agent_id: str | None = None
    session_id: str | None = None


class ScoredMemory(Memory):
    score: float = Field(description="Fused relevance; higher is better.")


class Remembered(BaseModel):
    memory: Memory


class Recalled(BaseModel):
    results: list[ScoredMemory] = Field(description="Best match first.")


class MemoryList(BaseModel):
    items: list[Memory] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class Forgotten(BaseModel):
    deleted: str = Field(description="The id of the deleted memory.")


class ApiFailure(Exception):
    """A REST call that did not succeed, as the API's error ``code``, ``message`` and ``request_id``."""

    def __init__(self, code: str, message: str, request_id: str | None = None, retry_after: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after

    def result(self) -> CallToolResult:
        error: dict[str, Any] = {"code": self.code, "message": self.message, "request_id": self.request_id}
        text = f"{self.code}: {self.message}"
        if self.retry_after is not None:
            error["retry_after"] = self.retry_after
            text += f" (retry after {self.retry_after} s)"
        if self.request_id:
            text += f" [request {self.request_id}]"
        return CallToolResult(
            content=[TextContent(type="text", text=text)], structured_content={"error": error}, is_error=True
        )


# ---- calling the REST API ---------------------------------------------------------------------------------


def _failure(response: httpx.Response) -> ApiFailure:
    """The API's error body of a non-2xx response (any body that is not one: a code from the status)."""
    request_id = response.headers.get("X-Request-ID")
    code, message = (
        DEFAULT_CODES.get(response.status_code, "internal_error" if response.status_code >= 500 else "error"),
        "",
    )
    try:
        body = response.json()
        error = body["error"]
        code, message, request_id = str(error["code"]), str(error["message"]), error.get("request_id") or request_id
    except (ValueError, KeyError, TypeError):
        message = f"the server answered HTTP {response.status_code}"
    return ApiFailure(code, message, request_id, response.headers.get("Retry-After"))


async def _call(
    connect: Connector,
    ctx: Context,
    method: str,
    path: str,
    *,
    json: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> httpx.Response:
    """One REST call; raises :class:`ApiFailure` for an error answer or an unreachable server."""
    try:
        async with connect(ctx) as client:
            response = await client.request(method, path, json=json, params=params)
    except httpx.TimeoutException:
        raise ApiFailure("unavailable", "the Sealmem server did not answer in time") from None
    except httpx.TransportError as exc:
        raise ApiFailure("unavailable", f"cannot reach the Sealmem server ({type(exc).__name__})") from None
    if response.is_success:
        return response
    raise _failure(response)


def _ok(text: str, structured: BaseModel) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=structured.model_dump(mode="json")
    )


def _line(memory: Memory, extra: str = "") -> str:
    return f"- [{memory.id}] {memory.text} ({memory.kind}{extra})"


# ---- the server -------------------------------------------------------------------------------------------

_READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)


@contextmanager
def _quiet_logging_setup() -> Iterator[None]:
    """``MCPServer()`` calls ``logging.basicConfig`` (a rich handler on the root logger, level INFO) when the
    root logger has no handler yet; the service configures logging itself (JSON lines), so skip that."""
    from mcp.server.mcpserver import server as module

    namespace = vars(module)
    original = namespace["configure_logging"]
    namespace["configure_logging"] = lambda *args, **kwargs: None
    try:
        yield
    finally:
        namespace["configure_logging"] = original


def build_server(connect: Connector, *, version: str = "0.1.0") -> MCPServer:
    """The Sealmem MCP server: tools ``remember``, ``recall``, ``list_memories`` and ``forget``, each calling
    the REST API through ``connect``."""
    with _quiet_logging_setup():
        server: MCPServer = MCPServer(SERVER_NAME, title="Sealmem memory", instructions=INSTRUCTIONS, version=version)

    @server.tool(
        name="remember",
        title="Remember",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False),
    )
    async def remember(
        ctx: Context,
        text: Annotated[
            str, Field(min_length=1, description="The fact or preference, as one self-contained sentence.")
        ],
        kind: Annotated[
            str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", description="fact, preference, event, note, ...")
        ] = "fact",
        metadata: Annotated[dict[str, Any] | None, Field(description="Optional JSON object kept with it.")] = None,
    ) -> Annotated[CallToolResult, Remembered]:
        """Store a new memory about the user (needs the `write` scope). Sensitive values may be masked or refused
        by the tenant's policy; the stored text is returned."""
        body: dict[str, Any] = {"text": text, "kind": kind}
        if metadata:
            body["metadata"] = metadata
        try:
            response = await _call(connect, ctx, "POST", "/v1/memories", json=body)
        except ApiFailure as failure:
            return failure.result()
        memory = Memory.model_validate(response.json())
        return _ok(f"Remembered as memory {memory.id}: {memory.text}", Remembered(memory=memory))

    @server.tool(name="recall", title="Recall", annotations=_READ)
    async def recall(
        ctx: Context,
        query: Annotated[str, Field(min_length=1, description="What to look for, in natural language.")],
        k: Annotated[int, Field(ge=1, le=50, description="How many memories at most.")] = 5,
        kinds: Annotated[list[str] | None, Field(description="Only memories of these kinds.")] = None,
    ) -> Annotated[CallToolResult, Recalled]:
        """Search the user's memories (hybrid vector and keyword search), best match first (needs `read`)."""
        body: dict[str, Any] = {"query": query, "k": k}
        if kinds:
            body["filters"] = {"kinds": kinds}
        try:
            response = await _call(connect, ctx, "POST", "/v1/memories/search", json=body)
        except ApiFailure as failure:
            if failure.code == "not_found":  # the token's own subject has no memories (yet)
                return _ok("No memory matches.", Recalled(results=[]))
            return failure.result()
        found = Recalled.model_validate(response.json())
        if not found.results:
            return _ok("No memory matches.", found)
        lines = [_line(m, f", score {m.score:.2f}") for m in found.results]
        return _ok(f"{len(lines)} memories, best first:\n" + "\n".join(lines), found)

    @server.tool(name="list_memories", title="List memories", annotations=_READ)
    async def list_memories(
        ctx: Context,
        limit: Annotated[int, Field(ge=1, le=200, description="Memories per page.")] = 20,
        cursor: Annotated[str | None, Field(description="`next_cursor` of the previous page.")] = None,
        kind: Annotated[str | None, Field(description="Only memories of this kind.")] = None,
    ) -> Annotated[CallToolResult, MemoryList]:
        """List the user's memories, newest first, one page at a time (needs `read`)."""
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        if kind:
            params["kind"] = kind
        try:
            response = await _call(connect, ctx, "GET", "/v1/memories", params=params)
        except ApiFailure as failure:
            if failure.code == "not_found":  # the token's own subject has no memories (yet)
                return _ok("No memories.", MemoryList(items=[], next_cursor=None))
            return failure.result()
        page = MemoryList.model_validate(response.json())
        lines = [_line(m, f", {m.created_at[:10]}") for m in page.items]
        text = f"{len(lines)} memories, newest first:\n" + "\n".join(lines) if lines else "No memories."
        if page.next_cursor:
            text += f'\nMore: call list_memories with cursor "{page.next_cursor}".'
        return _ok(text, page)

    @server.tool(
        name="forget",
        title="Forget a memory",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def forget(
        ctx: Context,
        memory_id: Annotated[str, Field(min_length=1, max_length=64, description="The id of the memory to delete.")],
    ) -> Annotated[CallToolResult, Forgotten]:
        """Delete one of the user's memories by its id (needs `write`). Deleting all of a user's data
        (crypto-shredding) is an administrator's operation, not available here."""
        try:
            await _call(connect, ctx, "DELETE", f"/v1/memories/{quote(memory_id, safe='')}")
        except ApiFailure as failure:
            return failure.result()
        return _ok(f"Forgot memory {memory_id}.", Forgotten(deleted=memory_id))

    return server
