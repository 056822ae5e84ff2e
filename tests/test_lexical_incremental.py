"""The lexical index changed in place by writes scores exactly as a full bm25s build of the same documents."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta

import bm25s
import numpy as np
import pytest
from sqlalchemy import delete, select, update

from memory_store import NewMemory
from memory_store.lexical import (
    LexicalCache,
    LexicalIndex,
    LexicalOptions,
    LexicalSource,
    SessionLinks,
    StaleIndexError,
    build_documents,
    tokenize,
    tokenize_query,
)
from memory_store.models import Subject, VectorChange

START = datetime(2023, 5, 8, 9, 0, tzinfo=UTC)
_VOCABULARY = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "running runs ran dog dogs cat cats hiking hiked volcano camera photos crater cello may june 2023 "
    "the what did i am you is a of to and"  # stop words: some texts have no token at all
)
WORDS = _VOCABULARY.split(" ")
QUERIES = (
    "what did the dog do",
    "hiking volcano photos",
    "running runs ran",
    "cello cello cello",  # a repeated token counts each time
    "May 2023",
    "June",
    "unknownword zzz",
    "the what",  # no token
    "alpha bravo charlie delta echo foxtrot golf",
)
OPTIONS = (
    LexicalOptions(),  # the store's default: one preceding turn, dates, only kind "turn" linked
    LexicalOptions(context=2, dates=True, kinds=None),
    LexicalOptions(context=0, dates=False, kinds=None),
    LexicalOptions(context=3, dates=False, kinds=("turn", "note")),
)


def reference_scores(sources: list[LexicalSource], options: LexicalOptions, query: str):
    """(ids, scores) from a full bm25s build of :func:`build_documents`' documents (the original index)."""
    ordered = sorted(sources, key=lambda s: s.memory_id)
    ids = np.array([s.memory_id for s in ordered], dtype=np.int64)
    tokens = tokenize_query(query)
    docs = build_documents(ordered, context=options.context, dates=options.dates, kinds=options.kinds)
    corpus = tokenize(docs)
    if not docs or not tokens or not corpus.vocab:  # bm25s cannot index a corpus without any token
        return ids, np.zeros(len(ids), dtype=np.float32)
    bm25 = bm25s.BM25()
    bm25.index(corpus, show_progress=False)
    return ids, np.asarray(bm25.get_scores(tokens), dtype=np.float32)


def assert_same_as_rebuild(index: LexicalIndex, sources: list[LexicalSource]) -> None:
    for query in QUERIES:
        ids, expected = reference_scores(sources, index.options, query)
        got = index.scores(query)
        np.testing.assert_array_equal(got.ids, ids)
        np.testing.assert_allclose(got.scores, expected, rtol=1e-5, atol=1e-5)
    rebuilt = SessionLinks(sorted(sources, key=lambda s: s.memory_id), index.options.kinds)
    assert (index.links._prev, index.links._next) == (rebuilt._prev, rebuilt._next)


class Conversation:
    """Random memories of a few sessions; times are random, so adds land in the middle of sessions."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.next_id = 1
        self.memories: dict[int, LexicalSource] = {}

    def text(self) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(0, 12)))

    def new(self) -> LexicalSource:
        rng = self.rng
        source = LexicalSource(
            memory_id=self.next_id,
            text=self.text(),
            session_id=rng.choice([None, "s1", "s2", "s2", "s3"]),
            occurred_at=rng.choice([None, START + timedelta(minutes=rng.randint(0, 600))]),
            created_at=START + timedelta(minutes=rng.randint(0, 600)),
            kind=rng.choice(["turn", "turn", "fact", "note"]),
        )
        self.next_id += 1 + (rng.random() < 0.2)  # ids with gaps, as after deletions
        self.memories[source.memory_id] = source
        return source

    def changed(self) -> LexicalSource:
        rng = self.rng
        old = self.memories[rng.choice(list(self.memories))]
        what = rng.random()
        source = LexicalSource(
            memory_id=old.memory_id,
            text=self.text() if what < 0.7 else old.text,
            session_id=old.session_id,
            occurred_at=old.occurred_at,
            created_at=old.created_at,
            kind=rng.choice(["turn", "fact", "note"]) if what > 0.5 else old.kind,
        )
        self.memories[source.memory_id] = source
        return source

    def removed(self, count: int) -> list[int]:
        gone = self.rng.sample(list(self.memories), min(count, len(self.memories)))
        for memory_id in gone:
            del self.memories[memory_id]
        return gone


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: f"ctx{o.context}-dates{int(o.dates)}-{o.kinds}")
@pytest.mark.parametrize("seed", [1, 2])
def test_random_adds_updates_deletes_score_like_a_full_rebuild(options, seed):
    conv = Conversation(seed)
    index = LexicalIndex.build([conv.new() for _ in range(25)], options)
    assert_same_as_rebuild(index, list(conv.memories.values()))
    for _step in range(60):
        roll = conv.rng.random()
        upserts: list[LexicalSource]
        removals: list[int]
        if roll < 0.35 or len(conv.memories) < 3:
            upserts, removals = [conv.new() for _ in range(conv.rng.choice([1, 1, 1, 4]))], []
        elif roll < 0.65:
            upserts, removals = [conv.changed()], []
        elif roll < 0.85:
            upserts, removals = [], conv.removed(conv.rng.choice([1, 1, 3]))
        else:  # one write that adds, changes and deletes
            removals = conv.removed(1)
            upserts = [conv.new(), conv.changed()]
        index.apply(index.prepare(upserts), removals)
        assert_same_as_rebuild(index, list(conv.memories.values()))
        assert len(index) == len(conv.memories)


def test_scores_are_bm25s_scores_to_the_bit():
    conv = Conversation(7)
    index = LexicalIndex.build([conv.new() for _ in range(40)], LexicalOptions())
    for _ in range(20):
        removals = conv.removed(1)
        index.apply(index.prepare([conv.new(), conv.changed()]), removals)
    for query in QUERIES:
        _, expected = reference_scores(list(conv.memories.values()), index.options, query)
        np.testing.assert_array_equal(index.scores(query).scores, expected)


def test_add_into_the_middle_of_a_session_recomputes_the_next_turns_document():
    turns = [
        LexicalSource(i, text, "s1", START + timedelta(minutes=10 * i), START, "turn")
        for i, text in enumerate(["Alice: where did you travel?", "Bob: I like tea.", "Alice: nice"], start=1)
    ]
    index = LexicalIndex.build(turns, LexicalOptions(context=1, dates=False))
    assert index.scores("volcano").of([2]) == {2: 0.0}
    # Bob's real answer, told between the two turns: it replies to turn 1, and turn 2 now follows it.
    inserted = LexicalSource(9, "Bob: we climbed a volcano", "s1", START + timedelta(minutes=15), START, "turn")
    index.apply(index.prepare([inserted]), [])
    scored = index.scores("volcano")
    assert scored.of([9])[9] > 0 and scored.of([2])[2] > 0  # turn 2's document holds the new turn as context
    assert index.scores("travel").of([9])[9] > 0  # the new turn's document holds the question
    assert index.neighbours([9], lambda _m: True) == {9: (1, 2)}
    assert_same_as_rebuild(index, [*turns, inserted])
    index.apply([], [9])
    assert index.scores("volcano").of([2]) == {2: 0.0}
    assert_same_as_rebuild(index, turns)


def test_applying_a_change_twice_changes_nothing():
    conv = Conversation(3)
    index = LexicalIndex.build([conv.new() for _ in range(20)], LexicalOptions())
    removals = conv.removed(2)
    upserts = index.prepare([conv.new(), conv.changed()])
    index.apply(upserts, removals)
    index.apply(upserts, removals)
    assert_same_as_rebuild(index, list(conv.memories.values()))


def test_empty_and_tokenless_indexes_score_zero():
    assert len(LexicalIndex.build([], LexicalOptions()).scores("dog").scores) == 0
    tokenless = LexicalIndex.build([LexicalSource(1, "I am", None, None, START, "fact")], LexicalOptions(dates=False))
    np.testing.assert_array_equal(tokenless.scores("dog").scores, [0.0])


# ---- the cache --------------------------------------------------------------------------------------------------


def _source(memory_id: int, text: str) -> LexicalSource:
    return LexicalSource(memory_id, text, "s1", START + timedelta(minutes=memory_id), START, "turn")


def test_cache_advances_only_the_version_the_write_started_from():
    cache = LexicalCache()
    index = LexicalIndex.build([_source(1, "dog"), _source(2, "cat")])
    cache.put("subj", 10, index)
    assert cache.advance("subj", 9, 12, upserts=[_source(3, "volcano")]) is False  # written elsewhere in between
    assert cache.peek("subj") == (10, index) and len(index) == 2
    assert cache.advance("subj", 10, 12, upserts=[_source(3, "volcano")], removals=[1]) is True
    assert cache.peek("subj") == (12, index)
    assert cache.get("subj", 12, LexicalOptions()) is index
    assert cache.get("subj", 12, LexicalOptions(context=2)) is None  # other build options
    assert index.ids.tolist() == [2, 3]
    assert cache.advance("other", 0, 1, upserts=[_source(1, "x")]) is False  # nothing cached
    cache.incremental = False
    assert cache.advance("subj", 12, 13, removals=[2]) is False
    assert cache.peek("subj") == (12, index)


def test_cache_keeps_a_later_version_over_an_older_build():
    cache = LexicalCache()
    newer, older = LexicalIndex.build([_source(1, "dog")]), LexicalIndex.build([])
    cache.put("subj", 12, newer)
    cache.put("subj", 10, older)  # a search that read the subject before the last write finished late
    assert cache.peek("subj") == (12, newer)
    other = LexicalIndex.build([], LexicalOptions(context=0))
    cache.put("subj", 10, other)  # built with other options: it replaces the entry whatever its version
    assert cache.peek("subj") == (10, other)


def test_a_failed_update_drops_the_index_and_never_raises(monkeypatch):
    cache = LexicalCache()
    index = LexicalIndex.build([_source(1, "dog")])
    cache.put("subj", 1, index)

    def boom(*_args, **_kwargs):
        raise KeyError("some token")

    monkeypatch.setattr(index, "_store", boom)
    assert cache.advance("subj", 1, 2, upserts=[_source(2, "cat")]) is False
    assert cache.peek("subj") is None
    with pytest.raises(StaleIndexError):
        index.scores("dog")  # a search that already held it rebuilds


# ---- through the store ------------------------------------------------------------------------------------------


def _subject_row_id(store, tenant_id, subject):
    with store.engine.connect() as conn:
        return conn.execute(
            select(Subject.id).where(Subject.tenant_id == tenant_id, Subject.external_id == subject)
        ).scalar_one()


def _subject_seq(store, subject_id):
    with store.engine.connect() as conn:
        return conn.execute(select(Subject.change_seq).where(Subject.id == subject_id)).scalar_one()


def _hits(store, tenant_id, query, **kw):
    hits = store.search(tenant_id=tenant_id, subject="conv", query=query, k=20, **kw)
    return [(h.memory.id, round(h.score, 6), None if h.lexical_score is None else round(h.lexical_score, 5))
            for h in hits]


def _turn(text, minute, **kw):
    return NewMemory(subject="conv", text=text, session_id=kw.pop("session", "s1"), kind=kw.pop("kind", "turn"),
                     occurred_at=START + timedelta(minutes=minute), **kw)


SEARCHES = ("what did Bob do with the volcano", "camera photos", "cello lessons in May 2023", "tea")


def test_store_writes_update_the_cached_index_in_place(store, tenant_id, open_store):
    """After every kind of write, the search of this process uses its cached index, advanced in place, and
    finds exactly what a process with a cold cache (a full rebuild) finds."""
    records = store.add_batch(
        tenant_id=tenant_id,
        items=[
            _turn("Alice: What did you do last weekend?", 0),
            _turn("Bob: Went hiking up the volcano with my cousin.", 10),
            _turn("Alice: Did you bring your camera this time?", 20),
            _turn("Bob: Yes, I took a hundred photos of the crater.", 30),
            _turn("Alice: I started learning the cello recently.", 0, session="s2"),
            NewMemory(subject="conv", text="Bob likes green tea", kind="fact"),
        ],
    )
    subject_id = _subject_row_id(store, tenant_id, "conv")
    cold = open_store()  # same database, its own (empty) caches: a full rebuild at every search

    def check():
        seq = _subject_seq(store, subject_id)
        for query in SEARCHES:
            assert _hits(store, tenant_id, query) == _hits(cold, tenant_id, query)
            cold._lexical.drop(subject_id)
        cached = store._lexical.peek(subject_id)
        assert cached is not None and cached[0] == seq and cached[1] is index  # advanced, not rebuilt

    _hits(store, tenant_id, "warm up")
    index = store._lexical.peek(subject_id)[1]
    check()

    # into the middle of session s1 (between the volcano and the camera turns)
    inserted = store.add(tenant_id=tenant_id, item=_turn("Bob: We saw lava near the top.", 15))
    check()
    store.add_batch(tenant_id=tenant_id, items=[_turn("Bob: Tea, please.", 5, session="s2"),
                                                NewMemory(subject="other", text="unrelated tea")])
    check()
    store.update(tenant_id=tenant_id, memory_id=records[1].id, text="Bob: Went kayaking on the lake.")
    check()
    store.update(tenant_id=tenant_id, memory_id=records[2].id, kind="fact")  # leaves the session's turns
    check()
    store.update(tenant_id=tenant_id, memory_id=records[3].id, metadata={"x": 1})
    check()
    store.supersede(tenant_id=tenant_id, memory_id=records[5].id, by=records[4].id)
    check()
    store.delete(tenant_id=tenant_id, memory_id=inserted.id)
    check()
    store.delete_many(tenant_id=tenant_id, memory_ids=[records[0].id, records[4].id])
    check()
    store.add(tenant_id=tenant_id, item=_turn("Bob: the cello is in May", 40, expires_at=START))
    check()
    assert store.purge_expired(tenant_id=tenant_id) == 1
    check()
    store.forget_subject(tenant_id=tenant_id, subject="conv")
    assert store._lexical.peek(subject_id) is None


def test_writes_of_another_process_are_replayed_from_the_change_log(store, tenant_id, open_store):
    records = store.add_batch(
        tenant_id=tenant_id,
        items=[_turn("Bob: I like tea", 0), _turn("Alice: and coffee?", 10), _turn("Bob: only on Mondays", 20)],
    )
    subject_id = _subject_row_id(store, tenant_id, "conv")
    _hits(store, tenant_id, "tea")
    warm = store._lexical.peek(subject_id)
    assert warm is not None and warm[0] == _subject_seq(store, subject_id)
    index = warm[1]
    other, cold = open_store(), open_store()  # other processes on the same database

    def check():
        for query in SEARCHES:
            assert _hits(store, tenant_id, query) == _hits(cold, tenant_id, query)
            cold._lexical.drop(subject_id)
        assert store._lexical.peek(subject_id) == (_subject_seq(store, subject_id), index)  # not rebuilt

    other.add(tenant_id=tenant_id, item=_turn("Bob: we climbed the volcano", 5))  # into the middle
    check()
    other.update(tenant_id=tenant_id, memory_id=records[1].id, text="Alice: and the crater photos?")
    other.add_batch(tenant_id=tenant_id, items=[NewMemory(subject="else", text="volcano tea")])  # another subject
    other.update(tenant_id=tenant_id, memory_id=records[2].id, kind="fact")
    other.supersede(tenant_id=tenant_id, memory_id=records[0].id, by=records[2].id)
    check()
    other.delete(tenant_id=tenant_id, memory_id=records[0].id)
    store.add(tenant_id=tenant_id, item=_turn("Alice: volcano?", 30))  # this process, from a seq it never saw
    check()

    # The log no longer bridges the gap (pruned): rebuilt from the rows.
    other.add(tenant_id=tenant_id, item=_turn("Bob: cello in May", 40))
    with store.engine.begin() as conn:
        conn.execute(delete(VectorChange).where(VectorChange.seq == _subject_seq(store, subject_id)))
    assert _hits(store, tenant_id, "cello") == _hits(cold, tenant_id, "cello")
    rebuilt = store._lexical.peek(subject_id)
    assert rebuilt is not None and rebuilt[1] is not index
    # A seq that moved without a log entry is not bridged either.
    with store.engine.begin() as conn:
        conn.execute(update(Subject).where(Subject.id == subject_id).values(change_seq=Subject.change_seq + 100))
    _hits(store, tenant_id, "volcano")
    assert store._lexical.peek(subject_id)[1] is not rebuilt[1]


def test_an_add_overtaken_by_another_process_before_its_lock_does_not_skip_that_write(store, tenant_id, open_store):
    """On PostgreSQL an add writes its rows before it takes the tenant's lock (see ``MemoryStore._locks_late``),
    so the subject's change seq it read then may be passed by another process's add that commits meanwhile. Its
    cached index must not jump over that write: held between its rows and its lock (a gate in the vector stage)
    while another process adds, this process's search afterwards finds what a cold rebuild finds, every time."""
    store.add_batch(tenant_id=tenant_id, items=[_turn("Bob: I like tea", 0), _turn("Alice: and coffee?", 10)])
    subject_id = _subject_row_id(store, tenant_id, "conv")
    other, cold = open_store(), open_store()
    staged, release = threading.Event(), threading.Event()
    stage = store.vectors.stage

    def gated_stage(*args, **kwargs):
        staged.set()
        assert release.wait(30)
        return stage(*args, **kwargs)

    store.vectors.stage = gated_stage  # type: ignore[method-assign]
    for round_ in range(5):
        _hits(store, tenant_id, "tea")  # this process's index, tagged with the current seq
        staged.clear()
        release.clear()
        failures: list[BaseException] = []

        def ours(round_=round_, failures=failures):
            try:
                store.add(tenant_id=tenant_id, item=_turn(f"Alice: volcano number {round_}", 30 + round_))
            except BaseException as exc:  # reported below
                failures.append(exc)

        mine = threading.Thread(target=ours)
        mine.start()
        assert staged.wait(30)
        # On PostgreSQL this commits now; on SQLite it waits for the write lock our add holds, so it goes second.
        theirs = threading.Thread(
            target=other.add, kwargs={"tenant_id": tenant_id, "item": _turn(f"Bob: crater photo {round_}", 40)}
        )
        theirs.start()
        theirs.join(0.5)
        release.set()
        mine.join(60)
        theirs.join(60)
        assert not failures and not mine.is_alive() and not theirs.is_alive()
        for query in ("crater photo", "volcano number", "tea"):
            assert _hits(store, tenant_id, query) == _hits(cold, tenant_id, query)
            cold._lexical.drop(subject_id)


def test_concurrent_searches_and_writes(store, tenant_id):
    store.add_batch(tenant_id=tenant_id, items=[_turn(f"Bob: note {i} about tea and volcano", i) for i in range(30)])
    subject_id = _subject_row_id(store, tenant_id, "conv")
    _hits(store, tenant_id, "tea")
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher():
        try:
            while not stop.is_set():
                store.search(tenant_id=tenant_id, subject="conv", query="volcano tea note", k=5)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def writer():
        try:
            for i in range(25):
                added = store.add(tenant_id=tenant_id, item=_turn(f"Bob: more {i} volcano", 100 - 3 * i))
                if i % 3 == 0:
                    store.delete(tenant_id=tenant_id, memory_id=added.id)
                elif i % 3 == 1:
                    store.update(tenant_id=tenant_id, memory_id=added.id, text=f"Bob: tea {i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(2)] + [threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    threads[-1].join()
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    current = _hits(store, tenant_id, "volcano tea note")
    store._lexical.drop(subject_id)
    assert current == _hits(store, tenant_id, "volcano tea note")


def test_a_search_holding_a_broken_index_rebuilds(store, tenant_id):
    store.add_batch(tenant_id=tenant_id, items=[_turn("Bob: I like tea", 0), _turn("Alice: and coffee?", 1)])
    subject_id = _subject_row_id(store, tenant_id, "conv")
    before = _hits(store, tenant_id, "tea")
    broken = store._lexical.peek(subject_id)[1]
    broken._broken = True  # as left by a failed in-place update that another search already held
    assert _hits(store, tenant_id, "tea") == before
    assert store._lexical.peek(subject_id)[1] is not broken
