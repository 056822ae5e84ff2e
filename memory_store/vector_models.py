"""Tables for the pgvector backend (created on every database; used only with SEALMEM_VECTOR_BACKEND=pgvector)."""

from __future__ import annotations

from datetime import datetime

from pgvector.sqlalchemy import Vector
from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from memory_store.models import Base, UTCDateTime, utcnow

PGVECTOR_DIM = 384  # the bundled all-MiniLM-L6-v2; another dimension needs a migration of this column


class TenantVectorKey(Base):
    """Per-tenant secret (wrapped by the master key) that seeds the vectors' orthogonal rotation."""

    __tablename__ = "tenant_vector_keys"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MemoryVector(Base):
    """One rotated embedding per memory; deleted with its memory (FK cascade), written in the same transaction.

    ``subject_id`` is the memory's subject (a memory never changes subject; NULL in rows written before revision
    0009, until ``sealmem reindex``). ``ix_memory_vectors_subject`` carries the embedding too, so a search scores a
    subject's vectors from that index alone, in one range scan, instead of a primary-key probe and a heap read per
    candidate. It stores each vector a second time in PostgreSQL (about 2.6 kB per memory, grown by inserts).
    """

    __tablename__ = "memory_vectors"
    __table_args__ = (
        Index(
            "ix_memory_vectors_subject",
            "subject_id",
            "memory_id",
            postgresql_include=["embedding"],
            postgresql_where=text("subject_id IS NOT NULL"),
        ),
        Index(
            "ix_memory_vectors_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "vector_ip_ops"},
        ),
    )
    memory_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("memories.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    subject_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    embedding: Mapped[bytes] = mapped_column(Vector(PGVECTOR_DIM).with_variant(LargeBinary(), "sqlite"))
