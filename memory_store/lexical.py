"""BM25 over one subject's memories, built in memory from decrypted text and never persisted.

A memory's BM25 document is its text, optionally followed by the text of the memories just before it in the
same session (what it replies to) and its ``occurred_at`` date in words; see :func:`build_documents`.

:class:`LexicalIndex` keeps the postings itself (term -> documents and term frequencies, document lengths)
so that a write can add, change or remove documents in place: a memory added into the middle of a session
also changes the documents of the memories that now follow it, and those alone are recomputed. Its scores
are bm25s' with its defaults (``bm25s.BM25()``: method "lucene", k1=1.5, b=0.75, idf
``log(1 + (N - df + 0.5) / (df + 0.5))``), computed the way bm25s computes them (float32 idf and per-term
scores, float32 sums in query-token order), so they equal a full bm25s build of the same documents.

:class:`LexicalCache` holds one index per subject, tagged with the subject's ``change_seq``. A write made by
this process moves a cached index from the ``change_seq`` before the write to the one after it
(:meth:`LexicalCache.advance`) when, and only when, the index was tagged with the former; any other write
(another process, a replica) leaves the tag behind, and the next search brings the index forward from the
change log, or rebuilds it from the rows when the log cannot bridge the gap (:mod:`memory_store.search`).
Changes are idempotent (a memory's new state, or its removal), so an index that already holds a change
(read from rows newer than its tag) can take it again.
The index also keeps, per memory, the term ids of its speaker's name (a turn stored as ``"Name: text"``) and of
its capitalised words (:func:`capitalised_words`), read by a search for the speaker bonus
(:meth:`LexicalIndex.named_speakers`), the proper-noun bonus (:meth:`LexicalIndex.proper_nouns`) and the query
it embeds (:meth:`LexicalIndex.strip_speakers`); the speakers' names are counted per memory, so that adds,
changes and removals leave them as a rebuild would.

The plaintext never leaves memory: indexes keep term ids and counts (the stemmed words only in a vocabulary),
and nothing here logs text.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import bm25s
import numpy as np
import numpy.typing as npt
import Stemmer

log = logging.getLogger("sealmem.lexical")
# bm25s sets its own logger to DEBUG on import, which floods any application log that has a root handler.
logging.getLogger("bm25s").setLevel(logging.WARNING)

# bm25s.BM25() defaults (method "lucene"): the scores below are bm25s' scores.
K1 = 1.5
B = 0.75

IdArray = npt.NDArray[np.int64]
ScoreArray = npt.NDArray[np.float32]

# The usual English stop-word list (as shipped with NLTK). bm25s' own list has 33 words and keeps question
# words ("what", "did", "how"), which then match every question asked in a conversation rather than the
# answer to it.
STOPWORDS: tuple[str, ...] = (
    "i",
    "me",
    "my",
    "myself",
    "we",
    "our",
    "ours",
    "ourselves",
    "you",
    "you're",
    "you've",
    "you'll",
    "you'd",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "he",
    "him",
    "his",
    "himself",
    "she",
    "she's",
    "her",
    "hers",
    "herself",
    "it",
    "it's",
    "its",
    "itself",
    "they",
    "them",
    "their",
    "theirs",
    "themselves",
    "what",
    "which",
    "who",
    "whom",
    "this",
    "that",
    "that'll",
    "these",
    "those",
    "am",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "have",
    "has",
    "had",
    "having",
    "do",
    "does",
    "did",
    "doing",
    "a",
    "an",
    "the",
    "and",
    "but",
    "if",
    "or",
    "because",
    "as",
    "until",
    "while",
    "of",
    "at",
    "by",
    "for",
    "with",
    "about",
    "against",
    "between",
    "into",
    "through",
    "during",
    "before",
    "after",
    "above",
    "below",
    "to",
    "from",
    "up",
    "down",
    "in",
    "out",
    "on",
    "off",
    "over",
    "under",
    "again",
    "further",
    "then",
    "once",
    "here",
    "there",
    "when",
    "where",
    "why",
    "how",
    "all",
    "any",
    "both",
    "each",
    "few",
    "more",
    "most",
    "other",
    "some",
    "such",
    "no",
    "nor",
    "not",
    "only",
    "own",
    "same",
    "so",
    "than",
    "too",
    "very",
    "s",
    "t",
    "can",
    "will",
    "just",
    "don",
    "don't",
    "should",
    "should've",
    "now",
    "d",
    "ll",
    "m",
    "o",
    "re",
    "ve",
    "y",
    "ain",
    "aren",
    "aren't",
    "couldn",
    "couldn't",
    "didn",
    "didn't",
    "doesn",
    "doesn't",
    "hadn",
    "hadn't",
    "hasn",
    "hasn't",
    "haven",
    "haven't",
    "isn",
    "isn't",
    "ma",
    "mightn",
    "mightn't",
    "mustn",
    "mustn't",
    "needn",
    "needn't",
    "shan",
    "shan't",
    "shouldn",
    "shouldn't",
    "wasn",
    "wasn't",
    "weren",
    "weren't",
    "won",
    "won't",
    "wouldn",
    "wouldn't",
)
_STOPWORDS = list(STOPWORDS)
_local = threading.local()


def _stemmer() -> Stemmer.Stemmer:
    """The Snowball English stemmer of this thread (a PyStemmer object is not meant to be shared)."""
    stemmer: Stemmer.Stemmer | None = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer


def tokenize(texts: Sequence[str]) -> bm25s.tokenization.Tokenized:
    """bm25s token ids and vocabulary of ``texts`` (what a bm25s index is built from)."""
    return bm25s.tokenize(list(texts), stopwords=_STOPWORDS, stemmer=_stemmer(), show_progress=False)


# bm25s.tokenize's defaults: scikit-learn's CountVectorizer pattern over the lower-cased text.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")
_STOPWORD_SET = frozenset(STOPWORDS)


def tokenize_texts(texts: Sequence[str]) -> list[list[str]]:
    """The stemmed tokens of each text, exactly as :func:`tokenize` (bm25s) finds them: lower case, ``\\w\\w+``
    words, stop words out, then the Snowball stem of each word (tests/test_lexical_tokens.py checks both agree).
    Done here rather than by ``bm25s.tokenize``, which rebuilds its stop-word set for every text and makes three
    progress bars per call: over half the CPU of tokenising one query.

    Tokens of a text never span a line break, so the tokens of texts joined with ``"\\n"`` are the tokens of
    each text in turn: a document's term counts are the sum of its parts' (see :class:`LexicalIndex`)."""
    stem = _stemmer().stemWords
    stop = _STOPWORD_SET
    find = _TOKEN.findall
    return [stem([word for word in find(text.lower()) if word not in stop]) for text in texts]


def tokenize_query(text: str) -> list[str]:
    return tokenize_texts([text])[0]


# "Caroline: ...", "Mary Ann: ...": one to three words opening a text, each starting with a capital letter,
# then a colon and a space (how imported conversation transcripts name who speaks).
_SPEAKER = re.compile(r"\s*([^\W\d_][\w.'\-]*(?: [^\W\d_][\w.'\-]*){0,2}):\s")


def speaker_name(text: str) -> str | None:
    """Who speaks in a conversation turn stored as ``"Name: text"`` (one to three capitalised words, then a
    colon), else None."""
    match = _SPEAKER.match(text)
    if match is None or not all(word[0].isupper() for word in match[1].split(" ")):
        return None
    return match[1]


@functools.lru_cache(maxsize=4096)
def _name_tokens(name: str) -> tuple[str, ...]:
    return tuple(tokenize_texts([name])[0])


# Sentences (and dash- or quote-separated clauses) of a text, its words, and the forms of "I" that are
# capitalised without being names.
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\s+-\s+|[\"“”]")
_WORD = re.compile(r"[A-Za-z][\w'\u2019\-]*")
_PRONOUN_I = frozenset({"I", "I'm", "I've", "I'll", "I'd", "I\u2019m", "I\u2019ve", "I\u2019ll", "I\u2019d"})
_CAPTION = " [shares a photo:"
# A query's words (letters first) and a possessive ending ("Tim's", "James'").
_QUERY_WORD = re.compile(r"[^\W\d_][\w'\u2019.\-]*")
_POSSESSIVE = re.compile(r"(?:['\u2019]s|s['\u2019]|['\u2019])$")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([?.,!;:])")


def capitalised_words(text: str) -> list[str]:
    """The stemmed tokens of the capitalised words inside the sentences of ``text``: not a sentence's first
    word, not "I" ("I'm", ...), not an all-capitals word, a possessive "'s" dropped; stop words vanish as in
    any token ("It", "Here"). A ``"Name: "`` speaker prefix and a ``" [shares a photo: ...]"`` caption are
    left out. Mostly names of people, places and titles a memory mentions: see
    :meth:`LexicalIndex.proper_nouns`."""
    text = text.split(_CAPTION, 1)[0]
    prefix = _SPEAKER.match(text)
    if prefix is not None:
        text = text[prefix.end() :]
    out: list[str] = []
    for sentence in _SENTENCE.split(text):
        for word in _WORD.findall(sentence)[1:]:
            base = word[:-2] if word.endswith(("'s", "\u2019s")) else word
            if base[0].isupper() and base not in _PRONOUN_I and not base.isupper():
                out.extend(tokenize_query(base))
    return out


@dataclass(frozen=True)
class LexicalSource:
    """What the lexical index needs to know about one memory."""

    memory_id: int
    text: str
    session_id: str | None
    occurred_at: datetime | None
    created_at: datetime
    kind: str


@dataclass(frozen=True)
class LexicalOptions:
    """How documents are built: ``context`` preceding memories of the session, the date in words (``dates``),
    session context between memories whose kind is in ``kinds`` (None: any kind)."""

    context: int = 1
    dates: bool = True
    kinds: tuple[str, ...] | None = ("turn",)


def date_words(stamp: datetime) -> str:
    return f"{stamp.day} {stamp:%B %Y}"


@functools.lru_cache(maxsize=4096)
def _date_tokens(words: str) -> tuple[str, ...]:
    return tuple(tokenize_texts([words])[0])


def _order(source: LexicalSource) -> tuple[datetime, int]:
    return (source.occurred_at or source.created_at, source.memory_id)


def _linked(session_id: str | None, kind: str, kinds: Collection[str] | None) -> bool:
    return session_id is not None and (kinds is None or kind in kinds)


def session_runs(sources: Sequence[LexicalSource], kinds: Collection[str] | None) -> list[list[int]]:
    """Positions in ``sources`` of each session's memories, in conversation order.

    Within a session, memories are ordered by ``occurred_at`` (else ``created_at``), then by id (insertion
    order). Memories without a session, or of a kind not in ``kinds`` (None: any kind), belong to none.
    """
    sessions: dict[str, list[int]] = {}
    for pos, source in enumerate(sources):
        if source.session_id is not None and _linked(source.session_id, source.kind, kinds):
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
    date in words. (The reference definition: :class:`LexicalIndex` scores these documents without
    building their text.)"""
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

    def __init__(self, sources: Sequence[LexicalSource] = (), kinds: Collection[str] | None = None) -> None:
        self._prev: dict[int, int] = {}
        self._next: dict[int, int] = {}
        for members in session_runs(sources, kinds):
            self.relink((), [sources[p].memory_id for p in members])

    def relink(self, before: Iterable[int], after: Sequence[int]) -> None:
        """A session whose memories, in order, were ``before`` is now ``after``."""
        for memory_id in before:
            self._prev.pop(memory_id, None)
            self._next.pop(memory_id, None)
        for earlier, later in itertools.pairwise(after):
            self._next[earlier] = later
            self._prev[later] = earlier

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


@dataclass(frozen=True)
class LexicalScores:
    """BM25 scores of one query: ``scores[i]`` is memory ``ids[i]``'s (ids ascending, every indexed memory)."""

    ids: IdArray
    scores: ScoreArray
    terms: tuple[int, ...] = ()  # the index's term ids of the query's words, in the query's order

    def of(self, memory_ids: Iterable[int]) -> dict[int, float]:
        """The scores of those of ``memory_ids`` that were indexed, in the order given."""
        wanted = np.fromiter(memory_ids, dtype=np.int64)
        if len(self.ids) == 0 or len(wanted) == 0:
            return {}
        pos = np.minimum(np.searchsorted(self.ids, wanted), len(self.ids) - 1)
        found = self.ids[pos] == wanted
        return dict(zip(wanted[found].tolist(), self.scores[pos[found]].tolist(), strict=True))


class StaleIndexError(RuntimeError):
    """The index was left half-updated by a failed change: rebuild it."""


class _Member:
    """One indexed memory: its order in its session, its text's term ids, its speaker's, those of its capitalised
    words and its current document."""

    __slots__ = (
        "capitalised",
        "date_tokens",
        "doc",
        "key",
        "linked",
        "memory_id",
        "session_id",
        "slot",
        "speaker",
        "tokens",
        "window",
    )

    def __init__(
        self,
        source: LexicalSource,
        session_id: str | None,
        linked: bool,
        tokens: tuple[int, ...],
        dates: tuple[int, ...],
    ) -> None:
        self.memory_id = source.memory_id
        self.session_id = session_id
        self.key = _order(source)
        self.linked = linked
        self.tokens = tokens  # term ids of the text
        self.date_tokens = dates  # term ids of the date in words (empty without dates)
        self.speaker: frozenset[int] = frozenset()  # term ids of the speaker's name (turns of options.kinds)
        self.capitalised: frozenset[int] = frozenset()  # term ids of its capitalised words (capitalised_words)
        self.window: tuple[int, ...] = ()  # the memories whose text the document includes as context
        self.doc: tuple[int, ...] = ()  # term ids of the document as indexed (with repeats)
        self.slot = -1  # row in the slot arrays (-1: not stored yet)


class LexicalIndex:
    """BM25 over one subject's memories that can be changed in place (see the module docstring).

    Methods take the index's lock: searches may score while a write of this process updates it.
    """

    def __init__(self, options: LexicalOptions | None = None) -> None:
        self.options = options or LexicalOptions()
        self.lock = threading.Lock()
        self.links = SessionLinks()
        self._members: dict[int, _Member] = {}
        self._runs: dict[str, list[tuple[datetime, int]]] = {}  # session -> sorted (order time, id)
        self._vocab: dict[str, int] = {}  # stemmed term -> term id (terms no document holds stay until a rebuild)
        self._interned: dict[str, str] = {}  # one string per session id
        self._dates: dict[str, tuple[int, ...]] = {}  # date in words -> its term ids (shared by its memories)
        self._speaker_terms: set[int] = set()  # term ids of the names of the indexed memories' speakers
        self._speaker_counts: Counter[int] = Counter()  # how many indexed memories' speaker names hold each
        # term id -> (slots, term frequencies) of the documents holding it, both int32
        self._postings: dict[int, tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]] = {}
        self._slot_ids: IdArray = np.zeros(0, dtype=np.int64)  # memory id per slot, -1 when free
        self._slot_len: npt.NDArray[np.float64] = np.zeros(0, dtype=np.float64)  # document length per slot
        self._used = 0
        self._free: list[int] = []
        self._total = 0  # sum of document lengths
        self._view: tuple[IdArray, IdArray] | None = None  # (live slots by ascending id, their ids)
        self._contributions: dict[int, ScoreArray] = {}  # term -> its float32 score per posting (until a change)
        self._broken = False

    @classmethod
    def build(cls, sources: Sequence[LexicalSource], options: LexicalOptions | None = None) -> LexicalIndex:
        """The index of ``sources`` (a subject's memories)."""
        index = cls(options)
        index._apply(index.prepare(sources), ())
        return index

    def __len__(self) -> int:
        return len(self._members)

    @property
    def ids(self) -> IdArray:
        """The indexed memory ids, ascending."""
        with self.lock:
            return self._current_view()[1]

    # ---- reads --------------------------------------------------------------------------------------

    def scores(self, query: str) -> LexicalScores:
        """BM25 score of every indexed memory for ``query`` (bm25s' scores of the same documents)."""
        tokens = tokenize_query(query)
        with self.lock:
            if self._broken:
                raise StaleIndexError("lexical index needs a rebuild")
            slots_by_id, ids = self._current_view()
            count = len(ids)
            vocab = self._vocab
            terms = tuple(term for token in tokens if (term := vocab.get(token)) is not None)
            if count == 0 or not tokens:
                return LexicalScores(ids, np.zeros(count, dtype=np.float32), terms)
            acc = np.zeros(self._used, dtype=np.float32)
            for token in tokens:  # duplicates count twice, as in bm25s
                term = self._vocab.get(token)
                posting = self._postings.get(term) if term is not None else None
                if posting is None or term is None:
                    continue
                contribution = self._contributions.get(term)
                if contribution is None:
                    contribution = self._contributions[term] = self._contribution(posting, count)
                acc[posting[0]] += contribution
            return LexicalScores(ids, acc[slots_by_id], terms)

    def _contribution(self, posting: tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]], count: int) -> ScoreArray:
        """A term's score in each document holding it, as bm25s computes it: float32 idf, the term-frequency
        part in float64, the product stored as float32."""
        slots, freqs = posting
        df = len(slots)
        idf = float(np.float32(math.log(1 + (count - df + 0.5) / (df + 0.5))))
        tf = freqs.astype(np.float64)
        tfc = tf / (K1 * ((1 - B) + B * self._slot_len[slots] / (self._total / count)) + tf)
        return (idf * tfc).astype(np.float32)

    def neighbours(
        self, memory_ids: Iterable[int], allowed: Callable[[int], bool], *, max_skip: int = 8
    ) -> dict[int, tuple[int | None, int | None]]:
        """:meth:`SessionLinks.neighbours` under the index's lock."""
        with self.lock:
            return self.links.neighbours(memory_ids, allowed, max_skip=max_skip)

    def named_speakers(self, scored: LexicalScores, memory_ids: Iterable[int]) -> dict[int, int]:
        """Those of ``memory_ids`` whose speaker (:func:`speaker_name`, turns of the options' kinds only) the
        query of ``scored`` (this index's :meth:`scores`) names - a word of the name is a word of the query -
        each with the position in the query of that speaker's first mention (its first word that names it)."""
        terms = scored.terms
        if not terms:
            return {}
        first: dict[int, int] = {}
        for position, term in enumerate(terms):
            first.setdefault(term, position)
        out: dict[int, int] = {}
        with self.lock:
            if self._speaker_terms.isdisjoint(first):  # the query names nobody who speaks here
                return out
            members = self._members
            for memory_id in memory_ids:
                member = members.get(memory_id)
                if member is None or first.keys().isdisjoint(member.speaker):
                    continue
                out[memory_id] = min(first[term] for term in member.speaker if term in first)
        return out

    def strip_speakers(self, query: str) -> str:
        """``query`` without the words that name a speaker of this index's memories: each capitalised word whose
        tokens (a possessive "'s", "s'" or "'" dropped first) are all tokens of speakers' names goes, and spaces
        left before punctuation close up. ``query`` itself when no token would be left ("Melanie?").

        A query for a speaker's memories ("What books has Melanie read?") is embedded without the name: every
        memory of that speaker shares it, so it adds nothing to the cosine but the name's own meaning, which
        draws turns that mention the name (the other speaker's questions) ahead of the answer. The BM25 query
        and the speaker bonus (:meth:`named_speakers`) keep the whole query."""
        with self.lock:
            if not self._speaker_terms:
                return query
            vocab, speakers = self._vocab, self._speaker_terms

            def names_a_speaker(word: str) -> bool:
                if not word[0].isupper():
                    return False
                tokens = tokenize_query(_POSSESSIVE.sub("", word))
                return bool(tokens) and all(vocab.get(token, -1) in speakers for token in tokens)

            words = _QUERY_WORD.sub(lambda match: "" if names_a_speaker(match[0]) else match[0], query)
        stripped = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join(words.split()))
        return stripped if tokenize_query(stripped) else query

    def proper_nouns(self, memory_ids: Iterable[int]) -> set[int]:
        """Those of ``memory_ids`` whose text has a capitalised word (:func:`capitalised_words`) that is not
        the name of a speaker of this index's memories: mostly memories that name a person, place or title
        (what list questions ask for: "Which cities has Tim visited?")."""
        with self.lock:
            members, speakers = self._members, self._speaker_terms
            out: set[int] = set()
            for memory_id in memory_ids:
                member = members.get(memory_id)
                if member is not None and member.capitalised and not member.capitalised <= speakers:
                    out.add(memory_id)
            return out

    def _current_view(self) -> tuple[IdArray, IdArray]:
        if self._view is None:
            slot_ids = self._slot_ids[: self._used]
            live = np.flatnonzero(slot_ids >= 0)
            by_id = live[np.argsort(slot_ids[live], kind="stable")]
            self._view = (by_id, slot_ids[by_id].copy())
        return self._view

    # ---- changes ------------------------------------------------------------------------------------

    def prepare(self, sources: Iterable[LexicalSource]) -> list[tuple[LexicalSource, list[str]]]:
        """Tokenise ``sources`` for :meth:`apply` (no lock needed: it does not touch the index)."""
        listed = list(sources)
        return list(zip(listed, tokenize_texts([s.text for s in listed]), strict=True))

    def apply(self, upserts: Sequence[tuple[LexicalSource, list[str]]], removals: Iterable[int]) -> None:
        """Add or replace the memories of ``upserts`` (from :meth:`prepare`) and remove ``removals``; every
        document whose content depends on them (session context) is recomputed. Idempotent."""
        with self.lock:
            self.apply_locked(upserts, removals)

    def apply_locked(self, upserts: Sequence[tuple[LexicalSource, list[str]]], removals: Iterable[int]) -> None:
        """:meth:`apply` for a caller that holds :attr:`lock`."""
        try:
            self._apply(upserts, removals)
        except BaseException:
            self._broken = True
            raise

    def _term_ids(self, tokens: Iterable[str]) -> tuple[int, ...]:
        vocab = self._vocab
        return tuple(vocab.setdefault(token, len(vocab)) for token in tokens)

    def _count_speaker(self, terms: frozenset[int], change: int) -> None:
        """Count ``terms`` (a speaker's name) in or out of the speaker names of the indexed memories."""
        counts = self._speaker_counts
        for term in terms:
            counts[term] += change
            if counts[term] > 0:
                self._speaker_terms.add(term)
            else:
                del counts[term]
                self._speaker_terms.discard(term)

    def _date_ids(self, stamp: datetime) -> tuple[int, ...]:
        words = date_words(stamp)
        ids = self._dates.get(words)
        if ids is None:
            ids = self._dates[words] = self._term_ids(_date_tokens(words))
        return ids

    def _apply(self, upserts: Sequence[tuple[LexicalSource, list[str]]], removals: Iterable[int]) -> None:
        options = self.options
        self._contributions = {}  # N, document lengths and the average change
        touched: dict[str, list[int]] = {}  # session -> its memory ids before this change
        dirty: dict[int, None] = {}  # memories whose document must be recomputed (ordered)
        retexted: set[int] = set()  # memories whose text changed: documents that include them change too

        def touch(session_id: str) -> list[tuple[datetime, int]]:
            run = self._runs.setdefault(session_id, [])
            if session_id not in touched:
                touched[session_id] = [memory_id for _, memory_id in run]
            return run

        def unlink(member: _Member) -> None:
            assert member.session_id is not None
            run = touch(member.session_id)
            pos = bisect.bisect_left(run, member.key)
            if pos < len(run) and run[pos] == member.key:
                del run[pos]

        for memory_id in removals:
            gone = self._members.pop(memory_id, None)
            if gone is None:
                continue
            self._count_speaker(gone.speaker, -1)
            if gone.linked:
                unlink(gone)
            self._store([(gone, ())])
            self._slot_ids[gone.slot] = -1
            self._free.append(gone.slot)
            self._view = None

        for source, words in upserts:
            dates = self._date_ids(source.occurred_at) if options.dates and source.occurred_at is not None else ()
            session_id = source.session_id
            if session_id is not None:
                session_id = self._interned.setdefault(session_id, session_id)
            linked = _linked(session_id, source.kind, options.kinds)
            member = _Member(source, session_id, linked, self._term_ids(words), dates)
            if options.kinds is None or source.kind in options.kinds:
                name = speaker_name(source.text)
                if name is not None:
                    member.speaker = frozenset(self._term_ids(_name_tokens(name)))
                    self._count_speaker(member.speaker, 1)
            capitalised = capitalised_words(source.text)
            if capitalised:
                member.capitalised = frozenset(self._term_ids(capitalised))
            old = self._members.get(source.memory_id)
            if old is not None:
                self._count_speaker(old.speaker, -1)
                if old.linked:
                    unlink(old)
                member.slot, member.doc = old.slot, old.doc
                if old.tokens != member.tokens:
                    retexted.add(member.memory_id)
            self._members[member.memory_id] = member
            if member.linked:
                assert member.session_id is not None
                bisect.insort(touch(member.session_id), member.key)
            dirty[member.memory_id] = None

        context = options.context
        for session_id, before in touched.items():
            run = self._runs[session_id]
            after = [memory_id for _, memory_id in run]
            if not run:
                del self._runs[session_id]
            self.links.relink(before, after)
            for rank, memory_id in enumerate(after):
                window = tuple(after[max(0, rank - context) : rank]) if context > 0 else ()
                member = self._members[memory_id]
                if window != member.window or not retexted.isdisjoint(window):
                    member.window = window
                    dirty[memory_id] = None

        members = self._members
        documents: list[tuple[_Member, tuple[int, ...]]] = []
        for memory_id in dirty:
            changed = members.get(memory_id)
            if changed is None:
                continue
            if not changed.linked:
                changed.window = ()
            doc = changed.tokens
            for other in changed.window:
                doc += members[other].tokens
            documents.append((changed, doc + changed.date_tokens))
        self._store(documents)

    def _take_slot(self, memory_id: int) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            slot = self._used
            if slot == len(self._slot_ids):
                grow = max(16, 2 * len(self._slot_ids))
                self._slot_ids = np.concatenate([self._slot_ids, np.full(grow, -1, dtype=np.int64)])
                self._slot_len = np.concatenate([self._slot_len, np.zeros(grow, dtype=np.float64)])
            self._used += 1
        self._slot_ids[slot] = memory_id
        self._view = None
        return slot

    def _store(self, documents: Sequence[tuple[_Member, tuple[int, ...]]]) -> None:
        """Make each ``(member, doc)`` (term ids) the document of ``member``, updating the postings of the terms
        that changed, each once."""
        changes: dict[int, dict[int, int]] = {}  # term -> slot -> new frequency (0: gone)
        for member, doc in documents:
            if member.slot < 0:
                member.slot = self._take_slot(member.memory_id)
            slot = member.slot
            old, terms = Counter(member.doc), Counter(doc)
            for term, tf in terms.items():
                if old.get(term) != tf:
                    changes.setdefault(term, {})[slot] = tf
            for term in old.keys() - terms.keys():
                changes.setdefault(term, {})[slot] = 0
            self._total += len(doc) - len(member.doc)
            self._slot_len[slot] = len(doc)
            member.doc = doc
        for term, change in changes.items():
            added = [(slot, tf) for slot, tf in change.items() if tf]
            new_slots = np.array([slot for slot, _ in added], dtype=np.int32)
            new_freqs = np.array([tf for _, tf in added], dtype=np.int32)
            current = self._postings.get(term)
            if current is not None:
                slots, freqs = current
                if len(change) == 1:
                    keep = slots != next(iter(change))
                else:
                    keep = ~np.isin(slots, np.fromiter(change, dtype=np.int32, count=len(change)))
                new_slots = np.concatenate([slots[keep], new_slots])
                new_freqs = np.concatenate([freqs[keep], new_freqs])
            if len(new_slots):
                self._postings[term] = (new_slots, new_freqs)
            else:
                self._postings.pop(term, None)


@dataclass
class _Entry:
    seq: int
    index: LexicalIndex


class LexicalCache:
    """LRU of per-subject lexical indexes, each tagged with the subject's ``change_seq`` when it was read.

    With ``incremental`` off, :meth:`advance` does nothing (and searches do not replay the change log): every
    write makes the next search rebuild, the behaviour before incremental updates (kept for benchmarks).
    """

    def __init__(self, max_subjects: int = 256, *, incremental: bool = True) -> None:
        self._items: OrderedDict[str, _Entry] = OrderedDict()
        self._max = max_subjects
        self._lock = threading.Lock()
        self.incremental = incremental

    def get(self, subject_id: str, seq: int, options: LexicalOptions) -> LexicalIndex | None:
        with self._lock:
            entry = self._items.get(subject_id)
            if entry is None or entry.seq != seq or entry.index.options != options:
                return None
            self._items.move_to_end(subject_id)
            return entry.index

    def put(self, subject_id: str, seq: int, index: LexicalIndex) -> None:
        """Cache ``index``, read at ``seq``, unless the cached index has the same options and a later seq."""
        with self._lock:
            entry = self._items.get(subject_id)
            if entry is None or entry.seq <= seq or entry.index.options != index.options:
                self._items[subject_id] = _Entry(seq, index)
            self._items.move_to_end(subject_id)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def drop(self, subject_id: str) -> None:
        with self._lock:
            self._items.pop(subject_id, None)

    def peek(self, subject_id: str) -> tuple[int, LexicalIndex] | None:
        """The cached (change seq, index) of a subject, if any (for tests and benchmarks; no LRU touch)."""
        with self._lock:
            entry = self._items.get(subject_id)
            return None if entry is None else (entry.seq, entry.index)

    def _entry_at(self, subject_id: str, seq: int) -> _Entry | None:
        entry = self._items.get(subject_id)
        return entry if entry is not None and entry.seq == seq else None

    def advance(
        self,
        subject_id: str,
        before: int,
        after: int,
        *,
        upserts: Sequence[LexicalSource] = (),
        removals: Sequence[int] = (),
    ) -> bool:
        """Apply a committed write of this process to the subject's cached index: its memories ``upserts``
        (added, or changed in text or kind) and ``removals`` (deleted), the subject's ``change_seq`` going
        from ``before`` to ``after``. Only an index tagged ``before`` is changed (and re-tagged ``after``);
        returns whether one was. Never raises: a failed update drops the index (rebuilt on the next search).
        """
        if not self.incremental:
            return False
        with self._lock:
            entry = self._entry_at(subject_id, before)
        if entry is None:
            return False
        index = entry.index
        try:
            prepared = index.prepare(upserts)  # tokenising needs no lock
            with self._lock:
                if self._entry_at(subject_id, before) is not entry:
                    return False
                # Searches that now find the new tag wait on the index's lock until the change is in.
                index.lock.acquire()
                entry.seq = after
            try:
                index.apply_locked(prepared, removals)
            finally:
                index.lock.release()
            return True
        except Exception as exc:  # the write is committed: never fail it over a cache
            log.warning(
                "lexical index update failed (%s); the subject's index is rebuilt on its next search",
                type(exc).__name__,
            )
            with self._lock:
                if self._items.get(subject_id) is entry:
                    del self._items[subject_id]
            return False
