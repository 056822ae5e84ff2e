"""Key management: the master key, per-subject data keys and per-tenant index keys.

Data keys exist in plaintext only in this process's memory (an LRU cache); in the database they are always
wrapped by the master key, with associated data naming their owner.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory_store.crypto import MasterKey, associated_data, subject_key_ad, tenant_index_key_ad
from memory_store.errors import MasterKeyChangedError, WrongMasterKeyError
from memory_store.models import Keyring, Subject, Tenant, utcnow
from memory_store.vector_models import TenantVectorKey


class KeyManager:
    def __init__(self, master: MasterKey, *, cache_size: int = 10_000) -> None:
        self._master = master
        self._cache: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @property
    def master(self) -> MasterKey:
        return self._master

    def verify_or_initialise(self, session: Session) -> None:
        """Bind a new database to this master key, or refuse a key that does not match."""
        ring = session.get(Keyring, 1)
        if ring is None:
            session.add(Keyring(id=1, key_check=self._master.key_check(), fingerprint=self._master.fingerprint))
            return
        if not self._master.verify(ring.key_check):
            raise WrongMasterKeyError(
                f"the master key (fingerprint {self._master.fingerprint}) does not match this database "
                f"(created with fingerprint {ring.fingerprint}); nothing was read or changed"
            )

    def require_current(self, session: Session) -> None:
        """Refuse to wrap a new key in ``session``'s transaction unless the keyring still names this process's
        master key. A rotation run by another process while this one serves would otherwise leave keys wrapped
        with the old master key, unreadable after a restart. The keyring row is share-locked (PostgreSQL) until
        the commit, and :meth:`rotate` locks it exclusively, so the two cannot interleave."""
        ring = session.scalar(select(Keyring).where(Keyring.id == 1).with_for_update(read=True))
        if ring is None or ring.fingerprint != self._master.fingerprint:
            raise MasterKeyChangedError(
                "the master key was rotated by another process: restart this one with the new master key"
            )

    def _cached(self, cache_key: tuple[str, str, int], wrapped: bytes, ad: bytes) -> bytes:
        with self._lock:
            key = self._cache.get(cache_key)
            if key is not None:
                self._cache.move_to_end(cache_key)
                return key
        key = self._master.unwrap(wrapped, ad)
        with self._lock:
            self._cache[cache_key] = key
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return key

    def subject_key(self, subject: Subject) -> bytes:
        return self._cached(("s", subject.id, 0), subject.wrapped_key, subject_key_ad(subject.tenant_id, subject.id))

    def index_key(self, tenant: Tenant) -> bytes:
        return self._cached(
            ("t", tenant.id, tenant.index_key_version),
            tenant.wrapped_index_key,
            tenant_index_key_ad(tenant.id, tenant.index_key_version),
        )

    def wrap_subject_key(self, tenant_id: str, subject_id: str, key: bytes) -> bytes:
        return self._master.wrap(key, subject_key_ad(tenant_id, subject_id))

    def wrap_index_key(self, tenant_id: str, version: int, key: bytes) -> bytes:
        return self._master.wrap(key, tenant_index_key_ad(tenant_id, version))

    def forget(self, subject_id: str) -> None:
        with self._lock:
            self._cache.pop(("s", subject_id, 0), None)

    def rotate(self, session: Session, new_master: MasterKey) -> int:
        """Re-wrap every data key under ``new_master`` inside the caller's transaction; returns keys moved."""
        # Tenants first, then the keyring: the order writers take them in (tenant write lock, then keyring
        # check), so a rotation waits for running writes instead of deadlocking with them. FOR NO KEY UPDATE:
        # it must not block the foreign-key checks (FOR KEY SHARE on the tenant) of audit appends that hold
        # their tenant's audit head, or the two would deadlock.
        session.execute(select(Tenant.id).order_by(Tenant.id).with_for_update(key_share=True))
        ring = session.scalar(select(Keyring).where(Keyring.id == 1).with_for_update())
        if ring is None or not self._master.verify(ring.key_check):
            raise WrongMasterKeyError("current master key does not match the database")
        moved = 0
        for subject in session.scalars(select(Subject)):
            ad = subject_key_ad(subject.tenant_id, subject.id)
            subject.wrapped_key = new_master.wrap(self._master.unwrap(subject.wrapped_key, ad), ad)
            moved += 1
        for tenant in session.scalars(select(Tenant)):
            ad = tenant_index_key_ad(tenant.id, tenant.index_key_version)
            tenant.wrapped_index_key = new_master.wrap(self._master.unwrap(tenant.wrapped_index_key, ad), ad)
            moved += 1
        for vector_key in session.scalars(select(TenantVectorKey)):
            ad = associated_data("vector-key", vector_key.tenant_id)
            vector_key.wrapped_key = new_master.wrap(self._master.unwrap(vector_key.wrapped_key, ad), ad)
            moved += 1
        ring.key_check = new_master.key_check()
        ring.fingerprint = new_master.fingerprint
        ring.rotated_at = utcnow()
        return moved

    def use(self, new_master: MasterKey) -> None:
        """Switch to ``new_master`` after a committed rotation (cached data keys are unchanged)."""
        self._master = new_master
