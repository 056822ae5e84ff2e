"""Relevance: a search score that means the same thing whatever the query.

A hit's fused ``score`` ranks it against the other candidates of the same search (each retriever's scores
are divided by that search's best), so the top hit of any query scores high, relevant or not. ``relevance``
is instead an estimate of the probability that the memory answers the query, from the hit's own raw
scores only - its cosine similarity to the query and its BM25 score:

    relevance = 1 / (1 + exp(-(intercept + a * cosine + b * ln(1 + bm25))))

The constants are a logistic regression fitted on the LoCoMo development conversations
(bench/locomo_retrieval.py, ``calibration`` in its output): each question's top 10 hits (categories 1-4,
default ranking, the query embedded without the speakers' names) labelled by whether the turn is one of the
question's annotated evidence turns (10.6% of them are). Fitted on four conversations and applied to the
fifth, in turn, predictions match observed rates within a few points from 0.02 up (predicted 0.037 ->
observed 0.036, 0.073 -> 0.069, 0.139 -> 0.128, 0.368 -> 0.361; below 0.02 they read low: 0.009 -> 0.046).
A threshold of 0.02 (the chat loop's default) keeps 98% of evidence hits and drops 7% of the others, 0.1
keeps 68% and drops 65%; an unrelated query (cosine near 0, no shared word) scores about 0.006 - 0.008.
(The constants fitted before the names were stripped read 30-40% low on today's hits.)

The cosine scale is the embedder's own, so constants exist per embedder (:data:`CALIBRATIONS`; today
all-MiniLM-L6-v2, the store's default, in any runtime). With another embedder hits carry no relevance
(None) and ``min_score`` leaves them in. The calibration data is conversation turns of subjects with a few
hundred memories: BM25 grows with the number of memories (rarer words weigh more), so in a small subject
the same match reads as less likely (a clear answer among six memories, scores about 0.05).
Treat it as comparable across queries and subjects, not as an exact probability everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Calibration:
    """Logistic-regression constants of one embedder (see the module docstring)."""

    intercept: float
    cosine: float
    log_bm25: float

    def relevance(self, cosine: float | None, bm25: float | None) -> float:
        """Estimated probability that a hit with raw ``cosine`` and ``bm25`` (None: that retriever did not
        score it, read as 0) is relevant to the query."""
        z = self.intercept + self.cosine * (cosine or 0.0) + self.log_bm25 * math.log1p(max(bm25 or 0.0, 0.0))
        return 1.0 / (1.0 + math.exp(-z))


# Keyed by ``Embedder.model_id``. Fitted with the store's default FusionConfig (BM25 documents with two preceding
# turns of context and the date in words; the hits it ranks in the top 10, speaker and proper-noun bonuses
# included, the query embedded without the speakers' names); other settings shift BM25 a little.
CALIBRATIONS: dict[str, Calibration] = {
    "all-MiniLM-L6-v2": Calibration(intercept=-5.072, cosine=2.985, log_bm25=1.421),
}


def for_embedder(model_id: str) -> Calibration | None:
    """The calibration of the embedder ``model_id``; None for an embedder nobody calibrated (cosine scales
    differ between models), whose hits then carry no relevance."""
    return CALIBRATIONS.get(model_id)
