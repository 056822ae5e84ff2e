"""Run and check Alembic migrations programmatically (the schema lives in ``migrations/``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

import migrations
from memory_store.errors import ConfigurationError

_PG_MIGRATION_LOCK = 0x5EA1_3E3  # advisory lock id: replicas starting together migrate one at a time


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    # Read directly: readiness probes call this every few seconds, and Alembic's MigrationContext would log
    # two INFO lines each time. A transaction that commits, as every read does (see make_sessionmaker).
    with engine.begin() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return None if value is None else str(value)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema; on PostgreSQL under an advisory lock so concurrent starts do not race."""
    cfg = alembic_config(engine)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
        return
    command.upgrade(cfg, revision)


def require_head(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision(engine)
    if current != head:
        raise ConfigurationError(
            f"database schema is at {current or 'nothing'}, code needs {head}: run `sealmem migrate`"
        )
