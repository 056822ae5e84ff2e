"""pgvector backend specifics: rotated vectors, one transaction with the metadata, HNSW for large candidate sets."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, inspect, select

from memory_store import Filters, NewMemory, ValidationError
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
                for v in conn.execute(select(MemoryVector.embedding).order_by(MemoryVector.memory_id)).scalars()
            ]
        )
    raw = embedder.embed(texts)
    assert not np.allclose(stored, raw, atol=1e-3)  # not the model's coordinates
    assert np.allclose(stored @ stored.T, raw @ raw.T, atol=1e-4)  # distances preserved
    hits = store.search(tenant_id=tenant_id, subject="alice", query="my dog is named Biscuit", k=1)
    assert hits[0].memory.text == texts[0] and hits[0].dense_score == pytest.approx(1.0, abs=1e-4)


def test_vectors_commit_and_roll_back_with_metadata(store, tenant_id):
    with pytest.raises(ValidationError):
        store.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="a", text="ok"), NewMemory(subject="a", text="")])
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


def test_subject_scan_keeps_to_the_candidates_and_scores_like_the_id_path(store, tenant_id, embedder):
    """A search without filters reads the subject's vectors from ix_memory_vectors_subject; what it returns is
    still only the candidates (a superseded memory's vector stays, but it is not one), never another subject's,
    with the same scores as reading the candidates by id."""
    old = store.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text="the launch code is zebra"))
    new = store.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text="the launch code is walrus"))
    store.add_batch(
        tenant_id=tenant_id,
        items=[NewMemory(subject="alice", text=f"note about topic {i}") for i in range(20)]
        + [NewMemory(subject="bob", text="the launch code is zebra")],
    )
    store.supersede(tenant_id=tenant_id, memory_id=old.id, by=new.id)
    with store.engine.connect() as conn:
        pairs = conn.execute(
            select(MemoryVector.subject_id, Memory.subject_id).join(Memory, Memory.id == MemoryVector.memory_id)
        ).all()
    assert len(pairs) == 23 and all(stored == owner for stored, owner in pairs)

    hits = store.search(tenant_id=tenant_id, subject="alice", query="the launch code is zebra", k=30)
    assert {h.memory.id for h in hits}.isdisjoint({old.id}) and len(hits) == 21
    assert all(h.memory.subject == "alice" for h in hits)
    with_old = store.search(
        tenant_id=tenant_id,
        subject="alice",
        query="the launch code is zebra",
        k=1,
        filters=Filters(include_superseded=True),
    )
    assert with_old[0].memory.id == old.id

    with store.engine.connect() as conn:
        subject_id, ids = conn.execute(
            select(Memory.subject_id, func.array_agg(Memory.id))
            .where(Memory.tenant_id == tenant_id, Memory.status == "active")
            .group_by(Memory.subject_id)
            .having(func.count() > 1)
        ).one()
    candidates = np.array(sorted(ids), dtype=np.int64)
    query = embedder.embed(["the launch code is zebra"])[0]
    by_subject = store.vectors.search(tenant_id, query, len(candidates), candidates, subject_id=subject_id)
    by_id = store.vectors.search(tenant_id, query, len(candidates), candidates)
    assert len(by_subject[0]) == len(candidates) == 21
    assert np.array_equal(by_subject[0], by_id[0]) and np.array_equal(by_subject[1], by_id[1])
    assert store.reindex_tenant(tenant_id=tenant_id) == 23
    after = store.vectors.search(tenant_id, query, len(candidates), candidates, subject_id=subject_id)
    assert set(after[0].tolist()) == set(candidates.tolist()) and np.allclose(
        np.sort(after[1]), np.sort(by_id[1]), atol=1e-5
    )


def test_rows_from_before_0009_are_scored_by_id_until_reindexed(store, tenant_id, embedder):
    """Revision 0009 leaves existing vector rows without a subject (no backfill); a search still scores them (by
    id, beside the subject's newer rows) and ``reindex`` gives them their subject."""
    from alembic import command

    from memory_store.migrate import alembic_config, upgrade

    legacy = store.add_batch(
        tenant_id=tenant_id,
        items=[NewMemory(subject=s, text=f"{s} likes topic {i}") for s in ("alice", "bob") for i in range(3)],
    )
    command.downgrade(alembic_config(store.engine), "0008")
    with store.engine.connect() as conn:
        assert "subject_id" not in {c["name"] for c in inspect(conn).get_columns("memory_vectors")}
    upgrade(store.engine)
    store.add(tenant_id=tenant_id, item=NewMemory(subject="bob", text="bob likes topic 9"))

    def subjects():
        with store.engine.connect() as conn:
            return conn.execute(
                select(MemoryVector.subject_id, Memory.subject_id)
                .join(Memory, Memory.id == MemoryVector.memory_id)
                .order_by(Memory.id)
            ).all()

    assert [stored is None for stored, _ in subjects()] == [True] * 6 + [False]
    with store.engine.connect() as conn:
        bob_id, ids = conn.execute(
            select(Memory.subject_id, func.array_agg(Memory.id)).group_by(Memory.subject_id).having(func.count() > 3)
        ).one()
    candidates = np.array(sorted(ids), dtype=np.int64)
    query = embedder.embed(["bob likes topic 2"])[0]
    by_id = store.vectors.search(tenant_id, query, 10, candidates)
    mixed = store.vectors.search(tenant_id, query, 10, candidates, subject_id=bob_id)
    assert len(by_id[0]) == 4 and np.array_equal(mixed[0], by_id[0]) and np.array_equal(mixed[1], by_id[1])
    assert store.search(tenant_id=tenant_id, subject="bob", query="bob likes topic 2", k=1)[0].memory.text == (
        "bob likes topic 2"
    )
    store.update(tenant_id=tenant_id, memory_id=legacy[0].id, text="alice likes topic 7")  # re-embedded: named
    assert [stored is None for stored, _ in subjects()] == [False] + [True] * 5 + [False]
    store.reindex_tenant(tenant_id=tenant_id)
    assert all(stored == owner for stored, owner in subjects())
    after = store.vectors.search(tenant_id, query, 10, candidates, subject_id=bob_id)  # re-rotated: float noise
    assert set(after[0].tolist()) == set(by_id[0].tolist()) and np.allclose(after[1], by_id[1], atol=1e-5)
