from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from memory_store.schema import metadata

target_metadata = metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    attrs = context.config.attributes
    connection = attrs.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = attrs.get("engine")
    if engine is None:
        from memory_store.db import make_engine
        from memory_store.settings import StoreSettings

        engine = make_engine(StoreSettings())
    with engine.begin() as conn:
        _run(conn)


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `sealmem migrate`")
run_migrations_online()
