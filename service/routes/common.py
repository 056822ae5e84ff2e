"""Helpers shared by the route modules: query parameters and conversions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Query

from memory_store.types import Filters, NewMemory
from service.auth import Principal, subject_for
from service.limits import Limits
from service.schemas import IDENTIFIER_PATTERN, MemoryCreate, SearchFilters

SubjectQuery = Annotated[
    str | None, Query(min_length=1, max_length=256, pattern=IDENTIFIER_PATTERN, description="Subject id.")
]
IdentifierQuery = Annotated[str | None, Query(min_length=1, max_length=256, pattern=IDENTIFIER_PATTERN)]
KindQuery = Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
CursorQuery = Annotated[
    str | None, Query(min_length=1, max_length=128, description="`next_cursor` of the previous page.")
]
LimitQuery = Annotated[int | None, Query(ge=1, le=1000, description="Page size (capped by settings).")]


@dataclass(frozen=True)
class ListParams:
    """Query parameters of memory listings."""

    subject: str | None
    agent_id: str | None
    session_id: str | None
    kind: str | None
    cursor: str | None
    limit: int | None

    def filters(self) -> Filters:
        return Filters(
            agent_id=self.agent_id,
            session_id=self.session_id,
            kinds=(self.kind,) if self.kind else None,
            include_superseded=True,
        )


async def list_params(  # async: no thread-pool hop (see service.deps)
    subject: SubjectQuery = None,
    agent_id: IdentifierQuery = None,
    session_id: IdentifierQuery = None,
    kind: KindQuery = None,
    cursor: CursorQuery = None,
    limit: LimitQuery = None,
) -> ListParams:
    return ListParams(subject, agent_id, session_id, kind, cursor, limit)


def new_memory(principal: Principal, item: MemoryCreate, limits: Limits) -> NewMemory:
    limits.text(item.text)
    limits.metadata(item.metadata)
    return NewMemory(
        subject=subject_for(principal, item.subject),
        text=item.text,
        metadata=item.metadata,
        agent_id=item.agent_id,
        session_id=item.session_id,
        kind=item.kind,
        importance=item.importance,
        source="api",
        source_ref=item.source_ref,
        occurred_at=item.occurred_at,
        expires_at=item.expires_at,
    )


def to_filters(filters: SearchFilters | None, limits: Limits) -> Filters:
    if filters is None:
        return Filters()
    limits.metadata(filters.metadata, field="filters.metadata")
    return Filters(
        agent_id=filters.agent_id,
        session_id=filters.session_id,
        kinds=tuple(filters.kinds) if filters.kinds else None,
        created_after=filters.created_after,
        created_before=filters.created_before,
        occurred_after=filters.occurred_after,
        occurred_before=filters.occurred_before,
        metadata=filters.metadata,
        include_superseded=filters.include_superseded,
    )
