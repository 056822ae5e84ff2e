"""Query vectors are cached (LRU by a digest of the query): a repeated search embeds its query once."""

from __future__ import annotations

from collections.abc import Callable

from memory_store import MemoryStore, NewMemory
from tests.recording import RecordingEmbedder


def _search(store: MemoryStore, tenant_id: str, query: str) -> list[tuple[str, float]]:
    return [(h.memory.id, h.score) for h in store.search(tenant_id=tenant_id, subject="ana", query=query, k=5)]


def test_a_repeated_query_is_embedded_once_and_ranks_the_same(open_store: Callable[..., MemoryStore]) -> None:
    embedder = RecordingEmbedder()
    store = open_store(embedder=embedder, query_cache_size=2)
    tenant_id = store.create_tenant(name="acme").id
    store.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="ana", text=f"I like jazz {i}") for i in range(5)])
    embedder.texts.clear()
    first = _search(store, tenant_id, "jazz")
    assert _search(store, tenant_id, "jazz") == first and embedder.texts == ["jazz"]
    _search(store, tenant_id, "tennis")
    _search(store, tenant_id, "chess")  # the cache holds 2: "jazz" is evicted
    _search(store, tenant_id, "jazz")
    assert embedder.texts == ["jazz", "tennis", "chess", "jazz"]


def test_the_cache_can_be_turned_off(open_store: Callable[..., MemoryStore]) -> None:
    embedder = RecordingEmbedder()
    store = open_store(embedder=embedder, query_cache_size=0)
    tenant_id = store.create_tenant(name="acme").id
    store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="I like jazz"))
    embedder.texts.clear()
    _search(store, tenant_id, "jazz")
    _search(store, tenant_id, "jazz")
    assert embedder.texts == ["jazz", "jazz"]


def test_cached_vectors_are_per_subject_and_leave_with_a_forget(open_store: Callable[..., MemoryStore]) -> None:
    """A cached (fast) answer must not tell one subject that another searched the same words."""
    embedder = RecordingEmbedder()
    store = open_store(embedder=embedder, query_cache_size=100)
    tenant_id = store.create_tenant(name="acme").id
    for subject in ("ana", "bob"):
        store.add(tenant_id=tenant_id, item=NewMemory(subject=subject, text="I like jazz"))
    embedder.texts.clear()
    for subject in ("ana", "bob", "ana"):
        store.search(tenant_id=tenant_id, subject=subject, query="my diagnosis", k=1)
    assert embedder.texts == ["my diagnosis", "my diagnosis"]  # once per subject
    store.forget_subject(tenant_id=tenant_id, subject="ana")
    assert len(store._searcher.queries._cache) == 1  # bob's entry only
