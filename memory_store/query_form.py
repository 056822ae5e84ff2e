"""What form a query takes, read from its text alone: is it a question whose answer is a list of things?

"What books has Melanie read?", "What are some changes Caroline has faced?", "What do they both like?", "How many
times has he moved?": the answer is spread over several memories that rarely repeat the question's words ("I
just finished 'Becoming'", "we went camping last weekend"). Their meaning is closer to the question than their
words, so such a question gives the dense retriever more weight (:attr:`memory_store.fusion.FusionConfig.
list_dense_weight`). On the LoCoMo development conversations (bench/locomo_retrieval.py, the weight chosen by
leave-one-conversation-out), the rule flags 102 of 142 multi-hop questions and 40 of 618 others.
"""

from __future__ import annotations

import re

_LIST_FORMS = re.compile(
    "|".join(
        (
            # "What books has Melanie read?", "Where has Maria made friends?"
            r"^(?:what|which|where|who|whom)\b(?:\s+[\w+'/-]+){0,4}?\s+(?:has|have)\s",
            # "What are some changes ...", "Who were ..."
            r"^(?:what|which|who)\s+(?:are|were)\b",
            # "What do they both ...", "What do they have in common?"
            r"\b(?:both|in common)\b",
            r"^how many\b",
            # a plural noun (a word ending in a single s) right after what/which, then a verb: "What kinds of
            # paintings does ...", "Which pets does ..." (a singular in -s passes too: "Which bus does ...")
            r"^(?:what|which)\s+(?:kinds? of\s+|types? of\s+|sorts? of\s+)?(?:[\w+'-]+\s+)?[a-z]*[a-rt-z]s\s+"
            r"(?:do|does|did|has|have|had|is|are|was|were)\b",
        )
    )
)


def list_like(query: str) -> bool:
    """Whether ``query`` asks for several things (see the module docstring); case and spacing do not matter."""
    return _LIST_FORMS.search(" ".join(query.lower().split())) is not None
