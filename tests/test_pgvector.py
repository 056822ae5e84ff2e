"""pgvector backend specifics: rotated vectors, one transaction with the metadata, HNSW for large candidate sets."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from memory_store import NewMemory, ValidationError
from memory_store.models import Memory
from memory_store.vector_models import MemoryVector

pytestmark = pytest.mark.postgres


@pytest.fixture
def backend():
    """Overrides the conftest parametrisation: these tests only concern PostgreSQL + pgvector."""
    return "pgvector"


def _vector_rows(store):
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(MemoryVector)).scalar_one()


def test_stored_vectors_are_rotated_but_preserve_inner_products(store, tenant_id, embedder):
    texts = ["my dog is named Biscuit", "I live in Lisbon", "green tea every morning"]
    store.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="alice", text=t) for t in texts])
    with store.engine.connect() as conn:
        stored = np.array(
            [
                np.asarray(v, dtype=np.float32)
                for v in conn.execute(
                    select(MemoryVector.embedding).order_by(MemoryVector.memory_id)
                ).scalars()
            ]
        )
    raw = embedder.embed(texts)
    assert not np.allclose(stored, raw, atol=1e-3)  # not the model's coordinates
    assert np.allclose(stored @ stored.T, raw @ raw.T, atol=1e-4)  # distances preserved
    hits = store.search(tenant_id=tenant_id, subject="alice", query="my dog is named Biscuit", k=1)
    assert hits[0].memory.text == texts[0] and hits[0].dense_score == pytest.approx(1.0, abs=1e-4)


def test_vectors_commit_and_roll_back_with_metadata(store, tenant_id):
    with pytest.raises(ValidationError):
        store.add_batch(
            tenant_id=tenant_id, items=[NewMemory(subject="a", text="ok"), NewMemory(subject="a", text="")]
        )
    assert _vector_rows(store) == 0
    rec = store.add(tenant_id=tenant_id, item=NewMemory(subject="a", text="kept"))
    assert _vector_rows(store) == 1
    store.delete(tenant_id=tenant_id, memory_id=rec.id)
    assert _vector_rows(store) == 0  # FK cascade in the same transaction


def test_large_candidate_sets_use_hnsw_and_still_find_the_match(open_store):
    store = open_store()
    store.vectors._exact_max = 50  # force the HNSW path
    tenant = store.create_tenant(name="hnsw").id
    store.add_batch(
        tenant_id=tenant,
        items=[NewMemory(subject="alice", text=f"note about topic {i}") for i in range(200)]
        + [NewMemory(subject="alice", text="the launch code is zebra")],
    )
    hits = store.search(tenant_id=tenant, subject="alice", query="launch code zebra", k=3)
    assert hits[0].memory.text == "the launch code is zebra"
    assert store.stats(tenant_id=tenant).index_kind == "pgvector-hnsw"
    assert store.reindex_tenant(tenant_id=tenant) == 201
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Memory)).scalar_one() == 201
    assert store.search(tenant_id=tenant, subject="alice", query="launch code zebra", k=1)[0].memory.text == (
        "the launch code is zebra"
    )
