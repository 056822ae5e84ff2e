"""Store-level proofs of issue #11's core: a change commits with its audit record or not at all; a guarded write
cannot bring back a subject forgotten after its request began, nor write under a revoked key; a process whose
master key was rotated away refuses to wrap new keys. Real SQLite and PostgreSQL (the ``store`` fixture)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

import memory_store.credentials as credentials_module
import memory_store.store as store_module
from memory_store import MasterKey, MemoryStore, NewMemory, generate_key
from memory_store.access import AuditRecord
from memory_store.audit import AuditEvent
from memory_store.credentials import ApiKeyStore
from memory_store.db import make_sessionmaker
from memory_store.errors import (
    CredentialRevokedError,
    MasterKeyChangedError,
    NotFoundError,
    SubjectForgottenError,
)
from memory_store.models import Memory, SubjectTombstone, utcnow
from memory_store.types import WriteGuard
from tests.harness import data_snapshot

WHO = AuditEvent(credential_id="key-1", role="app", action="memory.add")


def _audit_count(store: MemoryStore, tenant_id: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(AuditRecord.tenant_id == tenant_id)) or 0)


def _subjects(store: MemoryStore, tenant_id: str) -> set[str]:
    return {s.subject for s in store.list_subjects(tenant_id=tenant_id)}


# ---- one audit path: the record commits with the change --------------------------------------------------


def test_every_change_writes_its_record_in_its_own_transaction(store: MemoryStore, tenant_id: str) -> None:
    before = _audit_count(store, tenant_id)
    added = store.add_batch(
        tenant_id=tenant_id,
        items=[NewMemory(subject="ana", text="a"), NewMemory(subject="bob", text="b")],
        audit=WHO,
    )
    entries = store.audit.entries(tenant_id=tenant_id)
    assert _audit_count(store, tenant_id) == before + 2  # one record per subject touched
    assert {(e.subject, tuple(e.memory_ids)) for e in entries[:2]} == {("ana", (added[0].id,)), ("bob", (added[1].id,))}
    store.update(tenant_id=tenant_id, memory_id=added[0].id, text="a2", audit=WHO)
    store.delete(tenant_id=tenant_id, memory_id=added[1].id, audit=WHO)
    store.forget_subject(tenant_id=tenant_id, subject="ana", audit=WHO)
    newest = store.audit.entries(tenant_id=tenant_id, limit=3)
    assert [(e.subject, e.memory_ids) for e in newest] == [("ana", []), ("bob", [added[1].id]), ("ana", [added[0].id])]
    assert newest[0].detail["memories_deleted"] == 1 and newest[2].detail["fields"] == ["text"]
    assert store.audit.verify(tenant_id=tenant_id).ok


def _ops(store: MemoryStore, tenant_id: str) -> dict[str, Callable[[], Any]]:
    kept = store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="kept"))
    other = store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="other"))
    keys = ApiKeyStore(make_sessionmaker(store.engine))
    key = keys.create(tenant_id=tenant_id, role="app", name="k", created_by="t")
    return {
        "add": lambda: store.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="new", text="x")], audit=WHO),
        "update": lambda: store.update(tenant_id=tenant_id, memory_id=kept.id, text="changed", audit=WHO),
        "supersede": lambda: store.supersede(tenant_id=tenant_id, memory_id=kept.id, by=other.id, audit=WHO),
        "delete": lambda: store.delete_many(tenant_id=tenant_id, memory_ids=[kept.id, other.id], audit=WHO),
        "forget": lambda: store.forget_subject(tenant_id=tenant_id, subject="ana", audit=WHO),
        "key.create": lambda: keys.create(tenant_id=tenant_id, role="app", name="k2", created_by="t", audit=WHO),
        "key.revoke": lambda: keys.revoke(tenant_id=tenant_id, key_id=key.info.id, audit=WHO),
    }


@pytest.mark.parametrize("op", ["add", "update", "supersede", "delete", "forget", "key.create", "key.revoke"])
def test_a_failed_append_rolls_the_change_back(
    store: MemoryStore, tenant_id: str, op: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _ops(store, tenant_id)[op]
    snapshot, records = data_snapshot(store.engine), _audit_count(store, tenant_id)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the audit append failed")

    monkeypatch.setattr(store_module, "append_all_in", broken)
    monkeypatch.setattr(credentials_module, "append_in", broken)
    with pytest.raises(RuntimeError, match="audit append failed"):
        run()
    assert data_snapshot(store.engine) == snapshot, f"{op} committed without its audit record"
    assert _audit_count(store, tenant_id) == records
    monkeypatch.undo()
    run()  # the same change goes through once the log works, with its record
    assert _audit_count(store, tenant_id) > records and store.audit.verify(tenant_id=tenant_id).ok


def test_the_expiry_purge_is_audited_as_the_system(store: MemoryStore, tenant_id: str) -> None:
    gone = store.add(
        tenant_id=tenant_id, item=NewMemory(subject="ana", text="x", expires_at=utcnow() + timedelta(milliseconds=1))
    )
    store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="stays"))
    with store.engine.begin() as conn:  # make it expired without waiting
        conn.execute(update(Memory).values(expires_at=utcnow() - timedelta(seconds=1)).where(Memory.uid == gone.id))
    assert store.purge_expired(tenant_id=tenant_id) == 1
    entry = store.audit.entries(tenant_id=tenant_id, limit=1)[0]
    assert (entry.action, entry.credential_id, entry.subject, entry.memory_ids) == (
        "memory.expire",
        "system",
        "ana",
        [gone.id],
    )


# ---- forget is final --------------------------------------------------------------------------------------


def test_a_write_begun_before_a_forget_cannot_bring_the_subject_back(store: MemoryStore, tenant_id: str) -> None:
    kept = store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="I live in Lisbon."))
    begun = WriteGuard(begun_at=utcnow())
    store.forget_subject(tenant_id=tenant_id, subject="ana")
    snapshot = data_snapshot(store.engine)
    with pytest.raises(SubjectForgottenError):
        store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="late turn"), guard=begun)
    with pytest.raises(SubjectForgottenError):  # a batch naming the subject among others: all or nothing
        store.add_batch(
            tenant_id=tenant_id,
            items=[NewMemory(subject="bob", text="b"), NewMemory(subject="ana", text="a")],
            guard=begun,
        )
    assert data_snapshot(store.engine) == snapshot and _subjects(store, tenant_id) == set()
    # A request that began after the forget may create the subject afresh; an old one still may not touch it.
    later = WriteGuard(begun_at=utcnow())
    fresh = store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="new life"), guard=later)
    for late in (
        lambda: store.update(tenant_id=tenant_id, memory_id=fresh.id, text="old data", guard=begun),
        lambda: store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="old data"), guard=begun),
        lambda: store.delete(tenant_id=tenant_id, memory_id=fresh.id, guard=begun),
    ):
        with pytest.raises(SubjectForgottenError):
            late()
    assert [m.text for m in store.list(tenant_id=tenant_id, subject="ana").items] == ["new life"]
    assert kept.id not in {m.id for m in store.list(tenant_id=tenant_id, subject="ana").items}


def test_tombstones_name_the_subject_only_by_a_keyed_digest_and_expire(store: MemoryStore, tenant_id: str) -> None:
    store.add(tenant_id=tenant_id, item=NewMemory(subject="ana-secret-id", text="x"))
    store.forget_subject(tenant_id=tenant_id, subject="ana-secret-id")
    with store.engine.connect() as conn:
        rows = conn.execute(select(SubjectTombstone.digest, SubjectTombstone.forgotten_at)).all()
    assert len(rows) == 1 and "ana" not in rows[0][0] and len(rows[0][0]) == 64
    with pytest.raises(NotFoundError):  # forgetting an unknown subject changes nothing
        store.forget_subject(tenant_id=tenant_id, subject="nobody")
    with store.engine.begin() as conn:
        conn.execute(update(SubjectTombstone).values(forgotten_at=utcnow() - store_module.TOMBSTONE_RETENTION * 2))
    store.purge_all_expired()
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(SubjectTombstone)) == 0
    with pytest.raises(SubjectForgottenError, match="too old"):  # older than any tombstone kept: refused
        store.add(
            tenant_id=tenant_id,
            item=NewMemory(subject="ana-secret-id", text="x"),
            guard=WriteGuard(begun_at=utcnow() - store_module.TOMBSTONE_RETENTION * 2),
        )


def test_a_delayed_write_under_a_revoked_key_is_refused(store: MemoryStore, tenant_id: str) -> None:
    keys = ApiKeyStore(make_sessionmaker(store.engine))
    key = keys.create(tenant_id=tenant_id, role="app", name="k", created_by="t")
    guard = WriteGuard(begun_at=utcnow(), credential_id=key.info.id)
    store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="while active"), guard=guard)
    keys.revoke(tenant_id=tenant_id, key_id=key.info.id)
    with pytest.raises(CredentialRevokedError):
        store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="after revoke"), guard=guard)
    assert [m.text for m in store.list(tenant_id=tenant_id, subject="ana").items] == ["while active"]


# ---- master-key rotation while another process runs -------------------------------------------------------


def test_a_process_left_on_the_old_master_key_refuses_to_wrap_new_keys(
    open_store: Callable[..., MemoryStore], store: MemoryStore, tenant_id: str
) -> None:
    store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="before"))
    rotator = open_store()
    new_key = MasterKey(generate_key())
    rotator.rotate_master_key(
        new_master_key=new_key, audit=AuditEvent(credential_id="cli", role="operator", action="master_key.rotate")
    )
    # The running process still writes for subjects whose data key it holds, but wraps no new key.
    store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="after, known subject"))
    with pytest.raises(MasterKeyChangedError):
        store.add(tenant_id=tenant_id, item=NewMemory(subject="newcomer", text="would be unreadable"))
    with pytest.raises(MasterKeyChangedError):
        store.create_tenant(name="other")
    restarted = open_store(key=new_key)
    assert sorted(m.text for m in restarted.list(tenant_id=tenant_id, subject="ana").items) == [
        "after, known subject",
        "before",
    ]
    restarted.add(tenant_id=tenant_id, item=NewMemory(subject="newcomer", text="fine now"))
    rotation = restarted.audit.entries(tenant_id=tenant_id, action="master_key.rotate")
    assert len(rotation) == 1 and "keys_rewrapped" not in rotation[0].detail  # no platform-wide figures per tenant


def test_a_request_begun_while_the_forget_was_running_cannot_write_back_what_it_read(
    store: MemoryStore, tenant_id: str
) -> None:
    """The request starts while the forget's transaction is still open (after its tombstone's first stamp,
    before its commit), reads the old data, and writes a reply based on it later: refused (the tombstone is
    stamped again after the forget's commit)."""
    store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="ana's diagnosis is X"))
    shredding = threading.Event()

    def slow_shred(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread().name == "forget" and statement.lstrip().upper().startswith(
            "INSERT INTO SUBJECT_TOMBSTONES"
        ):
            shredding.set()
            time.sleep(0.5)

    event.listen(store.engine, "after_cursor_execute", slow_shred)
    forget = threading.Thread(target=lambda: store.forget_subject(tenant_id=tenant_id, subject="ana"), name="forget")
    forget.start()
    assert shredding.wait(10)
    begun = WriteGuard(begun_at=utcnow())  # the chat request begins now
    forget.join()
    event.remove(store.engine, "after_cursor_execute", slow_shred)
    with pytest.raises(SubjectForgottenError):
        store.add(tenant_id=tenant_id, item=NewMemory(subject="ana", text="reply: diagnosis X"), guard=begun)
    assert _subjects(store, tenant_id) == set()


def test_rotation_does_not_deadlock_with_an_audit_append_in_flight(store: MemoryStore, tenant_id: str) -> None:
    """A read's audit append (committed by the audit writer thread) holds its tenant's audit head and then needs
    FOR KEY SHARE on the tenant row (the foreign key); the rotation locks tenant rows FOR NO KEY UPDATE, which
    does not conflict (PostgreSQL)."""
    paused = threading.Event()

    def pause(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread().name == "sealmem-audit-writer" and statement.lstrip().upper().startswith(
            "UPDATE AUDIT_HEADS SET SEQ"
        ):
            paused.set()
            time.sleep(0.8)

    event.listen(store.engine, "after_cursor_execute", pause)
    outcome: dict[str, str] = {}

    def read() -> None:
        try:
            store.audit.append(tenant_id=tenant_id, event=AuditEvent(credential_id="k", role="app", action="x"))
            outcome["reader"] = "ok"
        except Exception as exc:  # reported below
            outcome["reader"] = repr(exc)

    def rotate() -> None:
        assert paused.wait(10)
        try:
            store.rotate_master_key(new_master_key=MasterKey(generate_key()), audit=WHO)
            outcome["rotate"] = "ok"
        except Exception as exc:  # reported below
            outcome["rotate"] = repr(exc)

    threads = [threading.Thread(target=read, name="reader"), threading.Thread(target=rotate, name="rotator")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    event.remove(store.engine, "after_cursor_execute", pause)
    assert outcome == {"reader": "ok", "rotate": "ok"}
    assert store.audit.verify(tenant_id=tenant_id).ok
