"""Keeps each tenant's FAISS index in step with SQL, the source of truth.

Every write to a tenant's vectors bumps ``tenants.change_seq`` (row-locked, so commit order is seq order) and
appends to ``vector_changes``. An index remembers the seq it reflects; before use it replays the changes it
has not seen, or rebuilds from the encrypted embeddings in SQL when the log cannot bridge the gap. The same
mechanism reconciles an index file saved before a crash and lets several processes share one database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session, sessionmaker

from memory_store.errors import NotFoundError
from memory_store.keys import KeyManager
from memory_store.models import Memory, Subject, Tenant, VectorChange
from memory_store.sealing import MemorySealer
from memory_store.vector_index import IndexFileError, TenantIndex

log = logging.getLogger("sealmem.index")
CATCH_UP_CHUNK = 10_000
"""Rows read per statement when the index catches up with rows it has no vectors for."""
CHANGE_LOG_KEEP = 100_000

# Built once: with several processes, most searches and writes catch up with another process's writes, and
# building these per call cost more CPU than running them.
_CHANGES_AFTER = (
    select(VectorChange.seq, VectorChange.memory_id, VectorChange.op)
    .where(VectorChange.tenant_id == bindparam("tenant"), VectorChange.seq > bindparam("after"))
    .order_by(VectorChange.seq)
)
_SEALED_VECTORS = select(Memory.id, Memory.uid, Memory.subject_id, Memory.embedding_ct).where(
    Memory.tenant_id == bindparam("tenant"), Memory.id.in_(bindparam("ids", expanding=True))
)
_SUBJECTS_BY_ID = select(Subject).where(Subject.id.in_(bindparam("ids", expanding=True)))


class IndexRegistry:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        keys: KeyManager,
        *,
        index_dir: Path,
        exact_max: int,
        nprobe: int,
        persist_every: int,
    ) -> None:
        self._sessions = sessions
        self._keys = keys
        self._dir = index_dir
        self._exact_max = exact_max
        self._nprobe = nprobe
        self._persist_every = persist_every
        self._indexes: dict[str, TenantIndex] = {}
        self._lock = threading.Lock()
        self._tenant_locks: dict[str, threading.Lock] = {}
        # Saving (serialise, seal, write, fsync) takes a lock of its own: the tenant lock is held only while the
        # index changes, so searches that must catch up never wait for a file to be written.
        self._save_locks: dict[str, threading.Lock] = {}
        self._saving: dict[str, threading.Thread] = {}  # due saves under way, one thread each (see _save_soon)

    def path(self, tenant_id: str) -> Path:
        return self._dir / f"{tenant_id}.index"

    def _tenant_lock(self, tenant_id: str) -> threading.Lock:
        with self._lock:
            return self._tenant_locks.setdefault(tenant_id, threading.Lock())

    def _save_lock(self, tenant_id: str) -> threading.Lock:
        with self._lock:
            return self._save_locks.setdefault(tenant_id, threading.Lock())

    def loaded(self) -> dict[str, TenantIndex]:
        with self._lock:
            return dict(self._indexes)

    def get(
        self,
        tenant_id: str,
        *,
        known: Mapping[int, npt.NDArray[np.float32]] | None = None,
        at_least: int | None = None,
        session: Session | None = None,
    ) -> TenantIndex:
        """The tenant's index, loaded or rebuilt on first use and caught up with SQL. ``at_least``: the tenant's
        change seq as the caller read it; an index already that far is returned without asking SQL again.
        ``session``: the caller's open (reading) session, used for every read here, so a caller never holds a
        second pooled connection; the index is then not saved here (writes and the maintenance thread save)."""
        if at_least is not None:
            with self._lock:
                held = self._indexes.get(tenant_id)
            if held is not None and held.synced_seq >= at_least:
                return held
        with self._tenant_lock(tenant_id), self._reading(session) as reading:
            index = self._indexes.get(tenant_id)
            if index is None:
                index = self._open(reading, tenant_id)
                self._indexes[tenant_id] = index
            index = self._catch_up(reading, tenant_id, index, known or {})
            self._indexes[tenant_id] = index
        if session is None and self._due(index):
            self._save_soon(tenant_id, index)
        return index

    def _due(self, index: TenantIndex) -> bool:
        """Saving rewrites the whole file (0.4 s and 154 MB at 100k vectors): wait for a quarter of the index to
        change (or persist_every) so the cost per memory stays constant as the index grows, but never longer than
        half the change log kept; the change log covers the rest on a crash."""
        return index.changes_since_save >= min(max(self._persist_every, index.ntotal // 4), CHANGE_LOG_KEEP // 2)

    @contextmanager
    def _reading(self, session: Session | None) -> Iterator[Session]:
        if session is not None:
            yield session
            return
        with self._sessions.begin() as own:
            yield own

    def advance(
        self, tenant_id: str, first_seq: int, last_seq: int, vectors: Mapping[int, npt.NDArray[np.float32]]
    ) -> bool:
        """Apply a write this process just committed, whose change seqs ``first_seq..last_seq`` added exactly
        ``vectors``, without reading the change log: only when the index stands right before them (no other
        write in between). False when it does not (or is not loaded): the caller then catches up from SQL."""
        with self._tenant_lock(tenant_id):
            index = self._indexes.get(tenant_id)
            if index is None or index.synced_seq != first_seq - 1 or len(vectors) != last_seq - first_seq + 1:
                return False
            ids = np.fromiter(vectors.keys(), dtype=np.int64, count=len(vectors))
            index.upsert(ids, np.vstack(list(vectors.values())))
            index.synced_seq = last_seq
            due = self._due(index)
        if due:
            self._save_soon(tenant_id, index)
        return True

    def _open(self, session: Session, tenant_id: str) -> TenantIndex:
        tenant = session.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFoundError("tenant not found")
        path = self.path(tenant_id)
        try:
            index = TenantIndex.load(
                path,
                tenant_id=tenant_id,
                key=self._keys.index_key(tenant),
                key_version=tenant.index_key_version,
                exact_max=self._exact_max,
                nprobe=self._nprobe,
            )
        except IndexFileError as exc:
            if path.exists() or tenant.change_seq > 0:
                # Loud: the cache was lost or tampered with; it is rebuilt, never silently emptied.
                log.warning("index of tenant %s unusable (%s): rebuilding from SQL", tenant_id, exc)
            return self._build(session, tenant)
        if index.dim != tenant.embedding_dim or index.synced_seq > tenant.change_seq:
            log.warning("index of tenant %s does not match the database: rebuilding from SQL", tenant_id)
            return self._build(session, tenant)
        return index

    def _build(self, session: Session, tenant: Tenant) -> TenantIndex:
        index = TenantIndex(tenant.embedding_dim, exact_max=self._exact_max, nprobe=self._nprobe)
        index.synced_seq = tenant.change_seq
        # Read with the seq, before the rows: rows read later (another statement, on PostgreSQL another snapshot)
        # can only lack more of a forgotten subject, never hold rows this version forgot.
        index.key_version = tenant.index_key_version
        rows = session.execute(
            select(Memory.id, Memory.uid, Memory.subject_id, Memory.embedding_ct).where(Memory.tenant_id == tenant.id)
        ).all()
        ids, vectors = self._decrypt(session, tenant.id, rows)
        index.upsert(ids, vectors)
        index.changes_since_save = max(index.changes_since_save, 1)
        log.info("rebuilt index of tenant %s from SQL: %d vectors", tenant.id, len(ids))
        return index

    def _decrypt(
        self, session: Session, tenant_id: str, rows: Iterable[tuple[int, str, str, bytes]]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        rows = list(rows)
        subject_ids = {row[2] for row in rows}
        subjects = (
            {s.id: s for s in session.scalars(_SUBJECTS_BY_ID, {"ids": sorted(subject_ids)})} if subject_ids else {}
        )
        sealers = {sid: MemorySealer(self._keys.subject_key(s), tenant_id, sid) for sid, s in subjects.items()}
        ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return ids, np.zeros((0, 0), dtype=np.float32)
        vectors = np.vstack([sealers[row[2]].open_embedding(row[1], row[3]) for row in rows])
        return ids, vectors

    def _catch_up(
        self, session: Session, tenant_id: str, index: TenantIndex, known: Mapping[int, npt.NDArray[np.float32]]
    ) -> TenantIndex:
        tenant = session.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFoundError("tenant not found")
        if tenant.change_seq == index.synced_seq:
            index.key_version = tenant.index_key_version  # the version of the seq the index stands at
            return index
        changes = session.execute(_CHANGES_AFTER, {"tenant": tenant_id, "after": index.synced_seq}).all()
        if tenant.change_seq < index.synced_seq or not changes or changes[0][0] != index.synced_seq + 1:
            log.warning("index of tenant %s cannot follow the change log: rebuilding from SQL", tenant_id)
            return self._build(session, tenant)
        last_op: dict[int, str] = {}
        for _seq, memory_id, op in changes:
            last_op[memory_id] = op
        removed = np.array([m for m, op in last_op.items() if op == "delete"], dtype=np.int64)
        upserted = [m for m, op in last_op.items() if op == "upsert"]
        index.remove(removed)
        have = [m for m in upserted if m in known]
        if have:
            index.upsert(np.array(have, dtype=np.int64), np.vstack([known[m] for m in have]))
        missing = [m for m in upserted if m not in known]
        # In chunks: a replica far behind (e.g. started after another one's bulk import) may miss more rows
        # than one statement can name (PostgreSQL takes at most 65,535 parameters).
        for start in range(0, len(missing), CATCH_UP_CHUNK):
            chunk = missing[start : start + CATCH_UP_CHUNK]
            rows = session.execute(_SEALED_VECTORS, {"tenant": tenant_id, "ids": chunk}).all()
            ids, vectors = self._decrypt(session, tenant_id, rows)
            index.upsert(ids, vectors)
            gone = np.array(sorted(set(chunk) - set(ids.tolist())), dtype=np.int64)
            index.remove(gone)
        index.synced_seq = max(tenant.change_seq, changes[-1][0])
        # Set after the changes are applied, and as read before them: a forget logged after the tenant row was
        # read leaves the index at the older version, and a save relabels it only once it stands at or past the
        # seq read with the newer one (TenantIndex.save).
        index.key_version = tenant.index_key_version
        return index

    def _save(self, tenant_id: str, index: TenantIndex, *, wait: bool = True) -> bool:
        """Write ``index`` to its file (without the tenant lock: a snapshot is taken under the index's own lock)
        and prune the change log far behind it. ``wait``: False skips the save when another one of the tenant
        is under way. False when nothing was written: the index is behind a forget the tenant's current key
        version reflects (it stays dirty and is saved once a catch-up brings it there)."""
        lock = self._save_lock(tenant_id)
        if not lock.acquire(blocking=wait):
            return False
        try:
            # The key, its version and the change seq from one row, in a session closed before the file is
            # written (on PostgreSQL it would otherwise sit idle in a transaction, holding a pooled connection).
            with self._sessions.begin() as session:
                tenant = session.get(Tenant, tenant_id)
                if tenant is None:
                    return False
                key, version, seq = self._keys.index_key(tenant), tenant.index_key_version, tenant.change_seq
            if not index.save(self.path(tenant_id), tenant_id=tenant_id, key=key, key_version=version, seq=seq):
                return False
            with self._sessions.begin() as session:
                session.execute(
                    delete(VectorChange).where(
                        VectorChange.tenant_id == tenant_id, VectorChange.seq <= seq - CHANGE_LOG_KEEP
                    )
                )
            return True
        finally:
            lock.release()

    def _save_soon(self, tenant_id: str, index: TenantIndex) -> None:
        """A due save on a thread of its own, so the write or search that made it due (a request thread) does not
        wait for the file (0.4 s at 100k vectors, seconds at millions); nothing when one of the tenant's is
        already under way."""
        with self._lock:
            running = self._saving.get(tenant_id)
            if running is not None and running.is_alive():
                return
            thread = threading.Thread(
                target=self._save_logged, args=(tenant_id, index), name="sealmem-index-save", daemon=True
            )
            self._saving[tenant_id] = thread
            thread.start()

    def _save_logged(self, tenant_id: str, index: TenantIndex) -> None:
        try:
            self._save(tenant_id, index, wait=False)
        except Exception:  # the index stays dirty: saved when next due, by the periodic upkeep, or at close
            log.exception("saving the index of tenant %s failed", tenant_id)

    def wait_for_saves(self, tenant_id: str | None = None) -> None:
        """Return once the due saves under way (of ``tenant_id``, or of every tenant) have finished."""
        with self._lock:
            running = [t for tid, t in self._saving.items() if tenant_id is None or tid == tenant_id]
        for thread in running:
            thread.join()

    def persist(self, tenant_id: str | None = None, *, force: bool = False, only_due: bool = False) -> int:
        """Save dirty indexes (all with ``force``; with ``only_due``, those changed enough to be due, as the
        periodic upkeep does: a large index with a few changes is not rewritten every turn); returns how many
        were written. Without ``only_due`` it first waits for due saves under way, so a closing store leaves no
        file half written."""
        if not only_due:
            self.wait_for_saves(tenant_id)
        written = 0
        for tid, index in self.loaded().items():
            if tenant_id is not None and tid != tenant_id:
                continue
            wanted = force or (self._due(index) if only_due else index.changes_since_save > 0)
            if wanted and self._save(tid, index):
                written += 1
        return written

    def rebuild(self, tenant_id: str) -> TenantIndex:
        with self._tenant_lock(tenant_id), self._sessions.begin() as session:
            tenant = session.get(Tenant, tenant_id)
            if tenant is None:
                raise NotFoundError("tenant not found")
            index = self._build(session, tenant)
            self._indexes[tenant_id] = index
        self.persist(tenant_id, force=True)
        return index

    def evict(self, tenant_id: str) -> None:
        with self._lock:
            self._indexes.pop(tenant_id, None)
