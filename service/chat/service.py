"""The chat loop, independent of HTTP: retrieve -> build prompt -> generate -> store turns -> queue write-back.

A request is served in three steps so the HTTP layer can stream: :meth:`ChatService.prepare` (retrieval and
prompt; every input error surfaces here, before any byte is sent), :meth:`ChatService.stream` (text deltas)
and :meth:`ChatService.finish` (turns stored, distillation queued; it never waits for distillation). Its
errors are members of :mod:`service.errors`' tree, so each carries the status the routes answer with.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from memory_store import Filters, MemoryRecord, MemoryStore, NotFoundError, SearchHit
from service.auditing import Caller
from service.chat.sessions import TURN_KIND, SessionStore
from service.chat.settings import ChatSettings
from service.chat.shield import Shield, shield_turn
from service.chat.writeback import FACT_KINDS, WriteBackJob, WriteBackWorker
from service.errors import InvalidInput, ServiceError
from service.llm.backend import ChatMessage, GenerationParams, GenerationStats, LLMBackend, LLMNotReadyError
from service.llm.prompt import BuiltPrompt, MemoryItem, PromptBuilder, PromptStyle


class InjectionUnavailable(ServiceError):
    """The requested injection mode is known but not available on this server."""

    status = 501
    code = "not_implemented"


@dataclass(frozen=True)
class InjectionRequest:
    """What an alternative injection (e.g. attention-level KV) gets: the prompt in its separable pieces."""

    tenant_id: str
    subject: str
    prompt: BuiltPrompt
    hits: tuple[SearchHit, ...]
    backend: LLMBackend


class Injector(Protocol):
    """Generates the reply for one injection mode. Put layout, warnings etc. into ``stats.info``; refuse with
    an :class:`~service.errors.ApiError` (its status and code reach the caller)."""

    def stream(
        self,
        request: InjectionRequest,
        params: GenerationParams,
        stats: GenerationStats,
        *,
        cancel: threading.Event,
    ) -> AsyncIterator[str]: ...


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def new_session_id() -> str:
    return "ses_" + uuid.uuid4().hex


@dataclass(frozen=True)
class ChatRequest:
    tenant_id: str
    subject: str
    session_id: str
    message: str
    caller: Caller
    injection: str = "prompt"
    k: int = 5
    write_back: bool = True
    params: GenerationParams = field(default_factory=GenerationParams)
    history: tuple[ChatMessage, ...] | None = None  # client-sent turns; None: the session's stored turns
    extra_system: str = ""
    agent_id: str | None = None
    message_id: str = field(default_factory=new_message_id)


@dataclass
class Prepared:
    request: ChatRequest
    prompt: BuiltPrompt
    hits: list[SearchHit]
    started: float
    history_ids: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    shield: Shield = field(default_factory=Shield)
    masked_message: str | None = None  # the message as an outside LLM saw it (None: prompts stay in process)

    @property
    def used(self) -> list[SearchHit]:
        """The retrieved memories that made it into the prompt, best first."""
        ids = {line.memory_id for line in self.prompt.memory_lines}
        return [hit for hit in self.hits if hit.memory.id in ids]

    @property
    def retrieved_ids(self) -> list[str]:
        return [hit.memory.id for hit in self.hits]


@dataclass
class ChatOutcome:
    prepared: Prepared
    reply: str
    stats: GenerationStats
    model: str
    memories_written: list[dict[str, Any]]
    write_back: dict[str, Any]
    timings: dict[str, float]

    @property
    def request(self) -> ChatRequest:
        return self.prepared.request


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


class ChatService:
    def __init__(
        self,
        *,
        store: MemoryStore,
        backend: LLMBackend,
        settings: ChatSettings,
        worker: WriteBackWorker | None = None,
        injectors: dict[str, Injector] | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.settings = settings
        self.worker = worker
        self.sessions = SessionStore(store)
        self.injectors: dict[str, Injector] = dict(injectors or {})
        self.style = PromptStyle(
            system_prompt=settings.chat_system_prompt,
            facts_header=settings.chat_facts_header,
            answer_instruction=settings.chat_answer_instruction,
        )

    def register_injector(self, name: str, injector: Injector) -> None:
        """Plug in an injection mode (``"kv"`` comes from the attention-level injection work)."""
        self.injectors[name] = injector

    # ---- step 1: retrieval and prompt -------------------------------------------------------------

    def _retrieve(self, req: ChatRequest) -> list[SearchHit]:
        if req.injection == "none" or req.k <= 0:
            return []
        kinds = FACT_KINDS + ((TURN_KIND,) if self.settings.retrieve_turns else ())
        try:
            hits = self.store.search(
                tenant_id=req.tenant_id,
                subject=req.subject,
                query=req.message,
                k=req.k,
                filters=Filters(kinds=kinds),
                role=req.caller.role,
                min_score=self.settings.chat_min_score,  # relevance: an unrelated message injects nothing
            )
        except NotFoundError:
            return []  # a subject's first message: nothing to remember yet
        # score 0: nothing in common with the message (what still filters with an uncalibrated embedder)
        return [
            h
            for h in hits
            if (h.score > 0 or self.settings.chat_min_score < 0)
            and not (h.memory.kind == TURN_KIND and h.memory.session_id == req.session_id)
        ]

    def _history(self, req: ChatRequest) -> tuple[list[ChatMessage], list[str]]:
        """Working memory: the client's turns, or the session's stored ones (with their ids, for the audit)."""
        if req.history is not None:
            return list(req.history), []
        turns = self.sessions.recent_turns(
            tenant_id=req.tenant_id,
            subject=req.subject,
            session_id=req.session_id,
            limit=self.settings.chat_working_memory_turns,
        )
        return [_turn_message(t) for t in turns], [t.id for t in turns]

    async def prepare(self, req: ChatRequest) -> Prepared:
        started = time.perf_counter()
        if not self.backend.ready:
            raise LLMNotReadyError("the language model is still loading; retry shortly")
        if req.injection not in ("prompt", "none") and req.injection not in self.injectors:
            if req.injection == "kv":
                raise InjectionUnavailable(
                    "injection 'kv' (attention-level memory injection) is not available on this server; "
                    "use 'prompt' or 'none'"
                )
            raise InvalidInput(f"injection: unknown mode '{req.injection}'")
        if len(req.message) > self.settings.chat_max_message_chars:
            raise InvalidInput(f"message: longer than {self.settings.chat_max_message_chars} characters")
        if not req.message.strip():
            raise InvalidInput("message: must not be empty")
        hits, (history, history_ids) = await asyncio.gather(
            asyncio.to_thread(self._retrieve, req), asyncio.to_thread(self._history, req)
        )
        retrieved = time.perf_counter()
        shielded = await asyncio.to_thread(  # SensitiveDataRejected (422) when the message holds a rejected type
            shield_turn,
            self.store,
            tenant_id=req.tenant_id,
            subject=req.subject,
            role=req.caller.role,
            external=self.backend.external,
            message=req.message,
            history=history,
            extra_system=req.extra_system,
            memory_texts=[h.memory.text for h in hits],
        )
        shown = dict(zip((h.memory.id for h in hits), shielded.memory_texts, strict=True))
        screened = time.perf_counter()
        budget = self.backend.context_tokens - req.params.max_new_tokens
        builder = PromptBuilder(self.backend.counter, self.style)
        prompt = builder.build(  # PromptTooLongError (422 message_too_long) when the message cannot fit
            message=shielded.message,
            memories=[_item(h, shown[h.memory.id]) for h in hits],
            history=shielded.history,
            budget_tokens=budget,
            working_memory_tokens=self.settings.chat_working_memory_tokens,
            memory_tokens=self.settings.chat_memory_tokens,
            extra_system=shielded.extra_system,
        )
        built = time.perf_counter()
        return Prepared(
            request=req,
            prompt=prompt,
            hits=hits,
            started=started,
            history_ids=history_ids,
            timings={
                "retrieval_ms": _ms(retrieved - started),
                "screening_ms": _ms(screened - retrieved),
                "prompt_ms": _ms(built - screened),
            },
            shield=shielded.shield,
            masked_message=shielded.message if self.backend.external else None,
        )

    # ---- step 2: generation -----------------------------------------------------------------------

    def stream(
        self, prepared: Prepared, stats: GenerationStats, *, cancel: threading.Event | None = None
    ) -> AsyncIterator[str]:
        req = prepared.request
        cancel = cancel or threading.Event()
        injector = self.injectors.get(req.injection)
        if injector is not None:
            request = InjectionRequest(
                tenant_id=req.tenant_id,
                subject=req.subject,
                prompt=prepared.prompt,
                hits=tuple(prepared.used),
                backend=self.backend,
            )
            deltas = injector.stream(request, req.params.for_tenant(req.tenant_id), stats, cancel=cancel)
        else:
            messages = prepared.prompt.messages(with_memories=req.injection == "prompt")
            deltas = self.backend.stream(messages, req.params.for_tenant(req.tenant_id), stats, cancel=cancel)
        if prepared.shield.masked:
            stats.info["masked_values"] = prepared.shield.masked
        return prepared.shield.restore_stream(deltas)

    # ---- step 3: write-back -----------------------------------------------------------------------

    def _store_turns(self, req: ChatRequest, reply: str) -> list[MemoryRecord]:
        # The caller has the reply already: a type the policy rejects in it (a card the model made up, an
        # original restored for the caller) is masked in the stored turn rather than failing the turn.
        reply = self.store.screener.mask_rejected(req.tenant_id, reply)
        return self.sessions.append_turns(
            tenant_id=req.tenant_id,
            subject=req.subject,
            session_id=req.session_id,
            message_id=req.message_id,
            user_text=req.message,
            assistant_text=reply if self.settings.chat_store_assistant_turns else None,
            actor=req.caller.actor,
            agent_id=req.agent_id,
            audit=req.caller.event("chat.write", detail={"session_id": req.session_id, "message_id": req.message_id}),
            guard=req.caller.guard(delayed=True),
        )

    async def finish(self, prepared: Prepared, reply: str, stats: GenerationStats) -> ChatOutcome:
        req = prepared.request
        generated = time.perf_counter()
        written: list[dict[str, Any]] = []
        write_back: dict[str, Any] = {"status": "disabled"}
        if req.write_back:
            turns = await asyncio.to_thread(self._store_turns, req, reply)
            written = [{"id": t.id, "kind": t.kind, "role": t.metadata.get("role"), "status": "written"} for t in turns]
            if self.settings.chat_distill and self.worker is not None:
                job = WriteBackJob(
                    tenant_id=req.tenant_id,
                    subject=req.subject,
                    session_id=req.session_id,
                    message_id=req.message_id,
                    text=req.message,
                    caller=req.caller,
                    turn_id=turns[0].id if turns else None,
                    agent_id=req.agent_id,
                    masked_text=prepared.masked_message,
                    shield=prepared.shield,
                )
                result = self.worker.submit(job)
                write_back = {"status": result.status, "job_id": job.job_id}
                if result.error:
                    write_back["error"] = result.error
            else:
                write_back = {"status": "turns_only"}
        done = time.perf_counter()
        timings = dict(prepared.timings)
        timings.update(
            queue_ms=_ms(stats.queued_s),
            ttft_ms=_ms(stats.first_token_s) if stats.first_token_s is not None else 0.0,
            generation_ms=_ms(stats.finished_s if stats.finished_s is not None else generated - stats.started_at),
            write_ms=_ms(done - generated),
            total_ms=_ms(done - prepared.started),
        )
        if stats.decode_tokens_per_s is not None:
            timings["decode_tokens_per_s"] = round(stats.decode_tokens_per_s, 2)
        return ChatOutcome(
            prepared=prepared,
            reply=reply,
            stats=stats,
            model=self.backend.model_name,
            memories_written=written,
            write_back=write_back,
            timings=timings,
        )

    async def chat(self, req: ChatRequest) -> ChatOutcome:
        prepared = await self.prepare(req)
        stats = GenerationStats()
        parts = [delta async for delta in self.stream(prepared, stats)]
        return await self.finish(prepared, "".join(parts).strip(), stats)


def _item(hit: SearchHit, text: str) -> MemoryItem:
    memory = hit.memory
    return MemoryItem(memory.id, text, hit.score, memory.occurred_at or memory.created_at)


def _turn_message(record: MemoryRecord) -> ChatMessage:
    role = record.metadata.get("role")
    return ChatMessage("assistant" if role == "assistant" else "user", record.text)


def history_from(messages: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    return tuple(m for m in messages if m.role in ("user", "assistant"))
