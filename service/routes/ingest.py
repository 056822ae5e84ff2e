"""``/v1/memories/ingest``: a conversation in, distilled memories out, with what happened to each statement.

The same distillation and reconciliation as the chat loop's write-back (:mod:`service.chat.writeback`): the
configured distiller (rules by default, the LLM with ``SEALMEM_CHAT_DISTILLER=llm``) reads the user's messages,
and each statement is added, updates a near-duplicate, supersedes a memory of the same slot, or changes
nothing. Each change is written and audited (``memory.ingest``) in its own transaction, screened by the tenant's
desensitisation policy like every write; a failure part-way leaves the earlier statements' changes in place.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from memory_store import MemoryRecord
from memory_store.errors import CredentialRevokedError, SubjectForgottenError
from service.auditing import Caller
from service.auth import Principal, subject_for
from service.chat.service import new_session_id
from service.chat.writeback import Change, WriteBackJob, WriteBackResult, WriteBackWorker
from service.deps import Reader, ServicesDep, Writer
from service.errors import ERROR_RESPONSES, Unavailable
from service.schemas import IngestEvent, IngestJobOut, IngestRequest, IngestResult
from service.services import Services

router = APIRouter(prefix="/v1/memories", tags=["memories"], responses=ERROR_RESPONSES)
INGEST_SOURCE = "ingest"


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
    for i, message in enumerate(body.messages):
        services.limits.text(message.content, field=f"messages[{i}].content")
    job = WriteBackJob(
        tenant_id=principal.tenant_id,
        subject=subject,
        session_id=body.session_id or new_session_id(),
        message_id="ing_" + uuid.uuid4().hex,
        text="\n".join(m.content.strip() for m in body.messages if m.role == "user" and m.content.strip()),
        caller=Caller.of(principal, request),
        agent_id=body.agent_id,
        source=INGEST_SOURCE,
        action="memory.ingest",
        metadata=dict(body.metadata or {}),
        tracked=body.run_async,
        job_id="job_" + uuid.uuid4().hex,
    )
    worker = _worker(request)
    if body.run_async:
        info = services.store.jobs.create(
            job_id=job.job_id,
            tenant_id=principal.tenant_id,
            kind="ingest",
            subject=subject,
            credential_id=principal.key_id,
        )
        queued = worker.submit(job)
        if queued.status != "queued":
            services.store.jobs.finish(job_id=job.job_id, status=queued.status, detail={}, error=queued.error)
            raise Unavailable("the ingestion queue is full; retry shortly", headers={"Retry-After": "2"})
        out = IngestJobOut(job_id=info.id, status="queued", subject=subject, created_at=info.created_at,
                           updated_at=info.updated_at)
        return JSONResponse(out.model_dump(mode="json"), status_code=202)
    result = await worker.process(job)
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
    with services.auditor.record(request, principal, "memory.ingest_status", subject=principal.subject) as note:
        info = services.store.jobs.get(tenant_id=principal.tenant_id, job_id=job_id, subject=principal.subject)
        note.subject = info.subject
        note.detail = {"job_id": job_id}
    detail = info.detail
    return IngestJobOut(
        job_id=info.id,
        status=info.status,
        subject=info.subject,
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
    """The changes, texts shown as the caller's role may see them."""
    records: list[MemoryRecord] = [c.memory for c in changes] + [c.previous for c in changes if c.previous]
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
