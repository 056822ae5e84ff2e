"""Adds to one tenant that arrive while another add is committing are committed together, in one transaction
(memory_store.group_commit), on real SQLite and PostgreSQL: each keeps its own records, actor, audit record and
guard; the change log stays gap-free; a guarded add to a forgotten subject fails alone while the rest of its group
commits. The first add is held inside its transaction (a gate in the vector stage) until the others have queued."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import select

from memory_store import MemoryStore, NewMemory
from memory_store.audit import AuditEvent
from memory_store.errors import SubjectForgottenError
from memory_store.models import Subject, VectorChange, utcnow
from memory_store.types import WriteGuard


def _event(n: int) -> AuditEvent:
    return AuditEvent(credential_id=f"key-{n}", role="app", action="memory.add")


@contextmanager
def _first_add_held(store: MemoryStore) -> Iterator[Callable[[int], None]]:
    """Holds the next add inside its transaction (at its vector stage) until the callable it yields is called
    with the number of adds that must have queued behind it by then."""
    staged, release = threading.Event(), threading.Event()
    stage = store.vectors.stage

    def gated(*args: Any, **kwargs: Any) -> None:
        if not release.is_set():
            staged.set()
            assert release.wait(30)
        stage(*args, **kwargs)

    def let_go(queued: int) -> None:
        assert staged.wait(30)
        deadline = time.monotonic() + 30
        while store.add_commits.queued() < queued:
            assert time.monotonic() < deadline, f"{store.add_commits.queued()} of {queued} adds queued"
            time.sleep(0.002)
        release.set()

    store.vectors.stage = gated  # type: ignore[method-assign]
    try:
        yield let_go
    finally:
        release.set()
        store.vectors.stage = stage  # type: ignore[method-assign]


def _run(adds: list[Callable[[], Any]]) -> tuple[list[threading.Thread], list[Any]]:
    outcome: list[Any] = [None] * len(adds)

    def run(n: int) -> None:
        try:
            outcome[n] = adds[n]()
        except Exception as exc:  # asserted by the caller
            outcome[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(adds))]
    for thread in threads:
        thread.start()
    return threads, outcome


def _seqs(store: MemoryStore, tenant_id: str) -> list[int]:
    with store.engine.connect() as conn:
        return sorted(conn.scalars(select(VectorChange.seq).where(VectorChange.tenant_id == tenant_id)))


def test_adds_queued_behind_a_commit_are_committed_together_each_with_its_own_records_actor_and_audit(
    store: MemoryStore, tenant_id: str
) -> None:
    store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="I live in Lisbon."))
    texts = {n: [f"note {n}a quokka{n}", f"note {n}b"] for n in range(6)}
    # Two adds to existing subjects, two to a subject none of them has created yet, two to one subject each.
    subjects = {0: "ana", 1: "ana", 2: "newbie", 3: "newbie", 4: "bo", 5: "cy"}

    def add(n: int) -> Callable[[], Any]:
        return lambda: store.add_batch(
            tenant_id=tenant_id,
            items=[NewMemory(subject=subjects[n], text=text) for text in texts[n]],
            actor=f"app-{n}",
            audit=_event(n),
            guard=WriteGuard(begun_at=utcnow()),
        )

    before = store.add_commits.transactions
    with _first_add_held(store) as let_go:
        first, first_outcome = _run([lambda: store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="x"))])
        time.sleep(0.05)
        rest, outcome = _run([add(n) for n in range(6)])
        let_go(6)
        for thread in first + rest:
            thread.join(60)
    assert not isinstance(first_outcome[0], Exception), first_outcome
    assert store.add_commits.transactions - before == 2  # the held add alone, then the six together
    for n in range(6):
        records = outcome[n]
        assert not isinstance(records, Exception), records
        assert [r.text for r in records] == texts[n] and {r.subject for r in records} == {subjects[n]}
        for record in records:
            assert [h.actor for h in store.history(tenant_id=tenant_id, memory_id=record.id)] == [f"app-{n}"]
        audit = store.audit.entries(tenant_id=tenant_id, credential_id=f"key-{n}")
        assert [(e.subject, sorted(e.memory_ids)) for e in audit] == [(subjects[n], sorted(r.id for r in records))]
        hits = store.search(tenant_id=tenant_id, subject=subjects[n], query=f"quokka{n}", k=3)
        assert hits and hits[0].memory.id == records[0].id  # the lexical index advanced with the group
    with store.engine.connect() as conn:
        named = select(Subject.id).where(Subject.tenant_id == tenant_id, Subject.external_id == "newbie")
        assert len(list(conn.scalars(named))) == 1
    seqs = _seqs(store, tenant_id)
    assert seqs == list(range(seqs[0], seqs[0] + 14))  # 1 + 1 + 12 changes, gap-free, each once
    assert store.audit.verify(tenant_id=tenant_id).ok


@pytest.mark.parametrize("round_", range(2))
def test_a_guarded_add_to_a_forgotten_subject_fails_alone_and_the_rest_of_its_group_commits(
    store: MemoryStore, tenant_id: str, round_: int
) -> None:
    store.add(tenant_id=tenant_id, item=NewMemory(subject="gone", text="I live in Lisbon."))
    begun = WriteGuard(begun_at=utcnow())
    assert store.forget_subject(tenant_id=tenant_id, subject="gone") == 1
    adds: list[Callable[[], Any]] = [
        lambda n=n: store.add(  # type: ignore[misc]
            tenant_id=tenant_id,
            item=NewMemory(subject=f"kept{n}", text=f"kept turn {n}"),
            audit=_event(n),
            guard=WriteGuard(begun_at=utcnow()),
        )
        for n in range(4)
    ]
    adds.insert(
        1 + round_,
        lambda: store.add(
            tenant_id=tenant_id, item=NewMemory(subject="gone", text="late turn"), audit=_event(9), guard=begun
        ),
    )
    before = store.add_commits.transactions
    with _first_add_held(store) as let_go:
        first, _ = _run([lambda: store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="x"))])
        time.sleep(0.05)
        rest, outcome = _run(adds)
        let_go(5)
        for thread in first + rest:
            thread.join(60)
    refused = outcome.pop(1 + round_)
    assert isinstance(refused, SubjectForgottenError), refused
    assert [r.text for r in outcome] == [f"kept turn {n}" for n in range(4)]
    # The held add, the group of five that failed, then each of the five again alone.
    assert store.add_commits.transactions - before == 7
    assert {s.subject for s in store.list_subjects(tenant_id=tenant_id)} == {"ana"} | {f"kept{n}" for n in range(4)}
    assert store.audit.entries(tenant_id=tenant_id, credential_id="key-9") == []
    assert [len(store.audit.entries(tenant_id=tenant_id, credential_id=f"key-{n}")) for n in range(4)] == [1] * 4
    seqs = _seqs(store, tenant_id)
    assert len(seqs) == len(set(seqs))
    assert store.audit.verify(tenant_id=tenant_id).ok


@pytest.mark.parametrize("seed", [1, 2])
def test_a_storm_of_adds_from_many_threads_is_stored_exactly_once_with_a_gap_free_change_log(
    store: MemoryStore, tenant_id: str, seed: int
) -> None:
    rng = random.Random(seed)
    plan = {n: [(f"s{rng.randrange(4)}", f"storm {n}-{i}") for i in range(10)] for n in range(8)}
    stored: dict[int, list[Any]] = {n: [] for n in plan}

    def writer(n: int) -> None:
        for subject, text in plan[n]:
            stored[n].append(
                store.add(
                    tenant_id=tenant_id, item=NewMemory(subject=subject, text=text), actor=f"w{n}", audit=_event(n)
                )
            )

    threads = [threading.Thread(target=writer, args=(n,)) for n in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for n, records in stored.items():
        assert [(r.subject, r.text) for r in records] == plan[n]
        assert {h.actor for r in records for h in store.history(tenant_id=tenant_id, memory_id=r.id)} == {f"w{n}"}
    listed = {m.text for s in range(4) for m in store.list(tenant_id=tenant_id, subject=f"s{s}", limit=100).items}
    assert listed == {text for steps in plan.values() for _, text in steps}
    seqs = _seqs(store, tenant_id)
    assert seqs == list(range(seqs[0], seqs[0] + 80))
    assert store.audit.verify(tenant_id=tenant_id).ok
