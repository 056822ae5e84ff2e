"""HTTP endpoints of the chat loop.

- ``POST /v1/chat``: Sealmem's own chat call (JSON, or Server-Sent Events with ``stream: true``);
- ``POST /v1/chat/completions`` and ``GET /v1/models``: OpenAI-compatible, so existing apps get memory by
  pointing the official ``openai`` client's ``base_url`` at Sealmem;
- ``GET /v1/sessions``, ``GET/DELETE /v1/sessions/{id}``: a subject's conversations (working memory).

The app puts a :class:`~service.chat.runtime.ChatRuntime` on ``app.state.chat``. Authorisation follows the
service's rules: chat needs an admin or app key (any subject of its tenant) or a subject token with the
``chat`` scope (its own subject only; another subject is a 404). Every retrieval and write is audited.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from memory_store.audit import AuditEvent
from service.auditing import outcome_of
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
from service.chat.service import (
    ChatError,
    ChatOutcome,
    ChatRequest,
    Prepared,
    history_from,
    new_session_id,
)
from service.chat.writeback import Caller
from service.deps import ServicesDep, current_principal
from service.errors import ERROR_RESPONSES, ApiError, ErrorBody, request_id_of
from service.llm.backend import ChatMessage, GenerationParams, GenerationStats, LLMBusyError, LLMError
from service.routes.common import actor_of
from service.schemas import IDENTIFIER_PATTERN

log = logging.getLogger("sealmem.chat")
router = APIRouter(
    tags=["chat"],
    responses={**ERROR_RESPONSES, 503: {"model": ErrorBody, "description": "Chat is disabled, or the model loads."}},
)

_KEYS_ALL = frozenset({"admin", "app", "reader"})
_KEYS_WRITE = frozenset({"admin", "app"})
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ---- dependencies -----------------------------------------------------------------------------------


def get_chat(request: Request) -> ChatRuntime:
    chat: ChatRuntime | None = getattr(request.app.state, "chat", None)
    if chat is None:
        raise ApiError(503, "chat is not enabled on this server", code="unavailable")
    return chat


ChatDep = Annotated[ChatRuntime, Depends(get_chat)]


def _permit_any(*, roles: frozenset[str], scopes: frozenset[str]) -> Callable[[Principal], Principal]:
    """API keys with one of ``roles``; subject tokens holding any of ``scopes``."""

    def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        allowed = (
            bool(principal.scopes & scopes) if principal.is_subject_token else principal.role in roles
        )
        if not allowed:
            what = f"the {' or '.join(sorted(scopes))} scope" if principal.is_subject_token else "a role allowed here"
            raise ApiError(403, f"this credential lacks {what}")
        return principal

    return dependency


Chatter = Annotated[Principal, Depends(_permit_any(roles=_KEYS_WRITE, scopes=frozenset({"chat"})))]
"""An admin or app key, or a subject token with the ``chat`` scope."""
SessionReader = Annotated[Principal, Depends(_permit_any(roles=_KEYS_ALL, scopes=frozenset({"read", "chat"})))]
SessionWriter = Annotated[
    Principal, Depends(_permit_any(roles=_KEYS_WRITE, scopes=frozenset({"write", "chat"})))
]
AnyCaller = Annotated[Principal, Depends(current_principal)]
SessionId = Annotated[str, Path(min_length=1, max_length=256, pattern=IDENTIFIER_PATTERN)]
SubjectQuery = Annotated[
    str | None, Query(min_length=1, max_length=256, pattern=IDENTIFIER_PATTERN, description="Subject id.")
]


def _caller(principal: Principal, request: Request) -> Caller:
    return Caller(
        credential_id=principal.key_id, role=principal.role, actor=actor_of(principal),
        token_id=principal.token_id, request_id=request_id_of(request) or None,
    )


async def _audit(
    services: ServicesDep,
    request: Request,
    principal: Principal,
    action: str,
    *,
    subject: str | None,
    memory_ids: Sequence[str] = (),
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
) -> None:
    event = AuditEvent(
        credential_id=principal.key_id, role=principal.role, token_id=principal.token_id, subject=subject,
        action=action, memory_ids=list(memory_ids), detail=detail or {}, request_id=request_id_of(request) or None,
        outcome=outcome,
    )
    await asyncio.to_thread(services.auditor.log.append, tenant_id=principal.tenant_id, event=event)


async def _subject(
    services: ServicesDep, request: Request, principal: Principal, requested: str | None, action: str
) -> str:
    """:func:`subject_for`, with a refusal (another subject than a token's: 404) audited as the memory routes
    audit theirs, so probing other subjects through chat or sessions leaves a trace."""
    try:
        return subject_for(principal, requested)
    except ApiError as exc:
        await _audit(services, request, principal, action, subject=principal.subject, outcome=outcome_of(exc))
        raise


def _api_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ChatError):
        return ApiError(exc.status, exc.message, code=exc.code)
    if isinstance(exc, LLMError):
        headers = {"Retry-After": "2"} if isinstance(exc, LLMBusyError) else None
        return ApiError(exc.status, str(exc) or "the language model failed", code=exc.code, headers=headers)
    raise exc


def _error_payload(exc: BaseException, request: Request) -> dict[str, Any]:
    try:
        err = _api_error(exc)
        code, message = err.code, err.message
    except BaseException:
        code, message = "internal_error", "internal server error"
    return {"error": {"code": code, "message": message, "request_id": request_id_of(request)}}


async def _prepare(
    chat: ChatRuntime, services: ServicesDep, request: Request, principal: Principal, req: ChatRequest
) -> Prepared:
    """Retrieval and prompt, audited as ``chat.retrieve`` (ids of every memory and turn decrypted)."""
    try:
        prepared = await chat.service.prepare(req)
    except Exception as exc:
        err = _api_error(exc) if isinstance(exc, ChatError | LLMError | ApiError) else exc
        await _audit(
            services, request, principal, "chat.retrieve", subject=req.subject,
            outcome=outcome_of(err), detail={"session_id": req.session_id},
        )
        raise err from None
    await _audit(
        services, request, principal, "chat.retrieve", subject=req.subject,
        memory_ids=prepared.retrieved_ids + list(prepared.history_ids),
        detail={
            "session_id": req.session_id, "message_id": req.message_id, "injection": req.injection,
            "used": len(prepared.prompt.memory_lines), "turns": len(prepared.history_ids),
        },
    )
    return prepared


async def _finish(
    chat: ChatRuntime,
    services: ServicesDep,
    request: Request,
    principal: Principal,
    prepared: Prepared,
    reply: str,
    stats: GenerationStats,
) -> ChatOutcome:
    outcome = await chat.service.finish(prepared, reply, stats)
    written = [w["id"] for w in outcome.memories_written if w.get("id")]
    if written:
        await _audit(
            services, request, principal, "chat.write", subject=prepared.request.subject, memory_ids=written,
            detail={"session_id": prepared.request.session_id, "message_id": prepared.request.message_id},
        )
    return outcome


async def _first_delta(stream: AsyncIterator[str]) -> str | None:
    """Pull the first delta before the response starts, so LLM errors still get their HTTP status."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
    except (LLMError, ChatError) as exc:
        raise _api_error(exc) from None


def _finish_later(
    chat: ChatRuntime, services: ServicesDep, request: Request, principal: Principal,
    prepared: Prepared, parts: list[str], stats: GenerationStats,
) -> None:
    """The client went away mid-stream: still store what was said, without blocking the cancelled task."""

    async def run() -> None:
        try:
            await _finish(chat, services, request, principal, prepared, "".join(parts).strip(), stats)
        except Exception:
            log.exception("storing the turns of an interrupted chat failed")

    task = asyncio.get_running_loop().create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)


_background: set[asyncio.Task[None]] = set()


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


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
        memories_used=[UsedMemory.of(h) for h in prepared.used],
        memories_dropped=list(prepared.prompt.dropped_memory_ids),
        memories_written=written,
        write_back=WriteBackStatus(**outcome.write_back),
        usage=Usage(
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            total_tokens=stats.prompt_tokens + stats.completion_tokens,
        ),
        timings=outcome.timings,
        info=dict(stats.info),
    )


def _params(chat: ChatRuntime, max_tokens: int | None, temperature: float | None, **extra: Any) -> GenerationParams:
    s = chat.settings
    return GenerationParams(
        max_new_tokens=min(max_tokens or s.llm_max_new_tokens, 8192),
        temperature=s.llm_temperature if temperature is None else temperature,
        **extra,
    )


def _k(chat: ChatRuntime, k: int | None, services: ServicesDep) -> int:
    value = chat.settings.chat_default_k if k is None else k
    if value > chat.settings.chat_max_k:
        raise ApiError(422, f"k: at most {chat.settings.chat_max_k}")
    services.limits.k(max(value, 1))
    return value


# ---- POST /v1/chat ------------------------------------------------------------------------------------


@router.post(
    "/v1/chat",
    response_model=ChatResponse,
    summary="Chat with memory",
    description="Retrieves the subject's relevant memories, injects them, generates the reply, stores the "
    "turn and queues fact distillation (never waited for). With `stream: true` the response is "
    "Server-Sent Events: `delta` events (`{\"text\"}`), then one `done` event with the full response body "
    "(or an `error` event).",
    responses={
        200: {"content": {"text/event-stream": {}}},
        501: {"model": ErrorBody, "description": "The requested injection mode is not available."},
        502: {"model": ErrorBody, "description": "The LLM server failed or cannot be reached."},
        503: {"model": ErrorBody, "description": "The model is loading or too many requests are waiting."},
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
        caller=_caller(principal, request),
        injection=body.injection or chat.settings.chat_default_injection,
        k=_k(chat, body.k, services),
        write_back=chat.settings.chat_write_back if body.write_back is None else body.write_back,
        params=_params(chat, body.max_tokens, body.temperature),
        agent_id=body.agent_id,
    )
    prepared = await _prepare(chat, services, request, principal, req)
    stats = GenerationStats()
    cancel = threading.Event()
    stream = chat.service.stream(prepared, stats, cancel=cancel)
    if not body.stream:
        try:
            reply = "".join([delta async for delta in stream]).strip()
        except (LLMError, ChatError) as exc:
            raise _api_error(exc) from None
        outcome = await _finish(chat, services, request, principal, prepared, reply, stats)
        return _chat_response(outcome)

    first = await _first_delta(stream)

    async def events() -> AsyncIterator[bytes]:
        parts: list[str] = []
        done = False
        try:
            if first is not None:
                parts.append(first)
                yield _sse("delta", {"text": first})
                async for delta in stream:
                    parts.append(delta)
                    yield _sse("delta", {"text": delta})
            done = True
            outcome = await _finish(chat, services, request, principal, prepared, "".join(parts).strip(), stats)
            yield _sse("done", _chat_response(outcome).model_dump(mode="json"))
        except (LLMError, ChatError) as exc:
            yield _sse("error", _error_payload(exc, request))
        except BaseException:
            cancel.set()
            if not done:
                _finish_later(chat, services, request, principal, prepared, parts, stats)
            raise

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


# ---- OpenAI-compatible ----------------------------------------------------------------------------------


def _conversation_session(subject: str, messages: Sequence[ChatMessage]) -> str:
    """A stable id for a conversation whose client resends the whole history: its first user message."""
    first = next((m.content for m in messages if m.role == "user"), "")
    digest = hashlib.sha256(f"{subject}\x00{first}".encode()).hexdigest()[:32]
    return f"conv_{digest}"


def _completion_request(
    body: CompletionBody, principal: Principal, chat: ChatRuntime, services: ServicesDep, request: Request,
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
        raise ApiError(422, "messages: the last message must be a non-empty user message")
    services.limits.text(turns[-1].content, field="messages[-1].content")
    header = request.headers.get(chat.settings.chat_session_header)
    session_id = body.session_id or header or _conversation_session(subject, turns)
    if len(session_id) > 256 or not session_id.isprintable():
        raise ApiError(422, f"{chat.settings.chat_session_header}: 1-256 printable characters")
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    prior = history_from(turns[:-1])
    return ChatRequest(
        tenant_id=principal.tenant_id,
        subject=subject,
        session_id=session_id,
        message=turns[-1].content,
        caller=_caller(principal, request),
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


@router.post(
    "/v1/chat/completions",
    summary="OpenAI-compatible chat completion, with memory",
    description="Accepts OpenAI's chat completion request. The subject is the subject token's, or the "
    "request's `user` field with an app or admin key. The session comes from the `X-Session-ID` header, a "
    "`session_id` field, or the conversation itself (its first user message). Earlier messages of the request "
    "are the working memory; with none, the session's stored turns are. Streams in OpenAI's chunk format.",
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "OpenAI's chat.completion, or with `stream: true` its chunk events."},
               501: {"model": ErrorBody, "description": "The requested injection mode is not available."},
               502: {"model": ErrorBody, "description": "LLM failure."},
               503: {"model": ErrorBody, "description": "Busy, loading, or chat disabled."},
               504: {"model": ErrorBody, "description": "LLM timeout."}},
)
async def chat_completions(
    body: CompletionBody, principal: Chatter, chat: ChatDep, services: ServicesDep, request: Request
) -> Any:
    subject = await _subject(services, request, principal, body.user, "chat.retrieve")
    req = _completion_request(body, principal, chat, services, request, subject)
    prepared = await _prepare(chat, services, request, principal, req)
    stats = GenerationStats()
    cancel = threading.Event()
    stream = chat.service.stream(prepared, stats, cancel=cancel)
    completion_id = "chatcmpl-" + req.message_id.removeprefix("msg_")
    created = int(time.time())
    model = chat.backend.model_name

    if not body.stream:
        try:
            reply = "".join([delta async for delta in stream]).strip()
        except (LLMError, ChatError) as exc:
            raise _api_error(exc) from None
        outcome = await _finish(chat, services, request, principal, prepared, reply, stats)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": _finish_reason(stats),
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": stats.prompt_tokens,
                "completion_tokens": stats.completion_tokens,
                "total_tokens": stats.prompt_tokens + stats.completion_tokens,
            },
            "sealmem": _sealmem_block(outcome),
        }

    first = await _first_delta(stream)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        payload = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra,
        }
        return f"data: {json.dumps(payload, separators=(',', ':'), default=str)}\n\n".encode()

    async def chunks() -> AsyncIterator[bytes]:
        parts: list[str] = []
        done = False
        try:
            yield chunk({"role": "assistant", "content": ""})
            if first is not None:
                parts.append(first)
                yield chunk({"content": first})
                async for delta in stream:
                    parts.append(delta)
                    yield chunk({"content": delta})
            done = True
            outcome = await _finish(chat, services, request, principal, prepared, "".join(parts).strip(), stats)
            yield chunk({}, _finish_reason(stats), sealmem=_sealmem_block(outcome))
            if include_usage:
                usage = {
                    "prompt_tokens": stats.prompt_tokens,
                    "completion_tokens": stats.completion_tokens,
                    "total_tokens": stats.prompt_tokens + stats.completion_tokens,
                }
                payload = {
                    "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": usage,
                }
                yield f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()
            yield b"data: [DONE]\n\n"
        except (LLMError, ChatError) as exc:
            yield f"data: {json.dumps(_error_payload(exc, request))}\n\n".encode()
        except BaseException:
            cancel.set()
            if not done:
                _finish_later(chat, services, request, principal, prepared, parts, stats)
            raise

    return StreamingResponse(chunks(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/v1/models", response_model=ModelList, summary="The configured model (OpenAI-compatible)")
def list_models(principal: AnyCaller, chat: ChatDep) -> ModelList:
    return ModelList(data=[ModelOut(id=chat.backend.model_name)])


@router.get("/v1/models/{model_id}", response_model=ModelOut, summary="One model (OpenAI-compatible)")
def get_model(model_id: Annotated[str, Path(max_length=256)], principal: AnyCaller, chat: ChatDep) -> ModelOut:
    if model_id != chat.backend.model_name:
        raise ApiError(404, "model not found")
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
                session_id=s.session_id, subject=s.subject, turns=s.turns, created_at=s.created_at,
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
            tenant_id=principal.tenant_id, subject=subject, session_id=session_id, limit=limit,
        )
    except Exception as exc:
        await _audit(services, request, principal, "session.read", subject=subject, outcome=outcome_of(exc))
        raise
    await _audit(
        services, request, principal, "session.read", subject=subject, memory_ids=[t.id for t in turns],
        detail={"session_id": session_id},
    )
    return SessionDetail(session_id=session_id, subject=subject, turns=[TurnOut.of(t) for t in turns])


@router.delete(
    "/v1/sessions/{session_id}",
    status_code=204,
    summary="Delete a session's turns",
    description="Deletes the session's stored turns. With `include_derived=true` the facts distilled from it "
    "(and any other memory written with this session id) are deleted too.",
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
    try:
        deleted = await asyncio.to_thread(
            chat.service.sessions.delete_session,
            tenant_id=principal.tenant_id, subject=subject, session_id=session_id,
            actor=actor_of(principal), include_derived=include_derived,
        )
    except Exception as exc:
        await _audit(services, request, principal, "session.delete", subject=subject, outcome=outcome_of(exc))
        raise
    await _audit(
        services, request, principal, "session.delete", subject=subject, memory_ids=deleted,
        detail={"session_id": session_id, "include_derived": include_derived},
    )
    return Response(status_code=204)
