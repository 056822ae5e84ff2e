"""Access times: reads note when each memory was last read, and ``persist`` (every 30 s in the service) writes
them, each memory its own latest time, in one short write (a flush that grouped them by time took 120 ms after
1,500 searches and held the write lock meanwhile)."""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import select

from memory_store import MemoryStore, NewMemory
from memory_store.models import Memory


def _access_times(store: MemoryStore) -> dict[str, datetime | None]:
    with store.engine.connect() as conn:
        return {uid: stamp for uid, stamp in conn.execute(select(Memory.uid, Memory.last_accessed_at)).all()}


def test_persist_writes_each_memorys_latest_read(store: MemoryStore, tenant_id: str) -> None:
    records = store.add_batch(  # more memories than one executemany batch
        tenant_id=tenant_id, items=[NewMemory(subject="s", text=f"note {i} about the garden") for i in range(1_100)]
    )
    searched = store.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="t", text="a walk in the park")])
    unread, early, late, rest = records[-1], records[:3], records[3:6], records[6:-1]
    for record in early + late + rest:
        store.get(tenant_id=tenant_id, memory_id=record.id)
    time.sleep(0.01)
    for record in late:  # read again, later
        store.get(tenant_id=tenant_id, memory_id=record.id)
    hits = store.search(tenant_id=tenant_id, subject="t", query="a walk in the park", k=5)
    assert [hit.memory.id for hit in hits] == [searched[0].id]
    assert all(stamp is None for stamp in _access_times(store).values())  # noted, not yet written

    store.persist()
    stamps = _access_times(store)
    assert stamps[unread.id] is None
    assert all(stamps[r.id] is not None for r in early + late + rest)
    latest_early = max(stamps[r.id] for r in early)  # type: ignore[type-var]
    assert all(stamps[r.id] > latest_early for r in late)  # type: ignore[operator]
    assert stamps[searched[0].id] > max(stamps[r.id] for r in late)  # type: ignore[operator,type-var]
