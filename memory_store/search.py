"""Hybrid retrieval for one subject: dense (FAISS) + lexical (BM25), fused (see :mod:`memory_store.fusion`).

Steps of a search:

1. the candidate set: the subject's memories that pass the filters (SQL, plus metadata after decryption);
2. dense: the top ``max(4k, pool)`` candidates by cosine similarity (FAISS restricted to the candidates);
3. lexical: BM25 over the subject's memories (document = text + preceding turn of its session + date),
   restricted to the candidates, top ``max(4k, pool)``;
4. score fusion: the union of both lists plus their session neighbours (previous/next candidate of the same
   session) gets exact cosine scores (one more FAISS search restricted to exactly those ids), is normalised
   and mixed, and each memory inherits a share of its best neighbour's score; or, with ``method="rrf"``,
   reciprocal rank fusion of the two lists as before.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Protocol

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from memory_store.embedder import Embedder
from memory_store.errors import NotFoundError
from memory_store.fusion import Fused, FusionConfig, Neighbours, reciprocal_rank_fusion, score_fusion
from memory_store.index_registry import IndexRegistry
from memory_store.keys import KeyManager
from memory_store.lexical import LexicalCache, LexicalIndex, LexicalSource, build_documents
from memory_store.models import Memory, Subject, utcnow
from memory_store.records import apply_filters, candidate_query, decode, metadata_matches
from memory_store.sealing import MemorySealer
from memory_store.types import Filters, SearchHit

IdArray = npt.NDArray[np.int64]
Vector = npt.NDArray[np.float32]


class VectorSearch(Protocol):
    """What the searcher needs from a vector backend (``memory_store.vector_backend.VectorBackend`` fits)."""

    def search(self, tenant_id: str, vector: Vector, k: int, candidates: IdArray) -> tuple[IdArray, Vector]:
        """Top-k (memory ids, inner products) among ``candidates``."""
        ...


class _RegistrySearch:
    """Adapts the FAISS :class:`IndexRegistry` to :class:`VectorSearch`."""

    def __init__(self, registry: IndexRegistry) -> None:
        self._registry = registry

    def search(self, tenant_id: str, vector: Vector, k: int, candidates: IdArray) -> tuple[IdArray, Vector]:
        return self._registry.get(tenant_id).search(vector, k, candidates)


class HybridSearcher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        keys: KeyManager,
        embedder: Embedder,
        vectors: VectorSearch | IndexRegistry,
        lexical: LexicalCache,
    ) -> None:
        self._sessions = sessions
        self._keys = keys
        self._embedder = embedder
        self._vectors = _RegistrySearch(vectors) if isinstance(vectors, IndexRegistry) else vectors
        self._lexical = lexical

    def _dense_search(self, tenant_id: str, vector: Vector, k: int, candidates: IdArray) -> dict[int, float]:
        """Top-``k`` cosine similarities among ``candidates`` (all of them when k >= their count)."""
        ids, scores = self._vectors.search(tenant_id, vector, k, candidates)
        return dict(zip(ids.tolist(), scores.tolist(), strict=True))

    def _lexical_index(
        self, session: Session, subject: Subject, sealer: MemorySealer, fusion: FusionConfig
    ) -> LexicalIndex:
        version = (subject.change_seq, fusion.lexical_context, fusion.lexical_dates)
        cached = self._lexical.get(subject.id, version)
        if cached is not None:
            return cached
        rows = session.execute(
            select(Memory.id, Memory.uid, Memory.text_ct, Memory.session_id, Memory.occurred_at)
            .add_columns(Memory.created_at)
            .where(Memory.subject_id == subject.id)
            .order_by(Memory.id)
        ).all()
        sources = [
            LexicalSource(
                memory_id=r[0],
                text=sealer.open_text(r[1], r[2]),
                session_id=r[3],
                occurred_at=r[4],
                created_at=r[5],
            )
            for r in rows
        ]
        docs = build_documents(sources, context=fusion.lexical_context, dates=fusion.lexical_dates)
        index = LexicalIndex([s.memory_id for s in sources], docs)
        self._lexical.put(subject.id, version, index)
        return index

    @staticmethod
    def _neighbours(
        session: Session, subject: Subject, around: Collection[int], sorted_candidates: IdArray
    ) -> Neighbours:
        """(previous, next) candidate in its session, for each candidate in the sessions of ``around``."""
        if not around:
            return {}
        in_sessions = (
            select(Memory.session_id)
            .where(Memory.id.in_(list(around)), Memory.session_id.is_not(None))
            .distinct()
            .scalar_subquery()
        )
        rows = session.execute(
            select(Memory.id, Memory.session_id, Memory.occurred_at, Memory.created_at).where(
                Memory.subject_id == subject.id, Memory.session_id.in_(in_sessions)
            )
        ).all()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        slot = np.searchsorted(sorted_candidates, ids)
        is_candidate = (slot < len(sorted_candidates)) & (
            sorted_candidates[np.minimum(slot, len(sorted_candidates) - 1)] == ids
        )
        by_session: dict[str, list[tuple[datetime, int]]] = {}
        for (memory_id, session_id, occurred, created), keep in zip(rows, is_candidate.tolist(), strict=True):
            if keep and session_id is not None:
                by_session.setdefault(session_id, []).append((occurred or created, memory_id))
        out: dict[int, tuple[int | None, int | None]] = {}
        for members in by_session.values():
            members.sort()
            ordered = [m for _, m in members]
            for pos, memory_id in enumerate(ordered):
                out[memory_id] = (
                    ordered[pos - 1] if pos > 0 else None,
                    ordered[pos + 1] if pos + 1 < len(ordered) else None,
                )
        return out

    @staticmethod
    def _timestamps(session: Session, ids: Iterable[int]) -> dict[int, datetime]:
        return {
            mid: occurred or created
            for mid, occurred, created in session.execute(
                select(Memory.id, Memory.occurred_at, Memory.created_at).where(Memory.id.in_(list(ids)))
            )
        }

    def search(
        self, *, tenant_id: str, subject: str, query: str, k: int, filters: Filters, fusion: FusionConfig
    ) -> tuple[list[SearchHit], list[int]]:
        now = utcnow()
        with self._sessions() as session:
            owner = session.scalar(
                select(Subject).where(Subject.tenant_id == tenant_id, Subject.external_id == subject)
            )
            if owner is None:
                raise NotFoundError("subject not found")
            sealer = MemorySealer(self._keys.subject_key(owner), tenant_id, owner.id)
            rows = session.execute(apply_filters(candidate_query(tenant_id, [owner.id]), filters, now)).all()
            if filters.metadata:
                wanted = filters.metadata
                rows = [r for r in rows if metadata_matches(sealer.open_metadata(r[1], r[3]), wanted)]
            candidates = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            if len(candidates) == 0:
                return [], []
            fetch = int(min(len(candidates), max(4 * k, fusion.pool)))

            vector = self._embedder.embed([query])[0]
            dense = self._dense_search(tenant_id, vector, fetch, candidates)

            lexical_index = self._lexical_index(session, owner, sealer, fusion)
            scores = lexical_index.scores(query)
            allowed = np.isin(lexical_index.ids, candidates) & (scores > 0)
            ranked = np.argsort(-np.where(allowed, scores, -np.inf), kind="stable")
            order = ranked[: min(int(allowed.sum()), fetch)]
            lexical = [(int(lexical_index.ids[i]), float(scores[i])) for i in order]

            want_recency = bool(fusion.recency_half_life_days and fusion.recency_weight)
            fused: list[Fused]
            if fusion.method == "rrf":
                dense_ranked = sorted(dense.items(), key=lambda item: -item[1])
                stamps = (
                    self._timestamps(session, {m for m, _ in dense_ranked} | {m for m, _ in lexical})
                    if want_recency
                    else None
                )
                fused = reciprocal_rank_fusion(dense_ranked, lexical, fusion, timestamps=stamps, now=now)[:k]
            else:
                pool = set(dense) | {m for m, _ in lexical}
                neighbours: Neighbours = {}
                if fusion.neighbour_weight > 0:
                    neighbours = self._neighbours(session, owner, pool, np.sort(candidates))
                    for memory_id in list(pool):
                        pool.update(n for n in neighbours.get(memory_id, (None, None)) if n is not None)
                missing = np.fromiter((m for m in pool if m not in dense), dtype=np.int64)
                if len(missing):
                    dense.update(self._dense_search(tenant_id, vector, len(missing), missing))
                lexical_scores = {
                    m: score for m, score in lexical_index.scores_of(scores, pool).items() if score > 0
                }
                pooled_dense = {m: dense[m] for m in pool if m in dense}
                stamps = self._timestamps(session, pooled_dense) if want_recency else None
                fused = score_fusion(
                    pooled_dense, lexical_scores, fusion, neighbours=neighbours, timestamps=stamps, now=now
                )[:k]
            if not fused:
                return [], []
            by_id = {
                row.id: row
                for row in session.scalars(select(Memory).where(Memory.id.in_([f.memory_id for f in fused])))
            }
            hits = [
                SearchHit(
                    memory=decode(by_id[f.memory_id], owner, sealer),
                    score=f.score,
                    dense_score=f.dense,
                    lexical_score=f.lexical,
                )
                for f in fused
                if f.memory_id in by_id
            ]
        return hits, [f.memory_id for f in fused]
