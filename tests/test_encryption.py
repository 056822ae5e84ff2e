"""Envelope encryption: wrong keys, moved ciphertexts, rotation, crypto-shredding, nothing plaintext at rest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update

from memory_store import DecryptionError, MasterKey, NewMemory, WrongMasterKeyError, generate_key
from memory_store.keysource import master_key_from_settings
from memory_store.models import Memory, Subject, Tenant
from memory_store.vector_index import IndexFileError, TenantIndex

CANARY_TEXT = "canary-7f3a9 the vault code is swordfish-4411"
CANARY_META = "canary-meta-b52e1"


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in _files(folder) if p.suffix != ".db-shm"
    }


def test_master_key_is_required(settings):
    from memory_store import ConfigurationError

    with pytest.raises(ConfigurationError, match="sealmem keygen"):
        master_key_from_settings(settings.model_copy(update={"master_key": None}))


def test_wrong_master_key_is_refused_and_touches_nothing(open_store, tenant_id, store, settings):
    store.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text="hello"))
    store.close()
    with store.engine.connect() as conn:
        before = conn.execute(select(Memory.text_ct, Memory.metadata_ct)).all()
        tenants_before = conn.execute(select(Tenant.wrapped_index_key, Tenant.change_seq)).all()
    index_before = _digest(settings.index_dir)
    with pytest.raises(WrongMasterKeyError, match="does not match"):
        open_store(key=MasterKey(generate_key()))
    with store.engine.connect() as conn:
        assert conn.execute(select(Memory.text_ct, Memory.metadata_ct)).all() == before
        assert conn.execute(select(Tenant.wrapped_index_key, Tenant.change_seq)).all() == tenants_before
    assert _digest(settings.index_dir) == index_before


def test_ciphertext_moved_to_another_row_fails_to_decrypt(store, tenant_id):
    a = store.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text="alice secret"))
    b = store.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text="another secret"))
    c = store.add(tenant_id=tenant_id, item=NewMemory(subject="bob", text="bob secret"))
    with store.engine.begin() as conn:
        blob = conn.execute(select(Memory.text_ct).where(Memory.uid == a.id)).scalar_one()
        conn.execute(update(Memory).where(Memory.uid.in_([b.id, c.id])).values(text_ct=blob))
    with pytest.raises(DecryptionError):
        store.get(tenant_id=tenant_id, memory_id=b.id)  # same subject, other row
    with pytest.raises(DecryptionError):
        store.get(tenant_id=tenant_id, memory_id=c.id)  # other subject
    assert store.get(tenant_id=tenant_id, memory_id=a.id).text == "alice secret"


def test_rotation_rewraps_keys_without_reencrypting(open_store, store, tenant_id, backend):
    rec = store.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text="rotate me"))
    with store.engine.connect() as conn:
        cts = conn.execute(select(Memory.text_ct, Memory.embedding_ct)).all()
        wrapped = conn.execute(select(Subject.wrapped_key)).scalar_one()
    new_key = MasterKey(generate_key())
    # one subject key + one tenant index key (+ the tenant's vector-rotation key with pgvector)
    assert store.rotate_master_key(new_master_key=new_key) == (3 if backend == "pgvector" else 2)
    with store.engine.connect() as conn:
        assert conn.execute(select(Memory.text_ct, Memory.embedding_ct)).all() == cts
        assert conn.execute(select(Subject.wrapped_key)).scalar_one() != wrapped
    store.close()
    with pytest.raises(WrongMasterKeyError):
        open_store()  # the old key no longer opens the database
    reopened = open_store(key=new_key)
    assert reopened.get(tenant_id=tenant_id, memory_id=rec.id).text == "rotate me"
    assert reopened.search(tenant_id=tenant_id, subject="alice", query="rotate")[0].memory.id == rec.id


def test_nothing_plaintext_at_rest(request, backend, store, tenant_id, settings, embedder, master_key):
    store.add_batch(
        tenant_id=tenant_id,
        items=[
            NewMemory(subject="alice", text=CANARY_TEXT, metadata={"note": CANARY_META}),
            *[NewMemory(subject="alice", text=f"filler memory {i}") for i in range(20)],
        ],
    )
    store.search(tenant_id=tenant_id, subject="alice", query="vault code")
    data_keys = list(store._keys._cache.values())  # plaintext data keys live only in memory
    store.close()
    vector = embedder.embed([CANARY_TEXT])[0].astype("<f4").tobytes()
    needles = {
        "text": CANARY_TEXT.encode(),
        "text-fragment": b"swordfish-4411",
        "metadata": CANARY_META.encode(),
        "embedding": vector[:32],
        "master key": master_key.material,
        **{f"data key {i}": k for i, k in enumerate(data_keys)},
    }
    assert data_keys
    files = _files(settings.data_dir)
    if backend == "sqlite":
        assert any(p.suffix == ".index" for p in files) and any(p.suffix == ".db" for p in files)
    else:  # PostgreSQL: flush everything to its data files, then scan the whole cluster directory
        from sqlalchemy import create_engine, text

        server = request.getfixturevalue("pg_server")
        engine = create_engine(settings.database_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CHECKPOINT"))
        engine.dispose()
        files += _files(Path(server.pgdata))
    for path in files:
        try:  # a live cluster replaces some files (pg_internal.init) while it runs: gone is not at rest
            if path.stat().st_size >= 64_000_000:
                continue
            blob = path.read_bytes()
        except FileNotFoundError:
            continue
        for what, needle in needles.items():
            assert needle not in blob, f"{what} found in {path.name}"
            if what.startswith("text") or what == "metadata":
                assert needle.decode().encode("utf-16-le") not in blob


@pytest.mark.usefixtures("faiss_only")
def test_index_file_from_before_forget_cannot_be_read(store, tenant_id, settings):
    store.add(tenant_id=tenant_id, item=NewMemory(subject="alice", text="soon forgotten"))
    store.add(tenant_id=tenant_id, item=NewMemory(subject="bob", text="stays"))
    store.persist()
    path = store.indexes.path(tenant_id)
    stray = path.with_name("stray-copy.index")
    stray.write_bytes(path.read_bytes())
    with store.engine.connect() as conn:
        old_version = conn.execute(select(Tenant.index_key_version)).scalar_one()
    store.forget_subject(tenant_id=tenant_id, subject="alice")
    from sqlalchemy.orm import Session

    with Session(store.engine) as session:
        tenant = session.scalars(select(Tenant)).one()
        assert tenant.index_key_version == old_version + 1
        current_key = store._keys.index_key(tenant)
    with pytest.raises(IndexFileError):
        TenantIndex.load(
            stray, tenant_id=tenant_id, key=current_key, key_version=old_version, exact_max=10, nprobe=1
        )
    with pytest.raises(IndexFileError):
        TenantIndex.load(
            stray, tenant_id=tenant_id, key=current_key, key_version=old_version + 1, exact_max=10, nprobe=1
        )
    fresh = TenantIndex.load(
        path, tenant_id=tenant_id, key=current_key, key_version=old_version + 1, exact_max=10, nprobe=1
    )
    assert fresh.ntotal == 1
    assert np.all(fresh.all_ids() >= 0)
