"""Hybrid retrieval for one subject: dense (FAISS) + lexical (BM25), fused by reciprocal rank."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from memory_store.embedder import Embedder
from memory_store.errors import NotFoundError
from memory_store.fusion import FusionConfig, reciprocal_rank_fusion
from memory_store.index_registry import IndexRegistry
from memory_store.keys import KeyManager
from memory_store.lexical import LexicalCache, LexicalIndex
from memory_store.models import Memory, Subject, utcnow
from memory_store.records import apply_filters, candidate_query, decode, metadata_matches
from memory_store.sealing import MemorySealer
from memory_store.types import Filters, SearchHit

_MIN_FETCH = 50


class HybridSearcher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        keys: KeyManager,
        embedder: Embedder,
        indexes: IndexRegistry,
        lexical: LexicalCache,
    ) -> None:
        self._sessions = sessions
        self._keys = keys
        self._embedder = embedder
        self._indexes = indexes
        self._lexical = lexical

    def _lexical_index(self, session: Session, subject: Subject, sealer: MemorySealer) -> LexicalIndex:
        cached = self._lexical.get(subject.id, subject.change_seq)
        if cached is not None:
            return cached
        rows = session.execute(
            select(Memory.id, Memory.uid, Memory.text_ct).where(Memory.subject_id == subject.id).order_by(Memory.id)
        ).all()
        index = LexicalIndex([r[0] for r in rows], [sealer.open_text(r[1], r[2]) for r in rows])
        self._lexical.put(subject.id, subject.change_seq, index)
        return index

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
                rows = [r for r in rows if metadata_matches(sealer.open_metadata(r[1], r[3]), filters.metadata)]
            candidates = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            if len(candidates) == 0:
                return [], []
            fetch = int(min(len(candidates), max(4 * k, _MIN_FETCH)))

            vector = self._embedder.embed([query])[0]
            dense_ids, dense_scores = self._indexes.get(tenant_id).search(vector, fetch, candidates)
            dense = list(zip(dense_ids.tolist(), dense_scores.tolist(), strict=True))

            lexical_index = self._lexical_index(session, owner, sealer)
            scores = lexical_index.scores(query)
            allowed = np.isin(lexical_index.ids, candidates) & (scores > 0)
            order = np.argsort(-np.where(allowed, scores, -np.inf), kind="stable")[: int(allowed.sum())][:fetch]
            lexical = [(int(lexical_index.ids[i]), float(scores[i])) for i in order]

            stamps = None
            if fusion.recency_half_life_days and fusion.recency_weight:
                ids = list({m for m, _ in dense} | {m for m, _ in lexical})
                stamps = {
                    mid: occurred or created
                    for mid, occurred, created in session.execute(
                        select(Memory.id, Memory.occurred_at, Memory.created_at).where(Memory.id.in_(ids))
                    )
                }
            fused = reciprocal_rank_fusion(dense, lexical, fusion, timestamps=stamps, now=now)[:k]
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
