"""BM25 over one subject's memories, built in memory from decrypted text and never persisted.

A memory's BM25 document is its text, optionally followed by the text of the memories just before it in the
same session (what it replies to) and its ``occurred_at`` date in words; see :func:`build_documents`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import bm25s
import numpy as np
import numpy.typing as npt
import Stemmer

_STEMMER = Stemmer.Stemmer("english")
# bm25s sets its own logger to DEBUG on import, which floods any application log that has a root handler.
logging.getLogger("bm25s").setLevel(logging.WARNING)

# The usual English stop-word list (as shipped with NLTK). bm25s' own list has 33 words and keeps question
# words ("what", "did", "how"), which then match every question asked in a conversation rather than the
# answer to it.
STOPWORDS: tuple[str, ...] = (
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "you're", "you've", "you'll",
    "you'd", "your", "yours", "yourself", "yourselves", "he", "him", "his", "himself", "she", "she's",
    "her", "hers", "herself", "it", "it's", "its", "itself", "they", "them", "their", "theirs",
    "themselves", "what", "which", "who", "whom", "this", "that", "that'll", "these", "those", "am", "is",
    "are", "was", "were", "be", "been", "being", "have", "has", "had", "having", "do", "does", "did",
    "doing", "a", "an", "the", "and", "but", "if", "or", "because", "as", "until", "while", "of", "at",
    "by", "for", "with", "about", "against", "between", "into", "through", "during", "before", "after",
    "above", "below", "to", "from", "up", "down", "in", "out", "on", "off", "over", "under", "again",
    "further", "then", "once", "here", "there", "when", "where", "why", "how", "all", "any", "both",
    "each", "few", "more", "most", "other", "some", "such", "no", "nor", "not", "only", "own", "same",
    "so", "than", "too", "very", "s", "t", "can", "will", "just", "don", "don't", "should", "should've",
    "now", "d", "ll", "m", "o", "re", "ve", "y", "ain", "aren", "aren't", "couldn", "couldn't", "didn",
    "didn't", "doesn", "doesn't", "hadn", "hadn't", "hasn", "hasn't", "haven", "haven't", "isn", "isn't",
    "ma", "mightn", "mightn't", "mustn", "mustn't", "needn", "needn't", "shan", "shan't", "shouldn",
    "shouldn't", "wasn", "wasn't", "weren", "weren't", "won", "won't", "wouldn", "wouldn't",
)


def tokenize(texts: Sequence[str]) -> bm25s.tokenization.Tokenized:
    return bm25s.tokenize(list(texts), stopwords=list(STOPWORDS), stemmer=_STEMMER, show_progress=False)


def tokenize_query(text: str) -> list[str]:
    tokens: list[list[str]] = bm25s.tokenize(
        [text], stopwords=list(STOPWORDS), stemmer=_STEMMER, show_progress=False, return_ids=False
    )
    return tokens[0]


@dataclass(frozen=True)
class LexicalSource:
    """What the lexical index needs to know about one memory."""

    memory_id: int
    text: str
    session_id: str | None
    occurred_at: datetime | None
    created_at: datetime
    kind: str


def date_words(stamp: datetime) -> str:
    return f"{stamp.day} {stamp:%B %Y}"


def _order(source: LexicalSource) -> tuple[datetime, int]:
    return (source.occurred_at or source.created_at, source.memory_id)


def session_runs(sources: Sequence[LexicalSource], kinds: Collection[str] | None) -> list[list[int]]:
    """Positions in ``sources`` of each session's memories, in conversation order.

    Within a session, memories are ordered by ``occurred_at`` (else ``created_at``), then by id (insertion
    order). Memories without a session, or of a kind not in ``kinds`` (None: any kind), belong to none.
    """
    sessions: dict[str, list[int]] = {}
    for pos, source in enumerate(sources):
        if source.session_id is not None and (kinds is None or source.kind in kinds):
            sessions.setdefault(source.session_id, []).append(pos)
    runs = list(sessions.values())
    for members in runs:
        members.sort(key=lambda p: _order(sources[p]))
    return runs


def build_documents(
    sources: Sequence[LexicalSource], *, context: int, dates: bool, kinds: Collection[str] | None = None
) -> list[str]:
    """One BM25 document per source (same order): its text, up to ``context`` preceding texts of its session
    (what it replies to; see :func:`session_runs` for ``kinds``) and, with ``dates``, its ``occurred_at``
    date in words."""
    docs = [s.text for s in sources]
    if context > 0:
        for members in session_runs(sources, kinds):
            for rank, pos in enumerate(members):
                before = [sources[p].text for p in members[max(0, rank - context) : rank]]
                if before:
                    docs[pos] = docs[pos] + "\n" + "\n".join(before)
    if dates:
        for pos, source in enumerate(sources):
            if source.occurred_at is not None:
                docs[pos] = f"{docs[pos]}\n{date_words(source.occurred_at)}"
    return docs


class SessionLinks:
    """Each memory's previous and next memory in its session (all of the subject's memories)."""

    def __init__(self, sources: Sequence[LexicalSource], kinds: Collection[str] | None = None) -> None:
        self._prev: dict[int, int] = {}
        self._next: dict[int, int] = {}
        for members in session_runs(sources, kinds):
            ids = [sources[p].memory_id for p in members]
            for before, after in itertools.pairwise(ids):
                self._next[before] = after
                self._prev[after] = before

    def neighbours(
        self, memory_ids: Iterable[int], allowed: Callable[[int], bool], *, max_skip: int = 8
    ) -> dict[int, tuple[int | None, int | None]]:
        """(previous, next) allowed memory in the same session for each of ``memory_ids``.

        Memories that are not ``allowed`` (filtered out of the search) are stepped over, at most ``max_skip``.
        """
        out: dict[int, tuple[int | None, int | None]] = {}
        for memory_id in memory_ids:
            found: list[int | None] = []
            for links in (self._prev, self._next):
                current = links.get(memory_id)
                steps = 0
                while current is not None and not allowed(current) and steps < max_skip:
                    current = links.get(current)
                    steps += 1
                found.append(current if current is not None and allowed(current) else None)
            if found[0] is not None or found[1] is not None:
                out[memory_id] = (found[0], found[1])
        return out


class LexicalIndex:
    """BM25 scores of a query against a fixed list of documents (memory row ids)."""

    def __init__(self, ids: Sequence[int], texts: Sequence[str], *, links: SessionLinks | None = None) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.links = links
        self._position = {memory_id: pos for pos, memory_id in enumerate(self.ids.tolist())}
        self._bm25: bm25s.BM25 | None = None
        if len(texts):
            self._bm25 = bm25s.BM25()
            self._bm25.index(tokenize(texts), show_progress=False)

    def scores(self, query: str) -> npt.NDArray[np.float32]:
        """One BM25 score per document, aligned with ``ids``."""
        tokens = tokenize_query(query)
        if self._bm25 is None or not tokens:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)


    def scores_of(self, scores: npt.NDArray[np.float32], memory_ids: Iterable[int]) -> dict[int, float]:
        """The entries of ``scores`` (from :meth:`scores`) for ``memory_ids`` that this index holds."""
        out: dict[int, float] = {}
        for memory_id in memory_ids:
            pos = self._position.get(memory_id)
            if pos is not None:
                out[memory_id] = float(scores[pos])
        return out


class LexicalCache:
    """LRU of per-subject lexical indexes keyed by the subject's change sequence (and the build options)."""

    def __init__(self, max_subjects: int = 256) -> None:
        self._items: OrderedDict[str, tuple[Hashable, LexicalIndex]] = OrderedDict()
        self._max = max_subjects
        self._lock = threading.Lock()

    def get(self, subject_id: str, version: Hashable) -> LexicalIndex | None:
        with self._lock:
            item = self._items.get(subject_id)
            if item is None or item[0] != version:
                return None
            self._items.move_to_end(subject_id)
            return item[1]

    def put(self, subject_id: str, version: Hashable, index: LexicalIndex) -> None:
        with self._lock:
            self._items[subject_id] = (version, index)
            self._items.move_to_end(subject_id)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def drop(self, subject_id: str) -> None:
        with self._lock:
            self._items.pop(subject_id, None)
