"""Bulk adds (memory_store.bulk): batches stored in order, each as add_batch stores it, while the next batch is
embedded on other threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event

from memory_store.audit import AuditEvent
from memory_store.bulk import add_in_batches
from memory_store.errors import ValidationError
from memory_store.store import MemoryStore
from memory_store.types import NewMemory
from tests.recording import RecordingEmbedder


def _batch(tag: str, n: int, subject: str = "ana") -> list[NewMemory]:
    return [NewMemory(subject=subject, text=f"{tag} note {i}: the {tag} fact number {i * 7 + 3}") for i in range(n)]


def _audit() -> AuditEvent:
    return AuditEvent(credential_id="cli-import", role="operator", action="memory.import")


def test_batches_are_stored_in_order_each_audited_with_its_own_vectors(
    recording_store: MemoryStore, recording: RecordingEmbedder, tenant_id: str
) -> None:
    batches = [_batch("alpha", 40), _batch("beta", 40, subject="bo"), _batch("gamma", 33)]
    stored = list(add_in_batches(recording_store, tenant_id=tenant_id, batches=batches, audit=_audit(), threads=2))

    assert [[r.text for r in records] for records in stored] == [[m.text for m in b] for b in batches]
    assert len(recording_store.list(tenant_id=tenant_id, subject="ana", limit=1000).items) == 73
    assert len(recording_store.list(tenant_id=tenant_id, subject="bo", limit=1000).items) == 40
    # Each text embedded once: by the threads that prepared it, not again by the write.
    assert sorted(recording.texts) == sorted(m.text for b in batches for m in b)
    # One audit record per batch, naming that batch's memories.
    imports = [e for e in recording_store.audit.entries(tenant_id=tenant_id) if e.action == "memory.import"]
    assert sorted(sorted(e.memory_ids) for e in imports) == sorted(sorted(r.id for r in b) for b in stored)
    assert recording_store.audit.verify(tenant_id=tenant_id).ok
    # Split between two threads and joined again, each memory keeps its own text's vector: its exact text finds
    # it first (the first and last of each half included).
    for records in stored:
        for record in (records[0], records[19], records[20], records[-1]):
            hits = recording_store.search(tenant_id=tenant_id, subject=record.subject, query=record.text, k=1)
            assert [h.memory.id for h in hits] == [record.id]


def test_the_next_batch_is_embedded_while_one_is_written(
    store: MemoryStore, open_store: Callable[..., MemoryStore], tenant_id: str
) -> None:
    """The first batch's commit waits for the second batch's embedding to start: it can only start meanwhile
    if it runs beside the write (done one after the other, the wait times out)."""
    second_started = threading.Event()
    embedder = _Signalling(second_started, marker="second")
    writer = open_store(embedder=embedder)
    seen: list[bool] = []

    def on_insert(conn: Any, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO MEMORIES"):
            conn.info["wrote_memories"] = True

    def on_commit(conn: Any) -> None:  # the first batch's commit (reads commit too: not theirs)
        if conn.info.pop("wrote_memories", False) and not seen:
            seen.append(second_started.wait(timeout=10))

    event.listen(writer.engine, "before_cursor_execute", on_insert)
    event.listen(writer.engine, "commit", on_commit)
    try:
        stored = list(
            add_in_batches(writer, tenant_id=tenant_id, batches=[_batch("first", 32), _batch("second", 32)], threads=2)
        )
    finally:
        event.remove(writer.engine, "commit", on_commit)
        event.remove(writer.engine, "before_cursor_execute", on_insert)
    assert seen == [True]
    assert [len(records) for records in stored] == [32, 32]
    # 32 texts on two threads: two calls of 16 per batch, from the bulk threads.
    assert sorted(embedder.calls) == [16, 16, 16, 16]
    assert all(name.startswith("sealmem-bulk") for name in embedder.threads)


def test_a_failing_batch_stops_there_and_keeps_the_batches_before_it(store: MemoryStore, tenant_id: str) -> None:
    bad = [*_batch("bad", 3), NewMemory(subject="ana", text="")]
    batches = add_in_batches(store, tenant_id=tenant_id, batches=[_batch("good", 5), bad, _batch("never", 5)])
    assert len(next(batches)) == 5
    with pytest.raises(ValidationError):
        next(batches)
    texts = [m.text for m in store.list(tenant_id=tenant_id, subject="ana", limit=100).items]
    assert sorted(texts) == sorted(m.text for m in _batch("good", 5))


def test_no_batches_store_nothing(store: MemoryStore, tenant_id: str) -> None:
    assert list(add_in_batches(store, tenant_id=tenant_id, batches=[])) == []


class _Signalling(RecordingEmbedder):
    """Records each call's size and thread; sets ``started`` when a text holding ``marker`` is embedded."""

    def __init__(self, started: threading.Event, marker: str) -> None:
        super().__init__()
        self._started = started
        self._marker = marker
        self.calls: list[int] = []
        self.threads: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        self.threads.append(threading.current_thread().name)
        if any(self._marker in t for t in texts):
            self._started.set()
        return super().embed(texts)
