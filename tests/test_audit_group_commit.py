"""Audit appends of concurrent requests are committed together, and each caller still gets exactly its records
(or its own error). Real SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from memory_store import MemoryStore
from memory_store.audit import AuditEvent, _Waiting
from memory_store.errors import NotFoundError
from tests.sql_hooks import on_statement


def _event(n: int) -> AuditEvent:
    return AuditEvent(credential_id=f"c{n}", role="app", action="memory.search", memory_ids=[str(n)])


def test_concurrent_appends_all_commit_in_one_verifiable_chain(store: MemoryStore) -> None:
    tenants = [store.create_tenant(name=f"t{i}").id for i in range(3)]
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            tenant = tenants[n % 3]
            got = []
            for i in range(25):
                entries = store.audit.append_all(tenant_id=tenant, events=[_event(n * 100 + i), _event(-1)])
                assert [e.memory_ids for e in entries] == [[str(n * 100 + i)], ["-1"]]
                assert entries[1].seq == entries[0].seq + 1  # a caller's records stay together, in order
                got.append(entries[0].seq)
            results[n] = got
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:3]
    for tenant in tenants:
        report = store.audit.verify(tenant_id=tenant)
        assert report.ok and report.records_checked == 4 * 25 * 2
    per_tenant = Counter((n % 3, seq) for n, seqs in results.items() for seq in seqs)
    assert max(per_tenant.values()) == 1  # no seq handed to two callers


def test_one_bad_append_in_a_batch_fails_only_its_caller(store: MemoryStore) -> None:
    good = store.create_tenant(name="good").id
    batch = [_Waiting(good, [_event(1)]), _Waiting("no-such-tenant", [_event(2)]), _Waiting(good, [_event(3)])]
    store.audit._commit(batch)
    assert [w.entries[0].memory_ids for w in (batch[0], batch[2])] == [["1"], ["3"]]  # type: ignore[index]
    assert isinstance(batch[1].error, NotFoundError) and batch[1].entries is None
    assert store.audit.verify(tenant_id=good).ok
    with pytest.raises(NotFoundError):
        store.audit.append(tenant_id="no-such-tenant", event=_event(4))


def test_a_caller_that_stops_waiting_does_not_stop_the_writer(store: MemoryStore) -> None:
    """A request whose client went away cancels its pending commit; the writer still commits its records and
    goes on serving the others."""
    tenant = store.create_tenant(name="t").id
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        inside.set()
        release.wait(10)

    with on_statement(
        store.engine, thread="sealmem-audit-writer", starts_with="INSERT INTO audit_records", action=hold
    ):
        first = store.audit.submit(tenant_id=tenant, events=[_event(1)])
        assert inside.wait(10)  # the writer is held inside its commit
        cancelled = store.audit.submit(tenant_id=tenant, events=[_event(2)])  # queued behind it
        assert cancelled.cancel()
        release.set()
        assert [e.memory_ids for e in first.result(10)] == [["1"]]
    third = store.audit.append(tenant_id=tenant, event=_event(3))
    assert third.seq == 3  # the cancelled caller's record was committed all the same
    assert store.audit.verify(tenant_id=tenant).ok
