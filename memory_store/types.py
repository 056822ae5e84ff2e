"""Plain data types of the storage core's public API."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

KINDS = ("fact", "turn", "summary", "preference", "event", "note")


@dataclass(frozen=True, kw_only=True)
class NewMemory:
    subject: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    agent_id: str | None = None
    session_id: str | None = None
    kind: str = "fact"
    importance: float = 0.5
    source: str = "api"
    source_ref: str | None = None
    occurred_at: datetime | None = None
    expires_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class MemoryRecord:
    id: str
    subject: str
    text: str
    metadata: dict[str, Any]
    agent_id: str | None
    session_id: str | None
    kind: str
    status: str
    superseded_by: str | None
    importance: float
    source: str
    source_ref: str | None
    created_at: datetime
    updated_at: datetime
    last_accessed_at: datetime | None
    occurred_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class SearchHit:
    memory: MemoryRecord
    score: float
    dense_score: float | None
    lexical_score: float | None
    relevance: float | None = None
    """Estimated probability that the memory is relevant to the query, comparable across queries (``score``
    only ranks the hits of one search); None with an embedder that has no calibration. See
    :mod:`memory_store.calibration`."""


@dataclass(frozen=True, kw_only=True)
class Filters:
    """Conditions applied inside the search (they choose the candidate set), not after it."""

    agent_id: str | None = None
    session_id: str | None = None
    kinds: tuple[str, ...] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    occurred_after: datetime | None = None
    occurred_before: datetime | None = None
    metadata: dict[str, Any] | None = None
    include_superseded: bool = False


@dataclass(frozen=True, kw_only=True)
class Page:
    items: list[MemoryRecord]
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True)
class HistoryEntry:
    memory_id: str
    action: str
    actor: str
    at: datetime
    detail: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class SubjectInfo:
    subject: str
    memory_count: int
    created_at: datetime
    last_activity_at: datetime


@dataclass(frozen=True, kw_only=True)
class TenantInfo:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class Stats:
    memories: int
    subjects: int
    by_kind: dict[str, int]
    per_subject: dict[str, int]
    index_vectors: int
    index_bytes: int
    index_kind: str


@dataclass(frozen=True, kw_only=True)
class SessionSummary:
    """One session of a subject: how many memories carry its ``session_id`` and when they were written."""

    session_id: str
    memory_count: int
    first_created_at: datetime
    last_created_at: datetime


@dataclass(frozen=True, kw_only=True)
class StoreTotals:
    """Counts across every tenant (for monitoring), and the size of the FAISS indexes loaded in this process."""

    memories: int
    subjects: int
    tenants: int
    loaded_index_vectors: int
    loaded_index_bytes: int


@dataclass(frozen=True, kw_only=True)
class WriteGuard:
    """What a write re-checks inside its transaction when it runs for a request that began earlier.

    ``begun_at``: the write is refused (:class:`~memory_store.errors.SubjectForgottenError`) if a subject it
    touches was forgotten at or after this time, or if it is older than the store keeps tombstones.
    ``credential_id``: an API key id; the write is refused (:class:`~memory_store.errors.CredentialRevokedError`)
    if that key has been revoked since (delayed writes: chat turns, write-back).
    """

    begun_at: datetime
    credential_id: str | None = None
