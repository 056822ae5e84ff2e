"""Reads of memories that every kind of caller makes, each as one function: the ``/v1/memories`` routes (any
role, subject tokens included), the ``/v1/admin`` routes and the admin console (``/admin``) call these, so a
search, a listing or a history read has one set of limits, one subject rule, one audit record and one reveal
rule, whoever asks. (Tenant administration proper is :mod:`service.admin_actions`.)

Each takes the services, the request (for the audit record's request id and times) and the principal, which
the caller's permission dependency (:func:`service.deps.permit`) has already admitted; each works only within
the principal's tenant, and a subject token only ever reaches its own subject (:func:`service.auth.subject_for`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from starlette.requests import Request

from memory_store.prepared import PreparedSearch
from memory_store.types import Filters, HistoryEntry, MemoryRecord, SearchHit
from service.auth import Principal, subject_for
from service.routes.common import to_filters
from service.schemas import SearchFilters
from service.services import Services

T = TypeVar("T")


@dataclass(frozen=True)
class Prepared(Generic[T]):
    """What a preparation (:mod:`service.ahead`) made, and when it started."""

    value: T
    started: float


def prepare_search(
    services: Services, principal: Principal, *, subject: str | None, query: str
) -> Prepared[PreparedSearch]:
    """:func:`search`'s screening and query embedding, ahead of it (for :mod:`service.ahead`)."""
    started = time.perf_counter()
    services.limits.text(query, field="query")
    value = services.store.prepare_search(
        tenant_id=principal.tenant_id, subject=subject_for(principal, subject), query=query, role=principal.role
    )
    return Prepared(value, started)


@dataclass(frozen=True, kw_only=True)
class MemoryListing:
    items: list[MemoryRecord]  # as the caller's role may see them (revealed)
    next_cursor: str | None


def list_memories(
    services: Services,
    request: Request,
    principal: Principal,
    *,
    subject: str | None,
    filters: Filters,
    cursor: str | None,
    limit: int | None,
    status: str | None = None,
    source: str | None = None,
    across_subjects: bool = False,
) -> MemoryListing:
    """A page of memories, newest first, optionally of one ``status`` and ``source`` (filtered in the query),
    revealed as the caller's role may see them.

    By default one subject's (``subject``, required with an API key; a subject token's own), audited as
    ``memory.list``. ``across_subjects`` (the admin inspection, for admin keys): the tenant's memories, of one
    subject only when ``subject`` is given, audited as ``admin.inspect``."""
    page_size = services.limits.page_size(limit)
    action = "admin.inspect" if across_subjects else "memory.list"
    confined = principal.is_subject_token or not across_subjects
    with services.auditor.record(
        request, principal, action, subject=principal.subject if confined else subject
    ) as note:
        if confined:
            note.subject = subject = subject_for(principal, subject)
        page = services.store.list(
            tenant_id=principal.tenant_id,
            subject=subject,
            filters=filters,
            cursor=cursor,
            limit=page_size,
            status=status,
            source=source,
        )
        note.touch(page.items)
        items = services.store.reveal(tenant_id=principal.tenant_id, records=page.items, role=principal.role)
    return MemoryListing(items=items, next_cursor=page.next_cursor)


def search(
    services: Services,
    request: Request,
    principal: Principal,
    *,
    subject: str | None,
    query: str,
    k: int | None,
    filters: SearchFilters | None = None,
    min_score: float = 0.0,
    prepared: Prepared[PreparedSearch] | None = None,
) -> list[SearchHit]:
    """Hybrid search of one subject's memories (``subject``, required with an API key; a subject token's own),
    best first, each hit with its fused, dense and lexical scores and its calibrated ``relevance``; hits whose
    relevance is below ``min_score`` are left out, and so are the assistant's chat replies unless
    ``filters.include_assistant``. Memories are revealed as the caller's role may see them; one ``memory.search``
    record; the search's time (from its preparation on, when :func:`prepare_search` gave ``prepared``) goes to
    the search latency metric."""
    top = services.limits.k(k)
    services.limits.text(query, field="query")
    with services.auditor.record(request, principal, "memory.search", subject=principal.subject) as note:
        note.subject = subject = subject_for(principal, subject)
        store_filters = to_filters(filters, services.limits)
        started = prepared.started if prepared is not None else time.perf_counter()
        hits = services.store.search(
            tenant_id=principal.tenant_id,
            subject=subject,
            query=query,
            k=top,
            filters=store_filters,
            role=principal.role,
            min_score=min_score,
            include_assistant=filters is not None and filters.include_assistant,
            prepared=prepared.value if prepared is not None else None,
        )
        services.metrics.search_latency.observe(time.perf_counter() - started)
        note.memory_ids = [h.memory.id for h in hits]
        shown = services.store.reveal(
            tenant_id=principal.tenant_id, records=[h.memory for h in hits], role=principal.role
        )
    return [replace(h, memory=m) for h, m in zip(hits, shown, strict=True)]


@dataclass(frozen=True, kw_only=True)
class MemoryHistory:
    events: list[HistoryEntry]
    lineage: list[MemoryRecord]  # the supersede lineage, oldest first, revealed; empty unless asked for

    def memory(self, memory_id: str) -> MemoryRecord | None:
        return next((m for m in self.lineage if m.id == memory_id), None)


def history(
    services: Services,
    request: Request,
    principal: Principal,
    *,
    memory_id: str,
    subject: str | None = None,
    lineage: bool = False,
) -> MemoryHistory:
    """A memory's change history: of ``subject`` when given, of any subject of the tenant otherwise (a subject
    token: always its own). With ``lineage``, also its supersede lineage (what it replaced, what replaced it),
    through the store's ``lineage`` lookup, revealed as the caller's role may see it. One ``memory.history``
    record, naming every memory whose content is shown."""
    if principal.is_subject_token:
        subject = subject_for(principal, subject)
    with services.auditor.record(request, principal, "memory.history", subject=subject, memory_ids=[memory_id]) as note:
        events = services.store.history(tenant_id=principal.tenant_id, memory_id=memory_id, subject=subject)
        if not lineage:
            return MemoryHistory(events=events, lineage=[])
        chain = services.store.lineage(tenant_id=principal.tenant_id, memory_id=memory_id, subject=subject)
        note.memory_ids = [memory_id, *(m.id for m in chain if m.id != memory_id)]
        shown = services.store.reveal(tenant_id=principal.tenant_id, records=chain, role=principal.role)
    return MemoryHistory(events=events, lineage=shown)
