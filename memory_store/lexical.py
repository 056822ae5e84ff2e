"""BM25 over one subject's memories, built in memory from decrypted text and never persisted."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import bm25s
import numpy as np
import numpy.typing as npt
import Stemmer

_STEMMER = Stemmer.Stemmer("english")


def tokenize_query(text: str) -> list[str]:
    tokens: list[list[str]] = bm25s.tokenize(
        [text], stopwords="en", stemmer=_STEMMER, show_progress=False, return_ids=False
    )
    return tokens[0]


class LexicalIndex:
    """BM25 scores of a query against a fixed list of documents (memory row ids)."""

    def __init__(self, ids: Sequence[int], texts: Sequence[str]) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self._bm25: bm25s.BM25 | None = None
        if len(texts):
            tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=_STEMMER, show_progress=False)
            self._bm25 = bm25s.BM25()
            self._bm25.index(tokens, show_progress=False)

    def scores(self, query: str) -> npt.NDArray[np.float32]:
        """One BM25 score per document, aligned with ``ids``."""
        tokens = tokenize_query(query)
        if self._bm25 is None or not tokens:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)


class LexicalCache:
    """LRU of per-subject lexical indexes keyed by the subject's change sequence."""

    def __init__(self, max_subjects: int = 256) -> None:
        self._items: OrderedDict[str, tuple[int, LexicalIndex]] = OrderedDict()
        self._max = max_subjects
        self._lock = threading.Lock()

    def get(self, subject_id: str, version: int) -> LexicalIndex | None:
        with self._lock:
            item = self._items.get(subject_id)
            if item is None or item[0] != version:
                return None
            self._items.move_to_end(subject_id)
            return item[1]

    def put(self, subject_id: str, version: int, index: LexicalIndex) -> None:
        with self._lock:
            self._items[subject_id] = (version, index)
            self._items.move_to_end(subject_id)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def drop(self, subject_id: str) -> None:
        with self._lock:
            self._items.pop(subject_id, None)
