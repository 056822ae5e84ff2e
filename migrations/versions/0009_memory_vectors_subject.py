"""memory_vectors: rows name their memory's subject, and an index on (subject_id, memory_id) that carries the
embedding lets a pgvector search score a subject's vectors from the index alone

Rows written before this revision keep a NULL subject (a backfill would rewrite every vector row and every index
entry, the HNSW index's included, in one transaction) and stay out of the partial index; searches score such rows
by id, as before. `sealmem reindex` rewrites a tenant's vectors with their subjects.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column("memory_vectors", sa.Column("subject_id", sa.String(length=36), nullable=True))
    if postgres:
        # The index build reads the table once (it indexes no row yet): on a large table that can take longer
        # than the connection's SEALMEM_DB_STATEMENT_TIMEOUT_MS.
        op.execute("SET LOCAL statement_timeout = 0")
    op.create_index(
        "ix_memory_vectors_subject",
        "memory_vectors",
        ["subject_id", "memory_id"],
        unique=False,
        postgresql_include=["embedding"],
        postgresql_where=sa.text("subject_id IS NOT NULL"),
    )
    if postgres:
        op.execute("SET LOCAL statement_timeout TO DEFAULT")  # the connection's own limit again


def downgrade() -> None:
    op.drop_index("ix_memory_vectors_subject", table_name="memory_vectors")
    with op.batch_alter_table("memory_vectors") as batch:
        batch.drop_column("subject_id")
