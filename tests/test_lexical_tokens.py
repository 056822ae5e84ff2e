"""The lexical index's own tokeniser gives exactly the tokens bm25s gives (the scores are bm25s' scores, so the
tokens must be bm25s' tokens), on generated text of any script and on conversation-like text."""

from __future__ import annotations

import bm25s
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_store.lexical import STOPWORDS, _stemmer, tokenize_query, tokenize_texts

_STOPS = list(STOPWORDS)

# Words meant to hit the edge cases: stop words in any case, contractions, underscores and digits (both are
# ``\w``), one-letter words (dropped), accented and non-Latin letters, words whose stem differs from them.
_WORDS = (
    "The", "what", "WHAT", "don't", "Don't", "I'm", "it's", "a", "x", "_", "__init__", "2023", "7", "9th",
    "running", "runs", "ran", "Caroline:", "Mel's", "café", "CAFÉ", "naïve", "straße", "İstanbul", "Ωmega",
    "東京", "日本語", "привет", "Привет", "e-mail", "re-enter", "co-operate", "5pm", "3.5", "U.S.A.", "ﬁne",
    "généralement", "\u0130", "ǅemal", "Ǆ", "σοφία", "ΣΟΦΙΑ", "emoji😀ok", "tab\there", "line\nbreak",
)


def _bm25s(texts: list[str]) -> list[list[str]]:
    tokens: list[list[str]] = bm25s.tokenize(
        texts, stopwords=_STOPS, stemmer=_stemmer(), show_progress=False, return_ids=False
    )
    return tokens


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=6))
def test_any_text_tokenises_as_bm25s_does(texts: list[str]) -> None:
    assert tokenize_texts(texts) == _bm25s(texts)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_WORDS), max_size=12).map(" ".join), min_size=1, max_size=5))
def test_edge_words_tokenise_as_bm25s_does(texts: list[str]) -> None:
    assert tokenize_texts(texts) == _bm25s(texts)


def test_conversation_text_and_queries() -> None:
    texts = [
        "Caroline: I went to a LGBTQ support group yesterday and it was so powerful.",
        "Melanie: Wow, that's cool, Caroline! What happened that was so awesome? Did you hear any inspiring stories?",
        "What do I think about jazz and Porto?",
        "I really enjoy hiking, and last week I tried sailing again (note 123).",
        "",
        "the and of to",
        "8 May 2023",
    ]
    expected = _bm25s(texts)
    assert tokenize_texts(texts) == expected
    assert [tokenize_query(t) for t in texts] == expected
    assert expected[0][:3] == ["carolin", "went", "lgbtq"]  # stems, stop words out: the check is not vacuous
    assert expected[5] == []
