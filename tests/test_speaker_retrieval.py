"""Speaker-aware retrieval (#15) through the real store and the real all-MiniLM-L6-v2 (ONNX): in an imported
conversation ("Name: text" turns), a question about one person ranks that person's own turn above the other
speaker's turn that asked about it, which the words and the embedding alone prefer; a question that names both
people favours the one it names first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from memory_store import FusionConfig, NewMemory

TURNS = [
    "Tim: Joined a travel club and picked up new skills lately.",
    "John: Learning an instrument is really cool. What instrument are you playing these days?",
    "Tim: Mostly the violin. Classical pieces, and some jazz.",
    "John: Wow! I hope I can hear you play some day. I play basketball on weekends.",
    "Tim: Sure, come by any time.",
    "John: My team won the game last night.",
]


@pytest.fixture
def backend():
    return "sqlite"


@pytest.fixture
def embedder(onnx):
    return onnx


@pytest.fixture
def turns(store, tenant_id):
    start = datetime(2023, 8, 21, tzinfo=UTC)
    records = store.add_batch(
        tenant_id=tenant_id,
        items=[
            NewMemory(subject="c", text=t, session_id="s1", kind="turn", occurred_at=start + timedelta(minutes=i))
            for i, t in enumerate(TURNS)
        ],
    )
    return {r.text: r.id for r in records}


def _texts(store, tenant_id, query, fusion=None):
    hits = store.search(tenant_id=tenant_id, subject="c", query=query, k=4, fusion=fusion or FusionConfig())
    return [h.memory.text for h in hits]


def test_the_named_speakers_answer_ranks_first(store, tenant_id, turns):
    query = "What instrument does Tim play?"
    assert _texts(store, tenant_id, query, FusionConfig(speaker_weight=0.0))[0] == TURNS[1]  # John's question
    ranked = _texts(store, tenant_id, query)
    assert ranked[0] == TURNS[2]  # Tim's answer
    # Tim's turns before John's of similar score (embedded with the name, which Tim's turns share: stripped,
    # the cosines are no longer alike and "hear you play" is nearer the question than "Joined a travel club").
    ranked = _texts(store, tenant_id, query, FusionConfig(strip_speakers=False))
    assert ranked.index(TURNS[0]) < ranked.index(TURNS[3])


def test_a_query_naming_nobody_is_ranked_as_before(store, tenant_id, turns):
    query = "What instruments are mentioned?"
    assert _texts(store, tenant_id, query) == _texts(store, tenant_id, query, FusionConfig(speaker_weight=0.0))


def test_facts_that_open_with_a_capitalised_word_get_no_speaker_bonus(store, tenant_id):
    store.add_batch(
        tenant_id=tenant_id,
        items=[
            NewMemory(subject="f", text="Tim: plays the violin in a quartet.", kind="fact"),
            NewMemory(subject="f", text="Tim plays football on Sundays.", kind="fact"),
        ],
    )
    on = store.search(tenant_id=tenant_id, subject="f", query="What does Tim play?", k=2)
    off = store.search(
        tenant_id=tenant_id, subject="f", query="What does Tim play?", k=2, fusion=FusionConfig(speaker_weight=0.0)
    )
    assert [h.score for h in on] == [h.score for h in off]


TRIP = [
    "John: We're planning a team trip next month to a new city. Where should we go?",
    "Tim: Edinburgh would be great, so much history and amazing architecture.",
    "John: Thanks! A city with history sounds perfect for the team trip.",
    "Tim: Let me know how it goes.",
    "John: My team won the game last night.",
]


def test_a_query_naming_both_speakers_favours_the_one_it_names_first(store, tenant_id):
    start = datetime(2023, 9, 21, tzinfo=UTC)
    store.add_batch(
        tenant_id=tenant_id,
        items=[
            NewMemory(subject="c", text=t, session_id="s1", kind="turn", occurred_at=start + timedelta(minutes=i))
            for i, t in enumerate(TRIP)
        ],
    )
    query = "What city did Tim suggest to John for the team trip?"
    both_alike = _texts(store, tenant_id, query, FusionConfig(speaker_others=1.0))
    assert both_alike[0] == TRIP[2]  # John's thanks echoes the question best
    ranked = _texts(store, tenant_id, query)  # Tim is named first: his turns get the whole bonus
    assert ranked[0].startswith("Tim:") and ranked.index(TRIP[1]) < ranked.index(TRIP[2])
