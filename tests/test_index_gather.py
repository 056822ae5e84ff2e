"""A flat tenant index scores a subject's candidates from their gathered vectors: the same top-k as FAISS's own
search with an id selector, ties by id, and ids the index does not hold are skipped."""

from __future__ import annotations

import numpy as np

from memory_store.vector_index import TenantIndex


def _index(count: int, dim: int = 32) -> tuple[TenantIndex, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, count + 1, dtype=np.int64) * 7
    index = TenantIndex(dim, exact_max=10 * count, nprobe=4)
    index.upsert(ids, vectors)
    return index, ids, vectors


def test_gathered_scores_match_the_selector_search_and_an_exact_ranking():
    index, ids, vectors = _index(3000)
    rng = np.random.default_rng(4)
    for _ in range(20):
        candidates = np.sort(rng.choice(ids, 300, replace=False))
        query = vectors[rng.integers(len(vectors))]
        for k in (10, 50, 300):
            got_ids, got_scores = index.search(query, k, candidates)
            assert index._gathered(query, k, candidates) is not None  # the path under test, not the fallback
            want_scores, want_ids = index._selected(query.reshape(1, -1), k, candidates)
            assert got_ids.tolist() == want_ids[0].tolist()
            np.testing.assert_allclose(got_scores, want_scores[0], atol=1e-5)
            exact = vectors[(candidates // 7) - 1] @ query
            assert got_ids.tolist() == candidates[np.lexsort((candidates, -exact))[:k]].tolist()


def test_ties_are_broken_by_id_and_absent_ids_are_skipped():
    index = TenantIndex(4, exact_max=100, nprobe=4)
    same = np.tile(np.array([[1, 0, 0, 0]], dtype=np.float32), (3, 1))
    index.upsert(np.array([30, 10, 20], dtype=np.int64), same)
    ids, scores = index.search(same[0], 2, np.array([30, 20, 10], dtype=np.int64))
    assert ids.tolist() == [10, 20] and scores.tolist() == [1.0, 1.0]
    ids, _ = index.search(same[0], 5, np.array([30, 99, 10], dtype=np.int64))  # 99 was never indexed
    assert sorted(ids.tolist()) == [10, 30]
