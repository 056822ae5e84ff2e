"""Hybrid retrieval for one subject: dense (FAISS or pgvector) + lexical (BM25), fused (see
:mod:`memory_store.fusion`).

Steps of a search:

1. the candidate set: the subject's memories that pass the filters (SQL, plus metadata after decryption);
2. dense: the top ``max(4k, pool)`` candidates by cosine similarity (the vector backend's search restricted
   to the candidates; up to 4,096 candidates, all of them are scored in that one search) to the query
   embedded without the names of the subject's speakers (``strip_speakers``, by the lexical index of step 3;
   the query is embedded before the database session opens, stripped by the subject's cached index, and
   again in the rare case that the current index strips it differently);
3. lexical: BM25 over the subject's memories (document = text + preceding memory of its session + date;
   built from decrypted text, cached per subject version, never persisted; see :mod:`memory_store.lexical`),
   restricted to the candidates, top ``max(4k, pool)``. The cached index follows this process's writes in
   place, and other processes' writes by replaying the change log (the rows of the memories it names); it
   is rebuilt from all the subject's rows only when the log cannot bridge the gap;
4. score fusion (default): the union of both lists plus each member's session neighbours (previous/next
   candidate in the same session, from the cached session order) is scored exactly - cosine (a second
   vector search of just the ids still missing, if any) and BM25 - normalised, mixed, and each memory
   inherits a share of its next neighbour's score (its reply; with ``neighbour_direction="both"``, the
   better of its two neighbours'), memories that name someone or something other than the subject's speakers
   get ``proper_noun_weight`` more, and turns whose speaker the query names ("What does Caroline ...?" and a
   turn "Caroline: ...") get ``speaker_weight`` more; or, with ``method="rrf"``, reciprocal rank fusion of
   the two ranked lists alone;
5. the fused list is read best first: hits whose :func:`~memory_store.calibration.relevance` is below the
   search's ``min_score`` are skipped, and so are the assistant's own chat replies (:func:`assistant_reply`)
   unless the search asks for them, until ``k`` hits are found.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session, sessionmaker

from memory_store.calibration import Calibration, for_embedder
from memory_store.embedder import Embedder
from memory_store.errors import NotFoundError
from memory_store.fusion import Fused, FusionConfig, Neighbours, reciprocal_rank_fusion, score_fusion
from memory_store.keys import KeyManager
from memory_store.lexical import LexicalCache, LexicalIndex, LexicalOptions, LexicalSource, StaleIndexError
from memory_store.models import Memory, Subject, VectorChange, utcnow
from memory_store.prepared import EarlyVector
from memory_store.records import (
    RECORD_COLUMNS,
    candidate_statement,
    decode,
    filter_params,
    filter_shape,
    metadata_matches,
)
from memory_store.sealing import MemorySealer
from memory_store.types import Filters, MemoryRecord, SearchHit

IdArray = npt.NDArray[np.int64]
_SET_MEMBERSHIP_MAX = 4096
# The most tenant change seqs a cached lexical index is brought forward by from the change log (beyond: rebuild).
_CATCH_UP_MAX_SEQS = 10_000
Vector = npt.NDArray[np.float32]


def _membership(candidates: IdArray) -> Callable[[int], bool]:
    """A fast ``id in candidates`` test (a set for small candidate sets, binary search for large ones)."""
    if len(candidates) <= _SET_MEMBERSHIP_MAX:
        return set(candidates.tolist()).__contains__
    ordered = np.sort(candidates)

    def contains(memory_id: int) -> bool:
        slot = int(np.searchsorted(ordered, memory_id))
        return slot < len(ordered) and int(ordered[slot]) == memory_id

    return contains


def lexical_source(row: Memory, text: str) -> LexicalSource:
    """What the lexical index holds of ``row`` (its plaintext ``text``), as a search would read it back: the
    database returns UTC times."""
    occurred = row.occurred_at.astimezone(UTC) if row.occurred_at is not None else None
    return LexicalSource(
        memory_id=row.id,
        text=text,
        session_id=row.session_id,
        occurred_at=occurred,
        created_at=row.created_at.astimezone(UTC),
        kind=row.kind,
    )


def assistant_reply(record: MemoryRecord) -> bool:
    """Whether ``record`` is an assistant's reply in a conversation (a ``turn`` whose metadata ``role`` is
    ``"assistant"``, as the chat loop stores its replies): what the assistant said, not a memory about the
    user, so a search leaves it out unless asked (it still serves as session context of the turns around it)."""
    return record.kind == "turn" and record.metadata.get("role") == "assistant"


def wants_assistant(filters: Filters) -> bool:
    """A metadata filter on ``role: "assistant"`` asks for assistant replies."""
    metadata = filters.metadata
    return metadata is not None and metadata.get("role") == "assistant"


class VectorSearch(Protocol):
    """What the searcher needs from a vector backend (``memory_store.vector_backend.VectorBackend`` fits)."""

    score_all_max: int

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
        """Top-k (memory ids, inner products) among ``candidates`` (memories of ``subject_id`` when given), read
        through ``session`` when given."""
        ...


class QueryVectors:
    """The embedder, with an LRU cache of query vectors per subject (``size`` 0: no cache).

    Chat loops and dashboards repeat queries (a message is retrieved for, then its distilled statements are
    searched for again), and a query's embedding is most of a search's CPU. Entries are keyed by the subject
    and a digest of the query, so a fast (cached) answer tells a caller only about its own subject's earlier
    searches, never another subject's or tenant's; a forget drops the subject's entries. Process memory only.
    """

    def __init__(self, embedder: Embedder, size: int) -> None:
        self._embedder = embedder
        self._size = size
        self._cache: OrderedDict[tuple[str, bytes], Vector] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def vector(self, subject_id: str, query: str) -> Vector:
        """``query``'s vector, searched for by the subject with internal id ``subject_id``."""
        if self._size == 0:
            fresh: Vector = self._embedder.embed([query])[0]
            return fresh
        digest = (subject_id, hashlib.blake2b(query.encode("utf-8", "surrogatepass"), digest_size=16).digest())
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None:
                self._cache.move_to_end(digest)
                self.hits += 1
                return cached
            self.misses += 1
        vector: Vector = self._embedder.embed([query])[0]
        vector.setflags(write=False)
        with self._lock:
            self._cache[digest] = vector
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return vector

    def forget(self, subject_id: str) -> None:
        with self._lock:
            for key in [key for key in self._cache if key[0] == subject_id]:
                del self._cache[key]


class SubjectIds:
    """Internal ids of recently searched subjects by (tenant, external id), LRU, so a search can embed its query
    before it opens a database session (on PostgreSQL a pooled connection would otherwise sit idle through the
    embedding). Only a guess: the search checks it against the row it reads and embeds again on a mismatch (a
    subject forgotten and created anew), so a stale guess costs time, never a wrong or cross-subject vector."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def guess(self, tenant_id: str, subject: str) -> str | None:
        with self._lock:
            return self._ids.get((tenant_id, subject))

    def remember(self, tenant_id: str, subject: str, subject_id: str) -> None:
        if self._size == 0:
            return
        with self._lock:
            self._ids[(tenant_id, subject)] = subject_id
            self._ids.move_to_end((tenant_id, subject))
            while len(self._ids) > self._size:
                self._ids.popitem(last=False)


# Statements run by every search, built once (building one costs more CPU than SQLite takes to run it).
_SUBJECT = select(Subject).where(
    Subject.tenant_id == bindparam("tenant_id"), Subject.external_id == bindparam("external_id")
)
_HITS = select(*RECORD_COLUMNS).where(Memory.id.in_(bindparam("ids", expanding=True)))


class HybridSearcher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        keys: KeyManager,
        embedder: Embedder,
        vectors: VectorSearch,
        lexical: LexicalCache,
        *,
        query_cache_size: int = 0,
    ) -> None:
        self._sessions = sessions
        self._keys = keys
        self.queries = QueryVectors(embedder, query_cache_size)
        self._subject_ids = SubjectIds(query_cache_size)
        self._vectors = vectors
        self._lexical = lexical
        self.calibration: Calibration | None = for_embedder(embedder.model_id)

    def _dense_search(
        self, session: Session, tenant_id: str, vector: Vector, k: int, candidates: IdArray
    ) -> dict[int, float]:
        """Top-``k`` cosine similarities among ``candidates`` (all of them when k >= their count)."""
        ids, scores = self._vectors.search(tenant_id, vector, k, candidates, session=session)
        return dict(zip(ids.tolist(), scores.tolist(), strict=True))

    def _lexical_index(
        self, session: Session, subject: Subject, sealer: MemorySealer, fusion: FusionConfig, *, fresh: bool = False
    ) -> LexicalIndex:
        """The subject's index as of ``subject.change_seq``: cached (kept current by this process's writes, or
        brought forward by the change log), else built from its rows (``fresh``: always built)."""
        options = LexicalOptions(context=fusion.lexical_context, dates=fusion.lexical_dates, kinds=fusion.context_kinds)
        if not fresh:
            cached = self._lexical.get(subject.id, subject.change_seq, options) or self._lexical_catch_up(
                session, subject, sealer, options
            )
            if cached is not None:
                return cached
        sources = self._lexical_sources(session, subject, sealer)
        index = LexicalIndex.build(sources, options)
        self._lexical.put(subject.id, subject.change_seq, index)
        return index

    @staticmethod
    def _lexical_sources(
        session: Session, subject: Subject, sealer: MemorySealer, only: Select[Any] | None = None
    ) -> list[LexicalSource]:
        """The subject's memories (those whose ids ``only`` selects, when given) as the lexical index sees them."""
        query = (
            select(Memory.id, Memory.uid, Memory.text_ct, Memory.session_id, Memory.occurred_at)
            .add_columns(Memory.created_at, Memory.kind)
            .where(Memory.tenant_id == subject.tenant_id, Memory.subject_id == subject.id)  # uses the index
        )
        if only is not None:
            query = query.where(Memory.id.in_(only))
        return [
            LexicalSource(
                memory_id=r[0],
                text=sealer.open_text(r[1], r[2]),
                session_id=r[3],
                occurred_at=r[4],
                created_at=r[5],
                kind=r[6],
            )
            for r in session.execute(query.order_by(Memory.id)).all()
        ]

    def _lexical_catch_up(
        self, session: Session, subject: Subject, sealer: MemorySealer, options: LexicalOptions
    ) -> LexicalIndex | None:
        """The cached index brought forward to ``subject.change_seq`` by replaying the tenant's change log since
        its seq (writes of other processes or replicas: each write logs one ``vector_changes`` row per seq and
        memory); None when there is nothing to bring forward or the log cannot bridge the gap."""
        held = self._lexical.peek(subject.id) if self._lexical.incremental else None
        if held is None:
            return None
        before, index = held
        after = subject.change_seq
        if index.options != options or not before < after <= before + _CATCH_UP_MAX_SEQS:
            return None
        logged = select(VectorChange.memory_id).where(
            VectorChange.tenant_id == subject.tenant_id, VectorChange.seq > before, VectorChange.seq <= after
        )
        changed = session.scalars(logged).all()
        if len(changed) != after - before:  # pruned, or a write that did not log: rebuild
            return None
        upserts = self._lexical_sources(session, subject, sealer, only=logged)
        present = {source.memory_id for source in upserts}
        removals = sorted({memory_id for memory_id in changed if memory_id not in present})
        self._lexical.advance(subject.id, before, after, upserts=upserts, removals=removals)
        return self._lexical.get(subject.id, after, options)

    @staticmethod
    def _timestamps(session: Session, ids: Iterable[int]) -> dict[int, datetime]:
        return {
            mid: occurred or created
            for mid, occurred, created in session.execute(
                select(Memory.id, Memory.occurred_at, Memory.created_at).where(Memory.id.in_(list(ids)))
            )
        }

    def _hits(
        self,
        session: Session,
        owner: Subject,
        sealer: MemorySealer,
        fused: list[Fused],
        k: int,
        min_score: float,
        include_assistant: bool,
    ) -> tuple[list[SearchHit], list[int]]:
        """The first ``k`` of ``fused`` (best first) whose relevance is at least ``min_score``, assistant replies
        left out unless ``include_assistant``; rows are read a few more than still needed at a time. Without a
        calibration (another embedder) hits have no relevance and ``min_score`` keeps them all."""
        calibration = self.calibration
        passing: list[tuple[Fused, float | None]]
        if calibration is None:
            passing = [(f, None) for f in fused]
        else:
            scored = ((f, calibration.relevance(f.dense, f.lexical)) for f in fused)
            passing = [(f, r) for f, r in scored if r >= min_score]
        hits: list[SearchHit] = []
        ids: list[int] = []
        start = 0
        connection = session.connection()  # Core rows: the ORM's execution adds about 50 us a statement
        while len(hits) < k and start < len(passing):
            chunk = passing[start : start + k - len(hits) + 4]
            start += len(chunk)
            by_id = {  # columns, not ORM objects: hits are read, never changed, and need no sealed embedding
                row.id: row for row in connection.execute(_HITS, {"ids": [f.memory_id for f, _ in chunk]})
            }
            for f, rel in chunk:
                row = by_id.get(f.memory_id)
                if row is None:
                    continue
                record = decode(row, owner, sealer)
                if not include_assistant and assistant_reply(record):
                    continue
                hits.append(
                    SearchHit(memory=record, score=f.score, dense_score=f.dense, lexical_score=f.lexical, relevance=rel)
                )
                ids.append(f.memory_id)
                if len(hits) == k:
                    break
        return hits, ids

    def early_vector(self, tenant_id: str, subject: str, query: str, fusion: FusionConfig) -> EarlyVector | None:
        """The query's vector before any database read, for the subject's id as last seen by this process (None
        when unknown): stripped of speakers' names by the guessed subject's cached index. :meth:`search` checks
        the guess against the row it reads and embeds again on a mismatch."""
        guess = self._subject_ids.guess(tenant_id, subject)
        if guess is None:
            return None
        held = self._lexical.peek(guess) if fusion.strip_speakers else None
        text = held[1].strip_speakers(query) if held is not None else query
        return EarlyVector(guess, text, self.queries.vector(guess, text))

    def search(
        self,
        *,
        tenant_id: str,
        subject: str,
        query: str,
        k: int,
        filters: Filters,
        fusion: FusionConfig,
        min_score: float = 0.0,
        include_assistant: bool = False,
        early: EarlyVector | None = None,
    ) -> tuple[list[SearchHit], list[int]]:
        """``early``: the query's vector made beforehand by :meth:`early_vector` (made here when None)."""
        now = utcnow()
        fusion = fusion.for_query(query)
        if early is None:
            early = self.early_vector(tenant_id, subject, query, fusion)
        with self._sessions.begin() as session:
            owner = session.scalar(_SUBJECT, {"tenant_id": tenant_id, "external_id": subject})
            if owner is None:
                raise NotFoundError("subject not found")
            self._subject_ids.remember(tenant_id, subject, owner.id)
            sealer = MemorySealer(self._keys.subject_key(owner), tenant_id, owner.id)
            # On the session's connection: up to a subject's thousands of plain rows, without the ORM's result
            # processing (a third of the query's time at 1,000 rows).
            rows = (
                session.connection()
                .execute(
                    candidate_statement(filter_shape(filters), with_metadata=bool(filters.metadata)),
                    {"tenant_id": tenant_id, "subject_id": owner.id, **filter_params(filters, now)},
                )
                .all()
            )
            if filters.metadata:
                wanted = filters.metadata
                rows = [r for r in rows if metadata_matches(sealer.open_metadata(r[1], r[2]), wanted)]
            candidates = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            if len(candidates) == 0:
                return [], []
            fetch = int(min(len(candidates), max(4 * k, fusion.pool)))

            lexical_index = self._lexical_index(session, owner, sealer, fusion)
            try:
                scored = lexical_index.scores(query)
            except StaleIndexError:  # a failed in-place update: rebuild
                lexical_index = self._lexical_index(session, owner, sealer, fusion, fresh=True)
                scored = lexical_index.scores(query)

            dense_text = lexical_index.strip_speakers(query) if fusion.strip_speakers else query
            if early is not None and early.subject_id == owner.id and early.text == dense_text:
                vector = early.vector
            else:  # no guess, a wrong one, or the subject's speakers changed since the cached index
                vector = self.queries.vector(owner.id, dense_text)
            # Candidate sets up to the backend's score_all_max are scored in full by one search; larger ones
            # get a second, exact search of just the pooled ids the first one did not return.
            exhaustive = len(candidates) <= self._vectors.score_all_max
            # No filter but status and expiry: the candidates are (nearly) all the subject's memories, and a
            # backend may read the subject's vectors instead of each candidate's.
            whole_subject = not any(filter_shape(filters)[1:]) and not filters.metadata
            top_ids, top_scores = self._vectors.search(
                tenant_id,
                vector,
                len(candidates) if exhaustive else fetch,
                candidates,
                session=session,
                subject_id=owner.id if whole_subject else None,
            )
            dense = dict(zip(top_ids.tolist(), top_scores.tolist(), strict=True))
            best = np.lexsort((top_ids, -top_scores))[:fetch]  # best first, ties by id
            dense_ranked = list(zip(top_ids[best].tolist(), top_scores[best].tolist(), strict=True))
            scores = scored.scores
            allowed = np.isin(scored.ids, candidates) & (scores > 0)
            ranked = np.argsort(-np.where(allowed, scores, -np.inf), kind="stable")
            order = ranked[: min(int(allowed.sum()), fetch)]
            lexical = [(int(scored.ids[i]), float(scores[i])) for i in order]

            want_recency = bool(fusion.recency_half_life_days and fusion.recency_weight)
            fused: list[Fused]
            if fusion.method == "rrf":
                stamps = (
                    self._timestamps(session, {m for m, _ in dense_ranked} | {m for m, _ in lexical})
                    if want_recency
                    else None
                )
                fused = reciprocal_rank_fusion(dense_ranked, lexical, fusion, timestamps=stamps, now=now)
            else:
                pool = {m for m, _ in dense_ranked} | {m for m, _ in lexical}
                neighbours: Neighbours = {}
                if fusion.neighbour_weight > 0:
                    neighbours = lexical_index.neighbours(pool, _membership(candidates))
                    for pair in list(neighbours.values()):
                        pool.update(n for n in pair if n is not None)
                missing = np.fromiter((m for m in pool if m not in dense), dtype=np.int64)
                if len(missing):
                    dense.update(self._dense_search(session, tenant_id, vector, len(missing), missing))
                lexical_scores = {m: score for m, score in scored.of(pool).items() if score > 0}
                pooled_dense = {m: dense[m] for m in pool if m in dense}
                stamps = self._timestamps(session, pooled_dense) if want_recency else None
                named = lexical_index.named_speakers(scored, pooled_dense) if fusion.speaker_weight else {}
                proper = lexical_index.proper_nouns(pooled_dense) if fusion.proper_noun_weight else None
                fused = score_fusion(
                    pooled_dense,
                    lexical_scores,
                    fusion,
                    neighbours=neighbours,
                    named=named,
                    proper=proper,
                    timestamps=stamps,
                    now=now,
                )
            return self._hits(
                session, owner, sealer, fused, k, min_score, include_assistant or wants_assistant(filters)
            )
