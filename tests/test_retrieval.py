"""Hybrid retrieval behaviour: fusion methods, session-neighbour context, dates, filters over neighbours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from memory_store import Filters, FusionConfig, NewMemory, ValidationError
from memory_store.fusion import reciprocal_rank_fusion, score_fusion
from memory_store.lexical import LexicalIndex, LexicalSource, date_words, speaker_name


@pytest.fixture
def backend():
    """Retrieval logic does not depend on the database: SQLite + FAISS is enough here."""
    return "sqlite"


def _conversation(store, tenant_id, session="s1", kind="turn", start=datetime(2023, 5, 8, tzinfo=UTC)):
    turns = [
        "Alice: What did you do last weekend?",
        "Bob: Went hiking up the volcano with my cousin.",
        "Alice: Did you bring your camera this time?",
        "Bob: Yes, I took a hundred photos of the crater.",
        "Alice: I started learning the cello recently.",
        "Bob: That is a lovely instrument.",
    ]
    return store.add_batch(
        tenant_id=tenant_id,
        items=[
            NewMemory(subject="conv", text=t, session_id=session, kind=kind, occurred_at=start + timedelta(minutes=i))
            for i, t in enumerate(turns)
        ],
    )


def test_answer_turn_is_found_through_the_question_it_replies_to(store, tenant_id):
    records = _conversation(store, tenant_id)
    query = "What did Bob do last weekend?"
    with_context = store.search(tenant_id=tenant_id, subject="conv", query=query, k=2)
    assert records[1].id in [h.memory.id for h in with_context]
    # The answer shares no content words with the query: without session context it ranks lower.
    plain = store.search(
        tenant_id=tenant_id,
        subject="conv",
        query=query,
        k=6,
        fusion=FusionConfig(neighbour_weight=0.0, lexical_context=0),
    )
    ranked = [h.memory.id for h in plain]
    ranked_ctx = [h.memory.id for h in store.search(tenant_id=tenant_id, subject="conv", query=query, k=6)]
    assert ranked_ctx.index(records[1].id) < ranked.index(records[1].id)


def test_session_context_links_only_the_configured_kinds(store, tenant_id):
    facts = _conversation(store, tenant_id, kind="fact")
    query = "What did Bob do last weekend?"
    hits = store.search(tenant_id=tenant_id, subject="conv", query=query, k=6)
    linked = store.search(
        tenant_id=tenant_id, subject="conv", query=query, k=6, fusion=FusionConfig(context_kinds=None)
    )
    rank = lambda hs: [h.memory.id for h in hs].index(facts[1].id)  # noqa: E731
    assert rank(linked) < rank(hits)  # facts are independent statements: not blended by default


def test_dates_in_words_match_queries_that_name_the_month(store, tenant_id):
    store.add(
        tenant_id=tenant_id,
        item=NewMemory(
            subject="conv", text="Bob: we adopted a kitten", kind="turn", occurred_at=datetime(2022, 11, 3, tzinfo=UTC)
        ),
    )
    store.add(
        tenant_id=tenant_id,
        item=NewMemory(
            subject="conv", text="Bob: we adopted a puppy", kind="turn", occurred_at=datetime(2023, 6, 3, tzinfo=UTC)
        ),
    )
    hits = store.search(tenant_id=tenant_id, subject="conv", query="what was adopted in November 2022", k=1)
    assert hits[0].memory.text == "Bob: we adopted a kitten"
    assert date_words(datetime(2023, 5, 8, tzinfo=UTC)) == "8 May 2023"


def test_filters_exclude_neighbours_too(store, tenant_id):
    _conversation(store, tenant_id, session="s1")
    other = _conversation(store, tenant_id, session="s2")
    hits = store.search(
        tenant_id=tenant_id, subject="conv", query="hiking volcano", k=10, filters=Filters(session_id="s2")
    )
    assert {h.memory.session_id for h in hits} == {"s2"}
    assert hits[0].memory.id == other[1].id


def test_scores_are_bounded_and_rrf_remains_available(store, tenant_id):
    _conversation(store, tenant_id)
    for method in ("score", "rrf"):
        hits = store.search(
            tenant_id=tenant_id,
            subject="conv",
            query="started learning the cello",
            k=3,
            fusion=FusionConfig(method=method),
        )
        assert hits[0].memory.text == "Alice: I started learning the cello recently."
        assert all(0.0 <= h.score <= 1.0 + 1e-6 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    with pytest.raises(ValidationError):
        FusionConfig(method="magic")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        FusionConfig(dense_weight=-1)


def test_rrf_normalisation():
    fused = reciprocal_rank_fusion([(1, 0.9), (2, 0.5)], [(1, 7.0), (3, 2.0)], FusionConfig(method="rrf"))
    assert fused[0].memory_id == 1 and fused[0].score == pytest.approx(1.0)
    assert {f.memory_id for f in fused} == {1, 2, 3}



# ---- speakers and the direction of neighbour context (#15) --------------------------------------------


def _source(memory_id, text, kind="turn", minute=0):
    stamp = datetime(2023, 5, 8, tzinfo=UTC) + timedelta(minutes=minute)
    return LexicalSource(
        memory_id=memory_id, text=text, session_id="s1", occurred_at=stamp, created_at=stamp, kind=kind
    )


def test_speaker_name_reads_the_name_that_opens_a_transcript_line():
    assert speaker_name("Caroline: I went to the support group.") == "Caroline"
    assert speaker_name("Mary Ann: hello") == "Mary Ann"
    assert speaker_name("Zoë: olá") == "Zoë"
    for text in ("note: buy milk", "Meeting at 12:30 today", "See https://example.org", "I said: fine", ""):
        assert speaker_name(text) is None, text


def test_the_index_names_the_speakers_of_turns_only_and_follows_edits():
    index = LexicalIndex.build(
        [
            _source(1, "Alice: I play the cello."),
            _source(2, "Bob: I play the violin.", minute=1),
            _source(3, "Bob: plays the drums too.", kind="fact", minute=2),  # not a turn: no speaker
        ]
    )
    named = lambda query: index.named_speakers(index.scores(query), [1, 2, 3])  # noqa: E731
    assert named("What does Bob play?") == {2: 0}
    # Where each speaker is first named among the query's words that the index holds ("alice", "bob"; not
    # "instruments" or "suggest"): only the order matters.
    assert named("Which instruments did Alice suggest to Bob?") == {1: 0, 2: 1}
    assert named("Which cello did Bob suggest to Alice?") == {1: 2, 2: 1}
    assert named("Which instruments are played?") == {}
    index.apply(index.prepare([_source(2, "Carol: I play the violin.", minute=1)]), ())
    assert named("What does Bob play?") == {}
    assert named("What does Carol play?") == {2: 0}


def test_neighbour_direction_next_inherits_from_the_reply_only():
    dense = {1: 0.9, 2: 0.1, 3: 0.5}
    neighbours = {2: (1, 3)}  # 2 follows 1 and is answered by 3
    def fused(direction):
        config = FusionConfig(lexical_weight=0, neighbour_direction=direction)
        return {f.memory_id: f.score for f in score_fusion(dense, {}, config, neighbours=neighbours)}

    both, after = fused("both"), fused("next")
    a = FusionConfig().neighbour_weight
    assert both[2] == pytest.approx((0.1 / 0.9 + a * 1.0) / (1 + a))
    assert after[2] == pytest.approx((0.1 / 0.9 + a * 0.5 / 0.9) / (1 + a))
    with pytest.raises(ValidationError):
        FusionConfig(neighbour_direction="previous")  # type: ignore[arg-type]


def test_speaker_bonus_keeps_scores_bounded_and_favours_the_speaker_named_first():
    dense = {1: 0.8, 2: 0.6, 3: 0.4}
    config = FusionConfig(lexical_weight=0, speaker_weight=0.5, speaker_others=0.5)
    fused = lambda named: {f.memory_id: f.score for f in score_fusion(dense, {}, config, named=named)}  # noqa: E731
    assert fused({}) == {1: pytest.approx(1.0), 2: pytest.approx(0.75), 3: pytest.approx(0.5)}
    one = fused({2: 0})
    assert one[2] == pytest.approx((0.75 + 0.5) / 1.5) and one[1] == pytest.approx(1.0 / 1.5)
    two = fused({2: 4, 3: 1})  # 3's speaker is named first: the whole bonus; 2's: half of it
    assert two[3] == pytest.approx((0.5 + 0.5) / 1.5) and two[2] == pytest.approx((0.75 + 0.25) / 1.5)
    assert max(two.values()) <= 1.0
    for bad in ({"speaker_weight": -0.1}, {"speaker_others": 1.5}):
        with pytest.raises(ValidationError):
            FusionConfig(**bad)
