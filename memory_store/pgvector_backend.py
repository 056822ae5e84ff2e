"""Vectors in PostgreSQL (pgvector, HNSW): written in the metadata transaction, shared by every API replica."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import psycopg
from pgvector.sqlalchemy import Vector as PgVector
from psycopg.adapt import Dumper
from psycopg.pq import Format
from sqlalchemy import (
    BigInteger,
    Integer,
    LargeBinary,
    Text,
    bindparam,
    cast,
    delete,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, REAL, aggregate_order_by, insert
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.types import UserDefinedType

from memory_store.crypto import associated_data, generate_key
from memory_store.errors import ConfigurationError
from memory_store.keys import KeyManager
from memory_store.models import Memory, Subject
from memory_store.sealing import MemorySealer
from memory_store.vector_backend import IdArray, Vector, VectorStats
from memory_store.vector_models import PGVECTOR_DIM, MemoryVector, TenantVectorKey
from memory_store.vector_rotation import orthogonal_matrix, rotate

log = logging.getLogger("sealmem.pgvector")


class WireVector:
    """A vector bound in pgvector's binary format (see :class:`_WireVectorDumper`)."""

    __slots__ = ("values",)

    def __init__(self, values: Vector) -> None:
        self.values = values


class _WireVectorDumper(Dumper):
    """pgvector's binary ``vector`` (dimension, a reserved zero, big-endian float32s), sent with no type so the
    server takes the type from the statement (``vector``). The text form cost psycopg and pgvector's SQLAlchemy
    type about 0.35 ms per vector in Python (a ``repr`` per float); this costs microseconds."""

    format = Format.BINARY
    oid = 0

    def dump(self, obj: WireVector) -> bytes:
        values = obj.values
        return len(values).to_bytes(2, "big") + b"\0\0" + values.astype(">f4").tobytes()


# Every connection made after this import can bind a WireVector (psycopg copies its global adapters into each new
# connection; ``memory_store`` imports this module before it can make an engine).
psycopg.adapters.register_dumper(WireVector, _WireVectorDumper)


class _WireVectorType(UserDefinedType[WireVector]):
    """The bind type of a :class:`WireVector`: no bind processing, and ``vector`` in SQL."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return f"VECTOR({PGVECTOR_DIM})"


# The two searches, built once (binding their values is all a search does): ``query`` the rotated query vector
# (a WireVector), ``ids`` the candidates' memory ids as an array literal (see ``_id_array``), ``k`` the result
# size.
_QUERY = cast(bindparam("query", type_=_WireVectorType()), PgVector(PGVECTOR_DIM))
_IDS = cast(bindparam("ids", type_=Text), ARRAY(BigInteger))
_K = bindparam("k", type_=Integer)
_HNSW_DISTANCE = MemoryVector.embedding.max_inner_product(_QUERY)  # negative inner product
_HNSW_TOP = (
    select(MemoryVector.memory_id, _HNSW_DISTANCE)
    .where(MemoryVector.tenant_id == bindparam("tenant_id"), MemoryVector.memory_id == func.any(_IDS))
    .order_by(_HNSW_DISTANCE)
    .limit(_K)
)
# A write's vector rows (bound in binary, like the query: formatting 384 floats as text cost about 0.3 ms per
# vector in Python), run as one statement for all of a write's rows.
_NEW_ROW = insert(MemoryVector).values(
    memory_id=bindparam("memory_id"),
    tenant_id=bindparam("tenant_id"),
    subject_id=bindparam("subject_id"),
    embedding=cast(bindparam("embedding", type_=_WireVectorType()), PgVector(PGVECTOR_DIM)),
)
_UPSERT = _NEW_ROW.on_conflict_do_update(
    index_elements=["memory_id"],
    set_={"embedding": _NEW_ROW.excluded.embedding, "subject_id": _NEW_ROW.excluded.subject_id},
)
_EMPTY = literal_column("''::bytea", LargeBinary)


def _all_distances(where: ColumnElement[bool]) -> Select[bytes, bytes]:
    """Exact scores of every vector ``where`` selects, in one row of two byte strings, both in id order (two
    aggregates of one scan see the rows alike, but PostgreSQL does not promise it; the sort costs little next to
    reading the rows): the ids as big-endian int8s and the inner products as big-endian float4s, read by numpy
    without parsing. A row per vector cost psycopg about 2.6 us in Python, and two comma-separated lists about
    0.6 ms more than this for a subject's 1,000 candidates (formatting and parsing the numbers)."""
    return select(
        func.string_agg(
            func.int8send(MemoryVector.memory_id), aggregate_order_by(_EMPTY, MemoryVector.memory_id), type_=LargeBinary
        ),
        func.string_agg(
            func.float4send(cast(MemoryVector.embedding.max_inner_product(_QUERY), REAL)),
            aggregate_order_by(_EMPTY, MemoryVector.memory_id),
            type_=LargeBinary,
        ),
    ).where(where)


# The candidates by id: a primary-key probe and a heap read per candidate (no HNSW index).
_ALL_DISTANCES = _all_distances(MemoryVector.memory_id == func.any(_IDS))
# A whole subject's vectors: one range scan of ix_memory_vectors_subject, which carries the embeddings (0.5 ms
# of database time for 1,000 vectors, against 2.2 ms by id).
_SUBJECT_DISTANCES = _all_distances(MemoryVector.subject_id == bindparam("subject_id"))


_EMPTY_SCORES: tuple[IdArray, Vector] = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


def _id_array(ids: IdArray) -> str:
    """``ids`` as a PostgreSQL array literal: psycopg adapts a list of Python ints in Python, 0.40 ms for a subject's
    1,089 candidates here, this 0.09 ms."""
    return "{" + ",".join(map(str, ids.tolist())) + "}"


def _key_ad(tenant_id: str) -> bytes:
    return associated_data("vector-key", tenant_id)  # keys.KeyManager.rotate re-wraps with the same AD


class PgVectorBackend:
    name = "pgvector"

    def __init__(
        self,
        sessions: sessionmaker[Session],
        keys: KeyManager,
        *,
        dim: int,
        exact_max: int = 20_000,
        ef_search: int = 100,
    ) -> None:
        if dim != PGVECTOR_DIM:
            raise ConfigurationError(f"the pgvector backend stores {PGVECTOR_DIM}-dim vectors; the embedder has {dim}")
        self._sessions = sessions
        self._keys = keys
        self._exact_max = exact_max
        self._ef_search = ef_search
        # Every candidate set the exact path takes is scored in one query (see _ALL_DISTANCES).
        self.score_all_max = exact_max
        self._matrices: dict[str, Vector] = {}
        self._lock = threading.Lock()

    def _matrix(self, session: Session, tenant_id: str, *, create: bool) -> Vector | None:
        with self._lock:
            cached = self._matrices.get(tenant_id)
        if cached is not None:
            return cached
        row = session.get(TenantVectorKey, tenant_id)
        if row is None:
            if not create:
                return None
            key = generate_key()
            self._keys.require_current(session)
            session.add(
                TenantVectorKey(tenant_id=tenant_id, wrapped_key=self._keys.master.wrap(key, _key_ad(tenant_id)))
            )
            session.flush()
        else:
            key = self._keys.master.unwrap(row.wrapped_key, _key_ad(tenant_id))
        matrix = orthogonal_matrix(key, PGVECTOR_DIM)
        with self._lock:
            self._matrices[tenant_id] = matrix
        return matrix

    def stage(self, session: Session, tenant_id: str, items: Sequence[tuple[int, str, Vector]]) -> None:
        if not items:
            return
        matrix = self._matrix(session, tenant_id, create=True)
        assert matrix is not None
        rotated = rotate(matrix, np.vstack([vector for _, _, vector in items]))
        session.execute(
            _UPSERT,
            [
                {
                    "memory_id": memory_id,
                    "tenant_id": tenant_id,
                    "subject_id": subject_id,
                    "embedding": WireVector(rotated[i]),
                }
                for i, (memory_id, subject_id, _) in enumerate(items)
            ],
        )

    def after_commit(
        self, tenant_id: str, known: Mapping[int, Vector] | None = None, *, seqs: tuple[int, int] | None = None
    ) -> None:
        return None

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
        if k <= 0 or len(candidates) == 0:
            return _EMPTY_SCORES
        if session is not None:  # the caller's connection and snapshot: no second connection per search
            return self._search(session, tenant_id, vector, k, candidates, subject_id) or _EMPTY_SCORES
        with self._sessions.begin() as own:
            return self._search(own, tenant_id, vector, k, candidates, subject_id) or _EMPTY_SCORES

    def _search(
        self, session: Session, tenant_id: str, vector: Vector, k: int, candidates: IdArray, subject_id: str | None
    ) -> tuple[IdArray, Vector] | None:
        matrix = self._matrix(session, tenant_id, create=False)
        if matrix is None:
            return None
        query = WireVector(rotate(matrix, vector.reshape(1, -1))[0])
        if len(candidates) > self._exact_max:
            # Large candidate sets: the HNSW index, filtered, with a wider beam than the result size (SET LOCAL
            # lasts to the end of the caller's transaction and touches only HNSW scans).
            session.execute(text(f"SET LOCAL hnsw.ef_search = {max(self._ef_search, 2 * k)}"))
            params = {"query": query, "ids": _id_array(candidates), "k": k, "tenant_id": tenant_id}
            rows = session.connection().execute(_HNSW_TOP, params).all()
            if len(rows) >= min(k, len(candidates)):
                return self._scored(rows)
        # Small candidate sets (one subject), or a filtered HNSW scan that came back short: exact scoring of just
        # those rows, or of the subject's rows when the candidates are its memories (kept to the candidates).
        # On the session's connection: these selects need none of the ORM's execution (about 50 us a statement).
        connection = session.connection()
        ids, distances = _EMPTY_SCORES
        if subject_id is not None:
            found = connection.execute(_SUBJECT_DISTANCES, {"query": query, "subject_id": subject_id}).one()
            ids, distances = self._decoded(found[0], found[1])
            wanted = np.isin(ids, candidates)
            ids, distances = ids[wanted], distances[wanted]
            if len(ids) == len(candidates):
                return self._best(ids, distances, k)
            candidates = np.setdiff1d(candidates, ids)  # rows written before revision 0009 name no subject
        found = connection.execute(_ALL_DISTANCES, {"query": query, "ids": _id_array(candidates)}).one()
        more_ids, more_distances = self._decoded(found[0], found[1])
        return self._best(np.concatenate((ids, more_ids)), np.concatenate((distances, more_distances)), k)

    @staticmethod
    def _decoded(ids_bytes: bytes | None, distances_bytes: bytes | None) -> tuple[IdArray, Vector]:
        """The ids and distances in the two byte strings of :func:`_all_distances` (None: no row matched)."""
        if not ids_bytes or not distances_bytes:
            return _EMPTY_SCORES
        return (
            np.frombuffer(ids_bytes, dtype=">i8").astype(np.int64),
            np.frombuffer(distances_bytes, dtype=">f4").astype(np.float32),
        )

    @staticmethod
    def _best(ids: IdArray, distances: Vector, k: int) -> tuple[IdArray, Vector] | None:
        """The ``k`` smallest distances (ties by id) as (ids, inner products)."""
        if len(ids) == 0:
            return None
        order = np.lexsort((ids, distances))[:k]
        return ids[order], -distances[order]

    @staticmethod
    def _scored(rows: Sequence[Any]) -> tuple[IdArray, Vector]:
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        scores = np.array([-float(r[1]) for r in rows], dtype=np.float32)
        return ids, scores

    def rebuild(self, tenant_id: str) -> int:
        """Re-derive every vector row of the tenant from the encrypted embeddings in ``memories``."""
        total = 0
        with self._sessions.begin() as session:
            session.execute(delete(MemoryVector).where(MemoryVector.tenant_id == tenant_id))
            subjects = {s.id: s for s in session.scalars(select(Subject).where(Subject.tenant_id == tenant_id))}
            sealers = {sid: MemorySealer(self._keys.subject_key(s), tenant_id, sid) for sid, s in subjects.items()}
            rows = session.execute(
                select(Memory.id, Memory.uid, Memory.subject_id, Memory.embedding_ct).where(
                    Memory.tenant_id == tenant_id
                )
            ).all()
            for start in range(0, len(rows), 1000):
                chunk = rows[start : start + 1000]
                self.stage(
                    session,
                    tenant_id,
                    [(r[0], r[2], sealers[r[2]].open_embedding(r[1], r[3])) for r in chunk],
                )
                total += len(chunk)
        log.info("rebuilt pgvector rows of tenant %s: %d vectors", tenant_id, total)
        return total

    def stats(self, tenant_id: str) -> VectorStats:
        with self._sessions.begin() as session:
            count = session.scalar(
                select(func.count()).select_from(MemoryVector).where(MemoryVector.tenant_id == tenant_id)
            )
        n = int(count or 0)
        return VectorStats(n, n * PGVECTOR_DIM * 4, "pgvector-hnsw")

    def persist(self, tenant_id: str | None = None, *, force: bool = False, only_due: bool = False) -> None:
        return None
