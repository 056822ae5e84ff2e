"""A search reads through one pooled connection and one snapshot (on PostgreSQL a second connection per search
halved what the pool could serve), embeds a known subject's query before taking it, and still sees every write
another process committed before it began."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import event

from memory_store import HashingEmbedder, MemoryStore, NewMemory
from tests.recording import RecordingEmbedder


class ConnectionAware(HashingEmbedder):
    """Records, for every embedding, how many pooled connections the thread's store holds at that moment."""

    def __init__(self) -> None:
        super().__init__(384)
        self.held_during_embed: list[int] = []
        self.held = threading.local()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.held_during_embed.append(getattr(self.held, "count", 0))
        return super().embed(texts)


def _track(store: MemoryStore, embedder: ConnectionAware) -> list[int]:
    """Checkouts, each recorded as the number of connections the thread then holds (2: one was nested)."""
    checkouts: list[int] = []

    @event.listens_for(store.engine, "checkout")
    def checkout(*args: Any) -> None:
        embedder.held.count = getattr(embedder.held, "count", 0) + 1
        checkouts.append(embedder.held.count)

    @event.listens_for(store.engine, "checkin")
    def checkin(*args: Any) -> None:
        embedder.held.count = max(0, getattr(embedder.held, "count", 0) - 1)

    return checkouts


def test_a_search_takes_one_connection_and_embeds_before_it(open_store: Callable[..., MemoryStore]) -> None:
    embedder = ConnectionAware()
    store = open_store(embedder=embedder)
    tenant_id = store.create_tenant(name="acme").id
    store.add_batch(
        tenant_id=tenant_id, items=[NewMemory(subject="ana", text=f"I like jazz and note {i}") for i in range(30)]
    )
    store.search(tenant_id=tenant_id, subject="ana", query="warm up", k=5)  # indexes loaded, subject known
    checkouts = _track(store, embedder)
    embedder.held_during_embed.clear()
    for query in ("jazz", "what do I like?", "note 7"):
        hits = store.search(tenant_id=tenant_id, subject="ana", query=query, k=5)
        assert hits
    assert len(checkouts) == 3  # one connection per search: vectors read through the search's own session
    assert embedder.held_during_embed == [0, 0, 0]  # and no connection held while the query was embedded


def test_a_search_sees_what_another_process_committed_before_it(open_store: Callable[..., MemoryStore]) -> None:
    """Two stores on one database (two replicas, or two worker processes): a write through one is found by the
    next search through the other, though the other's index was already loaded and up to date before it."""
    reader = open_store()
    writer = open_store()
    tenant_id = reader.create_tenant(name="acme").id
    writer.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="I play the cello on Sundays"))
    assert reader.search(tenant_id=tenant_id, subject="ana", query="cello", k=5)
    for i in range(5):
        added = writer.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text=f"My locker code is blue{i}"))
        hits = reader.search(tenant_id=tenant_id, subject="ana", query=f"locker code blue{i}", k=10)
        found = [h for h in hits if h.memory.id == added.id]
        assert found and found[0].dense_score > 0.5  # found by its vector too, not only by its words
        writer.delete(tenant_id=tenant_id, memory_id=added.id)
        again = reader.search(tenant_id=tenant_id, subject="ana", query=f"locker code blue{i}", k=10)
        assert added.id not in [h.memory.id for h in again]


def test_a_subject_forgotten_and_created_anew_gets_its_own_query_vectors(
    open_store: Callable[..., MemoryStore],
) -> None:
    """The internal id guessed for a subject from an earlier search is only a guess: after a forget and a new
    subject under the same external id, the search embeds again rather than reuse the old subject's entry."""

    embedder = RecordingEmbedder()
    store = open_store(embedder=embedder, query_cache_size=100)
    tenant_id = store.create_tenant(name="acme").id
    store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="I like jazz"))
    store.search(tenant_id=tenant_id, subject="ana", query="my diagnosis", k=1)
    other = open_store(embedder=HashingEmbedder(384))  # forgets in "another process": this one's cache keeps all
    other.forget_subject(tenant_id=tenant_id, subject="ana")
    other.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="I like tea"))
    embedder.texts.clear()
    store.search(tenant_id=tenant_id, subject="ana", query="my diagnosis", k=1)
    assert embedder.texts == ["my diagnosis"]  # embedded anew for the new subject
    store.search(tenant_id=tenant_id, subject="ana", query="my diagnosis", k=1)
    assert embedder.texts == ["my diagnosis"]  # and cached for it from then on


def test_an_add_brings_the_writers_own_index_forward_without_reading_the_change_log(
    open_store: Callable[..., MemoryStore], faiss_only: None
) -> None:
    """The write knows its seqs and vectors: when no other write came between, its own FAISS index takes them
    directly; when another process wrote in between, the change log is replayed as before. Either way the
    index holds exactly the tenant's memories."""
    store = open_store()
    other = open_store()
    tenant_id = store.create_tenant(name="acme").id
    store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="first"))
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for i in range(3):
        store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text=f"mine {i}"))
    assert not [s for s in statements if "vector_changes" in s and s.lstrip().upper().startswith("SELECT")]
    other.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="from another process"))
    store.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="bob", text=f"after {i}") for i in range(2)])
    assert [s for s in statements if "vector_changes" in s and s.lstrip().upper().startswith("SELECT")]
    index = store.vectors.registry.get(tenant_id)  # type: ignore[attr-defined]
    with store.engine.connect() as conn:
        in_sql = {row[0] for row in conn.exec_driver_sql("SELECT id FROM memories")}
    assert set(index.all_ids().tolist()) == in_sql and len(in_sql) == 7


def test_a_search_that_must_catch_up_or_load_the_index_still_takes_one_connection(
    open_store: Callable[..., MemoryStore], faiss_only: None
) -> None:
    """The slow paths too: a search whose FAISS index is behind (another process wrote) or not loaded at all
    (first search after start) reads the change log and the sealed vectors through its own session."""
    reader = open_store()
    writer = open_store()
    tenant_id = reader.create_tenant(name="acme").id
    writer.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="ana", text=f"fact number {i}") for i in range(5)])
    embedder = ConnectionAware()
    fresh = open_store(embedder=embedder)  # nothing loaded yet
    checkouts = _track(fresh, embedder)
    assert fresh.search(tenant_id=tenant_id, subject="ana", query="fact number 3", k=3)
    assert checkouts and max(checkouts) == 1  # (the first search also reads the tenant's policy: one after another)
    checkouts.clear()
    writer.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="a later fact from elsewhere"))
    hits = fresh.search(tenant_id=tenant_id, subject="ana", query="a later fact from elsewhere", k=3)
    assert hits[0].memory.text == "a later fact from elsewhere"
    assert checkouts == [1]


def test_a_replica_far_behind_catches_up_in_chunks(
    open_store: Callable[..., MemoryStore], faiss_only: None, monkeypatch: Any
) -> None:
    """A replica whose index misses more rows than one statement may name (PostgreSQL: 65,535 parameters; the
    chunk is made tiny here) reads them in chunks, and ends with exactly the tenant's vectors."""
    import memory_store.index_registry as registry_module

    monkeypatch.setattr(registry_module, "CATCH_UP_CHUNK", 7)
    reader = open_store()
    writer = open_store()
    tenant_id = reader.create_tenant(name="acme").id
    reader.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="loaded before the import"))
    assert reader.search(tenant_id=tenant_id, subject="ana", query="import", k=1)
    added = writer.add_batch(
        tenant_id=tenant_id, items=[NewMemory(subject="ana", text=f"bulk imported fact {i}") for i in range(40)]
    )
    writer.delete(tenant_id=tenant_id, memory_id=added[3].id)
    hits = reader.search(tenant_id=tenant_id, subject="ana", query="bulk imported fact 17", k=3)
    assert hits[0].memory.text == "bulk imported fact 17"
    index = reader.vectors.registry.get(tenant_id)  # type: ignore[attr-defined]
    with reader.engine.connect() as conn:
        in_sql = {row[0] for row in conn.exec_driver_sql("SELECT id FROM memories")}
    assert set(index.all_ids().tolist()) == in_sql and len(in_sql) == 40
