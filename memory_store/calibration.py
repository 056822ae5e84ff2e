"""Relevance: a search score that means the same thing whatever the query.

A hit's fused ``score`` ranks it against the other candidates of the same search (each retriever's scores
are divided by that search's best), so the top hit of any query scores high, relevant or not. ``relevance``
is instead an estimate of the probability that the memory answers the query, from the hit's own raw
scores only - its cosine similarity to the query and its BM25 score:

    relevance = 1 / (1 + exp(-(intercept + a * cosine + b * ln(1 + bm25))))

The constants are a logistic regression fitted on the LoCoMo development conversations
(bench/locomo_retrieval.py, ``calibration`` in its output): each question's top 10 hits (categories 1-4,
default ranking) labelled by whether the turn is one of the question's annotated evidence turns (10.1% of
them are). Fitted on four conversations and applied to the fifth, in turn, predictions match observed
rates within a few points in every bin (e.g. predicted 0.037 -> observed 0.041, 0.138 -> 0.125, 0.373 ->
0.373). A threshold of 0.01 (the chat loop's default) keeps 99.6% of evidence hits, 0.02 keeps 99% and
drops 8% of the others, 0.1 keeps 66% and drops 69%; an unrelated query (cosine near 0, no shared word)
scores about 0.002.

The cosine scale is the embedder's own, so constants exist per embedder (:data:`CALIBRATIONS`; today
all-MiniLM-L6-v2, the store's default, in any runtime). With another embedder hits carry no relevance
(None) and ``min_score`` leaves them in. The calibration data is conversation turns of subjects with a few
hundred memories: BM25 grows with the number of memories (rarer words weigh more), so in a small subject
the same match reads as less likely (a clear answer among six memories, cosine 0.56, scores about 0.025).
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


# Keyed by ``Embedder.model_id``. Fitted with the store's default FusionConfig (BM25 documents with two
# preceding turns of context and the date in words; the hits it ranks in the top 10, speaker bonus included);
# other settings shift BM25 a little.
CALIBRATIONS: dict[str, Calibration] = {
    "all-MiniLM-L6-v2": Calibration(intercept=-6.349, cosine=3.73, log_bm25=1.823),
}


def for_embedder(model_id: str) -> Calibration | None:
    """The calibration of the embedder ``model_id``; None for an embedder nobody calibrated (cosine scales
    differ between models), whose hits then carry no relevance."""
    return CALIBRATIONS.get(model_id)
