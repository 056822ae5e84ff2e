"""SQLAlchemy models for access control and audit (schema in ``migrations/versions/0002_access.py``).

Neither table holds memory content: API keys are stored only as a SHA-256 hash, and audit records name
memories by id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String, UniqueConstraint, types
from sqlalchemy.orm import Mapped, mapped_column

from memory_store.models import Base, BigIntPK, UTCDateTime, utcnow


class ApiKey(Base):
    """A tenant-scoped API key. ``prefix`` is the visible start of the key, used to find the row."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class AuditHead(Base):
    """One row per tenant: the newest audit sequence number and hash. Appends lock this row first."""

    __tablename__ = "audit_heads"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))


class AuditRecord(Base):
    """One audited access; ``hash`` covers every other column and ``prev_hash`` links the tenant's chain."""

    __tablename__ = "audit_records"
    __table_args__ = (UniqueConstraint("tenant_id", "seq", name="uq_audit_records_tenant_seq"),)
    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    credential_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    token_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    subject: Mapped[str | None] = mapped_column(String(256), nullable=True)
    action: Mapped[str] = mapped_column(String(32))
    memory_ids: Mapped[list[str]] = mapped_column(types.JSON)
    detail: Mapped[dict[str, Any]] = mapped_column(types.JSON)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
