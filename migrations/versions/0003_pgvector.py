"""pgvector backend: tenant vector keys and rotated memory vectors (HNSW on PostgreSQL)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        # Needs the extension to be installable by the migrating role (superuser or trusted extension).
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table('tenant_vector_keys',
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('wrapped_key', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_tenant_vector_keys_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_tenant_vector_keys'))
    )
    op.create_table('memory_vectors',
    sa.Column('memory_id', sa.BigInteger(), nullable=False),
    sa.Column('tenant_id', sa.String(length=36), nullable=False),
    sa.Column('embedding', Vector(384) if postgres else sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['memory_id'], ['memories.id'], name=op.f('fk_memory_vectors_memory_id_memories'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_memory_vectors_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('memory_id', name=op.f('pk_memory_vectors'))
    )
    op.create_index(op.f('ix_memory_vectors_tenant_id'), 'memory_vectors', ['tenant_id'], unique=False)
    op.create_index('ix_memory_vectors_hnsw', 'memory_vectors', ['embedding'], unique=False,
                    postgresql_using='hnsw', postgresql_ops={'embedding': 'vector_ip_ops'})


def downgrade() -> None:
    op.drop_index('ix_memory_vectors_hnsw', table_name='memory_vectors')
    op.drop_index(op.f('ix_memory_vectors_tenant_id'), table_name='memory_vectors')
    op.drop_table('memory_vectors')
    op.drop_table('tenant_vector_keys')
