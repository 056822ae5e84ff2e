"""Fusion of dense and lexical results, session-neighbour context, recency weighting and the minimum score.

Two fusion methods:

- ``"score"`` (default): each list's scores are normalised by that list's best score among the candidates
  (cosine clipped at 0, BM25), mixed with the configured weights, then each memory receives a share of its
  session neighbour's mixed score (by default the turn after it in the same conversation session, its reply:
  a statement is found through the reply that echoes the question's words; the turn before it already
  reaches its BM25 document as lexical context), memories that name someone or something other than the
  speakers get a small bonus, and turns whose speaker the query names get a bonus. Final scores lie in
  ``[0, 1]``.
- ``"rrf"``: reciprocal rank fusion of the two ranked lists, normalised so that rank 1 in both gives 1.0.

On the LoCoMo dev conversations (bench/locomo_retrieval.py; categories 1-4), evidence recall@10 is 0.60 with
RRF (k=60) and no session context, 0.68 with score fusion alone, 0.76 with dense 1 : lexical 1 and one turn of
lexical context (plain BM25: 0.56, MiniLM dense alone: 0.50). The defaults below are what
leave-one-conversation-out tuning picks (the bench's ``GRID`` and the list questions' dense weight; four of the
five folds pick exactly these, the fifth a proper-noun bonus of 0.15): dense 1 : lexical 1 with the query
embedded without the speakers' names, two turns of lexical context, the next turn's score inherited at 0.3,
proper-noun bonus 0.1, speaker bonus 0.2 (half of it for speakers named after the first), dense weight 2 for
list questions. Tuned that way,
each conversation scored with settings chosen on the other four, recall@10 is 0.827 (0.820 before the list
questions' weight, 0.7999 before the names rules, 0.773 before the speaker bonus and the neighbour
direction); see docs/retrieval.md.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from memory_store.errors import ValidationError
from memory_store.query_form import list_like

FusionMethod = Literal["score", "rrf"]
NeighbourDirection = Literal["both", "next"]


@dataclass(frozen=True)
class FusionConfig:
    """How a search ranks candidates. Every field has a default.

    ``rrf_k`` only matters for ``method="rrf"``. ``neighbour_weight`` is the share of a session neighbour's
    score a memory inherits (0 turns it off). ``lexical_context`` is how many preceding memories of the same
    session are appended to a memory's BM25 document. Both kinds of session context link only memories
    whose kind is in ``context_kinds`` (None: every kind): by default conversation turns, whose meaning
    often lies in the turn they answer, not independently stated facts. ``lexical_dates`` appends the
    memory's ``occurred_at`` date in words ("8 May 2023") so that queries naming a month or year match.
    ``pool`` is the least number of results taken from each retriever before fusion. ``speaker_weight`` is
    the bonus of turns whose speaker the query names (``speaker_others``: the share of it for speakers named
    after the first), ``proper_noun_weight`` that of memories that name someone or something other than the
    subject's speakers (:meth:`memory_store.lexical.LexicalIndex.proper_nouns`). With ``strip_speakers`` the
    query is embedded without the speakers' names it holds
    (:meth:`memory_store.lexical.LexicalIndex.strip_speakers`; BM25 and the speaker bonus read it whole).
    ``list_dense_weight`` replaces ``dense_weight`` for a query that asks for a list of things
    (:func:`memory_store.query_form.list_like`; None: never), applied by :meth:`for_query` (score fusion with a
    dense side only).
    """

    rrf_k: int = 60
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    recency_half_life_days: float | None = None
    recency_weight: float = 0.0
    min_score: float = 0.0
    method: FusionMethod = "score"
    neighbour_weight: float = 0.3
    lexical_context: int = 2
    lexical_dates: bool = True
    context_kinds: tuple[str, ...] | None = ("turn",)
    pool: int = 50
    neighbour_direction: NeighbourDirection = "next"
    speaker_weight: float = 0.2
    speaker_others: float = 0.5
    proper_noun_weight: float = 0.1
    strip_speakers: bool = True
    list_dense_weight: float | None = 2.0

    def for_query(self, query: str) -> FusionConfig:
        """The settings that rank ``query``: ``dense_weight`` is ``list_dense_weight`` when it asks for a list.
        Score fusion only, and not when ``dense_weight`` is 0 (a lexical-only search stays lexical)."""
        routed = self.list_dense_weight
        if routed is None or routed == self.dense_weight or self.method != "score" or not self.dense_weight:
            return self
        return replace(self, dense_weight=routed) if list_like(query) else self

    def __post_init__(self) -> None:
        if self.method not in ("score", "rrf"):
            raise ValidationError("method must be 'score' or 'rrf'")
        if self.neighbour_direction not in ("both", "next"):
            raise ValidationError("neighbour_direction must be 'both' or 'next'")
        weights = (self.dense_weight, self.lexical_weight, self.neighbour_weight, self.speaker_weight)
        if min(*weights, self.proper_noun_weight, self.list_dense_weight or 0.0) < 0:
            raise ValidationError("fusion weights must not be negative")
        if not 0.0 <= self.speaker_others <= 1.0:
            raise ValidationError("speaker_others must lie in [0, 1]")
        if self.lexical_context < 0 or self.pool < 1 or self.rrf_k < 0:
            raise ValidationError("lexical_context must be >= 0, pool >= 1 and rrf_k >= 0")
        if self.context_kinds is not None:
            object.__setattr__(self, "context_kinds", tuple(self.context_kinds))  # hashable cache key


@dataclass(frozen=True)
class Fused:
    memory_id: int
    score: float
    dense: float | None
    lexical: float | None


Neighbours = Mapping[int, tuple[int | None, int | None]]


def _recency(
    score: float,
    memory_id: int,
    config: FusionConfig,
    timestamps: Mapping[int, datetime] | None,
    now: datetime | None,
) -> float:
    """``score *= (1 - w) + w * 0.5 ** (age_days / half_life)`` when recency weighting is on."""
    if config.recency_half_life_days and config.recency_weight and timestamps and now:
        stamp = timestamps.get(memory_id)
        if stamp is not None:
            age_days = max((now - stamp).total_seconds() / 86400.0, 0.0)
            decay = math.pow(0.5, age_days / config.recency_half_life_days)
            score *= (1.0 - config.recency_weight) + config.recency_weight * decay
    return score


def _finish(out: list[Fused]) -> list[Fused]:
    out.sort(key=lambda f: (-f.score, -f.memory_id))
    return out


def score_fusion(
    dense: Mapping[int, float],
    lexical: Mapping[int, float],
    config: FusionConfig,
    *,
    neighbours: Neighbours | None = None,
    named: Mapping[int, int] | None = None,
    proper: Collection[int] | None = None,
    timestamps: Mapping[int, datetime] | None = None,
    now: datetime | None = None,
) -> list[Fused]:
    """Fuse raw scores of the memories in ``dense`` (every memory to rank, with its cosine similarity).

    ``lexical`` holds the BM25 score of those that match the query (others score 0); ``lexical_max`` is
    taken from it, so it must include the best lexical match among the candidates. ``neighbours`` maps a
    memory to its (previous, next) memory in the same session. ``named`` maps the memories whose speaker the
    query names to the position of that speaker's first mention in the query (see
    :meth:`memory_store.lexical.LexicalIndex.named_speakers`): with ``speaker_weight`` w, a memory's score
    becomes ``(score + w * share) / (1 + w)``, share 1 for the speaker named first, ``speaker_others`` for
    the others and 0 for memories not in ``named``. Before that, with ``proper_noun_weight`` p, a memory in
    ``proper`` (it names someone or something other than the speakers) scores ``(score + p) / (1 + p)``, the
    others ``score / (1 + p)``.
    """
    dense_max = max(dense.values(), default=0.0)
    lexical_max = max(lexical.values(), default=0.0)
    total = config.dense_weight + config.lexical_weight
    mixed: dict[int, float] = {}
    for memory_id, cosine in dense.items():
        d = max(cosine, 0.0) / dense_max if dense_max > 0 else 0.0
        lex = lexical.get(memory_id, 0.0)
        l_norm = lex / lexical_max if lexical_max > 0 else 0.0
        mixed[memory_id] = (config.dense_weight * d + config.lexical_weight * l_norm) / total if total else 0
    a = config.neighbour_weight
    previous_too = config.neighbour_direction == "both"
    positions = named or {}
    w = config.speaker_weight if positions else 0.0
    first = min(positions.values(), default=0)
    p = config.proper_noun_weight if proper is not None else 0.0
    flagged = proper or ()
    out: list[Fused] = []
    for memory_id, own in mixed.items():
        score = own
        if a and neighbours:
            prev_id, next_id = neighbours.get(memory_id, (None, None))
            best = mixed.get(next_id, 0.0) if next_id is not None else 0.0
            if previous_too and prev_id is not None:
                best = max(mixed.get(prev_id, 0.0), best)
            score = (own + a * best) / (1.0 + a)
        if p:
            score = (score + (p if memory_id in flagged else 0.0)) / (1.0 + p)
        if w:
            mention = positions.get(memory_id)
            share = 0.0 if mention is None else 1.0 if mention == first else config.speaker_others
            score = (score + w * share) / (1.0 + w)
        score = _recency(score, memory_id, config, timestamps, now)
        if score >= config.min_score:
            matched = lexical.get(memory_id)
            out.append(Fused(memory_id, score, dense[memory_id], matched if matched else None))
    return _finish(out)


def reciprocal_rank_fusion(
    dense: Sequence[tuple[int, float]],
    lexical: Sequence[tuple[int, float]],
    config: FusionConfig,
    *,
    timestamps: Mapping[int, datetime] | None = None,
    now: datetime | None = None,
) -> list[Fused]:
    """Fuse two ranked lists (best first). Scores are normalised so that rank 1 in both lists gives 1.0."""
    total_weight = config.dense_weight + config.lexical_weight
    norm = total_weight / (config.rrf_k + 1) if total_weight else 1.0
    scores: dict[int, float] = {}
    dense_raw = dict(dense)
    lexical_raw = dict(lexical)
    for weight, ranked in ((config.dense_weight, dense), (config.lexical_weight, lexical)):
        for rank, (memory_id, _raw) in enumerate(ranked, start=1):
            scores[memory_id] = scores.get(memory_id, 0.0) + weight / (config.rrf_k + rank)
    out = []
    for memory_id, raw in scores.items():
        score = _recency(raw / norm, memory_id, config, timestamps, now)
        if score >= config.min_score:
            out.append(Fused(memory_id, score, dense_raw.get(memory_id), lexical_raw.get(memory_id)))
    return _finish(out)
