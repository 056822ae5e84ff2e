"""On PostgreSQL, reads end with COMMIT (``memory_store.db.make_sessionmaker``), so psycopg 3 keeps the statements
it has prepared on a pooled connection: a ROLLBACK makes it discard them all (and send ``DEALLOCATE ALL``), and
PostgreSQL then parsed and planned a search's and an authentication's statements again on every request."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import text

from memory_store import MemoryStore, NewMemory
from memory_store.credentials import ApiKeyStore
from memory_store.db import make_sessionmaker
from memory_store.errors import NotFoundError

FACTS = [
    "I play the cello in a quartet on Thursdays.",
    "We went hiking up the volcano last weekend.",
    "My sister moved to Porto in March.",
]


@pytest.fixture(
    params=[pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("pgvector", marks=pytest.mark.postgres)]
)
def backend(request: pytest.FixtureRequest) -> str:
    """Prepared statements are PostgreSQL's (SQLite reads open no transaction to end)."""
    return str(request.param)


def _prepared(store: MemoryStore) -> list[str]:
    """The statements prepared on the pool's one connection, which the caller's requests used before."""
    with store.engine.begin() as conn:
        return [str(s) for s in conn.execute(text("SELECT statement FROM pg_prepared_statements")).scalars()]


def test_a_search_and_an_authentication_keep_their_prepared_statements(open_store: Callable[..., MemoryStore]):
    store = open_store(db_pool_size=1)  # every request of this thread on the same pooled connection
    tenant_id = store.create_tenant(name="acme").id
    store.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="ana", text=t) for t in FACTS])
    keys = ApiKeyStore(make_sessionmaker(store.engine))
    secret = keys.create(tenant_id=tenant_id, role="app", name="app", created_by="test").secret
    for i in range(12):  # psycopg prepares a statement at its fifth execution on a connection
        assert keys.authenticate(secret) is not None
        hits = store.search(tenant_id=tenant_id, subject="ana", query=f"who plays the cello? {i}", k=2)
        assert hits[0].memory.text == FACTS[0]
        assert store.get(tenant_id=tenant_id, memory_id=hits[0].memory.id, subject="ana").text == FACTS[0]
    prepared = _prepared(store)
    assert any("FROM api_keys" in s for s in prepared), prepared
    assert any("FROM subjects" in s for s in prepared), prepared
    assert any("FROM memories" in s for s in prepared), prepared
    # A read that fails (an unknown subject) still rolls back, and psycopg starts over: nothing survives it.
    with pytest.raises(NotFoundError, match="subject not found"):
        store.search(tenant_id=tenant_id, subject="nobody", query="cello", k=2)
    assert _prepared(store) == []
