"""Tables for the pgvector backend (created on every database; used only with SEALMEM_VECTOR_BACKEND=pgvector)."""

from __future__ import annotations

from datetime import datetime

from pgvector.sqlalchemy import Vector
from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary
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
    """One rotated embedding per memory; deleted with its memory (FK cascade), written in the same transaction."""

    __tablename__ = "memory_vectors"
    __table_args__ = (
        Index(
            "ix_memory_vectors_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "vector_ip_ops"},
        ),
    )
    memory_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("memories.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    embedding: Mapped[bytes] = mapped_column(Vector(PGVECTOR_DIM).with_variant(LargeBinary(), "sqlite"))
