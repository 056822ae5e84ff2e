"""The service's maintenance thread deletes expired memories and persists indexes on its own."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from memory_store import NewMemory
from service.maintenance import Maintenance


def _wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_maintenance_deletes_expired_memories_of_every_tenant_and_keeps_the_rest(open_store):
    store = open_store()
    past = datetime.now(UTC) - timedelta(minutes=1)
    tenants = [store.create_tenant(name=name).id for name in ("one", "two")]
    for tenant in tenants:
        store.add_batch(
            tenant_id=tenant,
            items=[
                NewMemory(subject="alice", text="expired code 1234", expires_at=past),
                NewMemory(subject="alice", text="my dog is Biscuit"),
            ],
        )
    assert store.totals().memories == 4
    maintenance = Maintenance(store, persist_every=0.05, purge_every=0.05)
    maintenance.start()
    try:
        assert _wait_for(lambda: store.totals().memories == 2)
    finally:
        maintenance.stop()
    for tenant in tenants:
        texts = [m.memory.text for m in store.search(tenant_id=tenant, subject="alice", query="code dog", k=5)]
        assert texts == ["my dog is Biscuit"]
