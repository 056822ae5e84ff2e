"""Rank fusion of dense and lexical results, recency weighting and the minimum score."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class FusionConfig:
    rrf_k: int = 60
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    recency_half_life_days: float | None = None
    recency_weight: float = 0.0
    min_score: float = 0.0


@dataclass(frozen=True)
class Fused:
    memory_id: int
    score: float
    dense: float | None
    lexical: float | None


def reciprocal_rank_fusion(
    dense: Sequence[tuple[int, float]],
    lexical: Sequence[tuple[int, float]],
    config: FusionConfig,
    *,
    timestamps: Mapping[int, datetime] | None = None,
    now: datetime | None = None,
) -> list[Fused]:
    """Fuse two ranked lists (best first). Scores are normalised so that rank 1 in both lists gives 1.0.

    With recency weighting, ``score *= (1 - w) + w * 0.5 ** (age_days / half_life)``.
    """
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
        score = raw / norm
        if config.recency_half_life_days and config.recency_weight and timestamps and now:
            stamp = timestamps.get(memory_id)
            if stamp is not None:
                age_days = max((now - stamp).total_seconds() / 86400.0, 0.0)
                decay = math.pow(0.5, age_days / config.recency_half_life_days)
                score *= (1.0 - config.recency_weight) + config.recency_weight * decay
        if score >= config.min_score:
            out.append(Fused(memory_id, score, dense_raw.get(memory_id), lexical_raw.get(memory_id)))
    out.sort(key=lambda f: (-f.score, -f.memory_id))
    return out
