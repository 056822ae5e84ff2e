"""subject tombstones (forgotten subjects by keyed digest, so delayed writes cannot re-create them); an audit head
row for every tenant

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subject_tombstones",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_subject_tombstones_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject_tombstones")),
    )
    op.create_index("ix_subject_tombstones_tenant_digest", "subject_tombstones", ["tenant_id", "digest"], unique=False)
    op.create_index(op.f("ix_subject_tombstones_forgotten_at"), "subject_tombstones", ["forgotten_at"], unique=False)
    # Every tenant gets its audit head row now (new tenants get it when created), so changes that append
    # their record inside their own transaction never race to create it.
    op.execute(
        "INSERT INTO audit_heads (tenant_id, seq, last_hash) SELECT id, 0, '" + "0" * 64 + "' FROM tenants "
        "WHERE id NOT IN (SELECT tenant_id FROM audit_heads)"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_subject_tombstones_forgotten_at"), table_name="subject_tombstones")
    op.drop_index("ix_subject_tombstones_tenant_digest", table_name="subject_tombstones")
    op.drop_table("subject_tombstones")
