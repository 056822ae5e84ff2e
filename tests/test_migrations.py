"""Alembic owns the schema: `upgrade head` on an empty database gives exactly the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from memory_store.db import make_engine
from memory_store.errors import ConfigurationError
from memory_store.migrate import current_revision, head_revision, require_head, upgrade
from memory_store.schema import metadata
from memory_store.settings import StoreSettings


def _diff(engine):
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, metadata)


def test_schema_covers_every_table():
    assert {"memories", "api_keys", "memory_vectors", "tenant_vector_keys"} <= set(metadata.tables)


def test_upgrade_head_on_empty_sqlite_matches_models(tmp_path):
    engine = make_engine(StoreSettings(data_dir=tmp_path))
    with pytest.raises(ConfigurationError, match="sealmem migrate"):
        require_head(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision(engine)
    assert _diff(engine) == []
    require_head(engine)


@pytest.mark.postgres
def test_upgrade_head_on_empty_postgres_matches_models(pg_server):
    from sqlalchemy import text

    from tests.conftest import _pg_url

    admin = create_engine(_pg_url(pg_server, "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("CREATE DATABASE migrate_check"))
    engine = create_engine(_pg_url(pg_server, "migrate_check"))
    upgrade(engine)
    upgrade(engine)  # idempotent: a second replica starting later finds nothing to do
    assert current_revision(engine) == head_revision(engine)
    assert _diff(engine) == []
    engine.dispose()


def _subject_key_deferred(engine) -> bool:
    from sqlalchemy import inspect

    (fk,) = [fk for fk in inspect(engine).get_foreign_keys("memories") if fk["referred_table"] == "subjects"]
    return fk["options"].get("initially") == "DEFERRED" and bool(fk["options"].get("deferrable"))


def test_0010_defers_the_subject_key_of_existing_memories_and_keeps_every_row(store, tenant_id):
    """Revision 0010 makes memories' subject key checked at commit, in place on PostgreSQL and by recreating the
    table on SQLite: every row of every table is kept (down and up again), and the store works on after it."""
    from alembic import command

    from memory_store import NewMemory
    from memory_store.migrate import alembic_config
    from tests.harness import data_snapshot

    store.add_batch(
        tenant_id=tenant_id,
        items=[NewMemory(subject=s, text=f"{s} likes topic {i}") for s in ("alice", "bob") for i in range(5)],
    )
    before = data_snapshot(store.engine)
    store.engine.dispose()
    assert _subject_key_deferred(store.engine)
    command.downgrade(alembic_config(store.engine), "0009")
    assert not _subject_key_deferred(store.engine) and data_snapshot(store.engine) == before
    upgrade(store.engine)
    assert _subject_key_deferred(store.engine) and data_snapshot(store.engine) == before
    assert _diff(store.engine) == []
    hits = store.search(tenant_id=tenant_id, subject="bob", query="bob likes topic 3", k=1)
    assert hits[0].memory.text == "bob likes topic 3"
    assert store.forget_subject(tenant_id=tenant_id, subject="alice") == 5
    assert len(store.list(tenant_id=tenant_id, subject="bob").items) == 5
