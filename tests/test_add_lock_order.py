"""A forget racing adds that write their rows before they take the tenant's lock (PostgreSQL; see
``MemoryStore._locks_late``) leaves nothing of the subject, and every add either committed before the forget (and
was shredded by it) or was refused. Real SQLite and PostgreSQL (the ``store`` fixture), each race provoked many
times: once with the add held between its rows and its lock, once as a storm of threads."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from memory_store import MemoryStore, NewMemory
from memory_store.audit import AuditEvent
from memory_store.errors import SubjectForgottenError
from memory_store.models import Memory, Subject, utcnow
from memory_store.types import WriteGuard

WHO = AuditEvent(credential_id="key-1", role="app", action="memory.add")


def _left_of(store: MemoryStore, tenant_id: str, subject: str) -> tuple[int, int]:
    """(subject rows, memory rows) of ``subject`` in the database."""
    with store.engine.connect() as conn:
        ids = list(
            conn.scalars(select(Subject.id).where(Subject.tenant_id == tenant_id, Subject.external_id == subject))
        )
        memories = conn.scalar(select(func.count()).select_from(Memory).where(Memory.subject_id.in_(ids))) if ids else 0
    return len(ids), int(memories or 0)


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "unguarded"])
def test_a_forget_while_an_add_is_between_its_rows_and_its_lock(
    store: MemoryStore, tenant_id: str, guarded: bool
) -> None:
    """The add has written its rows and is held before it takes the tenant's lock (a gate in the vector stage).
    On PostgreSQL the forget does not wait for it (the add holds no lock on the subject: its key is checked at
    commit) and the released add finds the subject forgotten: refused when its request began before the forget
    (guarded); otherwise its subject's key fails at commit and the retry writes it to a new subject of that name.
    On SQLite the add holds the write lock, so the forget waits, then shreds what the add wrote. Either way
    nothing of the forgotten subject is left, four times over."""
    postgres = store.engine.dialect.name == "postgresql"
    staged, release = threading.Event(), threading.Event()
    stage = store.vectors.stage

    def gated_stage(*args: Any, **kwargs: Any) -> None:
        if not release.is_set():
            staged.set()
            assert release.wait(30)
        stage(*args, **kwargs)

    store.vectors.stage = gated_stage  # type: ignore[method-assign]
    for round_ in range(4):
        subject = f"s{round_}"
        release.set()
        seed = store.add(tenant_id=tenant_id, item=NewMemory(subject=subject, text="I live in Lisbon."))
        staged.clear()
        release.clear()
        guard = WriteGuard(begun_at=utcnow()) if guarded else None
        result: dict[str, Any] = {}

        def add(subject: str = subject, result: dict[str, Any] = result, guard: WriteGuard | None = guard) -> None:
            try:
                result["record"] = store.add(
                    tenant_id=tenant_id, item=NewMemory(subject=subject, text="late turn"), audit=WHO, guard=guard
                )
            except BaseException as exc:  # asserted below
                result["error"] = exc

        adder = threading.Thread(target=add)
        adder.start()
        assert staged.wait(30)

        def forget(subject: str = subject, result: dict[str, Any] = result) -> None:
            result["forgotten"] = store.forget_subject(tenant_id=tenant_id, subject=subject)

        forgetter = threading.Thread(target=forget)
        forgetter.start()
        forgetter.join(30 if postgres else 0.3)
        assert forgetter.is_alive() is not postgres  # PostgreSQL: done while the add is held; SQLite: queued
        release.set()
        adder.join(60)
        forgetter.join(60)
        assert not adder.is_alive() and not forgetter.is_alive()
        assert result["forgotten"] == (1 if postgres else 2)  # SQLite: the add committed first, then was shredded
        if postgres and guarded:
            assert isinstance(result.get("error"), SubjectForgottenError), result
            assert _left_of(store, tenant_id, subject) == (0, 0)
        elif postgres:  # written afresh after the forget, as any unguarded write after it would be
            if "error" in result:
                raise result["error"]
            assert _left_of(store, tenant_id, subject) == (1, 1)
            assert [m.text for m in store.list(tenant_id=tenant_id, subject=subject).items] == ["late turn"]
            assert result["record"].id != seed.id
        else:
            if "error" in result:
                raise result["error"]
            assert _left_of(store, tenant_id, subject) == (0, 0)
    assert store.audit.verify(tenant_id=tenant_id).ok


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_adds_storming_a_subject_while_it_is_forgotten_leave_nothing_of_it(
    store: MemoryStore, tenant_id: str, seed: int
) -> None:
    """Six threads add to three subjects (every add's request begun before the forgets) while the subjects are
    forgotten one by one; afterwards none of them holds a row, every add either returned or was refused as
    forgotten, nothing else was raised, and the audit chain verifies."""
    rng = random.Random(seed)
    subjects = [f"u{seed}-{n}" for n in range(3)]
    for subject in subjects:
        store.add(tenant_id=tenant_id, item=NewMemory(subject=subject, text="seed"))
    begun = WriteGuard(begun_at=utcnow())
    stop = threading.Event()
    counts = {"added": 0, "refused": 0}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(worker: int) -> None:
        local = random.Random(seed * 100 + worker)
        while not stop.is_set():
            subject = local.choice(subjects)
            try:
                store.add(
                    tenant_id=tenant_id, item=NewMemory(subject=subject, text=f"turn {worker}"), audit=WHO, guard=begun
                )
                outcome = "added"
            except SubjectForgottenError:
                outcome = "refused"
            except BaseException as exc:  # asserted below
                with lock:
                    errors.append(exc)
                return
            with lock:
                counts[outcome] += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for subject in rng.sample(subjects, len(subjects)):
        time.sleep(rng.uniform(0.05, 0.3))
        assert store.forget_subject(tenant_id=tenant_id, subject=subject) >= 1
    time.sleep(0.2)  # adds still running after the last forget are refused
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert counts["added"] > 0 and counts["refused"] > 0, counts
    for subject in subjects:
        assert _left_of(store, tenant_id, subject) == (0, 0)
    assert store.audit.verify(tenant_id=tenant_id).ok
