"""A search that scores only the dense top pool, then the pooled memories that pool missed, ranks exactly as one
that scores every candidate: on each backend (FAISS searches the first way above 4,096 candidates, pgvector above
its exact-scoring limit)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np

from memory_store import FusionConfig, NewMemory

WORDS = [
    "cello",
    "jazz",
    "hiking",
    "Porto",
    "garden",
    "coffee",
    "marathon",
    "museum",
    "pottery",
    "camping",
    "sushi",
    "chess",
    "tennis",
    "baking",
]
QUERIES = ["what about jazz and coffee?", "pottery in Porto", "marathon training", "chess or tennis", "camping trip"]


def _memories(count: int) -> list[NewMemory]:
    rng = random.Random(7)
    start = datetime(2024, 3, 1, tzinfo=UTC)
    return [
        NewMemory(
            subject="s",
            text=f"{' '.join(rng.sample(WORDS, 3))} note {i} {rng.choice(['today', 'again', 'with friends'])}",
            session_id=f"session-{i // 12}",
            kind="turn",
            occurred_at=start + timedelta(minutes=i),
        )
        for i in range(count)
    ]


def _ranked(store, tenant_id, query, score_all_max):
    store.vectors.score_all_max = score_all_max
    hits = store.search(tenant_id=tenant_id, subject="s", query=query, k=25, fusion=FusionConfig(pool=50))
    return [
        (h.memory.id, round(h.score, 5), round(h.dense_score or 0.0, 5), round(h.lexical_score or 0.0, 5)) for h in hits
    ]


def test_top_pool_then_missing_ids_ranks_as_scoring_all(store, tenant_id, embedder):
    items = _memories(400)
    store.add_batch(tenant_id=tenant_id, items=items)
    vectors = embedder.embed([m.text for m in items])
    beyond_pool = 0
    for query in QUERIES:
        in_two_steps = _ranked(store, tenant_id, query, 0)
        all_scored = _ranked(store, tenant_id, query, 10**6)
        assert in_two_steps == all_scored
        assert len(all_scored) == 25
        # Some hits come from outside the dense top 50 (pooled by BM25 or as neighbours), so the second step
        # (scoring the ids the first one missed) is what gave them their dense scores.
        fiftieth = np.sort(vectors @ embedder.embed([query])[0])[::-1][49]
        beyond_pool += sum(1 for _, _, dense, _ in all_scored if dense < fiftieth - 1e-4)
    assert beyond_pool > 0
