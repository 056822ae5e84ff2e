"""``/v1/memories/ingest``: a conversation in, distilled memories out, with what happened to each statement.

The same distillation and reconciliation as the chat loop's write-back (:mod:`service.chat.writeback`): the
configured distiller (rules by default, the LLM with ``SEALMEM_CHAT_DISTILLER=llm``) reads the user's messages,
and each statement is added, updates a near-duplicate, supersedes a memory of the same slot, or changes
nothing. Each change is written and audited (``memory.ingest``) in its own transaction, screened by the tenant's
desensitisation policy like every write; a failure part-way leaves the earlier statements' changes in place.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from memory_store import MemoryRecord
from memory_store.errors import CredentialRevokedError, SubjectForgottenError
from service.auditing import Caller
from service.auth import Principal, subject_for
from service.chat.service import new_session_id
from service.chat.shield import Shield, shield_turn
from service.chat.writeback import Change, WriteBackJob, WriteBackResult, WriteBackWorker
from service.deps import Reader, ServicesDep, Writer
from service.errors import ERROR_RESPONSES, InvalidInput, Unavailable
from service.schemas import IngestEvent, IngestJobOut, IngestRequest, IngestResult
from service.services import Services

router = APIRouter(prefix="/v1/memories", tags=["memories"], responses=ERROR_RESPONSES)
INGEST_SOURCE = "ingest"
MAX_USER_CHARS = 20_000  # of user text in one ingestion; more is a 422 (split the conversation)
SYNC_AT_ONCE = 4  # synchronous ingestions one process runs at once; more get 503 with Retry-After
RESERVED_METADATA = ("slot", "slot_value", "mentions", "message_id", "session_id", "turn_id")
_READERS = frozenset({"admin", "app", "reader"})


class _Slots:
    """A count of synchronous ingestions in progress in this process (the event loop's thread only)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


_running = _Slots(SYNC_AT_ONCE)


def _worker(request: Request) -> WriteBackWorker:
    worker: WriteBackWorker = request.app.state.writeback
    return worker


@router.post(
    "/ingest",
    response_model=IngestResult,
    responses={202: {"model": IngestJobOut, "description": "With `async: true`: the job, queued."}},
    summary="Distil a conversation into memories",
    description="Reads the user's messages, distils statements and reconciles each with the subject's memories: "
    "`ADD`, `UPDATE` (with the previous text), `SUPERSEDE` (with the memories it replaces) or `NOOP`.",
)
async def ingest(
    body: IngestRequest, principal: Writer, services: ServicesDep, request: Request
) -> IngestResult | JSONResponse:
    subject = subject_for(principal, body.subject)
    services.limits.metadata(body.metadata)
    reserved = sorted(set(body.metadata or {}) & set(RESERVED_METADATA))
    if reserved:
        raise InvalidInput(f"metadata: '{reserved[0]}' is set by Sealmem itself")
    for i, message in enumerate(body.messages):
        services.limits.text(message.content, field=f"messages[{i}].content")
    text = "\n".join(m.content.strip() for m in body.messages if m.role == "user" and m.content.strip())
    if len(text) > MAX_USER_CHARS:
        raise InvalidInput(f"messages: more than {MAX_USER_CHARS} characters of user text; split the conversation")
    caller = Caller.of(principal, request)
    worker = _worker(request)
    masked: str | None = None
    shield: Shield | None = None
    chat = getattr(request.app.state, "chat", None)
    if chat is not None and chat.backend.external:
        # The distiller may send the text to that outside LLM: values masked, statements restored after.
        shielded = await asyncio.to_thread(
            shield_turn,
            services.store,
            tenant_id=principal.tenant_id,
            subject=subject,
            role=principal.role,
            external=True,
            message=text,
            history=[],
            extra_system="",
            memory_texts=[],
        )
        masked, shield = shielded.message, shielded.shield
    job = WriteBackJob(
        tenant_id=principal.tenant_id,
        subject=subject,
        session_id=body.session_id or new_session_id(),
        message_id="ing_" + uuid.uuid4().hex,
        text=text,
        caller=caller,
        agent_id=body.agent_id,
        source=INGEST_SOURCE,
        action="memory.ingest",
        metadata=dict(body.metadata or {}),
        tracked=body.run_async,
        job_id="job_" + uuid.uuid4().hex,
        masked_text=masked,
        shield=shield,
        max_statements=services.limits.max_batch,
    )
    if body.run_async:
        info = services.store.jobs.create(
            job_id=job.job_id,
            tenant_id=principal.tenant_id,
            kind="ingest",
            subject_digest=services.store.subject_digest(principal.tenant_id, subject),
            credential_id=principal.key_id,
        )
        queued = worker.submit(job)
        if queued.status != "queued":
            services.store.jobs.finish(job_id=job.job_id, status=queued.status, detail={}, error=queued.error)
            refused = caller.event("memory.ingest", subject=subject, outcome="rejected", detail={"job_id": job.job_id})
            services.auditor.failed(principal.tenant_id, refused)
            raise Unavailable(f"ingestion refused: {queued.error}; retry shortly", headers={"Retry-After": "2"})
        out = IngestJobOut(job_id=info.id, status="queued", created_at=info.created_at, updated_at=info.updated_at)
        return JSONResponse(out.model_dump(mode="json"), status_code=202)
    if _running.used >= _running.limit:
        raise Unavailable(
            "too many ingestions in progress; retry shortly, or send it with async", headers={"Retry-After": "2"}
        )
    _running.used += 1
    try:
        result = await worker.process(job)
    finally:
        _running.used -= 1
    _raise_if_refused(result)
    return IngestResult(
        session_id=job.session_id,
        statements=result.statements,
        events=_events(services, principal, result.changes),
    )


@router.get(
    "/ingest/{job_id}",
    response_model=IngestJobOut,
    summary="The state of an ingestion job",
    description="Events name memories by id (read them with `GET /v1/memories/{id}`).",
)
def ingest_status(
    job_id: Annotated[str, Path(min_length=1, max_length=40)],
    principal: Reader,
    services: ServicesDep,
    request: Request,
) -> IngestJobOut:
    digest = services.store.subject_digest(principal.tenant_id, principal.subject) if principal.subject else None
    with services.auditor.record(request, principal, "memory.ingest_status", subject=principal.subject) as note:
        note.detail = {"job_id": job_id}
        info = services.store.jobs.get(tenant_id=principal.tenant_id, job_id=job_id, subject_digest=digest)
    detail = info.detail
    return IngestJobOut(
        job_id=info.id,
        status=info.status,
        statements=detail.get("statements"),
        events=[IngestEvent(**e) for e in detail.get("events", [])],
        error=info.error,
        created_at=info.created_at,
        updated_at=info.updated_at,
    )


def _raise_if_refused(result: WriteBackResult) -> None:
    if result.status == "cancelled":
        if result.error == CredentialRevokedError.code:
            raise CredentialRevokedError("the API key of this request has been revoked; ingestion stopped")
        raise SubjectForgottenError("the subject was forgotten while this request was in progress; ingestion stopped")


def _events(services: Services, principal: Principal, changes: list[Change]) -> list[IngestEvent]:
    """The changes, texts shown as the caller's role may see them; none for a caller that may not read (a
    write-only token would otherwise read existing memories through UPDATE and NOOP events)."""
    records: list[MemoryRecord] = [c.memory for c in changes] + [c.previous for c in changes if c.previous]
    texts: dict[int, str | None] = {id(r): None for r in records}
    if principal.allows(roles=_READERS, scopes=frozenset({"read"})):
        shown = services.store.reveal(tenant_id=principal.tenant_id, records=records, role=principal.role)
        texts = {id(r): s.text for r, s in zip(records, shown, strict=True)}
    return [
        IngestEvent(
            event=c.event,
            memory_id=c.memory.id,
            text=texts[id(c.memory)],
            previous_text=texts[id(c.previous)] if c.previous is not None and c.event == "UPDATE" else None,
            replaces=list(c.replaces),
        )
        for c in changes
    ]
