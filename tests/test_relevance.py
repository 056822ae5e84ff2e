"""Scores apps can threshold, and the assistant's own replies left out of search: real SQLite store, real
all-MiniLM-L6-v2 (ONNX), the chat loop's own turn storage."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memory_store import Filters, NewMemory, ValidationError
from memory_store.calibration import CALIBRATIONS, for_embedder
from service.chat.sessions import SessionStore
from service.chat.settings import ChatSettings

OFF_TOPIC = "quantum chromodynamics lecture schedule"
SORRY = "I'm sorry for your loss, but it sounds like Biscuit had a wonderful life with you."


@pytest.fixture
def backend():
    return "sqlite"


@pytest.fixture
def embedder(onnx):  # the store of this module embeds with the calibrated model
    return onnx


@pytest.fixture
def ana(store, tenant_id):
    """A subject about a dog and a move to Porto: facts, and one chat exchange stored as the chat loop does."""
    facts = [
        "My dog is a beagle named Biscuit.",
        "I moved from Lisbon to Porto in March.",
        "I work as a nurse at the city hospital.",
        "I walk Biscuit along the river every morning.",
    ]
    records = store.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="ana", text=t) for t in facts])
    turns = SessionStore(store).append_turns(
        tenant_id=tenant_id,
        subject="ana",
        session_id="s1",
        message_id="msg_1",
        user_text="My old dog Biscuit died last week.",
        assistant_text=SORRY,
        actor="test",
    )
    return {r.text: r.id for r in [*records, *turns]}


def test_an_unrelated_query_returns_nothing_at_the_chat_threshold(store, tenant_id, ana):
    threshold = ChatSettings().chat_min_score
    assert threshold > 0
    plain = store.search(tenant_id=tenant_id, subject="ana", query=OFF_TOPIC, k=3)
    assert plain and plain[0].score > 0.3  # rank scores: something always looks relevant
    assert all(h.relevance is not None and h.relevance < threshold / 2 for h in plain)
    assert store.search(tenant_id=tenant_id, subject="ana", query=OFF_TOPIC, k=3, min_score=threshold) == []
    moved = store.search(
        tenant_id=tenant_id, subject="ana", query="Which city did I move to?", k=3, min_score=threshold
    )
    assert moved and moved[0].memory.id == ana["I moved from Lisbon to Porto in March."]
    assert moved[0].relevance is not None and moved[0].relevance >= threshold
    dog = store.search(tenant_id=tenant_id, subject="ana", query="What breed is my dog?", k=3, min_score=threshold)
    assert dog and dog[0].memory.id == ana["My dog is a beagle named Biscuit."]
    # Comparable across queries: the on-topic answer is far likelier than the best unrelated hit.
    assert moved[0].relevance > 5 * max(h.relevance or 0.0 for h in plain)


def test_relevance_follows_the_calibration_constants(store, tenant_id, ana):
    calibration = for_embedder("all-MiniLM-L6-v2")
    assert calibration is CALIBRATIONS["all-MiniLM-L6-v2"] and for_embedder("hashing-64") is None
    hits = store.search(tenant_id=tenant_id, subject="ana", query="Biscuit the beagle", k=5)
    for hit in hits:
        assert hit.relevance == pytest.approx(calibration.relevance(hit.dense_score, hit.lexical_score))
    assert calibration.relevance(0.0, None) < 0.01 < 0.5 < calibration.relevance(0.9, 20.0)
    with pytest.raises(ValidationError):
        store.search(tenant_id=tenant_id, subject="ana", query="dog", min_score=float("nan"))
    with pytest.raises(ValidationError):
        store.search(tenant_id=tenant_id, subject="ana", query="dog", min_score=1.5)


def test_the_assistants_replies_are_left_out_unless_asked_for(store, tenant_id, ana):
    query = "sorry for your loss, Biscuit had a wonderful life"
    hits = store.search(tenant_id=tenant_id, subject="ana", query=query, k=10)
    texts = [h.memory.text for h in hits]
    assert SORRY not in texts
    assert "My old dog Biscuit died last week." in texts  # the user's own turn stays
    asked = store.search(tenant_id=tenant_id, subject="ana", query=query, k=10, include_assistant=True)
    assert asked[0].memory.text == SORRY
    by_role = store.search(
        tenant_id=tenant_id, subject="ana", query=query, k=10, filters=Filters(metadata={"role": "assistant"})
    )
    assert [h.memory.text for h in by_role] == [SORRY]


def test_min_score_keeps_k_hits_when_assistant_replies_rank_first(store, tenant_id):
    """Left-out hits make room for the next ones: k results when k non-assistant memories exist."""
    sessions = SessionStore(store)
    for i in range(6):
        sessions.append_turns(
            tenant_id=tenant_id,
            subject="bo",
            session_id=f"s{i}",
            message_id=f"m{i}",
            user_text=f"Tell me about gardening, part {i}.",
            assistant_text=f"Gardening tip {i}: water tomatoes daily.",
            actor="test",
        )
    store.add(
        tenant_id=tenant_id,
        item=NewMemory(
            subject="bo", text="I grow tomatoes on my balcony.", occurred_at=datetime(2024, 5, 1, tzinfo=UTC)
        ),
    )
    hits = store.search(tenant_id=tenant_id, subject="bo", query="gardening tip: water tomatoes daily", k=5)
    assert len(hits) == 5
    assert all(h.memory.metadata.get("role") != "assistant" for h in hits)
