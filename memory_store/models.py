"""SQLAlchemy 2.x models. Alembic (``migrations/``) owns the schema; these mirror it exactly.

No column holds plaintext memory content: text, metadata and embeddings are AES-GCM blobs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
    types,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Keyring(Base):
    """One row: proves which master key the database was created with."""

    __tablename__ = "keyring"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_check: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    wrapped_index_key: Mapped[bytes] = mapped_column(LargeBinary)
    index_key_version: Mapped[int] = mapped_column(Integer, default=1)
    change_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    embedding_model: Mapped[str] = mapped_column(String(200))
    embedding_dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Desensitisation policy (None: the defaults) and its revision, which writes re-check under the write lock.
    sensitive_policy: Mapped[dict[str, Any] | None] = mapped_column(types.JSON, nullable=True)
    policy_rev: Mapped[int] = mapped_column(Integer, default=0)


class Subject(Base):
    __tablename__ = "subjects"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id", name="uq_subjects_tenant_external"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(256))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    # Tenant change_seq of the last write to this subject's memories (keys in-memory lexical caches).
    change_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Memory(Base):
    __tablename__ = "memories"
    __table_args__ = (
        # A search's candidate query (a subject's active, unexpired ids) reads this index alone, not each row.
        Index("ix_memories_candidates", "tenant_id", "subject_id", "id", "status", "expires_at"),
        Index("ix_memories_tenant_id_id", "tenant_id", "id"),
    )
    # The row id doubles as the vector id in the tenant's FAISS index.
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # Checked at commit, not at insert: an add on PostgreSQL writes its rows before it takes the tenant's write
    # lock (MemoryStore._locks_late), and an immediate check would hold the subject row's key-share lock while it
    # waits, which a forget (tenant lock first, then the subject's row) would wait on in turn: a deadlock.
    subject_id: Mapped[str] = mapped_column(
        ForeignKey("subjects.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED")
    )
    agent_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    kind: Mapped[str] = mapped_column(String(32), default="fact")
    status: Mapped[str] = mapped_column(String(16), default="active")
    superseded_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    text_ct: Mapped[bytes] = mapped_column(LargeBinary)
    metadata_ct: Mapped[bytes] = mapped_column(LargeBinary)
    embedding_ct: Mapped[bytes] = mapped_column(LargeBinary)
    importance: Mapped[float] = mapped_column(Float, default=0.5)
    source: Mapped[str] = mapped_column(String(32), default="api")
    source_ref: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_accessed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class MemoryEvent(Base):
    """History of a memory. Never holds content: only who did what, when, and which fields changed."""

    __tablename__ = "memory_events"
    __table_args__ = (Index("ix_memory_events_memory", "tenant_id", "memory_uid", "id"),)
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    subject_id: Mapped[str] = mapped_column(String(36), index=True)
    memory_uid: Mapped[str] = mapped_column(String(36))
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(types.JSON, default=dict)


class VectorChange(Base):
    """Ordered log of vector changes per tenant; FAISS replicas follow it to stay in sync with SQL."""

    __tablename__ = "vector_changes"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    memory_id: Mapped[int] = mapped_column(BigInteger)
    op: Mapped[str] = mapped_column(String(8))


class SubjectTombstone(Base):
    """A forgotten subject, named only by a keyed digest (:meth:`MasterKey.pseudonym`) and the time of its forget.

    A write whose request began before that time is refused, so in-flight and queued work cannot bring the
    subject back. Kept for a day (``TOMBSTONE_RETENTION`` in the store), longer than any request may wait.
    """

    __tablename__ = "subject_tombstones"
    __table_args__ = (Index("ix_subject_tombstones_tenant_digest", "tenant_id", "digest"),)
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(64))
    forgotten_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class SensitiveValue(Base):
    """A pseudonymised original (see :mod:`memory_store.sensitive.vault`): sealed under the subject's data key,
    found by a digest keyed by that key, named in stored text as ``<entity_type_ordinal>``."""

    __tablename__ = "sensitive_values"
    __table_args__ = (
        UniqueConstraint("subject_id", "digest", name="uq_sensitive_values_subject_digest"),
        UniqueConstraint("subject_id", "entity_type", "ordinal", name="uq_sensitive_values_subject_type_ordinal"),
    )
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    entity_type: Mapped[str] = mapped_column(String(48))
    ordinal: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    value_ct: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    """A background job's state (conversation ingestion), so any worker process can answer for it. Never holds
    content: the events name memories by id, ``subject`` is the subject's keyed digest."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_tenant_id_id", "tenant_id", "id"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(256))
    credential_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(types.JSON, default=dict)
    error: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
