"""Request and response models of the HTTP API. Requests forbid unknown fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
)

from memory_store import validation
from memory_store.audit import AuditEntry, VerifyReport
from memory_store.credentials import ApiKeyInfo, Role
from memory_store.sensitive.detector import ENTITY_TYPES
from memory_store.sensitive.policy import SensitivePolicy
from memory_store.types import HistoryEntry, MemoryRecord, SearchHit, Stats, SubjectInfo
from service.tokens import Scope

IDENTIFIER_PATTERN = r"^[^\x00-\x1f\x7f]+$"


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _trimmed(value: str) -> str:
    # As the store requires (memory_store.validation.check_identifier): otherwise a token could be minted for
    # a subject that can never hold a memory.
    if value != value.strip():
        raise ValueError("must not begin or end with whitespace")
    return value


Utf8Str = Annotated[str, AfterValidator(_utf8)]
"""Any string that is valid Unicode (JSON's \\uD800 escapes decode to lone surrogates, which are not)."""
Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256, pattern=IDENTIFIER_PATTERN),
    AfterValidator(_utf8),
    AfterValidator(_trimmed),
]
Text = Annotated[str, StringConstraints(min_length=1, max_length=validation.MAX_TEXT_CHARS), AfterValidator(_utf8)]
Kind = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
Metadata = dict[str, Any]


class Request(BaseModel):
    # Strict types: "10" is not a number, 1 not a boolean, 0 not a date (lax mode read it as 1970-01-01, so
    # {"expires_at": 0} stored an already-expired memory); found by schemathesis negative-data checks.
    model_config = ConfigDict(extra="forbid", strict=True)


def _iso_text(value: Any) -> Any:
    if isinstance(value, str | datetime):
        return value
    raise ValueError("must be an ISO 8601 date-time string with a timezone")


Timestamp = Annotated[AwareDatetime, Field(strict=False), BeforeValidator(_iso_text)]
"""A request datetime: an ISO 8601 string with a timezone (strict models would refuse strings altogether)."""


# ---- memories ---------------------------------------------------------------------------------------------


class MemoryCreate(Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "subject": "user-42",
                    "text": "Prefers window seats on long flights.",
                    "metadata": {"topic": "travel"},
                    "kind": "preference",
                }
            ]
        }
    )

    subject: Identifier | None = Field(
        default=None,
        description="Whose memory this is. Required with an API key; with a subject token it defaults to, "
        "and must equal, the token's subject.",
    )
    text: Text
    metadata: Metadata = Field(default_factory=dict, description="Any JSON object; stored encrypted.")
    agent_id: Identifier | None = None
    session_id: Identifier | None = None
    kind: Kind = Field(default="fact", description="fact, turn, summary, preference, event, note, ...")
    importance: float = Field(default=0.5, ge=0.0, le=1.0)
    source_ref: Identifier | None = None
    occurred_at: Timestamp | None = None
    expires_at: Timestamp | None = None


class MemoryBatchCreate(Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "memories": [
                        {"subject": "user-42", "text": "Lives in Lisbon."},
                        {"subject": "user-42", "text": "Has a dog named Biscuit.", "kind": "fact"},
                    ]
                }
            ]
        }
    )

    memories: list[MemoryCreate] = Field(min_length=1, max_length=1000)


def _create_shape(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "memories" in value else "single"


MemoryCreateBody = Annotated[
    Annotated[MemoryCreate, Tag("single")] | Annotated[MemoryBatchCreate, Tag("batch")],
    Discriminator(_create_shape),
]


class MemoryUpdate(Request):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "Prefers aisle seats now.", "metadata": {"topic": "travel"}}]}
    )

    text: Text | None = None
    metadata: Metadata | None = None
    kind: Kind | None = None
    importance: float | None = Field(default=None, ge=0.0, le=1.0)
    expires_at: Timestamp | None = Field(default=None, description="Send null to clear an expiry.")


class MemoryOut(BaseModel):
    id: str
    subject: str
    text: str
    metadata: Metadata
    agent_id: str | None
    session_id: str | None
    kind: str
    status: str = Field(description="active, or superseded")
    superseded_by: str | None
    importance: float
    source: str
    source_ref: str | None
    created_at: datetime
    updated_at: datetime
    last_accessed_at: datetime | None
    occurred_at: datetime | None
    expires_at: datetime | None

    @classmethod
    def of(cls, record: MemoryRecord) -> MemoryOut:
        return cls(**{name: getattr(record, name) for name in cls.model_fields})


class MemoryBatchOut(BaseModel):
    memories: list[MemoryOut]


class MemoryPage(BaseModel):
    items: list[MemoryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class SearchFilters(Request):
    agent_id: Identifier | None = None
    session_id: Identifier | None = None
    kinds: list[Kind] | None = Field(default=None, max_length=32)
    created_after: Timestamp | None = None
    created_before: Timestamp | None = None
    occurred_after: Timestamp | None = None
    occurred_before: Timestamp | None = None
    metadata: Metadata | None = Field(default=None, description="Exact matches on top-level metadata keys.")
    include_superseded: bool = False
    include_assistant: bool = Field(
        default=False,
        description="Also return the assistant's own chat replies (turns whose metadata role is 'assistant'); "
        "left out by default, as what the assistant said is not a memory about the user.",
    )


class SearchRequest(Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"subject": "user-42", "query": "where does the user like to sit?", "k": 5},
                {
                    "subject": "user-42",
                    "query": "pets",
                    "filters": {"kinds": ["fact"], "metadata": {"topic": "home"}},
                },
            ]
        }
    )

    subject: Identifier | None = Field(default=None, description="Required with an API key.")
    query: Text
    k: int | None = Field(default=None, ge=1, le=1000, description="Results wanted: default 10, capped by settings.")
    filters: SearchFilters | None = None
    min_score: float = Field(
        default=0.0,
        ge=-1.0,
        le=1.0,
        description="Leave out results whose relevance (estimated probability of being relevant, comparable "
        "across queries) is below this; e.g. 0.01 drops results unrelated to the query. No effect when the "
        "server's embedder has no calibration.",
    )


class SearchResult(MemoryOut):
    score: float = Field(
        description="Rank score within this search (normalised by its best candidate); higher "
        "is better, not comparable across queries."
    )
    dense_score: float | None = Field(description="Cosine similarity from the vector index, if it ranked.")
    lexical_score: float | None = Field(description="BM25 score, if it ranked.")
    relevance: float | None = Field(
        description="Estimated probability that the memory is relevant to the query (calibrated on LoCoMo "
        "conversations from its cosine and BM25 scores), comparable across queries: threshold it with "
        "min_score. Null when the server's embedder has no calibration (then min_score filters nothing)."
    )

    @classmethod
    def of_hit(cls, hit: SearchHit) -> SearchResult:
        base = {name: getattr(hit.memory, name) for name in MemoryOut.model_fields}
        return cls(
            **base,
            score=hit.score,
            dense_score=hit.dense_score,
            lexical_score=hit.lexical_score,
            relevance=hit.relevance,
        )


class SearchResponse(BaseModel):
    results: list[SearchResult]


class HistoryEntryOut(BaseModel):
    memory_id: str
    action: str
    actor: str
    at: datetime
    detail: dict[str, Any]

    @classmethod
    def of(cls, entry: HistoryEntry) -> HistoryEntryOut:
        return cls(
            memory_id=entry.memory_id,
            action=entry.action,
            actor=entry.actor,
            at=entry.at,
            detail=entry.detail,
        )


class HistoryResponse(BaseModel):
    memory_id: str
    events: list[HistoryEntryOut]


# ---- subject tokens ---------------------------------------------------------------------------------------


class TokenRequest(Request):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"subject": "user-42", "scopes": ["read", "write"], "ttl_seconds": 900}]}
    )

    subject: Identifier
    scopes: list[Scope] = Field(default=["read"], min_length=1, max_length=3)
    ttl_seconds: int | None = Field(default=None, ge=1, description="Defaults to the configured TTL.")


class TokenResponse(BaseModel):
    token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105 (the scheme name)
    token_id: str
    subject: str
    scopes: list[Scope]
    expires_at: datetime


# ---- admin ------------------------------------------------------------------------------------------------


class SubjectOut(BaseModel):
    subject: str
    memory_count: int
    created_at: datetime
    last_activity_at: datetime

    @classmethod
    def of(cls, info: SubjectInfo) -> SubjectOut:
        return cls(
            subject=info.subject,
            memory_count=info.memory_count,
            created_at=info.created_at,
            last_activity_at=info.last_activity_at,
        )


class SubjectPage(BaseModel):
    subjects: list[SubjectOut]
    next_offset: int | None


class StatsOut(BaseModel):
    memories: int
    subjects: int
    by_kind: dict[str, int]
    per_subject: dict[str, int]
    index_vectors: int
    index_bytes: int
    index_kind: str

    @classmethod
    def of(cls, stats: Stats) -> StatsOut:
        return cls(**{name: getattr(stats, name) for name in cls.model_fields})


class SubjectExport(BaseModel):
    subject: str
    created_at: datetime
    memories: list[MemoryOut]
    history: list[HistoryEntryOut]

    @classmethod
    def of(cls, data: dict[str, Any]) -> SubjectExport:
        """What :func:`service.admin_actions.export_subject` returns, as the API and the console's download."""
        return cls(
            subject=data["subject"],
            created_at=data["created_at"],
            memories=[MemoryOut.of(m) for m in data["memories"]],
            history=[HistoryEntryOut.of(e) for e in data["history"]],
        )


class ForgetResult(BaseModel):
    subject: str
    memories_deleted: int


class ReindexResult(BaseModel):
    vectors: int


class KeyCreate(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"role": "app", "name": "backend"}]})

    role: Role
    name: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=IDENTIFIER_PATTERN)]


class KeyOut(BaseModel):
    id: str
    prefix: str = Field(description="The visible start of the key, to tell keys apart.")
    role: Role
    name: str
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, info: ApiKeyInfo) -> KeyOut:
        return cls(**{name: getattr(info, name) for name in cls.model_fields})


class KeyCreated(KeyOut):
    key: str = Field(description="The secret key. Shown only once; store it safely.")


class KeyList(BaseModel):
    keys: list[KeyOut]


class AuditEntryOut(BaseModel):
    seq: int
    at: datetime
    credential_id: str = Field(description="API key id (for subject tokens: the key that minted the token).")
    role: str
    token_id: str | None
    subject: str | None
    action: str
    memory_ids: list[str]
    detail: dict[str, Any]
    request_id: str | None
    outcome: str
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditEntryOut:
        return cls(**{name: getattr(entry, name) for name in cls.model_fields})


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None


class BrokenLink(BaseModel):
    seq: int
    reason: str


class AuditVerifyOut(BaseModel):
    ok: bool
    records_checked: int
    head_seq: int
    head_hash: str = Field(description="Record it elsewhere to detect a rewrite of the whole chain later.")
    first_broken: BrokenLink | None

    @classmethod
    def of(cls, report: VerifyReport) -> AuditVerifyOut:
        broken = None
        if report.broken_seq is not None:
            broken = BrokenLink(seq=report.broken_seq, reason=report.reason or "broken")
        return cls(
            ok=report.ok,
            records_checked=report.records_checked,
            head_seq=report.head_seq,
            head_hash=report.head_hash,
            first_broken=broken,
        )


# ---- health -----------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


SensitiveAction = Literal["keep", "mask", "pseudonymise", "reject"]
RevealRole = Literal["admin", "app", "reader", "subject"]


class DesensitisationOut(BaseModel):
    actions: dict[str, SensitiveAction] = Field(
        description="What a write does with each type of sensitive value: `keep` it, `mask` it for good "
        "(`<TYPE>`), `pseudonymise` it (`<TYPE_N>`, stable within the subject, the original sealed under the "
        "subject's key) or `reject` the write (422 `sensitive_data_rejected`)."
    )
    reveal_roles: list[RevealRole] = Field(
        description="Roles that see pseudonymised originals in reads (others see `<TYPE_N>`)."
    )
    types: dict[str, Literal["pii", "secret"]] = Field(description="Every type the detector finds, by category.")
    revision: int

    @classmethod
    def of(cls, policy: SensitivePolicy) -> DesensitisationOut:
        return cls(
            actions=dict(policy.actions),
            reveal_roles=sorted(policy.reveal_roles),
            types=dict(ENTITY_TYPES),
            revision=policy.revision,
        )


class DesensitisationUpdate(Request):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"actions": {"CREDIT_CARD": "reject"}, "reveal_roles": ["app", "subject"]}]}
    )

    actions: dict[Annotated[str, StringConstraints(min_length=1, max_length=48)], SensitiveAction] | None = Field(
        default=None, description="New actions for some types; the others keep theirs."
    )
    reveal_roles: list[RevealRole] | None = Field(default=None, description="The whole new set of roles.")


class IngestMessage(Request):
    role: Literal["user", "assistant", "system"]
    content: Annotated[str, StringConstraints(max_length=validation.MAX_TEXT_CHARS), AfterValidator(_utf8)]


class IngestRequest(Request):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "subject": "user-42",
                    "messages": [
                        {"role": "user", "content": "I just moved to Porto. My dog Biscuit loves the beach."},
                        {"role": "assistant", "content": "Porto is lovely! Enjoy the beach with Biscuit."},
                    ],
                    "session_id": "support-2026-12-02",
                }
            ]
        },
    )

    subject: Identifier | None = Field(default=None, description="Required with an API key; a subject token's own.")
    messages: list[IngestMessage] = Field(min_length=1, max_length=200)
    session_id: Identifier | None = Field(default=None, description="Default: a new session id.")
    agent_id: Identifier | None = None
    metadata: Metadata | None = Field(default=None, description="Merged into every memory written.")
    run_async: bool = Field(
        default=False,
        alias="async",
        description="Answer at once (202) with a job id; `GET /v1/memories/ingest/{job_id}` tells how it went.",
    )


class IngestEvent(BaseModel):
    event: Literal["ADD", "UPDATE", "SUPERSEDE", "NOOP"]
    memory_id: str
    text: str | None = Field(default=None, description="The memory's text now (not in job status).")
    previous_text: str | None = Field(default=None, description="UPDATE: the text it had before.")
    replaces: list[str] = Field(default_factory=list, description="SUPERSEDE: the memories it replaces.")


class IngestResult(BaseModel):
    session_id: str
    statements: int = Field(description="Statements the distiller found in the user's messages.")
    events: list[IngestEvent]


class IngestJobOut(BaseModel):
    job_id: str
    status: Literal["queued", "running", "done", "failed", "cancelled", "dropped"] = Field(
        description="A job whose worker process stopped before it finished stays `queued` or `running`."
    )
    statements: int | None = None
    events: list[IngestEvent] = Field(default_factory=list)
    error: str | None = None
    created_at: datetime
    updated_at: datetime
