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
