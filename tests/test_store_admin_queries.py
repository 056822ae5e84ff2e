"""The store's admin reads the console relies on, on real SQLite and real PostgreSQL: status and source filters
of ``list`` applied in the query, the subject id prefix of ``list_subjects``, and a memory's supersede lineage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from memory_store import Filters, NewMemory, ValidationError
from memory_store.models import Memory


def _add(store, tenant_id, subject, text, **kw):
    return store.add(tenant_id=tenant_id, item=NewMemory(subject=subject, text=text, **kw))


def test_list_filters_status_and_source_in_the_query(store, tenant_id):
    old = _add(store, tenant_id, "alice", "old", source="chat")
    new = _add(store, tenant_id, "alice", "new", source="chat")
    store.supersede(tenant_id=tenant_id, memory_id=old.id, by=new.id)
    for i in range(5):
        _add(store, tenant_id, "alice", f"api {i}")  # newer than both: a post-filter would see only these
    every = Filters(include_superseded=True)

    def texts(**kw):
        return [m.text for m in store.list(tenant_id=tenant_id, subject="alice", filters=every, **kw).items]

    assert texts(status="superseded", limit=2) == ["old"]
    assert texts(source="chat", limit=2) == ["new", "old"]
    assert texts(source="chat", status="active", limit=1) == ["new"]
    assert texts(source="import") == []
    page = store.list(tenant_id=tenant_id, subject="alice", filters=every, source="api", limit=3)
    assert [m.text for m in page.items] == ["api 4", "api 3", "api 2"] and page.next_cursor is not None
    rest = store.list(tenant_id=tenant_id, subject="alice", filters=every, source="api", cursor=page.next_cursor)
    assert [m.text for m in rest.items] == ["api 1", "api 0"] and rest.next_cursor is None
    # without include_superseded, superseded memories stay out whatever the status filter says
    assert store.list(tenant_id=tenant_id, subject="alice", filters=Filters(), status="superseded").items == []
    with pytest.raises(ValidationError):
        store.list(tenant_id=tenant_id, status="gone")


def test_list_subjects_by_id_prefix(store, tenant_id):
    for subject in ("bob-1", "bob-2", "Bob-3", "bo%b", "bo_x", "alice", "robert"):
        _add(store, tenant_id, subject, f"memory of {subject}")
    names = lambda **kw: [s.subject for s in store.list_subjects(tenant_id=tenant_id, **kw)]  # noqa: E731
    assert names(prefix="bob") == ["bob-1", "bob-2"]  # case-sensitive, in id order
    assert names(prefix="bo%") == ["bo%b"] and names(prefix="bo_") == ["bo_x"]  # no wildcards
    assert names(prefix="bob-2") == ["bob-2"]
    assert names(prefix="bob", limit=1, offset=1) == ["bob-2"]
    assert names(prefix="zed") == []
    assert [s.memory_count for s in store.list_subjects(tenant_id=tenant_id, prefix="bob")] == [1, 1]
    assert len(names()) == 7 and len(names(prefix="")) == 7
    other = store.create_tenant(name="other").id
    assert store.list_subjects(tenant_id=other, prefix="bob") == []


def test_lineage_follows_supersede_links_both_ways(store, tenant_id):
    a = _add(store, tenant_id, "alice", "Alice lives in Lisbon")
    b = _add(store, tenant_id, "alice", "Alice lives in Porto")
    c = _add(store, tenant_id, "alice", "Alice lives in Faro")
    alone = _add(store, tenant_id, "alice", "Alice likes tea")
    _add(store, tenant_id, "bob", "Bob lives in Lisbon")
    store.supersede(tenant_id=tenant_id, memory_id=a.id, by=b.id)
    store.supersede(tenant_id=tenant_id, memory_id=b.id, by=c.id)
    chain = [a.id, b.id, c.id]
    for memory in (a, b, c):
        got = store.lineage(tenant_id=tenant_id, memory_id=memory.id, subject="alice")
        assert [m.id for m in got] == chain
    assert [m.text for m in store.lineage(tenant_id=tenant_id, memory_id=b.id)] == [
        "Alice lives in Lisbon",
        "Alice lives in Porto",
        "Alice lives in Faro",
    ]
    assert [m.id for m in store.lineage(tenant_id=tenant_id, memory_id=alone.id)] == [alone.id]
    assert [m.id for m in store.lineage(tenant_id=tenant_id, memory_id=c.id, limit=2)] == [b.id, c.id]
    # another subject, another tenant, an unknown id: nothing
    assert store.lineage(tenant_id=tenant_id, memory_id=a.id, subject="bob") == []
    other = store.create_tenant(name="other").id
    assert store.lineage(tenant_id=other, memory_id=a.id) == []
    assert store.lineage(tenant_id=tenant_id, memory_id="nope") == []
    # reading a lineage does not mark memories as accessed
    with store.engine.connect() as conn:
        touched = conn.execute(select(Memory.last_accessed_at).where(Memory.uid.in_(chain))).scalars().all()
    assert touched == [None, None, None]


def test_lineage_leaves_out_expired_and_deleted_memories(store, tenant_id):
    a = _add(store, tenant_id, "alice", "first", expires_at=datetime.now(UTC) + timedelta(hours=1))
    b = _add(store, tenant_id, "alice", "second")
    c = _add(store, tenant_id, "alice", "third")
    store.supersede(tenant_id=tenant_id, memory_id=a.id, by=b.id)
    store.supersede(tenant_id=tenant_id, memory_id=b.id, by=c.id)
    store.delete(tenant_id=tenant_id, memory_id=c.id)
    assert [m.text for m in store.lineage(tenant_id=tenant_id, memory_id=b.id)] == ["first", "second"]
    with store.engine.begin() as conn:
        conn.execute(
            Memory.__table__.update()
            .where(Memory.uid == a.id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert [m.text for m in store.lineage(tenant_id=tenant_id, memory_id=b.id)] == ["second"]
    assert store.lineage(tenant_id=tenant_id, memory_id=a.id) == []
