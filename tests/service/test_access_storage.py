"""API-key and audit-chain storage (memory_store.credentials / memory_store.audit) on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, update

from memory_store.access import ApiKey, AuditHead, AuditRecord
from memory_store.audit import GENESIS_HASH, AuditEvent, AuditLog
from memory_store.credentials import ApiKeyStore
from memory_store.db import make_sessionmaker
from memory_store.errors import NotFoundError, ValidationError


@pytest.fixture
def sessions(store, backend):
    if backend == "pgvector":
        pytest.skip("same database engine as 'postgres' for these tables")
    return make_sessionmaker(store.engine)


def test_keys_hash_only_prefix_lookup_and_revocation(sessions, tenant_id):
    keys = ApiKeyStore(sessions)
    issued = keys.create(tenant_id=tenant_id, role="app", name="backend", created_by="test")
    assert issued.secret.startswith("smk_") and len(issued.secret) == 4 + 43
    assert "secret" not in repr(issued) and issued.secret not in repr(issued)
    with sessions() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.id == issued.info.id))
        assert row.prefix == issued.secret[:12] and issued.secret[12:] not in row.key_hash
    found = keys.authenticate(issued.secret)
    assert found is not None and found.id == issued.info.id and found.role == "app"
    assert keys.get(tenant_id=tenant_id, key_id=issued.info.id).last_used_at is not None
    assert keys.authenticate(issued.secret[:-1] + ("A" if issued.secret[-1] != "A" else "B")) is None
    assert keys.authenticate("smk_") is None and keys.authenticate("x" * 500) is None
    keys.revoke(tenant_id=tenant_id, key_id=issued.info.id)
    assert keys.authenticate(issued.secret) is None
    assert not keys.is_active(tenant_id=tenant_id, key_id=issued.info.id)
    with pytest.raises(NotFoundError):
        keys.revoke(tenant_id="other-tenant", key_id=issued.info.id)
    with pytest.raises(ValidationError):
        keys.create(tenant_id=tenant_id, role="root", name="x", created_by="test")
    with pytest.raises(NotFoundError):
        keys.create(tenant_id="no-such-tenant", role="app", name="x", created_by="test")


def test_audit_chain_links_records_and_verifies(sessions, tenant_id):
    log = AuditLog(sessions)
    assert log.verify(tenant_id=tenant_id).ok
    first = log.append(tenant_id=tenant_id, event=AuditEvent(credential_id="k", role="app", action="memory.get"))
    second = log.append(
        tenant_id=tenant_id,
        event=AuditEvent(credential_id="k", role="app", action="memory.search", memory_ids=["m1", "m2"]),
    )
    assert first.prev_hash == GENESIS_HASH and second.prev_hash == first.hash and second.seq == 2
    report = log.verify(tenant_id=tenant_id)
    assert report.ok and report.records_checked == 2 and report.head_hash == second.hash
    assert [e.seq for e in log.entries(tenant_id=tenant_id)] == [2, 1]
    with sessions.begin() as session:
        session.execute(update(AuditRecord).where(AuditRecord.seq == 1).values(action="memory.list"))
    broken = log.verify(tenant_id=tenant_id)
    assert not broken.ok and broken.broken_seq == 1


def test_concurrent_appends_form_one_unbroken_chain(sessions, tenant_id):
    log = AuditLog(sessions)

    def append(worker: int) -> None:
        for i in range(8):
            log.append(
                tenant_id=tenant_id,
                event=AuditEvent(credential_id=f"w{worker}", role="app", action="memory.get", memory_ids=[str(i)]),
            )

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(append, range(6)))
    report = log.verify(tenant_id=tenant_id)
    assert report.ok, report
    assert report.records_checked == 48 == report.head_seq
    with sessions() as session:
        assert session.get(AuditHead, tenant_id).seq == 48
        seqs = sorted(session.scalars(select(AuditRecord.seq).where(AuditRecord.tenant_id == tenant_id)))
    assert seqs == list(range(1, 49))


def test_audit_for_an_unknown_tenant_is_refused(sessions):
    with pytest.raises(NotFoundError):
        AuditLog(sessions).append(tenant_id="nope", event=AuditEvent(credential_id="k", role="app", action="x"))
