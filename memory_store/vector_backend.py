"""Where vectors live: the in-process FAISS index (default) or pgvector inside PostgreSQL.

The store talks to one of these through the same small interface; both keep SQL as the source of truth
(the encrypted embedding column), so either can be rebuilt from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from memory_store.index_registry import IndexRegistry
from memory_store.models import Tenant

Vector = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class VectorStats:
    vectors: int
    bytes: int
    kind: str


class VectorBackend(Protocol):
    name: str
    score_all_max: int
    """A search scores every candidate at once up to this many (one call, nothing pooled scored twice); above
    it, the top pool, then the pooled ids that pool missed. Cheap where scoring is in process (FAISS) or
    returns every score in one row (pgvector)."""

    def stage(self, session: Session, tenant_id: str, items: Sequence[tuple[int, str, Vector]]) -> None:
        """Write vectors, as (memory id, its subject's id, vector), inside the caller's SQL transaction (no-op where
        vectors follow the change log)."""

    def after_commit(
        self, tenant_id: str, known: Mapping[int, Vector] | None = None, *, seqs: tuple[int, int] | None = None
    ) -> None:
        """Bring in-process state up to date after a committed write. ``seqs``: the first and last change seq
        the write took, when its changes are exactly ``known`` (new vectors, nothing deleted)."""

    def search(
        self,
        tenant_id: str,
        vector: Vector,
        k: int,
        candidates: IdArray,
        *,
        session: Session | None = None,
        subject_id: str | None = None,
    ) -> tuple[IdArray, Vector]:
        """Top-k (memory ids, inner products) among ``candidates``. ``session``: the caller's open session, whose
        snapshot chose the candidates; the backend reads through it instead of taking a second connection.
        ``subject_id``: every candidate is a memory of this subject (a backend may read the subject's vectors and
        keep the candidates among them)."""

    def rebuild(self, tenant_id: str) -> int: ...

    def stats(self, tenant_id: str) -> VectorStats: ...

    def persist(self, tenant_id: str | None = None, *, force: bool = False, only_due: bool = False) -> None: ...


_CHANGE_SEQ = select(Tenant.change_seq).where(Tenant.id == bindparam("tenant_id"))  # built once: run per search


class FaissBackend:
    """Per-tenant FAISS indexes that follow the SQL change log (see index_registry)."""

    name = "faiss"
    score_all_max = 4096

    def __init__(self, registry: IndexRegistry) -> None:
        self.registry = registry

    def stage(self, session: Session, tenant_id: str, items: Sequence[tuple[int, str, Vector]]) -> None:
        return None

    def after_commit(
        self, tenant_id: str, known: Mapping[int, Vector] | None = None, *, seqs: tuple[int, int] | None = None
    ) -> None:
        if seqs is not None and known and self.registry.advance(tenant_id, seqs[0], seqs[1], known):
            return
        self.registry.get(tenant_id, known=known)

    def search(
        self,
        tenant_id: str,
        vector: Vector,
        k: int,
        candidates: IdArray,
        *,
        session: Session | None = None,
        subject_id: str | None = None,
    ) -> tuple[IdArray, Vector]:
        # The caller's snapshot says how far the index must be: when it is there already (the usual case), no
        # query and no wait on the tenant's lock; otherwise the catch-up reads through the caller's session, so
        # a search never holds a second pooled connection.
        at_least = session.connection().scalar(_CHANGE_SEQ, {"tenant_id": tenant_id}) if session is not None else None
        return self.registry.get(tenant_id, at_least=at_least, session=session).search(vector, k, candidates)

    def rebuild(self, tenant_id: str) -> int:
        return self.registry.rebuild(tenant_id).ntotal

    def stats(self, tenant_id: str) -> VectorStats:
        index = self.registry.get(tenant_id)
        return VectorStats(index.ntotal, index.size_bytes, f"faiss-{index.kind}")

    def persist(self, tenant_id: str | None = None, *, force: bool = False, only_due: bool = False) -> None:
        self.registry.persist(tenant_id, force=force, only_due=only_due)
