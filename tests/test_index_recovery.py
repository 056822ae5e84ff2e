"""The FAISS index is a derived cache: reconciled after a crash, rebuilt loudly when corrupt, IVF when large."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from memory_store import Filters, NewMemory
from memory_store.models import Memory


def _ids_in_sql(store):
    with store.engine.connect() as conn:
        return set(conn.execute(select(Memory.id)).scalars())


@pytest.mark.usefixtures("faiss_only")
def test_kill_between_sql_commit_and_index_save_is_reconciled(open_store, store, tenant_id, settings):
    store.close()
    env = {**os.environ, "SEALMEM_MASTER_KEY": settings.master_key.get_secret_value()}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.crash_writer",
            settings.model_dump_json(exclude={"master_key"}),
            tenant_id,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    late_id = json.loads(proc.stdout)["late"]
    reopened = open_store()
    hits = reopened.search(
        tenant_id=tenant_id, subject="alice", query="committed after the last index save", k=1
    )
    assert [h.memory.id for h in hits] == [late_id]
    index = reopened.indexes.get(tenant_id)
    assert set(index.all_ids().tolist()) == _ids_in_sql(reopened)
    assert index.ntotal == 6


@pytest.mark.usefixtures("faiss_only")
def test_corrupt_index_file_is_rebuilt_loudly(open_store, store, tenant_id, caplog):
    store.add_batch(
        tenant_id=tenant_id, items=[NewMemory(subject="alice", text=f"memory {i}") for i in range(10)]
    )
    store.close()
    path = store.indexes.path(tenant_id)
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0xFF
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="sealmem.index"):
        reopened = open_store()
        assert reopened.stats(tenant_id=tenant_id).index_vectors == 10
    assert any(
        "rebuilding from SQL" in r.getMessage() and "authentication" in r.getMessage() for r in caplog.records
    )
    assert (
        reopened.search(tenant_id=tenant_id, subject="alice", query="memory 3", k=1)[0].memory.text
        == "memory 3"
    )


@pytest.mark.usefixtures("faiss_only")
def test_missing_index_file_is_rebuilt(open_store, store, tenant_id, caplog):
    store.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text="survives"))
    store.close()
    store.indexes.path(tenant_id).unlink()
    with caplog.at_level(logging.WARNING, logger="sealmem.index"):
        reopened = open_store()
        assert (
            reopened.search(tenant_id=tenant_id, subject="alice", query="survives")[0].memory.text
            == "survives"
        )
    assert any("missing" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("faiss_only")
def test_saved_index_is_reused_without_rebuild(open_store, store, tenant_id, caplog):
    store.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="alice", text=f"m{i}") for i in range(4)])
    store.close()
    with caplog.at_level(logging.INFO, logger="sealmem.index"):
        reopened = open_store()
        assert reopened.stats(tenant_id=tenant_id).index_vectors == 4
    assert not [r for r in caplog.records if "rebuil" in r.getMessage()]


def test_reindex_tenant_rebuilds_from_sql(store, tenant_id):
    store.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="alice", text=f"m{i}") for i in range(4)])
    assert store.reindex_tenant(tenant_id=tenant_id) == 4


@pytest.mark.usefixtures("faiss_only")
def test_large_tenant_switches_to_ivf_and_keeps_exact_filtering(open_store):
    store = open_store(index_exact_max=100, index_ivf_nprobe=4)
    tenant = store.create_tenant(name="big").id
    store.add_batch(
        tenant_id=tenant,
        items=[NewMemory(subject=f"user{i % 5}", text=f"shared topic number {i}") for i in range(300)],
    )
    rare = store.add(tenant_id=tenant, item=NewMemory(subject="rare", text="shared topic number one"))
    index = store.indexes.get(tenant)
    assert index.kind == "ivf" and index.ntotal == 301
    assert [
        h.memory.id for h in store.search(tenant_id=tenant, subject="rare", query="shared topic", k=3)
    ] == [rare.id]
    victim = store.search(tenant_id=tenant, subject="user1", query="shared topic number 6", k=1)[0].memory
    store.delete(tenant_id=tenant, memory_id=victim.id)
    assert victim.id not in [
        h.memory.id
        for h in store.search(
            tenant_id=tenant, subject="user1", query="shared topic", k=100, filters=Filters()
        )
    ]
    assert store.indexes.get(tenant).ntotal == 300
    store.close()
    reopened = open_store(index_exact_max=100, index_ivf_nprobe=4)
    assert reopened.indexes.get(tenant).kind == "ivf"
    with reopened.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Memory)).scalar() == 300
