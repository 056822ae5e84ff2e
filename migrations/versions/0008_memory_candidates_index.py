"""memories: the (tenant_id, subject_id, id) index also carries status and expires_at, so a search's candidate
query (one subject's active, unexpired memories) is answered from the index alone, without reading each row

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_memories_candidates", "memories", ["tenant_id", "subject_id", "id", "status", "expires_at"], unique=False
    )
    op.drop_index("ix_memories_tenant_subject_id", table_name="memories")


def downgrade() -> None:
    op.create_index("ix_memories_tenant_subject_id", "memories", ["tenant_id", "subject_id", "id"], unique=False)
    op.drop_index("ix_memories_candidates", table_name="memories")
