"""The store's typed API on real SQLite and real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select

from memory_store import Filters, NewMemory, NotFoundError, ValidationError
from memory_store.models import Memory, MemoryEvent, Subject, VectorChange


def _add(store, tenant_id, subject, text, **kw):
    return store.add(tenant_id=tenant_id, item=NewMemory(subject=subject, text=text, **kw))


def _count(store, model):
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar_one()


def test_add_get_roundtrip_keeps_fields(store, tenant_id):
    when = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    rec = _add(
        store,
        tenant_id,
        "alice",
        "My dog is named Biscuit",
        metadata={"topic": "pets", "n": 1},
        agent_id="a1",
        session_id="s1",
        kind="fact",
        importance=0.9,
        source="chat",
        source_ref="msg-1",
        occurred_at=when,
    )
    got = store.get(tenant_id=tenant_id, memory_id=rec.id)
    assert got.text == "My dog is named Biscuit"
    assert got.metadata == {"topic": "pets", "n": 1}
    assert (got.agent_id, got.session_id, got.kind, got.source, got.source_ref) == (
        "a1",
        "s1",
        "fact",
        "chat",
        "msg-1",
    )
    assert got.importance == pytest.approx(0.9)
    assert got.occurred_at == when
    assert got.created_at.tzinfo is not None


def test_batch_add_is_atomic(store, tenant_id):
    _add(store, tenant_id, "alice", "existing")
    bad = [NewMemory(subject="alice", text="fine"), NewMemory(subject="alice", text="   ")]
    with pytest.raises(ValidationError):
        store.add_batch(tenant_id=tenant_id, items=bad)
    assert _count(store, Memory) == 1


def test_batch_add_pairs_each_row_with_its_own_text_vector_and_history(store, tenant_id):
    """A batch's rows are inserted in multi-row statements and their ids matched back by uid: every memory must
    get its own sealed text, its own vector (found first by its exact text), one change-log entry and one
    history event, across interleaved subjects and more rows than one multi-row VALUES page. And they go in a
    page at a time, not one statement per row."""
    subjects = ("alice", "bob", "carol")
    items = [
        NewMemory(subject=subjects[i % 3], text=f"note {i}: the {('red', 'blue', 'green')[i % 3]} fact {i * 37 + 11}")
        for i in range(1200)
    ]
    inserts: list[str] = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO MEMORIES "):
            inserts.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        records = store.add_batch(tenant_id=tenant_id, items=items)
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    assert 1 <= len(inserts) <= 12, len(inserts)

    assert [(r.subject, r.text) for r in records] == [(m.subject, m.text) for m in items]
    for i in (0, 1, 2, 599, 600, 1001, 1199):
        got = store.get(tenant_id=tenant_id, memory_id=records[i].id)
        assert (got.subject, got.text) == (items[i].subject, items[i].text)
        hits = store.search(tenant_id=tenant_id, subject=items[i].subject, query=items[i].text, k=1)
        assert [h.memory.id for h in hits] == [records[i].id]
        assert [e.action for e in store.history(tenant_id=tenant_id, memory_id=records[i].id)] == ["add"]
    with store.engine.connect() as conn:
        ids = conn.execute(select(Memory.id).order_by(Memory.id)).scalars().all()
        changes = conn.execute(select(VectorChange.memory_id).order_by(VectorChange.seq)).scalars().all()
        uids = conn.execute(select(Memory.uid).order_by(Memory.id)).scalars().all()
    assert changes == ids  # one upsert per row, in the batch's order
    assert uids == [r.id for r in records]
    assert _count(store, MemoryEvent) == 1200


@pytest.mark.parametrize(
    "item",
    [
        NewMemory(subject="", text="x"),
        NewMemory(subject="alice", text=""),
        NewMemory(subject="alice", text="x" * 40_000),
        NewMemory(subject="alice", text="x", kind="Not A Kind"),
        NewMemory(subject="alice", text="x", importance=2.0),
        NewMemory(subject="alice", text="x", metadata={"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}),
        NewMemory(subject="alice", text="x", metadata={"f": float("nan")}),
        NewMemory(subject="alice", text="bad \udcff surrogate"),
        NewMemory(subject="alice", text="x", metadata={"k": "lone \ud800 surrogate"}),
        NewMemory(subject="alice", text="x", metadata={"lone \udfff key": 1}),
        NewMemory(subject="al\x00ice", text="x"),
    ],
)
def test_bad_input_is_rejected_and_changes_nothing(store, tenant_id, item):
    with pytest.raises(ValidationError):
        store.add(tenant_id=tenant_id, item=item)
    assert _count(store, Memory) == 0
    assert _count(store, Subject) == 0


def test_update_reembeds_and_records_history_without_content(store, tenant_id):
    rec = _add(store, tenant_id, "alice", "I live in Paris")
    _add(store, tenant_id, "alice", "I like green tea")
    store.update(
        tenant_id=tenant_id, memory_id=rec.id, text="I moved to Berlin", metadata={"v": 2}, actor="key-1"
    )
    hits = store.search(tenant_id=tenant_id, subject="alice", query="Berlin", k=1)
    assert hits[0].memory.id == rec.id and hits[0].memory.text == "I moved to Berlin"
    history = store.history(tenant_id=tenant_id, memory_id=rec.id)
    assert [h.action for h in history] == ["add", "update"]
    assert history[1].actor == "key-1" and history[1].detail == {"fields": ["text", "metadata"]}
    assert "Paris" not in repr(history) and "Berlin" not in repr(history)


def test_delete_removes_from_get_list_search_but_keeps_history(store, tenant_id):
    rec = _add(store, tenant_id, "alice", "secret plan alpha")
    _add(store, tenant_id, "alice", "other note")
    store.delete(tenant_id=tenant_id, memory_id=rec.id)
    with pytest.raises(NotFoundError):
        store.get(tenant_id=tenant_id, memory_id=rec.id)
    assert rec.id not in [m.id for m in store.list(tenant_id=tenant_id, subject="alice").items]
    assert rec.id not in [
        h.memory.id for h in store.search(tenant_id=tenant_id, subject="alice", query="plan alpha")
    ]
    assert [h.action for h in store.history(tenant_id=tenant_id, memory_id=rec.id)] == ["add", "delete"]
    assert store.stats(tenant_id=tenant_id).index_vectors == 1


def test_list_paginates_with_cursor_newest_first(store, tenant_id):
    ids = [
        r.id
        for r in store.add_batch(
            tenant_id=tenant_id, items=[NewMemory(subject="alice", text=f"note {i}") for i in range(7)]
        )
    ]
    seen, cursor = [], None
    while True:
        page = store.list(tenant_id=tenant_id, subject="alice", limit=3, cursor=cursor)
        seen += [m.id for m in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(ids))
    with pytest.raises(ValidationError):
        store.list(tenant_id=tenant_id, subject="alice", cursor="!!garbage!!")
    with pytest.raises(ValidationError):
        store.list(tenant_id=tenant_id, subject="alice", limit=-1)


def test_list_filters(store, tenant_id):
    _add(store, tenant_id, "alice", "a", agent_id="x", session_id="s1", kind="turn", metadata={"tag": "t1"})
    _add(store, tenant_id, "alice", "b", agent_id="y", session_id="s2", kind="fact", metadata={"tag": "t2"})
    _add(store, tenant_id, "bob", "c", agent_id="x", kind="fact")
    texts = lambda **f: sorted(m.text for m in store.list(tenant_id=tenant_id, **f).items)  # noqa: E731
    assert texts(subject="alice", filters=Filters(agent_id="x")) == ["a"]
    assert texts(subject="alice", filters=Filters(session_id="s2")) == ["b"]
    assert texts(filters=Filters(kinds=("fact",))) == ["b", "c"]
    assert texts(subject="alice", filters=Filters(metadata={"tag": "t2"})) == ["b"]
    assert texts() == ["a", "b", "c"]


def test_search_filters_are_applied_inside_the_search(store, tenant_id):
    # 300 near-identical memories in one session crowd the query; the one match elsewhere must still win.
    store.add_batch(
        tenant_id=tenant_id,
        items=[
            NewMemory(subject="alice", text=f"coffee order number {i}", session_id="busy") for i in range(300)
        ]
        + [NewMemory(subject="alice", text="coffee order quiet", session_id="quiet", metadata={"m": 1})],
    )
    hits = store.search(
        tenant_id=tenant_id, subject="alice", query="coffee order", k=1, filters=Filters(session_id="quiet")
    )
    assert [h.memory.text for h in hits] == ["coffee order quiet"]
    hits = store.search(
        tenant_id=tenant_id, subject="alice", query="coffee order", k=1, filters=Filters(metadata={"m": 1})
    )
    assert [h.memory.text for h in hits] == ["coffee order quiet"]
    assert (
        store.search(tenant_id=tenant_id, subject="alice", query="coffee", filters=Filters(kinds=("turn",)))
        == []
    )


def test_search_time_range_and_recency(store, tenant_id):
    old = datetime(2020, 1, 1, tzinfo=UTC)
    new = datetime.now(UTC) - timedelta(days=1)
    _add(store, tenant_id, "alice", "trip to Rome", occurred_at=old)
    _add(store, tenant_id, "alice", "trip to Rome again", occurred_at=new)
    hits = store.search(
        tenant_id=tenant_id,
        subject="alice",
        query="trip to Rome",
        k=5,
        filters=Filters(occurred_before=datetime(2021, 1, 1, tzinfo=UTC)),
    )
    assert [h.memory.text for h in hits] == ["trip to Rome"]
    from memory_store import FusionConfig

    hits = store.search(
        tenant_id=tenant_id,
        subject="alice",
        query="trip to Rome",
        k=2,
        fusion=FusionConfig(recency_half_life_days=30, recency_weight=1.0),
    )
    assert hits[0].memory.text == "trip to Rome again"
    assert hits[0].score > hits[1].score
    hits = store.search(
        tenant_id=tenant_id, subject="alice", query="trip to Rome", k=2, fusion=FusionConfig(min_score=1.01)
    )
    assert hits == []


def test_subjects_and_tenants_are_isolated(store, tenant_id):
    other = store.create_tenant(name="globex").id
    rec = _add(store, tenant_id, "alice", "alice private fact")
    _add(store, other, "alice", "same subject name, other tenant")
    _add(store, tenant_id, "bob", "bob fact")
    with pytest.raises(NotFoundError):
        store.get(tenant_id=other, memory_id=rec.id)
    with pytest.raises(NotFoundError):
        store.get(tenant_id=tenant_id, memory_id=rec.id, subject="bob")
    with pytest.raises(NotFoundError):
        store.delete(tenant_id=other, memory_id=rec.id)
    assert [h.memory.text for h in store.search(tenant_id=other, subject="alice", query="private fact")] == [
        "same subject name, other tenant"
    ]
    assert {h.memory.subject for h in store.search(tenant_id=tenant_id, subject="bob", query="fact")} == {
        "bob"
    }
    with pytest.raises(NotFoundError):
        store.search(tenant_id=tenant_id, subject="carol", query="fact")


def test_supersede_keeps_history_and_stops_ranking(store, tenant_id):
    old = _add(store, tenant_id, "alice", "I live in Paris")
    new = _add(store, tenant_id, "alice", "I live in Berlin")
    store.supersede(tenant_id=tenant_id, memory_id=old.id, by=new.id)
    assert [
        h.memory.id for h in store.search(tenant_id=tenant_id, subject="alice", query="I live in Paris")
    ] == [new.id]
    got = store.get(tenant_id=tenant_id, memory_id=old.id)
    assert got.status == "superseded" and got.superseded_by == new.id
    assert store.history(tenant_id=tenant_id, memory_id=old.id)[-1].action == "supersede"


def test_expired_memories_are_invisible_and_purged(store, tenant_id):
    gone = _add(
        store, tenant_id, "alice", "temporary code 1234", expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    _add(store, tenant_id, "alice", "permanent code 5678")
    with pytest.raises(NotFoundError):
        store.get(tenant_id=tenant_id, memory_id=gone.id)
    assert [h.memory.text for h in store.search(tenant_id=tenant_id, subject="alice", query="code")] == [
        "permanent code 5678"
    ]
    assert store.purge_expired(tenant_id=tenant_id) == 1
    assert _count(store, Memory) == 1


def test_forget_subject_shreds_key_rows_and_vectors(store, tenant_id):
    for i in range(5):
        _add(store, tenant_id, "alice", f"alice memory {i}")
    keep = _add(store, tenant_id, "bob", "bob memory")
    assert store.forget_subject(tenant_id=tenant_id, subject="alice") == 5
    with pytest.raises(NotFoundError):
        store.search(tenant_id=tenant_id, subject="alice", query="memory")
    with pytest.raises(NotFoundError):
        store.list(tenant_id=tenant_id, subject="alice")
    assert [m.id for m in store.list(tenant_id=tenant_id).items] == [keep.id]
    with store.engine.connect() as conn:
        assert (
            conn.execute(
                select(func.count()).select_from(Subject).where(Subject.external_id == "alice")
            ).scalar()
            == 0
        )
        assert conn.execute(select(func.count()).select_from(MemoryEvent)).scalar() == 1  # bob's add
    stats = store.stats(tenant_id=tenant_id)
    assert stats.index_vectors == 1 and stats.per_subject == {"bob": 1}


def test_stats_and_subjects(store, tenant_id):
    store.add_batch(
        tenant_id=tenant_id,
        items=[
            NewMemory(subject="alice", text="one"),
            NewMemory(subject="alice", text="two", kind="turn"),
            NewMemory(subject="bob", text="three"),
        ],
    )
    stats = store.stats(tenant_id=tenant_id)
    assert (stats.memories, stats.subjects, stats.index_vectors) == (3, 2, 3)
    assert stats.by_kind == {"fact": 2, "turn": 1}
    assert stats.per_subject == {"alice": 2, "bob": 1}
    assert stats.index_bytes == 3 * 384 * 4
    subjects = store.list_subjects(tenant_id=tenant_id)
    assert [(s.subject, s.memory_count) for s in subjects] == [("alice", 2), ("bob", 1)]
    export = store.export_subject(tenant_id=tenant_id, subject="alice")
    assert sorted(m.text for m in export["memories"]) == ["one", "two"]
    assert len(export["history"]) == 2


def test_second_store_on_same_database_sees_writes_immediately(open_store):
    a, b = open_store(), open_store()
    tenant = a.create_tenant(name="shared").id
    _add(a, tenant, "alice", "written by replica a")
    assert [h.memory.text for h in b.search(tenant_id=tenant, subject="alice", query="replica")] == [
        "written by replica a"
    ]
    rec = _add(b, tenant, "alice", "written by replica b")
    a.delete(tenant_id=tenant, memory_id=rec.id)
    assert [h.memory.text for h in b.search(tenant_id=tenant, subject="alice", query="replica")] == [
        "written by replica a"
    ]
    a.forget_subject(tenant_id=tenant, subject="alice")
    with pytest.raises(NotFoundError):
        b.search(tenant_id=tenant, subject="alice", query="replica")
    assert b.stats(tenant_id=tenant).index_vectors == 0
