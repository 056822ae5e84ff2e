"""HTTP endpoints of the chat loop.

- ``POST /v1/chat``: Sealmem's own chat call (JSON, or Server-Sent Events with ``stream: true``);
- ``POST /v1/chat/completions`` and ``GET /v1/models``: OpenAI-compatible, so existing apps get memory by
  pointing the official ``openai`` client's ``base_url`` at Sealmem;
- ``GET /v1/sessions``, ``GET/DELETE /v1/sessions/{id}``: a subject's conversations (working memory).

The app puts a :class:`~service.chat.runtime.ChatRuntime` on ``app.state.chat``. Authorisation uses the
aliases of :mod:`service.deps`: chat needs an admin or app key (any subject of its tenant) or a subject token
with the ``chat`` scope (its own subject only; another subject is a 404). Every retrieval and write is audited.
Both chat endpoints stream through one driver (:func:`_drive`), each in its own event format.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from memory_store.errors import StoreError
from service.auditing import Caller, outcome_of
from service.auth import Principal, subject_for
from service.chat.runtime import ChatRuntime
from service.chat.schemas import (
    ChatBody,
    ChatResponse,
    CompletionBody,
    ModelList,
    ModelOut,
    SessionDetail,
    SessionList,
    SessionOut,
    TurnOut,
    Usage,
    UsedMemory,
    WriteBackStatus,
    WrittenMemory,
)
from service.chat.service import ChatOutcome, ChatRequest, Prepared, history_from, new_session_id
from service.deps import AnyCaller, Chatter, ServicesDep, SessionReader, SessionWriter
from service.errors import (
    ERROR_RESPONSES,
    ApiError,
    ErrorBody,
    Forbidden,
    InvalidInput,
    NotFound,
    Unavailable,
    error_body,
    request_id_of,
    store_error_parts,
)
from service.llm.backend import ChatMessage, GenerationParams, GenerationStats
from service.schemas import IDENTIFIER_PATTERN
from service.services import Services

log = logging.getLogger("sealmem.chat")
router = APIRouter(
    tags=["chat"],
    responses={**ERROR_RESPONSES, 503: {"model": ErrorBody, "description": "Chat is disabled, or the model loads."}},
)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ---- dependencies -----------------------------------------------------------------------------------


async def get_chat(request: Request) -> ChatRuntime:  # async: no thread-pool hop (see service.deps)
    chat: ChatRuntime | None = getattr(request.app.state, "chat", None)
    if chat is None:
        raise Unavailable("chat is not enabled on this server")
    return chat


ChatDep = Annotated[ChatRuntime, Depends(get_chat)]
SessionId = Annotated[str, Path(min_length=1, max_length=256, pattern=IDENTIFIER_PATTERN)]
SubjectQuery = Annotated[
    str | None, Query(min_length=1, max_length=256, pattern=IDENTIFIER_PATTERN, description="Subject id.")
]


async def _audit(
    services: Services,
    request: Request,
    principal: Principal,
    action: str,
    *,
    subject: str | None,
    memory_ids: Sequence[str] = (),
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
) -> None:
    event = Caller.of(principal, request).event(
        action, subject=subject, memory_ids=memory_ids, detail=detail, outcome=outcome
    )
    await asyncio.to_thread(services.auditor.log.append, tenant_id=principal.tenant_id, event=event)


async def _subject(
    services: Services, request: Request, principal: Principal, requested: str | None, action: str
) -> str:
    """:func:`subject_for`, with a refusal (another subject than a token's: 404) audited as the memory routes
    audit theirs, so probing other subjects through chat or sessions leaves a trace."""
    try:
        return subject_for(principal, requested)
    except ApiError as exc:
        await _audit(services, request, principal, action, subject=principal.subject, outcome=outcome_of(exc))
        raise


# ---- one chat turn: prepare, generate, store -------------------------------------------------------------


async def _prepare(
    chat: ChatRuntime, services: Services, request: Request, principal: Principal, req: ChatRequest
) -> Prepared:
    """Retrieval and prompt, audited as ``chat.retrieve`` (ids of every memory and turn decrypted)."""
    try:
        prepared = await chat.service.prepare(req)
    except Exception as exc:
        await _audit(
            services,
            request,
            principal,
            "chat.retrieve",
            subject=req.subject,
            outcome=outcome_of(exc),
            detail={"session_id": req.session_id},
        )
        raise
    await _audit(
        services,
        request,
        principal,
        "chat.retrieve",
        subject=req.subject,
        memory_ids=prepared.retrieved_ids + list(prepared.history_ids),
        detail={
            "session_id": req.session_id,
            "message_id": req.message_id,
            "injection": req.injection,
            "used": len(prepared.prompt.memory_lines),
            "turns": len(prepared.history_ids),
        },
    )
    return prepared


_background: set[asyncio.Task[None]] = set()


@dataclass
class _Turn:
    """One chat turn after :func:`_prepare`: its generation, and the write-back of what was said."""

    chat: ChatRuntime
    services: Services
    request: Request
    principal: Principal
    prepared: Prepared
    stats: GenerationStats = field(default_factory=GenerationStats)
    cancel: threading.Event = field(default_factory=threading.Event)
    stream: AsyncIterator[str] = field(init=False)  # the reply's text deltas

    def __post_init__(self) -> None:
        self.stream = self.chat.service.stream(self.prepared, self.stats, cancel=self.cancel)

    async def finish(self, reply: str) -> ChatOutcome:
        """Store the turns (audited as ``chat.write`` in their transaction) and queue distillation; a refusal or
        failure to store them is recorded too."""
        try:
            return await self.chat.service.finish(self.prepared, reply, self.stats)
        except Exception as exc:
            req = self.prepared.request
            event = req.caller.event(
                "chat.write",
                subject=req.subject,
                outcome=outcome_of(exc),
                detail={"session_id": req.session_id, "message_id": req.message_id},
            )
            await asyncio.to_thread(self.services.auditor.failed, self.principal.tenant_id, event)
            raise

    async def complete(self) -> ChatOutcome:
        """The whole reply, then :meth:`finish`; a generation error propagates to the error handler."""
        reply = "".join([delta async for delta in self.stream]).strip()
        return await self.finish(reply)

    def finish_later(self, parts: list[str]) -> None:
        """The client went away mid-stream: still store what was said, without blocking the cancelled task."""

        async def run() -> None:
            try:
                await self.finish("".join(parts).strip())
            except Exception:
                log.exception("storing the turns of an interrupted chat failed")

        task = asyncio.get_running_loop().create_task(run())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def streaming(self, fmt: _StreamFormat) -> StreamingResponse:
        """Pull the first delta before the response starts, so a generation error still gets its HTTP status;
        the rest streams through :func:`_drive` in ``fmt``'s format."""
        try:
            first: str | None = await anext(self.stream)
        except StopAsyncIteration:
            first = None
        return StreamingResponse(_drive(self, first, fmt), media_type="text/event-stream", headers=SSE_HEADERS)


class _StreamFormat(Protocol):
    """How a streaming endpoint writes the events of :func:`_drive`."""

    def opening(self) -> list[bytes]: ...

    def delta(self, text: str) -> bytes: ...

    def closing(self, outcome: ChatOutcome) -> list[bytes]: ...

    def error(self, body: dict[str, Any]) -> bytes: ...


async def _drive(turn: _Turn, first: str | None, fmt: _StreamFormat) -> AsyncIterator[bytes]:
    """The one streaming loop: deltas as they come, then the stored turn's closing events.

    An :class:`ApiError` of the generation becomes an error event (nothing is stored). Any other exception,
    such as the client going away, cancels the generation; if it came before the end, what was said until
    then is still stored.
    """
    parts: list[str] = []
    done = False
    try:
        for event in fmt.opening():
            yield event
        if first is not None:
            parts.append(first)
            yield fmt.delta(first)
            async for delta in turn.stream:
                parts.append(delta)
                yield fmt.delta(delta)
        done = True
        outcome = await turn.finish("".join(parts).strip())
        for event in fmt.closing(outcome):
            yield event
    except ApiError as exc:
        yield fmt.error(error_body(request_id_of(turn.request), exc.code, exc.message))
    except StoreError as exc:  # storing the turn was refused (the subject forgotten, the key revoked meanwhile)
        status, code, message = store_error_parts(exc)
        log.log(logging.ERROR if status >= 500 else logging.INFO, "stream ended by %s", type(exc).__name__)
        yield fmt.error(error_body(request_id_of(turn.request), code, message))
    except BaseException:
        turn.cancel.set()
        if not done:
            turn.finish_later(parts)
        raise


# ---- POST /v1/chat ------------------------------------------------------------------------------------


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


class _SealmemEvents:
    """``/v1/chat`` streams: ``delta`` events, then one ``done`` event with the full response body (or one
    ``error`` event)."""

    def opening(self) -> list[bytes]:
        return []

    def delta(self, text: str) -> bytes:
        return _sse("delta", {"text": text})

    def closing(self, outcome: ChatOutcome) -> list[bytes]:
        return [_sse("done", _chat_response(outcome).model_dump(mode="json"))]

    def error(self, body: dict[str, Any]) -> bytes:
        return _sse("error", body)


def _usage(stats: GenerationStats) -> dict[str, int]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }


def _chat_response(outcome: ChatOutcome) -> ChatResponse:
    prepared, stats, req = outcome.prepared, outcome.stats, outcome.request
    written = [WrittenMemory(**w) for w in outcome.memories_written]
    if outcome.write_back.get("status") == "queued":
        written.append(WrittenMemory(id=None, kind="fact", status="queued"))
    return ChatResponse(
        reply=outcome.reply,
        session_id=req.session_id,
        message_id=req.message_id,
        model=outcome.model,
        injection=req.injection,
        finish_reason=stats.finish_reason,
        memories_used=[UsedMemory.of(h, prepared.shield.restore(h.memory.text)) for h in prepared.used],
        memories_dropped=list(prepared.prompt.dropped_memory_ids),
        memories_written=written,
        write_back=WriteBackStatus(**outcome.write_back),
        usage=Usage(**_usage(stats)),
        timings=outcome.timings,
        info=dict(stats.info),
    )


def _params(chat: ChatRuntime, max_tokens: int | None, temperature: float | None, **extra: Any) -> GenerationParams:
    """A request's generation parameters; its ``max_tokens`` may lower the operator's reply cap
    (``SEALMEM_LLM_MAX_NEW_TOKENS``), never raise it."""
    s = chat.settings
    return GenerationParams(
        max_new_tokens=min(max_tokens or s.llm_max_new_tokens, s.llm_max_new_tokens),
        temperature=s.llm_temperature if temperature is None else temperature,
        **extra,
    )


def _k(chat: ChatRuntime, k: int | None, services: Services) -> int:
    value = chat.settings.chat_default_k if k is None else k
    if value > chat.settings.chat_max_k:
        raise InvalidInput(f"k: at most {chat.settings.chat_max_k}")
    services.limits.k(max(value, 1))
    return value


# Error responses both chat endpoints document beside their own 502/504 wording.
_GENERATION_ERRORS: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorBody,
        "description": "Rate limited, or the tenant's share of the generation queue is full (`llm_busy`).",
    },
    501: {"model": ErrorBody, "description": "The requested injection mode is not available."},
    503: {"model": ErrorBody, "description": "The model is loading, or chat is disabled."},
}


@router.post(
    "/v1/chat",
    response_model=ChatResponse,
    summary="Chat with memory",
    description="Retrieves the subject's relevant memories, injects them, generates the reply, stores the "
    "turn and queues fact distillation (never waited for). With `stream: true` the response is "
    'Server-Sent Events: `delta` events (`{"text"}`), then one `done` event with the full response body '
    "(or an `error` event).",
    responses={
        200: {"content": {"text/event-stream": {}}},
        **_GENERATION_ERRORS,
        502: {"model": ErrorBody, "description": "The LLM server failed or cannot be reached."},
        504: {"model": ErrorBody, "description": "The LLM server timed out."},
    },
)
async def chat_endpoint(
    body: ChatBody, principal: Chatter, chat: ChatDep, services: ServicesDep, request: Request
) -> Any:
    subject = await _subject(services, request, principal, body.subject, "chat.retrieve")
    services.limits.text(body.message, field="message")
    req = ChatRequest(
        tenant_id=principal.tenant_id,
        subject=subject,
        session_id=body.session_id or new_session_id(),
        message=body.message,
        caller=Caller.of(principal, request),
        injection=body.injection or chat.settings.chat_default_injection,
        k=_k(chat, body.k, services),
        write_back=chat.settings.chat_write_back if body.write_back is None else body.write_back,
        params=_params(chat, body.max_tokens, body.temperature),
        agent_id=body.agent_id,
    )
    turn = _Turn(chat, services, request, principal, await _prepare(chat, services, request, principal, req))
    if not body.stream:
        return _chat_response(await turn.complete())
    return await turn.streaming(_SealmemEvents())


# ---- OpenAI-compatible ----------------------------------------------------------------------------------


def _conversation_session(services: Services, tenant_id: str, subject: str, messages: Sequence[ChatMessage]) -> str:
    """A stable id for a conversation whose client resends the whole history, from its first user message.

    Keyed by the master key (:meth:`MemoryStore.pseudonym`): the id is stored in plaintext (the memories'
    ``session_id``, audit details, which outlive a forget), so no one holding only the database can confirm
    a guess of the message. It changes when the master key is rotated (a new conversation begins)."""
    first = next((m.content for m in messages if m.role == "user"), "")
    return "conv_" + services.store.pseudonym("conversation", tenant_id, subject, first)[:32]


def _completion_request(
    body: CompletionBody,
    principal: Principal,
    chat: ChatRuntime,
    services: Services,
    request: Request,
    subject: str,
) -> ChatRequest:
    system: list[str] = []
    turns: list[ChatMessage] = []
    for message in body.messages:
        text = message.text()
        if message.role in ("system", "developer"):
            if text.strip():
                system.append(text.strip())
        elif message.role in ("user", "assistant") and text:
            turns.append(ChatMessage(message.role, text))
    if not turns or turns[-1].role != "user":
        raise InvalidInput("messages: the last message must be a non-empty user message")
    services.limits.text(turns[-1].content, field="messages[-1].content")
    header = request.headers.get(chat.settings.chat_session_header)
    session_id = body.session_id or header or _conversation_session(services, principal.tenant_id, subject, turns)
    if len(session_id) > 256 or not session_id.isprintable():
        raise InvalidInput(f"{chat.settings.chat_session_header}: 1-256 printable characters")
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    prior = history_from(turns[:-1])
    return ChatRequest(
        tenant_id=principal.tenant_id,
        subject=subject,
        session_id=session_id,
        message=turns[-1].content,
        caller=Caller.of(principal, request),
        injection=body.injection or chat.settings.chat_default_injection,
        k=_k(chat, body.k, services),
        write_back=chat.settings.chat_write_back if body.write_back is None else body.write_back,
        params=_params(
            chat, body.max_completion_tokens or body.max_tokens, body.temperature, top_p=body.top_p, stop=stop
        ),
        history=prior if prior else None,
        extra_system="\n".join(system),
    )


def _sealmem_block(outcome: ChatOutcome) -> dict[str, Any]:
    full = _chat_response(outcome)
    return {
        "session_id": full.session_id,
        "message_id": full.message_id,
        "injection": full.injection,
        "memories_used": [{"id": m.id, "score": m.score} for m in full.memories_used],
        "memories_written": [w.model_dump() for w in full.memories_written],
        "write_back": full.write_back.model_dump(),
        "timings": full.timings,
    }


def _finish_reason(stats: GenerationStats) -> str:
    return "length" if stats.finish_reason == "length" else "stop"


@dataclass(frozen=True)
class _OpenAIFormat:
    """OpenAI's ``chat.completion`` body, and its streaming form: ``chat.completion.chunk`` events (a role
    chunk, content chunks, a finishing chunk, optionally a usage chunk), then ``[DONE]``."""

    completion_id: str
    created: int
    model: str
    include_usage: bool = False

    def response(self, outcome: ChatOutcome) -> dict[str, Any]:
        stats = outcome.stats
        return {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": outcome.reply},
                    "finish_reason": _finish_reason(stats),
                    "logprobs": None,
                }
            ],
            "usage": _usage(stats),
            "sealmem": _sealmem_block(outcome),
        }

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(payload, separators=(',', ':'), default=str)}\n\n".encode()

    def _choice(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return self._chunk([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra)

    def opening(self) -> list[bytes]:
        return [self._choice({"role": "assistant", "content": ""})]

    def delta(self, text: str) -> bytes:
        return self._choice({"content": text})

    def closing(self, outcome: ChatOutcome) -> list[bytes]:
        events = [self._choice({}, _finish_reason(outcome.stats), sealmem=_sealmem_block(outcome))]
        if self.include_usage:
            events.append(self._chunk([], usage=_usage(outcome.stats)))
        events.append(b"data: [DONE]\n\n")
        return events

    def error(self, body: dict[str, Any]) -> bytes:
        return f"data: {json.dumps(body)}\n\n".encode()


@router.post(
    "/v1/chat/completions",
    summary="OpenAI-compatible chat completion, with memory",
    description="Accepts OpenAI's chat completion request. The subject is the subject token's, or the "
    "request's `user` field with an app or admin key. The session comes from the `X-Session-ID` header, a "
    "`session_id` field, or the conversation itself (its first user message). Earlier messages of the request "
    "are the working memory; with none, the session's stored turns are. Streams in OpenAI's chunk format.",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "OpenAI's chat.completion, or with `stream: true` its chunk events.",
        },
        **_GENERATION_ERRORS,
        502: {"model": ErrorBody, "description": "LLM failure."},
        504: {"model": ErrorBody, "description": "LLM timeout."},
    },
)
async def chat_completions(
    body: CompletionBody, principal: Chatter, chat: ChatDep, services: ServicesDep, request: Request
) -> Any:
    subject = await _subject(services, request, principal, body.user, "chat.retrieve")
    req = _completion_request(body, principal, chat, services, request, subject)
    turn = _Turn(chat, services, request, principal, await _prepare(chat, services, request, principal, req))
    fmt = _OpenAIFormat(
        completion_id="chatcmpl-" + req.message_id.removeprefix("msg_"),
        created=int(time.time()),
        model=chat.backend.model_name,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
    )
    if not body.stream:
        return fmt.response(await turn.complete())
    return await turn.streaming(fmt)


@router.get("/v1/models", response_model=ModelList, summary="The configured model (OpenAI-compatible)")
def list_models(principal: AnyCaller, chat: ChatDep) -> ModelList:
    return ModelList(data=[ModelOut(id=chat.backend.model_name)])


@router.get("/v1/models/{model_id}", response_model=ModelOut, summary="One model (OpenAI-compatible)")
def get_model(model_id: Annotated[str, Path(max_length=256)], principal: AnyCaller, chat: ChatDep) -> ModelOut:
    if model_id != chat.backend.model_name:
        raise NotFound("model not found")
    return ModelOut(id=model_id)


# ---- sessions -------------------------------------------------------------------------------------------


@router.get("/v1/sessions", response_model=SessionList, summary="A subject's chat sessions, newest first")
async def list_sessions(
    principal: SessionReader,
    chat: ChatDep,
    services: ServicesDep,
    request: Request,
    subject: SubjectQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SessionList:
    subject = await _subject(services, request, principal, subject, "session.list")
    services.limits.page_size(limit)
    sessions = await asyncio.to_thread(
        chat.service.sessions.list_sessions, tenant_id=principal.tenant_id, subject=subject, limit=limit
    )
    await _audit(services, request, principal, "session.list", subject=subject, detail={"count": len(sessions)})
    return SessionList(
        sessions=[
            SessionOut(
                session_id=s.session_id,
                subject=s.subject,
                turns=s.turns,
                created_at=s.created_at,
                last_activity_at=s.last_activity_at,
            )
            for s in sessions
        ]
    )


@router.get("/v1/sessions/{session_id}", response_model=SessionDetail, summary="A session's turns, oldest first")
async def get_session(
    session_id: SessionId,
    principal: SessionReader,
    chat: ChatDep,
    services: ServicesDep,
    request: Request,
    subject: SubjectQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Most recent turns returned.")] = 200,
) -> SessionDetail:
    subject = await _subject(services, request, principal, subject, "session.read")
    services.limits.page_size(limit)
    try:
        turns = await asyncio.to_thread(
            chat.service.sessions.session_turns,
            tenant_id=principal.tenant_id,
            subject=subject,
            session_id=session_id,
            limit=limit,
        )
    except Exception as exc:
        await _audit(services, request, principal, "session.read", subject=subject, outcome=outcome_of(exc))
        raise
    await _audit(
        services,
        request,
        principal,
        "session.read",
        subject=subject,
        memory_ids=[t.id for t in turns],
        detail={"session_id": session_id},
    )
    turns = await asyncio.to_thread(
        services.store.reveal, tenant_id=principal.tenant_id, records=turns, role=principal.role
    )
    return SessionDetail(session_id=session_id, subject=subject, turns=[TurnOut.of(t) for t in turns])


@router.delete(
    "/v1/sessions/{session_id}",
    status_code=204,
    summary="Delete a session's turns",
    description="Deletes the session's stored turns. With `include_derived=true` the facts distilled from it "
    "(and any other memory written with this session id) are deleted too; that needs the `write` scope (a "
    "chat-only subject token may delete its turns, not facts).",
)
async def delete_session(
    session_id: SessionId,
    principal: SessionWriter,
    chat: ChatDep,
    services: ServicesDep,
    request: Request,
    subject: SubjectQuery = None,
    include_derived: bool = False,
) -> Response:
    subject = await _subject(services, request, principal, subject, "session.delete")
    caller = Caller.of(principal, request)
    detail = {"session_id": session_id, "include_derived": include_derived}
    try:
        if include_derived and "write" not in principal.scopes:
            raise Forbidden("include_derived=true deletes distilled facts too: it needs the 'write' scope")
        await asyncio.to_thread(
            chat.service.sessions.delete_session,
            tenant_id=principal.tenant_id,
            subject=subject,
            session_id=session_id,
            actor=caller.actor,
            include_derived=include_derived,
            audit=caller.event("session.delete", detail=detail),
            guard=caller.guard(),
        )
    except Exception as exc:
        await _audit(
            services, request, principal, "session.delete", subject=subject, outcome=outcome_of(exc), detail=detail
        )
        raise
    return Response(status_code=204)
