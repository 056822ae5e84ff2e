"""Hybrid retrieval for one subject: dense (FAISS or pgvector) + lexical (BM25), fused (see
:mod:`memory_store.fusion`).

Steps of a search:

1. the candidate set: the subject's memories that pass the filters (SQL, plus metadata after decryption);
2. dense: the top ``max(4k, pool)`` candidates by cosine similarity (the vector backend's search restricted
   to the candidates; up to 4,096 candidates, all of them are scored in that one search);
3. lexical: BM25 over the subject's memories (document = text + preceding memory of its session + date;
   built from decrypted text, cached per subject version, never persisted), restricted to the candidates,
   top ``max(4k, pool)``;
4. score fusion (default): the union of both lists plus each member's session neighbours (previous/next
   candidate in the same session, from the cached session order) is scored exactly - cosine (a second
   vector search of just the ids still missing, if any) and BM25 - normalised, mixed, and each memory
   inherits a share of its better neighbour's score; or, with ``method="rrf"``, reciprocal rank fusion of
   the two ranked lists alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Protocol

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from memory_store.embedder import Embedder
from memory_store.errors import NotFoundError
from memory_store.fusion import Fused, FusionConfig, Neighbours, reciprocal_rank_fusion, score_fusion
from memory_store.keys import KeyManager
from memory_store.lexical import LexicalCache, LexicalIndex, LexicalSource, SessionLinks, build_documents
from memory_store.models import Memory, Subject, utcnow
from memory_store.records import apply_filters, candidate_query, decode, metadata_matches
from memory_store.sealing import MemorySealer
from memory_store.types import Filters, SearchHit

IdArray = npt.NDArray[np.int64]
_SCORE_ALL_MAX = 4096
Vector = npt.NDArray[np.float32]


def _membership(candidates: IdArray) -> Callable[[int], bool]:
    """A fast ``id in candidates`` test (a set for small candidate sets, binary search for large ones)."""
    if len(candidates) <= _SCORE_ALL_MAX:
        return set(candidates.tolist()).__contains__
    ordered = np.sort(candidates)

    def contains(memory_id: int) -> bool:
        slot = int(np.searchsorted(ordered, memory_id))
        return slot < len(ordered) and int(ordered[slot]) == memory_id

    return contains


class VectorSearch(Protocol):
    """What the searcher needs from a vector backend (``memory_store.vector_backend.VectorBackend`` fits)."""

    def search(self, tenant_id: str, vector: Vector, k: int, candidates: IdArray) -> tuple[IdArray, Vector]:
        """Top-k (memory ids, inner products) among ``candidates``."""
        ...


class HybridSearcher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        keys: KeyManager,
        embedder: Embedder,
        vectors: VectorSearch,
        lexical: LexicalCache,
    ) -> None:
        self._sessions = sessions
        self._keys = keys
        self._embedder = embedder
        self._vectors = vectors
        self._lexical = lexical

    def _dense_search(self, tenant_id: str, vector: Vector, k: int, candidates: IdArray) -> dict[int, float]:
        """Top-``k`` cosine similarities among ``candidates`` (all of them when k >= their count)."""
        ids, scores = self._vectors.search(tenant_id, vector, k, candidates)
        return dict(zip(ids.tolist(), scores.tolist(), strict=True))

    def _lexical_index(
        self, session: Session, subject: Subject, sealer: MemorySealer, fusion: FusionConfig
    ) -> LexicalIndex:
        kinds = fusion.context_kinds
        version = (subject.change_seq, fusion.lexical_context, fusion.lexical_dates, kinds)
        cached = self._lexical.get(subject.id, version)
        if cached is not None:
            return cached
        rows = session.execute(
            select(Memory.id, Memory.uid, Memory.text_ct, Memory.session_id, Memory.occurred_at)
            .add_columns(Memory.created_at, Memory.kind)
            .where(Memory.tenant_id == subject.tenant_id, Memory.subject_id == subject.id)  # uses the index
            .order_by(Memory.id)
        ).all()
        sources = [
            LexicalSource(
                memory_id=r[0],
                text=sealer.open_text(r[1], r[2]),
                session_id=r[3],
                occurred_at=r[4],
                created_at=r[5],
                kind=r[6],
            )
            for r in rows
        ]
        docs = build_documents(sources, context=fusion.lexical_context, dates=fusion.lexical_dates, kinds=kinds)
        index = LexicalIndex([s.memory_id for s in sources], docs, links=SessionLinks(sources, kinds))
        self._lexical.put(subject.id, version, index)
        return index

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
            base = candidate_query(tenant_id, [owner.id], with_metadata=bool(filters.metadata))
            rows = session.execute(apply_filters(base, filters, now)).all()
            if filters.metadata:
                wanted = filters.metadata
                rows = [r for r in rows if metadata_matches(sealer.open_metadata(r[1], r[2]), wanted)]
            candidates = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            if len(candidates) == 0:
                return [], []
            fetch = int(min(len(candidates), max(4 * k, fusion.pool)))

            vector = self._embedder.embed([query])[0]
            # Small candidate sets are scored in full by one search; larger ones get a second, exact search
            # of just the pooled ids the first one did not return.
            exhaustive = len(candidates) <= _SCORE_ALL_MAX
            dense = self._dense_search(tenant_id, vector, len(candidates) if exhaustive else fetch, candidates)
            dense_ranked = sorted(dense.items(), key=lambda item: (-item[1], item[0]))[:fetch]

            lexical_index = self._lexical_index(session, owner, sealer, fusion)
            scores = lexical_index.scores(query)
            allowed = np.isin(lexical_index.ids, candidates) & (scores > 0)
            ranked = np.argsort(-np.where(allowed, scores, -np.inf), kind="stable")
            order = ranked[: min(int(allowed.sum()), fetch)]
            lexical = [(int(lexical_index.ids[i]), float(scores[i])) for i in order]

            want_recency = bool(fusion.recency_half_life_days and fusion.recency_weight)
            fused: list[Fused]
            if fusion.method == "rrf":
                stamps = (
                    self._timestamps(session, {m for m, _ in dense_ranked} | {m for m, _ in lexical})
                    if want_recency
                    else None
                )
                fused = reciprocal_rank_fusion(dense_ranked, lexical, fusion, timestamps=stamps, now=now)[:k]
            else:
                pool = {m for m, _ in dense_ranked} | {m for m, _ in lexical}
                neighbours: Neighbours = {}
                if fusion.neighbour_weight > 0 and lexical_index.links is not None:
                    neighbours = lexical_index.links.neighbours(pool, _membership(candidates))
                    for pair in list(neighbours.values()):
                        pool.update(n for n in pair if n is not None)
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
