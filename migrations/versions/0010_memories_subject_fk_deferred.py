"""memories.subject_id's foreign key is checked at commit (DEFERRABLE INITIALLY DEFERRED)

On PostgreSQL an add writes its rows before it takes the tenant's write lock; checked at insert, the key would hold
the subject row's key-share lock while the add waits for the tenant's lock, and a forget (which holds the tenant's
lock and deletes the subject row) would wait for it in turn. PostgreSQL changes the constraint in place; SQLite
recreates the table (its constraints cannot be altered), which copies the memories once.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_NAME = "fk_memories_subject_id_subjects"


def _recreate(deferred: bool) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"ALTER TABLE memories ALTER CONSTRAINT {_NAME} "
            + ("DEFERRABLE INITIALLY DEFERRED" if deferred else "NOT DEFERRABLE")
        )
        return
    with op.batch_alter_table("memories", recreate="always") as batch:
        batch.drop_constraint(_NAME, type_="foreignkey")
        batch.create_foreign_key(
            _NAME,
            "subjects",
            ["subject_id"],
            ["id"],
            ondelete="CASCADE",
            deferrable=True if deferred else None,
            initially="DEFERRED" if deferred else None,
        )


def upgrade() -> None:
    _recreate(deferred=True)


def downgrade() -> None:
    _recreate(deferred=False)
