"""Names in retrieval (#15): the query is embedded without the names of the subject's speakers, and memories that
name someone or something else (a mid-sentence capitalised word that is no speaker's name) get a small bonus.
The rules on hand-written texts, the query the store really embeds (a recording embedder given to the store),
the bonus in the fusion, and the incremental index keeping both equal to a rebuild."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from memory_store import FusionConfig, MemoryStore, NewMemory
from memory_store.fusion import score_fusion
from memory_store.lexical import LexicalIndex, LexicalOptions, LexicalSource, capitalised_words, tokenize_query
from tests.recording import RecordingEmbedder

START = datetime(2023, 5, 8, 13, 0, tzinfo=UTC)


def _source(memory_id: int, text: str, session: str | None = "s1", kind: str = "turn") -> LexicalSource:
    stamp = START + timedelta(minutes=memory_id)
    return LexicalSource(memory_id, text, session, stamp, stamp, kind)


def _stems(*words: str) -> list[str]:
    return [token for word in words for token in tokenize_query(word)]


# ---- capitalised words (index time) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Melanie: I went to Paris with Anna last year.", ["Paris", "Anna"]),  # speaker prefix left out
        ("Paris was lovely. We loved it.", []),  # a sentence's first word is not taken
        ("It rained - Rome was wet.", []),  # nor the first after a dash
        ('She said "Hello there" to me.', []),  # nor the first inside quotes
        ("Then I'm sure I'd go, and I've said I'll go. I think so.", []),  # "I" in all its forms
        ("We watched NASA launch a rocket on TV.", []),  # acronyms
        ("We stayed at Anna's house.", ["Anna"]),  # possessive
        ("We stayed at Anna\u2019s house.", ["Anna"]),  # typographic apostrophe
        ("Well, Here we go and It works.", []),  # stop words vanish
        ("Tim: Look at this! [shares a photo: a dog in Central Park]", []),  # the caption is left out
        ("we met Jean-Luc at the Louvre", ["Jean-Luc", "Louvre"]),
    ],
)
def test_capitalised_words(text: str, expected: list[str]) -> None:
    assert capitalised_words(text) == _stems(*expected)


# ---- speaker names stripped from the query (query time) -------------------------------------------------

CHAT = [
    "Melanie: I just finished Charlotte's Web, such a lovely book.",
    "Caroline: Nice! I read it with Anna years ago.",
    "Mary Ann: I went to Paris last summer.",
    "James: Caroline and Melanie came along.",
]


@pytest.fixture
def chat_index() -> LexicalIndex:
    return LexicalIndex.build([_source(i + 1, text) for i, text in enumerate(CHAT)])


@pytest.mark.parametrize(
    ("query", "stripped"),
    [
        ("What books has Melanie read?", "What books has read?"),
        ("What is Melanie's favourite book?", "What is favourite book?"),  # possessive 's
        ("Where did James' friends go?", "Where did friends go?"),  # possessive '
        ("What did Caroline suggest to Melanie?", "What did suggest to?"),
        ("Where did Mary Ann go?", "Where did go?"),  # a name of two words
        ("Did Melanie read it with Anna?", "Did read it with Anna?"),  # Anna speaks nowhere: kept
        ("what books has melanie read?", "what books has melanie read?"),  # only capitalised words go
        ("Melanie?", "Melanie?"),  # nothing would be left: the query as it is
        ("Who is Melanie?", "Who is Melanie?"),  # only stop words would be left
        ("Which book did Melanie finish, Caroline?", "Which book did finish,?"),  # punctuation stays
    ],
)
def test_strip_speakers(chat_index: LexicalIndex, query: str, stripped: str) -> None:
    assert chat_index.strip_speakers(query) == stripped


def test_an_index_without_speakers_strips_nothing() -> None:
    index = LexicalIndex.build([_source(1, "Melanie: a turn", kind="fact"), _source(2, "Melanie read a book")])
    assert index.strip_speakers("What books has Melanie read?") == "What books has Melanie read?"


def test_proper_nouns_are_names_other_than_the_speakers(chat_index: LexicalIndex) -> None:
    # 1: Charlotte (a title); 2: Anna; 3: Paris; 4: only speakers' names
    assert chat_index.proper_nouns([1, 2, 3, 4, 99]) == {1, 2, 3}


# ---- the bonus in the fusion ---------------------------------------------------------------------------


def test_the_proper_noun_bonus_is_applied_after_the_neighbour_share() -> None:
    dense = {1: 0.50, 2: 0.48, 3: 0.10}
    neighbours = {1: (None, 3), 2: (None, None)}
    off = score_fusion(dense, {}, FusionConfig(proper_noun_weight=0.0), neighbours=neighbours, proper={2})
    on = score_fusion(dense, {}, FusionConfig(), neighbours=neighbours, proper={2})
    assert [f.memory_id for f in off][:2] == [1, 2] and [f.memory_id for f in on][:2] == [2, 1]
    scores = {f.memory_id: f.score for f in on}
    a, p = 0.3, 0.1
    mixed = {m: c / 0.5 / 2 for m, c in dense.items()}  # dense normalised by its best, lexical 0, weights 1:1
    assert scores[1] == pytest.approx((mixed[1] + a * mixed[3]) / (1 + a) / (1 + p))
    assert scores[2] == pytest.approx((mixed[2] / (1 + a) + p) / (1 + p))  # no neighbour: a share of 0


def test_defaults() -> None:
    config = FusionConfig()
    assert (config.strip_speakers, config.proper_noun_weight, config.neighbour_weight) == (True, 0.1, 0.3)


# ---- through the store ---------------------------------------------------------------------------------


def _add_chat(store: MemoryStore, tenant_id: str, texts: Sequence[str] = CHAT, first: int = 0) -> None:
    store.add_batch(
        tenant_id=tenant_id,
        items=[
            NewMemory(subject="c", text=t, session_id="s1", kind="turn", occurred_at=START + timedelta(minutes=i))
            for i, t in enumerate(texts, start=first)
        ],
    )


@pytest.mark.parametrize("cache", [0, 16])
def test_the_store_embeds_the_query_without_the_speakers_name(
    open_store: Callable[..., MemoryStore], cache: int
) -> None:
    embedder = RecordingEmbedder()
    store = open_store(embedder=embedder, query_cache_size=cache)
    tenant_id = store.create_tenant(name="acme").id
    _add_chat(store, tenant_id)
    embedder.texts.clear()
    query = "What books has Melanie read?"
    for _ in range(2):  # the second search embeds early (the subject's id guessed), with the cached index
        store.search(tenant_id=tenant_id, subject="c", query=query, k=2)
    assert embedder.texts == ["What books has read?"] * (1 if cache else 2)
    store.search(tenant_id=tenant_id, subject="c", query=query, k=2, fusion=FusionConfig(strip_speakers=False))
    assert embedder.texts[-1] == query


def test_a_new_speaker_written_by_another_process_is_stripped(open_store: Callable[..., MemoryStore]) -> None:
    """The early embedding strips with the cached index; when the current one strips differently (a speaker
    added elsewhere since), the query is embedded again, stripped by the current index."""
    embedder = RecordingEmbedder()
    store = open_store(embedder=embedder, query_cache_size=16)
    tenant_id = store.create_tenant(name="acme").id
    _add_chat(store, tenant_id)
    store.search(tenant_id=tenant_id, subject="c", query="warm up", k=1)  # caches the index and the subject id
    _add_chat(open_store(), tenant_id, ["Gina: I adopted a dog."], first=len(CHAT))
    embedder.texts.clear()
    hits = store.search(tenant_id=tenant_id, subject="c", query="What pet did Gina adopt?", k=1)
    assert hits[0].memory.text == "Gina: I adopted a dog."
    assert embedder.texts == ["What pet did Gina adopt?", "What pet did adopt?"]


# ---- the incremental index keeps the flags of a rebuild --------------------------------------------------

NAMES = ["Anna", "Tim", "Mary Ann", "Paris", "Rome", "Gina"]
WORDS = ["went", "to", "with", "the", "book", "and", "I", "I'm", "NASA", "saw", "it", "Anna's"]


def _text(rng: random.Random) -> str:
    words = [rng.choice(WORDS + NAMES) for _ in range(rng.randint(1, 8))]
    body = " ".join(words)
    return f"{rng.choice(NAMES)}: {body}" if rng.random() < 0.7 else body


QUERIES = ["What did Anna see?", "Where did Mary Ann's friends go?", "Did Tim go to Rome with Gina?", "Gina?"]


def _assert_same_as_rebuild(index: LexicalIndex, sources: dict[int, LexicalSource]) -> None:
    rebuilt = LexicalIndex.build(sorted(sources.values(), key=lambda s: s.memory_id), index.options)
    ids = range(1, max(sources, default=0) + 2)
    assert index.proper_nouns(ids) == rebuilt.proper_nouns(ids)
    assert [index.strip_speakers(q) for q in QUERIES] == [rebuilt.strip_speakers(q) for q in QUERIES]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_changes_keep_the_flags_and_the_stripping_of_a_rebuild(seed: int) -> None:
    rng = random.Random(seed)
    options = LexicalOptions(context=2)
    sources = {
        i: _source(i, _text(rng), rng.choice(["s1", "s2", None]), rng.choice(["turn", "fact"])) for i in range(1, 16)
    }
    index = LexicalIndex.build(list(sources.values()), options)
    _assert_same_as_rebuild(index, sources)
    next_id = 16
    for _ in range(30):
        what = rng.random()
        if what < 0.4 or not sources:
            change = _source(next_id, _text(rng), rng.choice(["s1", "s2"]), rng.choice(["turn", "fact"]))
            next_id += 1
        elif what < 0.7:
            old = sources[rng.choice(list(sources))]
            change = _source(old.memory_id, _text(rng), old.session_id, rng.choice(["turn", "fact"]))
        else:
            gone = rng.sample(list(sources), min(3, len(sources)))
            for memory_id in gone:
                del sources[memory_id]
            index.apply([], gone)
            _assert_same_as_rebuild(index, sources)
            continue
        sources[change.memory_id] = change
        index.apply(index.prepare([change]), [])
        _assert_same_as_rebuild(index, sources)


def test_removing_a_speakers_last_turn_stops_stripping_and_flags_the_name() -> None:
    index = LexicalIndex.build([_source(1, "Tim: hello"), _source(2, "Gina: I heard Tim play the violin.")])
    assert index.strip_speakers("What does Tim play?") == "What does play?" and index.proper_nouns([2]) == set()
    index.apply([], [1])
    assert index.strip_speakers("What does Tim play?") == "What does Tim play?" and index.proper_nouns([2]) == {2}
    index.apply(index.prepare([_source(3, "Tim: back again")]), [])
    assert index.strip_speakers("What does Tim play?") == "What does play?" and index.proper_nouns([2]) == set()
