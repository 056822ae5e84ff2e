"""Saving a tenant's FAISS index: writing the file never holds up a search that must catch up, and an index that
has not applied a forget is never sealed under the key version that forget introduced.

Two stores on one database and one index folder stand for two worker processes (``sealmem serve`` runs several).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from memory_store import NewMemory
from memory_store.models import Memory, Tenant
from memory_store.vector_index import IndexFileError, TenantIndex

pytestmark = pytest.mark.usefixtures("faiss_only")


def _file_ids(store, tenant_id) -> set[int] | None:
    """The ids in the tenant's index file, read with the tenant's current index key (None: unreadable)."""
    with Session(store.engine) as session:
        tenant = session.scalars(select(Tenant).where(Tenant.id == tenant_id)).one()
        key, version = store._keys.index_key(tenant), tenant.index_key_version
    try:
        index = TenantIndex.load(
            store.indexes.path(tenant_id), tenant_id=tenant_id, key=key, key_version=version, exact_max=10, nprobe=1
        )
    except IndexFileError:
        return None
    return set(index.all_ids().tolist())


def _row_id(store, uid: str) -> int:
    """The SQL row id (what the index holds) of the memory ``uid``."""
    with store.engine.connect() as conn:
        return int(conn.execute(select(Memory.id).where(Memory.uid == uid)).scalar_one())


def _slow_disk(monkeypatch, blocked) -> tuple[threading.Event, threading.Event]:
    """``os.fsync`` waits, in threads for which ``blocked()`` is true, until the second event is set; the first is
    set when one does. A slow disk, made at the edge the index file is written through."""
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if blocked():
            in_fsync.set()
            release.wait(60)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    return in_fsync, release


def test_search_that_catches_up_does_not_wait_for_a_save(open_store, store, tenant_id, monkeypatch):
    other = open_store()
    store.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text="first note about the garden"))
    store.search(tenant_id=tenant_id, subject="alice", query="garden", k=1)  # the index is loaded

    saving_thread: list[threading.Thread] = []  # only the saving thread's disk is slow
    in_fsync, release = _slow_disk(
        monkeypatch, lambda: bool(saving_thread) and threading.current_thread() is saving_thread[0]
    )

    def save() -> int:
        saving_thread.append(threading.current_thread())
        return int(store.indexes.persist(tenant_id, force=True))

    with ThreadPoolExecutor(2) as pool:
        try:
            saving = pool.submit(save)
            assert in_fsync.wait(30)
            # Another process writes: this store's index is now behind, so the search below must catch up under
            # the tenant's lock while the save sits in fsync.
            late = other.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text="a later note about the violin"))
            searching = pool.submit(store.search, tenant_id=tenant_id, subject="alice", query="violin", k=1)
            hits = searching.result(timeout=30)
            assert [h.memory.id for h in hits] == [late.id]
            assert not saving.done()
        finally:
            release.set()
        assert saving.result(timeout=30) == 1
    assert store.indexes.get(tenant_id).changes_since_save >= 1  # the late memory came after the snapshot


def test_index_behind_a_forget_is_not_sealed_under_the_new_key(open_store, store, tenant_id):
    other = open_store()
    alice = _row_id(store, store.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text="soon forgotten")).id)
    bob = _row_id(store, store.add(tenant_id=tenant_id, item=NewMemory(subject="bob", text="stays")).id)
    store.search(tenant_id=tenant_id, subject="bob", query="stays", k=1)  # loaded, holding alice's vector
    assert alice in store.indexes.get(tenant_id).all_ids().tolist()

    other.forget_subject(tenant_id=tenant_id, subject="alice")  # the other process; this index is now behind
    assert store.indexes.persist(tenant_id, force=True) == 0  # nothing sealed: the index has not applied it
    assert _file_ids(store, tenant_id) in (None, {bob})
    assert store.indexes.loaded()[tenant_id].changes_since_save >= 1  # still dirty: saved once caught up

    store.search(tenant_id=tenant_id, subject="bob", query="stays", k=1)  # catches up: alice's vector removed
    assert store.indexes.persist(tenant_id) == 1
    assert _file_ids(store, tenant_id) == {bob}


def test_index_labelled_before_a_forget_it_has_applied_is_saved_again(open_store, store, tenant_id):
    """A catch-up reads the tenant row, then the change log in another statement (on PostgreSQL another snapshot;
    on SQLite outside a transaction): a forget committed in between is applied while the index keeps the older
    key version. Standing at or past the seq that came with the new version, it has applied that forget, so a
    save takes the new version instead of refusing every save from then on."""
    other = open_store()
    store.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text="soon forgotten"))
    bob = _row_id(store, store.add(tenant_id=tenant_id, item=NewMemory(subject="bob", text="stays")).id)
    store.search(tenant_id=tenant_id, subject="bob", query="stays", k=1)
    other.forget_subject(tenant_id=tenant_id, subject="alice")
    store.search(tenant_id=tenant_id, subject="bob", query="stays", k=1)  # applies the forget
    index = store.indexes.loaded()[tenant_id]
    assert set(index.all_ids().tolist()) == {bob}
    index.key_version -= 1  # the label that interleaving leaves (the row read before the forget committed)
    assert store.indexes.persist(tenant_id, force=True) == 1
    assert _file_ids(store, tenant_id) == {bob}


def test_forgets_racing_saves_never_leave_a_forgotten_vector_readable(open_store, store, tenant_id):
    """Provoked many times: one process forgets subjects while another saves its (possibly stale) index."""
    other = open_store()
    subjects = [f"user-{i}" for i in range(12)]
    ids = {
        s: [
            _row_id(store, store.add(tenant_id=tenant_id, item=NewMemory(subject=s, text=f"{s} note {j}")).id)
            for j in range(3)
        ]
        for s in subjects
    }
    store.search(tenant_id=tenant_id, subject=subjects[0], query="note", k=1)
    forgotten: set[int] = set()
    leaks: list[set[int]] = []
    stop = threading.Event()

    def keep_saving() -> None:
        while not stop.is_set():
            before = set(forgotten)  # subjects whose forget has committed
            store.indexes.persist(tenant_id, force=True)
            seen = _file_ids(store, tenant_id)
            if seen is not None and seen & before:
                leaks.append(seen & before)

    with ThreadPoolExecutor(1) as pool:
        saver = pool.submit(keep_saving)
        try:
            for subject in subjects[:-1]:
                other.forget_subject(tenant_id=tenant_id, subject=subject)
                forgotten.update(ids[subject])
                store.search(tenant_id=tenant_id, subject=subjects[-1], query="note", k=1)  # catch up
        finally:
            stop.set()
        saver.result(timeout=60)
    assert leaks == []
    store.indexes.persist(tenant_id, force=True)
    assert _file_ids(store, tenant_id) == set(ids[subjects[-1]])


def test_periodic_persist_saves_only_indexes_due_and_close_saves_the_rest(open_store, store, tenant_id):
    """The service's upkeep (``persist(only_due=True)`` every 30 s) must not rewrite a large index for a few
    changes; a change it leaves unsaved is saved at close, or replayed from the change log after a crash."""
    mine = open_store(index_persist_every=5)
    other = open_store()

    def add(via, text: str) -> int:
        return _row_id(via, via.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text=text)).id)

    first = [add(mine, f"first note {i}") for i in range(2)]  # 2 changes: not due (5)
    mine.persist(only_due=True)
    assert _file_ids(mine, tenant_id) == set()  # as the tenant's creation left it
    mine.persist()  # every changed index
    assert _file_ids(mine, tenant_id) == set(first)

    third = add(mine, "third note")
    mine.persist(only_due=True)
    assert _file_ids(mine, tenant_id) == set(first)  # one change: left for later

    # Five writes by another process, caught up by a search here (which never saves): due now.
    theirs = [add(other, f"their note {i}") for i in range(5)]
    mine.search(tenant_id=tenant_id, subject="alice", query="note", k=1)
    mine.persist(only_due=True)
    assert _file_ids(mine, tenant_id) == {*first, third, *theirs}

    last = add(mine, "last note")
    mine.close()
    assert _file_ids(other, tenant_id) == {*first, third, *theirs, last}


def test_write_that_makes_the_index_due_does_not_wait_for_the_file(open_store, tenant_id, monkeypatch):
    mine = open_store(index_persist_every=3)
    for i in range(2):
        mine.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text=f"note {i}"))
    caller = threading.current_thread()  # a slow disk for every thread but the test's own
    in_fsync, release = _slow_disk(monkeypatch, lambda: threading.current_thread() is not caller)
    with ThreadPoolExecutor(1) as pool:
        try:
            # The third change makes the index due: the save starts, and sits in fsync.
            third = pool.submit(mine.add, tenant_id=tenant_id, item=NewMemory(subject="alice", text="note 2"))
            assert third.result(timeout=30).text == "note 2"
            assert in_fsync.wait(30)
        finally:
            release.set()
    mine.indexes.wait_for_saves()
    assert len(_file_ids(mine, tenant_id) or ()) == 3
