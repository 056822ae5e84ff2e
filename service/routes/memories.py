"""``/v1/memories``: one subject's memories, for API keys (any subject of the tenant) and subject tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from memory_store.prepared import PreparedAdd
from service import memory_actions
from service.auth import Principal
from service.deps import Reader, ServicesDep, Writer
from service.errors import ERROR_RESPONSES, InvalidInput
from service.routes.common import ListParams, list_params, new_memory
from service.schemas import (
    HistoryEntryOut,
    HistoryResponse,
    MemoryBatchCreate,
    MemoryBatchOut,
    MemoryCreate,
    MemoryCreateBody,
    MemoryOut,
    MemoryPage,
    MemoryUpdate,
    SearchRequest,
    SearchResponse,
    SearchResult,
)
from service.services import Services

router = APIRouter(prefix="/v1/memories", tags=["memories"], responses=ERROR_RESPONSES)
MemoryId = Annotated[str, Path(min_length=1, max_length=64, description="The memory's id.")]


@router.post(
    "",
    status_code=201,
    response_model=MemoryOut | MemoryBatchOut,
    summary="Add a memory, or a batch of memories",
    description='A single memory (`{"subject", "text", ...}`) returns the memory; a batch '
    '(`{"memories": [...]}`) is stored atomically and returns `{"memories": [...]}`.',
)
async def add_memories(
    body: MemoryCreateBody, principal: Writer, services: ServicesDep, request: Request
) -> MemoryOut | MemoryBatchOut:
    if isinstance(body, MemoryBatchCreate):
        return MemoryBatchOut(memories=await _add(body.memories, principal, services, request))
    return (await _add([body], principal, services, request))[0]


@router.post(
    "/batch",
    status_code=201,
    response_model=MemoryBatchOut,
    summary="Add a batch of memories (atomically)",
    description="All or nothing: one bad item, or one the desensitisation policy rejects, stores none.",
)
async def add_memory_batch(
    body: MemoryBatchCreate, principal: Writer, services: ServicesDep, request: Request
) -> MemoryBatchOut:
    return MemoryBatchOut(memories=await _add(body.memories, principal, services, request))


async def _add(
    items: list[MemoryCreate], principal: Principal, services: Services, request: Request
) -> list[MemoryOut]:
    """Screened and embedded ahead (:mod:`service.ahead`), then stored on a request thread in its turn
    (:mod:`service.admission`)."""
    prepared = await services.ahead.run(_prepare_add, items, principal, services)
    async with services.admission.turn(getattr(request.state, "arrived", None)):
        return await run_in_threadpool(_store, items, principal, services, request, prepared)


def _prepare_add(items: list[MemoryCreate], principal: Principal, services: Services) -> PreparedAdd:
    services.limits.batch(len(items))
    news = [new_memory(principal, item, services.limits) for item in items]
    return services.store.prepare_add(tenant_id=principal.tenant_id, items=news)


def _store(
    items: list[MemoryCreate],
    principal: Principal,
    services: Services,
    request: Request,
    prepared: PreparedAdd | None,
) -> list[MemoryOut]:
    services.limits.batch(len(items))
    with services.auditor.record(request, principal, "memory.add", subject=principal.subject) as note:
        news = [new_memory(principal, item, services.limits) for item in items]
        records = services.store.add_batch(
            tenant_id=principal.tenant_id,
            items=news,
            actor=note.caller.actor,
            audit=note.change(),
            guard=note.caller.guard(),
            prepared=prepared,
        )
    records = services.store.reveal(tenant_id=principal.tenant_id, records=records, role=principal.role)
    return [MemoryOut.of(r) for r in records]


@router.get("", response_model=MemoryPage, summary="List a subject's memories, newest first")
def list_memories(
    params: Annotated[ListParams, Depends(list_params)],
    principal: Reader,
    services: ServicesDep,
    request: Request,
) -> MemoryPage:
    page = memory_actions.list_memories(
        services,
        request,
        principal,
        subject=params.subject,
        filters=params.filters(),
        cursor=params.cursor,
        limit=params.limit,
    )
    return MemoryPage(items=[MemoryOut.of(m) for m in page.items], next_cursor=page.next_cursor)


@router.post("/search", response_model=SearchResponse, summary="Hybrid (vector + keyword) search of a subject")
async def search_memories(
    body: SearchRequest, principal: Reader, services: ServicesDep, request: Request
) -> SearchResponse:
    # The query screened and embedded ahead (service.ahead), then searched for on a request thread in its turn
    # (service.admission).
    prepared = await services.ahead.run(
        memory_actions.prepare_search, services, principal, subject=body.subject, query=body.query
    )
    async with services.admission.turn(getattr(request.state, "arrived", None)):
        hits = await run_in_threadpool(
            memory_actions.search,
            services,
            request,
            principal,
            subject=body.subject,
            query=body.query,
            k=body.k,
            filters=body.filters,
            min_score=body.min_score,
            prepared=prepared,
        )
    return SearchResponse(results=[SearchResult.of_hit(h) for h in hits])


@router.get("/{memory_id}", response_model=MemoryOut, summary="Read one memory")
def get_memory(memory_id: MemoryId, principal: Reader, services: ServicesDep, request: Request) -> MemoryOut:
    with services.auditor.record(
        request, principal, "memory.get", subject=principal.subject, memory_ids=[memory_id]
    ) as note:
        record = services.store.get(tenant_id=principal.tenant_id, memory_id=memory_id, subject=principal.subject)
        note.subject = record.subject
        (record,) = services.store.reveal(tenant_id=principal.tenant_id, records=[record], role=principal.role)
    return MemoryOut.of(record)


@router.patch("/{memory_id}", response_model=MemoryOut, summary="Change a memory (its history is kept)")
def update_memory(
    memory_id: MemoryId, body: MemoryUpdate, principal: Writer, services: ServicesDep, request: Request
) -> MemoryOut:
    given = body.model_fields_set
    if not given:
        raise InvalidInput("nothing to update: send at least one of text, metadata, kind, importance, expires_at")
    changes: dict[str, Any] = {}
    for name in ("text", "metadata", "kind", "importance"):
        if name in given:
            if getattr(body, name) is None:
                raise InvalidInput(f"{name}: must not be null")
            changes[name] = getattr(body, name)
    if "expires_at" in given:
        changes["expires_at"] = body.expires_at
    services.limits.text(body.text)
    services.limits.metadata(body.metadata)
    with services.auditor.record(
        request, principal, "memory.update", subject=principal.subject, memory_ids=[memory_id]
    ) as note:
        note.detail = {"fields": sorted(changes)}
        record = services.store.update(
            tenant_id=principal.tenant_id,
            memory_id=memory_id,
            subject=principal.subject,
            actor=note.caller.actor,
            audit=note.change(),
            guard=note.caller.guard(),
            **changes,
        )
        note.subject = record.subject
    (record,) = services.store.reveal(tenant_id=principal.tenant_id, records=[record], role=principal.role)
    return MemoryOut.of(record)


@router.delete("/{memory_id}", status_code=204, response_class=Response, summary="Delete a memory")
def delete_memory(memory_id: MemoryId, principal: Writer, services: ServicesDep, request: Request) -> Response:
    store, tenant_id = services.store, principal.tenant_id
    with services.auditor.record(
        request, principal, "memory.delete", subject=principal.subject, memory_ids=[memory_id]
    ) as note:
        store.delete(
            tenant_id=tenant_id,
            memory_id=memory_id,
            subject=principal.subject,
            actor=note.caller.actor,
            audit=note.change(),
            guard=note.caller.guard(),
        )
    return Response(status_code=204)


@router.get("/{memory_id}/history", response_model=HistoryResponse, summary="A memory's change history")
def memory_history(memory_id: MemoryId, principal: Reader, services: ServicesDep, request: Request) -> HistoryResponse:
    found = memory_actions.history(services, request, principal, memory_id=memory_id)
    return HistoryResponse(memory_id=memory_id, events=[HistoryEntryOut.of(e) for e in found.events])
