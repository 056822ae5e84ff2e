"""Typed answers of the API (pydantic v2), mirroring the server's response schemas.

Every model keeps fields the server adds later (``extra="allow"``: reachable as attributes and in
``model_extra``) and fields are only as strict as a client needs, so a newer server does not break an older
client. Request bodies are plain keyword arguments of the client's methods; :class:`NewMemory` and
:class:`SearchFilters` are the two structured inputs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AuditEntry",
    "AuditPage",
    "AuditVerification",
    "BrokenLink",
    "ChatResponse",
    "Desensitisation",
    "ForgetResult",
    "Health",
    "HistoryEvent",
    "IngestEvent",
    "IngestJob",
    "IngestResult",
    "Key",
    "KeyCreated",
    "Memory",
    "MemoryHistory",
    "MemoryPage",
    "NewMemory",
    "ReindexResult",
    "SearchFilters",
    "SearchResult",
    "Session",
    "SessionDetail",
    "Stats",
    "Subject",
    "SubjectExport",
    "SubjectPage",
    "Token",
    "Turn",
    "Usage",
    "UsedMemory",
    "WriteBackStatus",
    "WrittenMemory",
]


class Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# ---- memories -------------------------------------------------------------------------------------------


class Memory(Model):
    id: str
    subject: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    agent_id: str | None = None
    session_id: str | None = None
    kind: str = "fact"
    status: str = "active"
    superseded_by: str | None = None
    importance: float = 0.5
    source: str | None = None
    source_ref: str | None = None
    created_at: datetime
    updated_at: datetime | None = None
    last_accessed_at: datetime | None = None
    occurred_at: datetime | None = None
    expires_at: datetime | None = None


class SearchResult(Memory):
    score: float
    dense_score: float | None = None
    lexical_score: float | None = None
    relevance: float | None = None  # estimated probability of relevance, comparable across queries


class MemoryPage(Model):
    items: list[Memory]
    next_cursor: str | None = None


class HistoryEvent(Model):
    memory_id: str | None = None
    action: str
    actor: str
    at: datetime
    detail: dict[str, Any] = Field(default_factory=dict)


class MemoryHistory(Model):
    memory_id: str
    events: list[HistoryEvent]


class IngestEvent(Model):
    """What one statement of an ingested conversation did: ``ADD``, ``UPDATE`` (``previous_text``),
    ``SUPERSEDE`` (``replaces``) or ``NOOP``."""

    event: str
    memory_id: str
    text: str | None = None
    previous_text: str | None = None
    replaces: list[str] = Field(default_factory=list)


class IngestResult(Model):
    session_id: str
    statements: int
    events: list[IngestEvent]


class IngestJob(Model):
    job_id: str
    status: str = Field(description="queued, running, done, failed, cancelled or dropped")
    statements: int | None = None
    events: list[IngestEvent] = Field(default_factory=list)
    error: str | None = None
    created_at: datetime
    updated_at: datetime


class NewMemory(Model):
    """One memory to add (``memories.add_batch``); unset fields take the server's defaults."""

    text: str
    subject: str | None = None
    metadata: dict[str, Any] | None = None
    agent_id: str | None = None
    session_id: str | None = None
    kind: str | None = None
    importance: float | None = None
    source_ref: str | None = None
    occurred_at: datetime | None = None
    expires_at: datetime | None = None


class SearchFilters(Model):
    agent_id: str | None = None
    session_id: str | None = None
    kinds: list[str] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    occurred_after: datetime | None = None
    occurred_before: datetime | None = None
    metadata: dict[str, Any] | None = None
    include_superseded: bool | None = None
    include_assistant: bool | None = None


# ---- tokens ---------------------------------------------------------------------------------------------


class Token(Model):
    token: str
    token_type: str = "Bearer"  # noqa: S105 (the scheme's name)
    token_id: str
    subject: str
    scopes: list[str]
    expires_at: datetime


# ---- admin ----------------------------------------------------------------------------------------------


class Subject(Model):
    subject: str
    memory_count: int
    created_at: datetime
    last_activity_at: datetime


class SubjectPage(Model):
    subjects: list[Subject]
    next_offset: int | None = None


class Stats(Model):
    memories: int
    subjects: int
    by_kind: dict[str, int] = Field(default_factory=dict)
    per_subject: dict[str, int] = Field(default_factory=dict)
    index_vectors: int = 0
    index_bytes: int = 0
    index_kind: str = ""


class SubjectExport(Model):
    subject: str
    created_at: datetime
    memories: list[Memory]
    history: list[HistoryEvent]


class ForgetResult(Model):
    subject: str
    memories_deleted: int


class ReindexResult(Model):
    vectors: int


class Key(Model):
    id: str
    prefix: str
    role: str
    name: str
    created_by: str | None = None
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class KeyCreated(Key):
    key: str = Field(description="The secret: shown only once.")


class AuditEntry(Model):
    seq: int
    at: datetime
    credential_id: str
    role: str
    token_id: str | None = None
    subject: str | None = None
    action: str
    memory_ids: list[str] = Field(default_factory=list)
    detail: dict[str, Any] = Field(default_factory=dict)
    request_id: str | None = None
    outcome: str
    prev_hash: str
    hash: str


class AuditPage(Model):
    items: list[AuditEntry]
    next_cursor: str | None = None


class BrokenLink(Model):
    seq: int
    reason: str


class AuditVerification(Model):
    ok: bool
    records_checked: int
    head_seq: int
    head_hash: str
    first_broken: BrokenLink | None = None


class Desensitisation(Model):
    actions: dict[str, str]
    reveal_roles: list[str]
    types: dict[str, str] = Field(default_factory=dict)
    revision: int


# ---- chat and sessions ----------------------------------------------------------------------------------


class UsedMemory(Model):
    id: str
    text: str
    score: float
    dense_score: float | None = None
    lexical_score: float | None = None
    kind: str
    created_at: datetime
    occurred_at: datetime | None = None


class WrittenMemory(Model):
    id: str | None = None
    kind: str
    role: str | None = None
    status: str


class WriteBackStatus(Model):
    status: str
    job_id: str | None = None
    error: str | None = None


class Usage(Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatResponse(Model):
    reply: str
    session_id: str
    message_id: str
    model: str
    injection: str
    finish_reason: str
    memories_used: list[UsedMemory] = Field(default_factory=list)
    memories_dropped: list[str] = Field(default_factory=list)
    memories_written: list[WrittenMemory] = Field(default_factory=list)
    write_back: WriteBackStatus | None = None
    usage: Usage = Field(default_factory=Usage)
    timings: dict[str, float] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)


class Session(Model):
    session_id: str
    subject: str
    turns: int
    created_at: datetime
    last_activity_at: datetime


class Turn(Model):
    id: str
    role: str
    text: str
    message_id: str | None = None
    created_at: datetime


class SessionDetail(Model):
    session_id: str
    subject: str
    turns: list[Turn]


# ---- operations -----------------------------------------------------------------------------------------


class Health(Model):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
