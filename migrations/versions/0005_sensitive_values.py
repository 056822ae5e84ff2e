"""desensitisation: a policy per tenant and the vault of pseudonymised originals

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("sensitive_policy", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("policy_rev", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "sensitive_values",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("subject_id", sa.String(length=36), nullable=False),
        sa.Column("entity_type", sa.String(length=48), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("value_ct", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_sensitive_values_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name=op.f("fk_sensitive_values_subject_id_subjects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sensitive_values")),
        sa.UniqueConstraint("subject_id", "digest", name="uq_sensitive_values_subject_digest"),
        sa.UniqueConstraint(
            "subject_id", "entity_type", "ordinal", name="uq_sensitive_values_subject_type_ordinal"
        ),
    )
    op.create_index(op.f("ix_sensitive_values_tenant_id"), "sensitive_values", ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_sensitive_values_tenant_id"), table_name="sensitive_values")
    op.drop_table("sensitive_values")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("policy_rev")
        batch.drop_column("sensitive_policy")
