"""Bulk deletes, expiry purge, session listing and totals of the store, on SQLite, PostgreSQL and pgvector."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select

import memory_store.store as store_module
from memory_store import MemoryStore, NewMemory, NotFoundError, ValidationError
from memory_store.models import Memory, MemoryEvent, Tenant, VectorChange
from memory_store.vector_models import MemoryVector
from service.chat.sessions import SessionStore

PAST = datetime(2020, 1, 1, tzinfo=UTC)


def _count(store: MemoryStore, model: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def _change_seq(store: MemoryStore, tenant_id: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(Tenant.change_seq).where(Tenant.id == tenant_id)).scalar_one())


def _add(store: MemoryStore, tenant_id: str, subject: str, texts: list[str], **kw: Any) -> list[str]:
    items = [NewMemory(subject=subject, text=text, **kw) for text in texts]
    return [r.id for r in store.add_batch(tenant_id=tenant_id, items=items)]


def _actions(store: MemoryStore, tenant_id: str, memory_id: str) -> list[tuple[str, str]]:
    return [(h.action, h.actor) for h in store.history(tenant_id=tenant_id, memory_id=memory_id)]


def _snapshot(store: MemoryStore, tenant_id: str) -> dict[str, Any]:
    """Everything a delete changes."""
    return {
        "memories": _count(store, Memory),
        "events": _count(store, MemoryEvent),
        "vector_changes": _count(store, VectorChange),
        "pgvector_rows": _count(store, MemoryVector),
        "change_seq": _change_seq(store, tenant_id),
        "index_vectors": store.stats(tenant_id=tenant_id).index_vectors,
    }


@contextmanager
def _failing_on_delete_event(monkeypatch: pytest.MonkeyPatch, nth: int) -> Iterator[None]:
    """Make the history row of the ``nth`` deleted memory fail to build, one memory per statement."""
    real = store_module._memory_event
    seen = {"delete": 0}

    def failing(**fields: Any) -> Any:
        if fields["action"] == "delete":
            seen["delete"] += 1
            if seen["delete"] == nth:
                raise RuntimeError("injected failure")
        return real(**fields)

    with monkeypatch.context() as patch:
        patch.setattr(store_module, "_CHUNK", 1)  # statements per memory: earlier rows are deleted first
        patch.setattr(store_module, "_memory_event", failing)
        yield


@contextmanager
def _memory_deletes(store: MemoryStore) -> Iterator[list[str]]:
    """The ``DELETE FROM memories`` statements sent to the database inside the block."""
    sent: list[str] = []

    def spy(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM MEMORIES"):
            sent.append(statement)

    event.listen(store.engine, "before_cursor_execute", spy)
    try:
        yield sent
    finally:
        event.remove(store.engine, "before_cursor_execute", spy)


# ---- delete_many -----------------------------------------------------------------------------------------


def test_delete_many_deletes_everything_in_one_go(store, tenant_id, backend):
    ids = _add(store, tenant_id, "alice", [f"alpha note {i}" for i in range(6)], session_id="s1")
    keep = _add(store, tenant_id, "alice", ["beta note"])[0]
    seq = _change_seq(store, tenant_id)
    assert store.delete_many(tenant_id=tenant_id, memory_ids=[*ids, ids[0]], subject="alice", actor="key-1") == 6
    assert [m.id for m in store.list(tenant_id=tenant_id, subject="alice").items] == [keep]
    assert [h.memory.id for h in store.search(tenant_id=tenant_id, subject="alice", query="alpha note")] == [keep]
    for memory_id in ids:
        assert _actions(store, tenant_id, memory_id) == [("add", "system"), ("delete", "key-1")]
    assert _change_seq(store, tenant_id) == seq + 6  # one change-log entry per memory
    assert store.stats(tenant_id=tenant_id).index_vectors == 1
    if backend == "pgvector":
        assert _count(store, MemoryVector) == 1
    assert store.delete_many(tenant_id=tenant_id, memory_ids=[]) == 0


def test_delete_many_spans_subjects_without_a_subject(store, tenant_id):
    a = _add(store, tenant_id, "alice", ["alice fact"])[0]
    b = _add(store, tenant_id, "bob", ["bob fact"])[0]
    with pytest.raises(NotFoundError):
        store.delete_many(tenant_id=tenant_id, memory_ids=[a, b], subject="alice")
    assert store.delete_many(tenant_id=tenant_id, memory_ids=[a, b]) == 2
    assert _count(store, Memory) == 0


def test_delete_many_rejects_unknown_foreign_or_expired_ids_and_changes_nothing(store, tenant_id):
    other = store.create_tenant(name="globex").id
    ids = _add(store, tenant_id, "alice", ["one", "two"])
    foreign = _add(store, other, "alice", ["foreign"])[0]
    expired = _add(store, tenant_id, "alice", ["old code"], expires_at=PAST)[0]
    before = _snapshot(store, tenant_id)
    for extra in ("no-such-memory", foreign, expired):
        with pytest.raises(NotFoundError):
            store.delete_many(tenant_id=tenant_id, memory_ids=[*ids, extra])
        assert _snapshot(store, tenant_id) == before
    with pytest.raises(ValidationError):
        store.delete_many(tenant_id=tenant_id, memory_ids=ids[0])  # one id, not a list of them
    assert _snapshot(store, tenant_id) == before
    assert store.delete_many(tenant_id=tenant_id, memory_ids=[*ids, expired], include_expired=True) == 3
    assert _actions(store, tenant_id, expired) == [("add", "system"), ("delete", "system")]


def test_delete_keeps_expired_memories_unless_asked(store, tenant_id):
    expired = _add(store, tenant_id, "alice", ["old code"], expires_at=PAST)[0]
    with pytest.raises(NotFoundError):
        store.delete(tenant_id=tenant_id, memory_id=expired, actor="expiry")
    store.delete(tenant_id=tenant_id, memory_id=expired, include_expired=True)
    assert _count(store, Memory) == 0


def test_delete_many_failing_part_way_deletes_nothing(store, tenant_id, backend, monkeypatch):
    ids = _add(store, tenant_id, "alice", [f"plan {i}" for i in range(5)], session_id="s1")
    before = _snapshot(store, tenant_id)
    failure = pytest.raises(RuntimeError, match="injected failure")
    with _failing_on_delete_event(monkeypatch, nth=3), _memory_deletes(store) as deletes, failure:
        store.delete_many(tenant_id=tenant_id, memory_ids=ids, subject="alice")
    assert len(deletes) == 2  # two memories were already deleted inside the transaction when it failed
    assert _snapshot(store, tenant_id) == before
    assert sorted(m.id for m in store.list(tenant_id=tenant_id, subject="alice").items) == sorted(ids)
    assert {h.memory.id for h in store.search(tenant_id=tenant_id, subject="alice", query="plan", k=10)} == set(ids)
    for memory_id in ids:
        assert _actions(store, tenant_id, memory_id) == [("add", "system")]
    if backend == "pgvector":
        assert before["pgvector_rows"] == 5
    # Without the failure the same call deletes them all.
    assert store.delete_many(tenant_id=tenant_id, memory_ids=ids, subject="alice") == 5
    after = _snapshot(store, tenant_id)
    assert (after["memories"], after["pgvector_rows"], after["index_vectors"]) == (0, 0, 0)


# ---- expiry --------------------------------------------------------------------------------------------------


def test_purge_expired_deletes_all_expired_at_once_with_actor_expiry(store, tenant_id, backend):
    expired = _add(store, tenant_id, "alice", [f"code {i}" for i in range(4)], expires_at=PAST)
    expired += _add(store, tenant_id, "bob", ["bob code"], expires_at=PAST)
    later = datetime.now(UTC) + timedelta(days=1)
    keep = _add(store, tenant_id, "alice", ["lasting code"], expires_at=later)
    keep += _add(store, tenant_id, "alice", ["permanent code"])
    seq = _change_seq(store, tenant_id)
    assert store.purge_expired(tenant_id=tenant_id) == 5
    assert _change_seq(store, tenant_id) == seq + 5
    assert sorted(m.id for m in store.list(tenant_id=tenant_id).items) == sorted(keep)
    for memory_id in expired:
        assert _actions(store, tenant_id, memory_id) == [("add", "system"), ("delete", "expiry")]
    assert store.stats(tenant_id=tenant_id).index_vectors == 2
    if backend == "pgvector":
        assert _count(store, MemoryVector) == 2
    assert store.purge_expired(tenant_id=tenant_id) == 0
    assert _change_seq(store, tenant_id) == seq + 5  # nothing expired: no write


def test_purge_expired_failing_part_way_deletes_nothing(store, tenant_id, monkeypatch):
    _add(store, tenant_id, "alice", [f"code {i}" for i in range(4)], expires_at=PAST)
    before = _snapshot(store, tenant_id)
    failure = pytest.raises(RuntimeError, match="injected failure")
    with _failing_on_delete_event(monkeypatch, nth=2), _memory_deletes(store) as deletes, failure:
        store.purge_expired(tenant_id=tenant_id)
    assert len(deletes) == 1
    assert _snapshot(store, tenant_id) == before
    assert store.purge_expired(tenant_id=tenant_id) == 4


def test_purge_all_expired_covers_every_tenant(store, tenant_id):
    other = store.create_tenant(name="globex").id
    quiet = store.create_tenant(name="initech").id
    _add(store, tenant_id, "alice", ["a1", "a2"], expires_at=PAST)
    _add(store, other, "alice", ["o1"], expires_at=PAST)
    kept = [*_add(store, tenant_id, "alice", ["a3"]), *_add(store, quiet, "carol", ["q1"])]
    quiet_seq = _change_seq(store, quiet)
    assert store.purge_all_expired() == 3
    assert sorted(m.id for t in (tenant_id, other, quiet) for m in store.list(tenant_id=t).items) == sorted(kept)
    assert _change_seq(store, quiet) == quiet_seq
    assert store.purge_all_expired() == 0


# ---- session listing and totals ------------------------------------------------------------------------------


def test_list_sessions_groups_by_session_newest_first(store, tenant_id):
    _add(store, tenant_id, "alice", ["hi", "hello"], session_id="s1", kind="turn")
    _add(store, tenant_id, "alice", ["fact from s1"], session_id="s1", kind="fact")
    _add(store, tenant_id, "alice", ["no session"], kind="turn")
    _add(store, tenant_id, "alice", ["later"], session_id="s2", kind="turn")
    _add(store, tenant_id, "bob", ["bob turn"], session_id="s3", kind="turn")
    turns = store.list_sessions(tenant_id=tenant_id, subject="alice", kinds=("turn",))
    assert [(s.session_id, s.memory_count) for s in turns] == [("s2", 1), ("s1", 2)]
    assert all(s.first_created_at.tzinfo is not None for s in turns)
    assert turns[1].first_created_at <= turns[1].last_created_at <= turns[0].last_created_at
    every = store.list_sessions(tenant_id=tenant_id, subject="alice")
    assert [(s.session_id, s.memory_count) for s in every] == [("s2", 1), ("s1", 3)]
    assert [s.session_id for s in store.list_sessions(tenant_id=tenant_id, subject="alice", limit=1)] == ["s2"]
    with pytest.raises(NotFoundError):
        store.list_sessions(tenant_id=tenant_id, subject="carol")
    with pytest.raises(ValidationError):
        store.list_sessions(tenant_id=tenant_id, subject="alice", limit=0)


def test_totals_count_every_tenant(store, tenant_id, backend):
    other = store.create_tenant(name="globex").id
    _add(store, tenant_id, "alice", ["one", "two"])
    _add(store, tenant_id, "bob", ["three"])
    _add(store, other, "alice", ["four"])
    totals = store.totals()
    assert (totals.memories, totals.subjects, totals.tenants) == (4, 3, 2)
    if backend == "pgvector":
        assert (totals.loaded_index_vectors, totals.loaded_index_bytes) == (0, 0)
    else:
        assert totals.loaded_index_vectors == 4 and totals.loaded_index_bytes > 0


# ---- chat sessions on top of the store -----------------------------------------------------------------------


def _turns(sessions: SessionStore, tenant_id: str, session_id: str, count: int) -> list[str]:
    ids: list[str] = []
    for i in range(count):
        ids += [
            r.id
            for r in sessions.append_turns(
                tenant_id=tenant_id, subject="alice", session_id=session_id, message_id=f"m{i}",
                user_text=f"question {i}", assistant_text=f"answer {i}", actor="app",
            )
        ]
    return ids


def test_session_store_delete_session_is_one_transaction(store, tenant_id, monkeypatch):
    sessions = SessionStore(store)
    ids = _turns(sessions, tenant_id, "s1", 3)
    derived = _add(store, tenant_id, "alice", ["distilled fact"], session_id="s1")[0]
    before = _snapshot(store, tenant_id)
    with _failing_on_delete_event(monkeypatch, nth=4), pytest.raises(RuntimeError, match="injected failure"):
        sessions.delete_session(tenant_id=tenant_id, subject="alice", session_id="s1", actor="app")
    assert _snapshot(store, tenant_id) == before
    deleted = sessions.delete_session(tenant_id=tenant_id, subject="alice", session_id="s1", actor="app")
    assert deleted == list(reversed(ids))  # newest first
    assert [m.id for m in store.list(tenant_id=tenant_id, subject="alice").items] == [derived]
    assert sessions.list_sessions(tenant_id=tenant_id, subject="alice") == []
    with pytest.raises(NotFoundError):
        sessions.delete_session(tenant_id=tenant_id, subject="alice", session_id="s1", actor="app")
    assert sessions.delete_session(
        tenant_id=tenant_id, subject="alice", session_id="s1", actor="app", include_derived=True
    ) == [derived]
    with pytest.raises(NotFoundError):
        sessions.delete_session(tenant_id=tenant_id, subject="nobody", session_id="s1", actor="app")


def test_session_store_lists_again_after_a_concurrent_delete(store, tenant_id, monkeypatch):
    sessions = SessionStore(store)
    ids = _turns(sessions, tenant_id, "s1", 2)
    real_list = store.list
    raced: list[str] = []

    def list_then_race(**kw: Any) -> Any:
        page = real_list(**kw)
        if not raced:  # another request deletes the oldest turn right after the first listing
            raced.append(ids[0])
            store.delete(tenant_id=tenant_id, memory_id=ids[0])
        return page

    monkeypatch.setattr(store, "list", list_then_race)
    deleted = sessions.delete_session(tenant_id=tenant_id, subject="alice", session_id="s1", actor="app")
    assert deleted == list(reversed(ids[1:]))
    assert _count(store, Memory) == 0


def test_session_store_lists_sessions(store, tenant_id):
    sessions = SessionStore(store)
    assert sessions.list_sessions(tenant_id=tenant_id, subject="alice") == []
    _turns(sessions, tenant_id, "s1", 2)
    _add(store, tenant_id, "alice", ["distilled fact"], session_id="s1")
    listed = sessions.list_sessions(tenant_id=tenant_id, subject="alice")
    assert [(s.session_id, s.subject, s.turns) for s in listed] == [("s1", "alice", 4)]
    assert listed[0].created_at.tzinfo is not None and listed[0].created_at <= listed[0].last_activity_at
