"""Every committed change has its audit record, whenever the process dies (issue #11).

A child process (``tests.audit_crash_writer``) adds, updates, deletes and forgets memories on real SQLite and
PostgreSQL, each change with its audit record, and is killed with SIGKILL: inside the audit append (before and
after the record is written, with the change's transaction open) at chosen steps, and at random moments. After
each death the memory history (written by the change itself) is compared with the audit trail: every change
that committed is named by a record, and the hash chain verifies.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from sqlalchemy import select

from memory_store import MemoryStore
from memory_store.access import AuditRecord
from memory_store.models import MemoryEvent
from memory_store.settings import StoreSettings

pytestmark = pytest.mark.slow


def _child(settings: StoreSettings, tenant_id: str, seed: int, die_at: str) -> subprocess.Popen[str]:
    env = {**os.environ, "SEALMEM_MASTER_KEY": settings.master_key.get_secret_value()}  # type: ignore[union-attr]
    args = [sys.executable, "-m", "tests.audit_crash_writer", settings.model_dump_json(exclude={"master_key"})]
    return subprocess.Popen(
        [*args, tenant_id, str(seed), die_at], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _changes_match_the_audit(store: MemoryStore, tenant_id: str) -> int:
    """Every (memory, add/update/delete) of the history is named by a record; returns how many were checked."""
    with store.engine.connect() as conn:
        history = Counter(
            (uid, action)
            for uid, action in conn.execute(
                select(MemoryEvent.memory_uid, MemoryEvent.action).where(MemoryEvent.tenant_id == tenant_id)
            )
        )
        audited: Counter[str] = Counter()
        for (ids,) in conn.execute(select(AuditRecord.memory_ids).where(AuditRecord.tenant_id == tenant_id)):
            audited.update(ids)
    per_memory: Counter[str] = Counter()
    for (uid, _action), n in history.items():
        per_memory[uid] += n
    missing = {uid: n for uid, n in per_memory.items() if audited[uid] < n}
    assert not missing, f"{len(missing)} committed changes have no audit record"
    report = store.audit.verify(tenant_id=tenant_id)
    assert report.ok, report.reason
    return sum(per_memory.values())


def test_no_committed_change_lacks_its_audit_record_after_kill_9(open_store, store, tenant_id, settings) -> None:
    store.close()
    acknowledged = 0  # changes the children reported committed
    deaths = [f"{step}:{when}" for step in (1, 2, 3, 7, 15) for when in ("before", "after")]
    for seed, die_at in enumerate(deaths):
        proc = _child(settings, tenant_id, seed, die_at)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, err[-2000:]
        acknowledged += len(out.split())
    rng = random.Random(11)
    for seed in range(100, 110):
        proc = _child(settings, tenant_id, seed, "random")
        assert proc.stdout is not None
        for _ in range(rng.randrange(3, 40)):  # let it commit a few changes, then kill it at a random moment
            if not proc.stdout.readline():
                break
            acknowledged += 1
        time.sleep(rng.random() * 0.05)
        proc.kill()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, err[-2000:]
        acknowledged += len(out.split())
    reopened = open_store()
    assert _changes_match_the_audit(reopened, tenant_id) > 20
    records = reopened.audit.entries(tenant_id=tenant_id, action="memory.change", limit=1000)
    assert len(records) >= acknowledged > 100  # a change that returned has its record (a batch has one per subject)
