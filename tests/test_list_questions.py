"""List questions (#15): a query that asks for several things ranks with ``FusionConfig.list_dense_weight`` as its
dense weight (the rule: :func:`memory_store.query_form.list_like`; the weight chosen by leave-one-conversation-out
in bench/locomo_retrieval.py)."""

from __future__ import annotations

import pytest

from memory_store import FusionConfig, MemoryStore, NewMemory
from memory_store.errors import ValidationError
from memory_store.query_form import list_like

LIST_QUESTIONS = [
    "What books has Melanie read?",
    "Where has Maria made friends?",
    "What are some changes Caroline has faced?",
    "Who were the people at the party?",
    "What do Jon and Gina both have in common?",
    "What do they both like?",
    "How many times has Tim moved?",
    "What kinds of paintings does Melanie make?",
    "Which pets does Audrey own?",
    "  WHAT   activities has he   tried?",  # case and spacing do not matter
]
OTHER_QUESTIONS = [
    "When did Melanie paint a sunrise?",
    "What is Caroline's identity?",
    "Where did Maria go last week?",
    "Who is Gina's mentor?",
    "What did Tim buy for his sister?",
    "Why did he move to Porto?",
    "What does she think about chess?",
    "Has Melanie read Becoming?",
    "",
]


@pytest.mark.parametrize("query", LIST_QUESTIONS)
def test_list_questions_are_recognised(query: str) -> None:
    assert list_like(query)


@pytest.mark.parametrize("query", OTHER_QUESTIONS)
def test_other_questions_are_not(query: str) -> None:
    assert not list_like(query)


def test_for_query_replaces_the_dense_weight_of_list_questions_only() -> None:
    default = FusionConfig()
    assert default.list_dense_weight == 2.0 and default.dense_weight == 1.0
    assert default.for_query("What books has Melanie read?") == FusionConfig(dense_weight=2.0)
    assert default.for_query("When did Melanie paint a sunrise?") is default
    off = FusionConfig(list_dense_weight=None)
    assert off.for_query("What books has Melanie read?") is off
    # score fusion with a dense side only: RRF and a lexical-only search are left as they are
    rrf, lexical = FusionConfig(method="rrf"), FusionConfig(dense_weight=0.0)
    assert rrf.for_query("What books has Melanie read?") is rrf
    assert lexical.for_query("What books has Melanie read?") is lexical
    with pytest.raises(ValidationError):
        FusionConfig(list_dense_weight=-1.0)


MEMORIES = [
    "I finished reading a novel about a lighthouse keeper last month.",
    "My favourite books are the ones my grandmother gave me.",
    "We went camping near the lake with the kids.",
    "I adopted a cat called Miso.",
    "The pottery class on Tuesday was fun.",
    "I read Becoming by Michelle Obama on the train.",
    "Books and coffee make a perfect Sunday.",
    "My sister visited us in Lisbon.",
]


def _ranked(store: MemoryStore, tenant_id: str, query: str, fusion: FusionConfig) -> list[tuple[int, float]]:
    hits = store.search(tenant_id=tenant_id, subject="m", query=query, k=len(MEMORIES), fusion=fusion)
    return [(hit.memory.id, round(hit.score, 9)) for hit in hits]


def test_the_store_ranks_a_list_question_with_the_list_dense_weight(store: MemoryStore, tenant_id: str) -> None:
    store.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="m", text=text) for text in MEMORIES])
    routed = FusionConfig(list_dense_weight=3.0)
    listing = "What books has Melanie read?"
    assert _ranked(store, tenant_id, listing, routed) == _ranked(
        store, tenant_id, listing, FusionConfig(dense_weight=3.0, list_dense_weight=None)
    )
    assert _ranked(store, tenant_id, listing, routed) != _ranked(
        store, tenant_id, listing, FusionConfig(list_dense_weight=None)
    )
    other = "What did Melanie read on the train?"
    assert _ranked(store, tenant_id, other, routed) == _ranked(
        store, tenant_id, other, FusionConfig(list_dense_weight=None)
    )
