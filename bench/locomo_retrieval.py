"""LoCoMo evidence retrieval through the Sealmem store, with a plain BM25 baseline in the same run.

Every dialog turn of each LoCoMo conversation becomes one memory of one subject (the conversation):
text = ``speaker + ": " + turn text`` (plus the photo caption when the turn shares an image), the session date
as ``occurred_at`` and in the metadata, the dia_id in the metadata, the session as ``session_id``. Every QA
question is then asked through ``MemoryStore.search(k=10)`` and scored by the evidence dia_ids found:
recall@k (share of a question's evidence in the top k, averaged over questions) and hit@10 (any evidence in
the top 10), per category and overall (categories 1-4; 5, adversarial, reported on its own).

    python bench/locomo_retrieval.py [--data ../shared/data/locomo-dev.json] [--embedding-runtime onnx|onnx-int8|torch]
        [--ablations] [--no-store] [--feature-cache DIR] [--out FILE]

Tuning that cannot overfit: each conversation's turns and questions are embedded once and their raw scores
cached (cosine of every question, whole and without the speakers' names, with every turn; BM25 of every turn
under each lexical option; the turns whose speaker each question names and the turns that name someone or
something else, read by the store's lexical index), and every
setting of ``GRID`` is ranked from the cache exactly as the store ranks (``cached_plain_matches_store`` checks
it). Leave-one-conversation-out: each conversation is scored with the setting that is best on the other four;
``summary_recall@10`` prints that figure beside the plain one (default settings) and the BM25 baseline, per
category, and beside it a stricter one, where each fold also chooses which setting the route for list questions
overrides (the store's route, the dense weight, was chosen with all five conversations in view).
``calibration`` fits and checks (by LOO) the relevance model of :mod:`memory_store.calibration`.

The embedder is all-MiniLM-L6-v2 run by ONNX Runtime (the service's default; exported once into
``--model-cache``, by default the run's temporary data folder) or by sentence-transformers on torch.

The data (CC BY-NC 4.0, snap-research) is read from the shared folder and never copied into the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import bm25s  # noqa: E402
import Stemmer  # noqa: E402

from memory_store import (  # noqa: E402
    FusionConfig,
    MasterKey,
    MemoryStore,
    NewMemory,
    StoreSettings,
    generate_key,
)
from memory_store.db import make_engine  # noqa: E402
from memory_store.embedder import Embedder, embedder_from_settings  # noqa: E402
from memory_store.migrate import upgrade  # noqa: E402
from memory_store.query_form import list_like  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "locomo-dev.json"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
MAIN_CATEGORIES = (1, 2, 3, 4)
TARGET_RECALL_AT_10 = 0.75
_SESSION = re.compile(r"^session_(\d+)$")
_EVIDENCE = re.compile(r"^D:?(\d+):(\d+)$")
_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%I:%M %p on %B %d, %Y")

# Fusion variants run with --ablations (the store's default is FusionConfig()).
ABLATIONS: dict[str, FusionConfig] = {
    "rrf k=60 (the original fusion), no context": FusionConfig(
        method="rrf", neighbour_weight=0.0, lexical_context=0, lexical_dates=False
    ),
    "rrf k=10, no context": FusionConfig(method="rrf", rrf_k=10, neighbour_weight=0.0, lexical_context=0,
                                         lexical_dates=False),
    "rrf k=60 + lexical context + dates": FusionConfig(method="rrf", neighbour_weight=0.0),
    "score fusion, no context": FusionConfig(neighbour_weight=0.0, lexical_context=0, lexical_dates=False,
                                             speaker_weight=0.0),
    "score + lexical context + dates": FusionConfig(neighbour_weight=0.0, speaker_weight=0.0),
    "score + context + dates + neighbours 0.3 (before #15)": FusionConfig(
        dense_weight=1.0, neighbour_weight=0.3, lexical_context=1, neighbour_direction="both", speaker_weight=0.0,
        list_dense_weight=None,
    ),
    "dense 1.5, lexical_context 2, both neighbours 0.3 (first LOO pick of #15)": FusionConfig(
        dense_weight=1.5, neighbour_weight=0.3, neighbour_direction="both", speaker_weight=0.0, list_dense_weight=None
    ),
    "default, no speaker bonus": FusionConfig(speaker_weight=0.0),
    "default, both neighbours": FusionConfig(neighbour_direction="both"),
    "speaker bonus, next neighbour 0.5 (second LOO pick of #15)": FusionConfig(
        neighbour_weight=0.5, proper_noun_weight=0.0, strip_speakers=False, list_dense_weight=None
    ),
    "third LOO pick of #15 (default without the list route)": FusionConfig(list_dense_weight=None),
    "default (dense 1, list questions 2, next neighbour 0.3, speaker 0.2, others 0.5, proper nouns 0.1, names "
    "stripped: picked by LOO)": FusionConfig(),
    "default, names not stripped": FusionConfig(strip_speakers=False),
    "default, no proper-noun bonus": FusionConfig(proper_noun_weight=0.0),
    "default, neighbour_weight 0.5": FusionConfig(neighbour_weight=0.5),
    "default, speaker_weight 0.3": FusionConfig(speaker_weight=0.3),
    "default, every named speaker the whole bonus": FusionConfig(speaker_others=1.0),
    "default, dense 1.5 : lexical 1": FusionConfig(dense_weight=1.5),
    "lexical only (context + dates + neighbours + speaker)": FusionConfig(dense_weight=0.0),
}


@dataclass(frozen=True)
class Turn:
    dia_id: str
    session: int
    speaker: str
    text: str
    caption: str | None
    date_text: str
    occurred_at: datetime | None

    def memory_text(self) -> str:
        text = f"{self.speaker}: {self.text}"
        return f"{text} [shares a photo: {self.caption}]" if self.caption else text


@dataclass(frozen=True)
class Question:
    index: int
    question: str
    category: int
    evidence: tuple[str, ...]


@dataclass
class Conversation:
    sample_id: str
    turns: list[Turn]
    questions: list[Question]
    evidence_notes: dict[str, int] = field(default_factory=dict)


def parse_session_date(text: str) -> datetime | None:
    """'1:56 pm on 8 May, 2023' -> 2023-05-08 13:56 UTC (None when no known format fits)."""
    cleaned = " ".join(text.replace("\u202f", " ").split())
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(cleaned, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def normalise_evidence(raw: str) -> list[str]:
    """'D8:6; D9:17' -> ['D8:6', 'D9:17'], 'D:11:26' -> ['D11:26'], 'D30:05' -> ['D30:5'], 'D' -> []."""
    out = []
    for part in re.split(r"[;,\s]+", raw.strip()):
        match = _EVIDENCE.match(part)
        if match:
            out.append(f"D{int(match[1])}:{int(match[2])}")
    return out


def load(path: Path) -> list[Conversation]:
    data = json.loads(path.read_text(encoding="utf-8"))
    conversations = []
    for sample in data:
        conv = sample["conversation"]
        sessions = sorted(
            (int(m[1]), key) for key in conv if (m := _SESSION.match(key)) and isinstance(conv[key], list)
        )
        turns = []
        for number, key in sessions:
            date_text = str(conv.get(f"{key}_date_time", ""))
            occurred = parse_session_date(date_text)
            for turn in conv[key]:
                turns.append(
                    Turn(
                        dia_id=str(turn["dia_id"]),
                        session=number,
                        speaker=str(turn["speaker"]),
                        text=str(turn["text"]),
                        caption=turn.get("blip_caption") or None,
                        date_text=date_text,
                        occurred_at=occurred,
                    )
                )
        known = {t.dia_id for t in turns}
        notes = {"rewritten": 0, "unknown_dropped": 0, "questions_without_evidence": 0}
        questions = []
        for index, qa in enumerate(sample["qa"]):
            evidence: list[str] = []
            for raw in qa.get("evidence", []):
                fixed = normalise_evidence(str(raw))
                if fixed != [raw]:
                    notes["rewritten"] += 1
                for item in fixed:
                    if item not in known:
                        notes["unknown_dropped"] += 1
                    elif item not in evidence:
                        evidence.append(item)
            if not evidence:
                notes["questions_without_evidence"] += 1
                continue
            questions.append(Question(index, str(qa["question"]), int(qa["category"]), tuple(evidence)))
        conversations.append(Conversation(str(sample["sample_id"]), turns, questions, notes))
    return conversations


# ---- scoring -------------------------------------------------------------------------------------------


@dataclass
class Scores:
    per_category: dict[int, list[tuple[float, float, float]]] = field(default_factory=dict)

    def add(self, question: Question, ranked: Sequence[str]) -> None:
        gold = set(question.evidence)
        r5 = len(gold & set(ranked[:5])) / len(gold)
        r10 = len(gold & set(ranked[:10])) / len(gold)
        self.per_category.setdefault(question.category, []).append((r5, r10, 1.0 if r10 > 0 else 0.0))

    @staticmethod
    def _summary(rows: Sequence[tuple[float, float, float]]) -> dict[str, Any]:
        if not rows:
            return {"questions": 0}
        return {
            "questions": len(rows),
            "recall@5": round(statistics.fmean(r[0] for r in rows), 4),
            "recall@10": round(statistics.fmean(r[1] for r in rows), 4),
            "hit@10": round(statistics.fmean(r[2] for r in rows), 4),
        }

    def report(self) -> dict[str, Any]:
        main = [row for c in MAIN_CATEGORIES for row in self.per_category.get(c, [])]
        return {
            "overall_categories_1_4": self._summary(main),
            "by_category": {
                f"{c} {CATEGORIES.get(c, '?')}": self._summary(self.per_category.get(c, []))
                for c in sorted(self.per_category)
            },
        }

    def overall_recall10(self) -> float:
        main = [row[1] for c in MAIN_CATEGORIES for row in self.per_category.get(c, [])]
        return statistics.fmean(main) if main else 0.0


def bm25_baseline(conversations: Sequence[Conversation], k: int) -> tuple[Scores, float]:
    """Plain BM25 (bm25s defaults: Lucene variant, k1=1.5, b=0.75; its English stop words; Snowball stemmer)
    over exactly the memory texts the store holds, one index per conversation."""
    stemmer = Stemmer.Stemmer("english")
    scores = Scores()
    started = time.perf_counter()
    for conv in conversations:
        texts = [t.memory_text() for t in conv.turns]
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False),
                        show_progress=False)
        for question in conv.questions:
            tokens = bm25s.tokenize([question.question], stopwords="en", stemmer=stemmer, show_progress=False,
                                    return_ids=False)[0]
            if not tokens:
                scores.add(question, [])
                continue
            raw = retriever.get_scores(tokens)
            order = sorted(range(len(texts)), key=lambda i: (-float(raw[i]), i))[:k]
            scores.add(question, [conv.turns[i].dia_id for i in order if raw[i] > 0])
    return scores, time.perf_counter() - started


# ---- the store -----------------------------------------------------------------------------------------


def open_store(data_dir: Path, threads: int, runtime: str = "onnx", model_cache: Path | None = None) -> MemoryStore:
    settings = StoreSettings(data_dir=data_dir, embedding_runtime=runtime, embedding_threads=threads)
    engine = make_engine(settings)
    upgrade(engine)
    embedder: Embedder
    if runtime in ("onnx", "onnx-int8") and model_cache is not None:
        from memory_store.onnx_embedder import OnnxEmbedder

        embedder = OnnxEmbedder(cache_dir=model_cache, threads=threads, int8=runtime == "onnx-int8")
    else:
        embedder = embedder_from_settings(settings)
    key = MasterKey(generate_key())
    return MemoryStore(engine=engine, master_key=key, embedder=embedder, settings=settings)


def ingest(store: MemoryStore, tenant_id: str, conversations: Sequence[Conversation]) -> int:
    count = 0
    for conv in conversations:
        items = [
            NewMemory(
                subject=conv.sample_id,
                text=turn.memory_text(),
                metadata={
                    "dia_id": turn.dia_id,
                    "speaker": turn.speaker,
                    "session": turn.session,
                    "session_date": turn.date_text,
                },
                session_id=f"session_{turn.session}",
                kind="turn",
                source="import",
                source_ref=f"locomo:{conv.sample_id}:{turn.dia_id}",
                occurred_at=turn.occurred_at,
            )
            for turn in conv.turns
        ]
        count += len(store.add_batch(tenant_id=tenant_id, items=items))
    return count


def run_store(
    store: MemoryStore,
    tenant_id: str,
    conversations: Sequence[Conversation],
    fusion: FusionConfig,
    k: int,
    categories: Callable[[int], bool] = lambda _c: True,
) -> tuple[Scores, list[float]]:
    scores = Scores()
    latencies: list[float] = []
    for conv in conversations:
        for question in conv.questions:
            if not categories(question.category):
                continue
            started = time.perf_counter()
            hits = store.search(tenant_id=tenant_id, subject=conv.sample_id, query=question.question, k=k,
                                fusion=fusion)
            latencies.append(time.perf_counter() - started)
            scores.add(question, [str(h.memory.metadata.get("dia_id")) for h in hits])
    return scores, latencies


# ---- cached scores: plain and leave-one-conversation-out tuning ----------------------------------------

# Every tunable choice of the ranking and the values tried. Each combination is scored from cached features
# (the questions' cosine against every turn, BM25 of every turn under each lexical option), never by
# re-ingesting; the default FusionConfig() must be one of them.
GRID: dict[str, tuple[Any, ...]] = {
    "dense_weight": (0.5, 0.75, 1.0, 1.5, 2.0),
    "neighbour_weight": (0.0, 0.15, 0.3, 0.5),
    "lexical_context": (0, 1, 2),
    "lexical_dates": (False, True),
    "neighbour_direction": ("both", "next"),
    "speaker_weight": (0.0, 0.1, 0.2, 0.3),
    "speaker_others": (1.0, 0.5),
    "strip_speakers": (False, True),
    "proper_noun_weight": (0.0, 0.05, 0.1, 0.15, 0.2),
}


@dataclass
class Features:
    """One conversation's cached retrieval features: memory i is turn i (store ids ascending = turn order)."""

    conv: Conversation
    questions: list[Question]
    cosine: dict[bool, Any]  # strip_speakers -> (questions, turns) float32: cosine of question and turn embeddings
    bm25: dict[tuple[int, bool], Any]  # (lexical_context, lexical_dates) -> (questions, turns) float32
    prev: Any  # (turns,) int: previous turn of the same session, -1 for none
    next: Any  # (turns,) int: next turn of the same session, -1 for none
    named: Any  # (questions, turns) int: where the question first names the turn's speaker (-1: it does not),
    # as the store's lexical index reads it
    proper: Any  # (turns,) bool: the turn names someone or something other than the speakers (proper_nouns)
    prepared: dict[tuple[Any, ...], Any] = field(default_factory=dict)  # rank_offline's per-pool cache


def _embedder_key(embedder: Embedder) -> str:
    """What the cached vectors depend on: the runtime's graph file (full or int8, named by a hash of the
    weights) for ONNX Runtime, the class and model otherwise."""
    inner = getattr(embedder, "inner", embedder)
    graph = getattr(inner, "onnx_path", None)
    return graph().name if graph is not None else f"{type(inner).__name__}:{embedder.model_id}"


def _embed_cached(embedder: Embedder, texts: Sequence[str], cache: Path | None) -> Any:
    import hashlib

    import numpy as np

    if cache is None:
        return embedder.embed(list(texts))
    digest = hashlib.sha256(("\x00".join([_embedder_key(embedder), *texts])).encode()).hexdigest()[:24]
    path = cache / f"emb-{digest}.npy"
    if path.is_file():
        return np.load(path)
    vectors = embedder.embed(list(texts))
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def features(conversations: Sequence[Conversation], embedder: Embedder, cache: Path | None) -> list[Features]:
    import numpy as np

    from memory_store.lexical import LexicalIndex, LexicalOptions, LexicalSource

    options = sorted({(c, d) for c in GRID["lexical_context"] for d in GRID["lexical_dates"]})
    out = []
    for conv in conversations:
        texts = [t.memory_text() for t in conv.turns]
        turn_vectors = _embed_cached(embedder, texts, cache)
        sources = [
            LexicalSource(
                memory_id=i + 1,
                text=text,
                session_id=f"session_{t.session}",
                occurred_at=t.occurred_at,
                created_at=t.occurred_at or datetime(2000, 1, 1, tzinfo=UTC),
                kind="turn",
            )
            for i, (t, text) in enumerate(zip(conv.turns, texts, strict=True))
        ]
        bm25 = {}
        named = np.full((len(conv.questions), len(texts)), -1, dtype=np.int64)
        for context, dates in options:
            index = LexicalIndex.build(sources, LexicalOptions(context=context, dates=dates))
            scored = [index.scores(q.question) for q in conv.questions]
            bm25[(context, dates)] = np.stack([s.scores for s in scored])
            if (context, dates) == options[0]:  # the speakers do not depend on the options tuned here
                for qi, s in enumerate(scored):
                    for memory_id, position in index.named_speakers(s, range(1, len(texts) + 1)).items():
                        named[qi, memory_id - 1] = position
                stripped = [index.strip_speakers(q.question) for q in conv.questions]
                flagged = index.proper_nouns(range(1, len(texts) + 1))
                proper = np.array([i + 1 in flagged for i in range(len(texts))])
        cosine = {
            strip: _embed_cached(embedder, questions, cache) @ turn_vectors.T
            for strip, questions in ((False, [q.question for q in conv.questions]), (True, stripped))
        }
        prev = np.full(len(texts), -1, dtype=np.int64)
        nxt = np.full(len(texts), -1, dtype=np.int64)
        for i in range(1, len(conv.turns)):
            if conv.turns[i].session == conv.turns[i - 1].session:
                prev[i], nxt[i - 1] = i - 1, i
        out.append(Features(conv, list(conv.questions), cosine, bm25, prev, nxt, named, proper))
    return out


@dataclass
class _Prepared:
    """What does not change between settings that share a question's pool: the pool (turn indexes, ascending),
    normalised cosine and BM25, each member's previous/next pool position (len(idx): none), whether it was
    in a retriever's top list (not only a neighbour), whether its speaker is the one the query names first
    among the pool's speakers, or another one it names, whether it names someone or something else."""

    idx: Any
    dense: Any
    lexical: Any
    prev: Any
    next: Any
    original: Any
    named_first: Any
    named_other: Any
    proper: Any


def _prepare(f: Features, q: int, config: FusionConfig, k: int) -> _Prepared:
    import numpy as np

    key = (q, config.strip_speakers, config.lexical_context, config.lexical_dates, config.neighbour_weight > 0, k,
           config.pool)
    cached: _Prepared | None = f.prepared.get(key)
    if cached is not None:
        return cached
    cos = f.cosine[config.strip_speakers][q]
    bm = f.bm25[(config.lexical_context, config.lexical_dates)][q]
    n = len(cos)
    fetch = min(n, max(4 * k, config.pool))
    pool = np.zeros(n, dtype=bool)
    pool[np.argsort(-cos, kind="stable")[:fetch]] = True
    positive = bm > 0
    lexical_top = np.argsort(-np.where(positive, bm, -np.inf), kind="stable")[: min(int(positive.sum()), fetch)]
    pool[lexical_top] = True
    original = pool.copy()
    if config.neighbour_weight > 0:
        for links in (f.prev, f.next):
            linked = links[original]
            pool[linked[linked >= 0]] = True
    idx = np.flatnonzero(pool)
    dense_max = float(cos[idx].max())
    d = np.maximum(cos[idx], 0.0) / dense_max if dense_max > 0 else np.zeros(len(idx))
    lex = bm[idx]
    lexical_max = float(lex.max())
    l_norm = lex / lexical_max if lexical_max > 0 else np.zeros(len(idx))
    position = np.full(n + 1, len(idx))  # slot n: "no neighbour"
    position[idx] = np.arange(len(idx))
    mentions = f.named[q][idx]
    named = mentions >= 0
    first = mentions[named].min() if named.any() else -1
    prepared = _Prepared(idx, d, l_norm, position[f.prev[idx]], position[f.next[idx]], original[idx],
                         named & (mentions == first), named & (mentions != first), f.proper[idx].astype(float))
    f.prepared[key] = prepared
    return prepared


def rank_offline(f: Features, q: int, config: FusionConfig, k: int) -> list[int]:
    """The top-``k`` turn indexes for question ``q`` as ``HybridSearcher.search`` ranks them with ``config``
    (score fusion: the same pool of each retriever's top ``max(4k, pool)``, their session neighbours, the
    same normalisation, neighbour share, proper-noun and speaker bonus and tie order), from the cached scores."""
    import numpy as np

    config = config.for_query(f.questions[q].question)
    p = _prepare(f, q, config, k)
    total = config.dense_weight + config.lexical_weight
    mixed = np.zeros(len(p.idx) + 1)  # last slot: "no neighbour" (0)
    mixed[:-1] = (config.dense_weight * p.dense + config.lexical_weight * p.lexical) / total if total else 0.0
    score = mixed[:-1].copy()
    a = config.neighbour_weight
    if a > 0:
        best = mixed[p.next]
        if config.neighbour_direction == "both":
            best = np.maximum(mixed[p.prev], best)
        # As the store: every pooled memory is divided by 1 + a; one pooled only as a neighbour inherits nothing.
        score = (score + a * np.where(p.original, best, 0.0)) / (1.0 + a)
    pw = config.proper_noun_weight
    if pw:
        score = (score + pw * p.proper) / (1.0 + pw)
    w = config.speaker_weight
    if w and p.named_first.any():
        share = np.where(p.named_first, 1.0, np.where(p.named_other, config.speaker_others, 0.0))
        score = (score + w * share) / (1.0 + w)
    order = np.lexsort((-p.idx, -score))[:k]
    ranked: list[int] = p.idx[order].tolist()
    return ranked


def grid_configs() -> list[FusionConfig]:
    """Every setting of GRID with the list route off (its value is chosen beside them: :func:`leave_one_out`),
    the default first."""
    names = list(GRID)
    configs = [
        FusionConfig(**dict(zip(names, values, strict=True)), list_dense_weight=None)
        for values in itertools.product(*GRID.values())
    ]
    # Without the speaker bonus its share for other speakers changes nothing: one setting of it is enough.
    configs = [c for c in configs if c.speaker_weight or c.speaker_others == FusionConfig().speaker_others]
    default = dataclasses.replace(FusionConfig(), list_dense_weight=None)
    assert default in configs, "the default FusionConfig must be one of the grid's settings"
    assert FusionConfig().list_dense_weight in GRID["dense_weight"], "the default list route must be in the grid"
    configs.remove(default)
    return [default, *configs]  # ties in LOO selection go to the default


def recall_matrix(feats: Sequence[Features], configs: Sequence[FusionConfig], k: int) -> list[Any]:
    """Per conversation: (configs, questions) recall@k of each setting."""
    import numpy as np

    out = []
    for f in feats:
        m = np.zeros((len(configs), len(f.questions)))
        for s, config in enumerate(configs):
            for q, question in enumerate(f.questions):
                ranked = rank_offline(f, q, config, k)
                gold = set(question.evidence)
                m[s, q] = len(gold & {f.conv.turns[i].dia_id for i in ranked}) / len(gold)
        out.append(m)
    return out


def leave_one_out(
    feats: Sequence[Features],
    configs: Sequence[FusionConfig],
    recalls: Sequence[Any],
    k: int,
    route_settings: Sequence[str] = ("dense_weight",),
) -> tuple[Scores, list[dict[str, Any]]]:
    """Leave-one-conversation-out: for each conversation, the setting with the best recall@k (categories 1-4,
    pooled over questions) on the other conversations, scored on it. A setting is one of ``configs`` (the
    route off) with a route for list questions (:func:`memory_store.query_form.list_like`): one of
    ``route_settings`` (names of GRID) given one of its GRID values for them. The store's route sets the dense
    weight (``list_dense_weight``), the default ``route_settings``; with every name of GRID, which setting the
    route overrides is chosen in each fold as well. A list question under setting ``c`` and route ``(name, v)``
    ranks as under ``c`` with ``name = v``, which is in the grid, so no setting is ranked twice: ``recalls`` is
    :func:`recall_matrix` of ``configs``."""
    import numpy as np

    main = [np.array([q.category in MAIN_CATEGORIES for q in f.questions]) for f in feats]
    listed = [np.array([list_like(q.question) for q in f.questions], dtype=bool) for f in feats]
    index = {config: i for i, config in enumerate(configs)}
    plain = FusionConfig()

    def row(config: FusionConfig) -> int:
        if not config.speaker_weight:  # grid_configs keeps one setting of speaker_others without the bonus
            config = dataclasses.replace(config, speaker_others=plain.speaker_others)
        return index[config]

    # The store's route first (ties go to it), then each setting's values in GRID's order.
    routes = [("dense_weight", plain.list_dense_weight), *((name, v) for name in route_settings for v in GRID[name])]
    routes = list(dict.fromkeys(routes))
    # routed[c, j]: the row of configs that ranks a list question under setting c with route routes[j]
    routed = np.array([[row(dataclasses.replace(c, **{name: v})) for name, v in routes] for c in configs])
    scores = Scores()
    folds = []
    for held, f in enumerate(feats):
        train = [i for i in range(len(feats)) if i != held]
        others = sum(recalls[i][:, main[i] & ~listed[i]].sum(axis=1) for i in train)
        lists = sum(recalls[i][:, main[i] & listed[i]].sum(axis=1) for i in train)
        totals = others[:, None] + lists[routed]
        count = sum(int(main[i].sum()) for i in train)
        c, j = (int(i) for i in np.unravel_index(int(np.argmax(totals)), totals.shape))  # first best: the default
        config, (name, value) = configs[c], routes[j]
        listed_config = configs[routed[c, j]]
        for q, question in enumerate(f.questions):
            chosen = listed_config if listed[held][q] else config
            scores.add(question, [f.conv.turns[i].dia_id for i in rank_offline(f, q, chosen, k)])
        rows = np.where(listed[held], routed[c, j], c)
        held_recall = recalls[held][rows, np.arange(len(f.questions))][main[held]].mean()
        folds.append({
            "held_out": f.conv.sample_id,
            "chosen": {name: getattr(config, name) for name in GRID},
            "list_route": {name: value},
            "train_recall@10": round(float(totals[c, j]) / count, 4),
            "held_out_recall@10": round(float(held_recall), 4),
        })
    return scores, folds


def _fit_logistic(x: Any, y: Any, l2: float = 1e-3) -> Any:
    """Logistic regression by Newton's method (x has a leading column of ones)."""
    import numpy as np

    w = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        gradient = x.T @ (p - y) + l2 * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        w -= np.linalg.solve(hessian, gradient)
    return w


def calibration_report(feats: Sequence[Features], config: FusionConfig, k: int) -> dict[str, Any]:
    """Fits :mod:`memory_store.calibration`'s model (relevance from raw cosine and ln(1 + BM25)) on each
    question's top-``k`` hits (categories 1-4, ``config``) labelled by evidence, and checks it by
    leave-one-conversation-out: reliability in bins, log loss, the share of evidence and of other hits kept
    at thresholds. ``fitted_on_all`` are the constants to store in memory_store/calibration.py."""
    import numpy as np

    from memory_store.calibration import CALIBRATIONS

    rows = []
    for ci, f in enumerate(feats):
        bm = f.bm25[(config.lexical_context, config.lexical_dates)]
        cos = f.cosine[config.strip_speakers]
        for q, question in enumerate(f.questions):
            if question.category not in MAIN_CATEGORIES:
                continue
            gold = set(question.evidence)
            for i in rank_offline(f, q, config, k):
                rows.append((ci, float(cos[q][i]), float(bm[q][i]), float(f.conv.turns[i].dia_id in gold)))
    data = np.array(rows)
    conv, y = data[:, 0], data[:, 3]
    x = np.stack([np.ones(len(data)), data[:, 1], np.log1p(np.maximum(data[:, 2], 0.0))], axis=1)
    predicted = np.zeros(len(y))
    for ci in range(len(feats)):
        train = conv != ci
        predicted[~train] = 1.0 / (1.0 + np.exp(-x[~train] @ _fit_logistic(x[train], y[train])))
    edges = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0001)
    bins = []
    for lo, hi in itertools.pairwise(edges):
        m = (predicted >= lo) & (predicted < hi)
        if m.any():
            bins.append({"bin": f"[{lo:g}, {min(hi, 1):g})", "hits": int(m.sum()),
                         "predicted": round(float(predicted[m].mean()), 4), "observed": round(float(y[m].mean()), 4)})
    clipped = np.clip(predicted, 1e-9, 1 - 1e-9)
    w = _fit_logistic(x, y)
    stored = CALIBRATIONS.get("all-MiniLM-L6-v2")
    return {
        "population": f"top {k} hits of each question, categories 1-4; label: the turn is annotated evidence",
        "hits": len(y),
        "base_rate": round(float(y.mean()), 4),
        "loo_reliability": bins,
        "loo_log_loss": round(float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))), 4),
        "loo_kept_at_threshold": {
            str(t): {"evidence": round(float((predicted[y == 1] >= t).mean()), 4),
                     "other": round(float((predicted[y == 0] >= t).mean()), 4)}
            for t in (0.01, 0.02, 0.05, 0.1)
        },
        "fitted_on_all": {"intercept": round(float(w[0]), 3), "cosine": round(float(w[1]), 3),
                          "log_bm25": round(float(w[2]), 3)},
        "stored": dataclasses.asdict(stored) if stored else None,
    }


def _recall_row(scores: Scores) -> dict[str, float | None]:
    report = scores.report()
    row: dict[str, float | None] = {"categories 1-4": report["overall_categories_1_4"].get("recall@10")}
    for c in MAIN_CATEGORIES:
        row[CATEGORIES[c]] = report["by_category"].get(f"{c} {CATEGORIES[c]}", {}).get("recall@10")
    return row


def _ms(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LoCoMo JSON (default: %(default)s)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="embedder threads (1, the store default, is steadiest on shared cores)")
    parser.add_argument("--embedding-runtime", choices=("onnx", "onnx-int8", "torch"), default="onnx",
                        help="ONNX Runtime (the service default) or sentence-transformers on torch")
    parser.add_argument("--model-cache", type=Path,
                        help="onnx, onnx-int8: folder for the exported model (default: the run's temporary data "
                             "folder, exported again each run)")
    parser.add_argument("--ablations", action="store_true",
                        help="also run the fusion variants on categories 1-4 (about 30 s each)")
    parser.add_argument("--no-dense-only", action="store_true", help="skip the dense-only figure")
    parser.add_argument("--no-store", action="store_true",
                        help="skip the run through the store: cached-score figures (plain and LOO) only")
    parser.add_argument("--feature-cache", type=Path,
                        help="folder keeping the turn and question embeddings between runs (default: none)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.data.is_file():
        parser.error(f"{args.data} not found (pass --data)")

    started = time.perf_counter()
    conversations = load(args.data)
    turns = sum(len(c.turns) for c in conversations)
    questions = [q for c in conversations for q in c.questions]
    result: dict[str, Any] = {
        "data": str(args.data),
        "conversations": len(conversations),
        "turns": turns,
        "questions_scored": len(questions),
        "questions_by_category": {
            f"{c} {CATEGORIES.get(c, '?')}": sum(1 for q in questions if q.category == c)
            for c in sorted({q.category for q in questions})
        },
        "evidence_fixes": {
            key: sum(c.evidence_notes.get(key, 0) for c in conversations)
            for key in ("rewritten", "unknown_dropped", "questions_without_evidence")
        },
        "k": args.k,
    }

    with tempfile.TemporaryDirectory(prefix="sealmem-locomo-") as tmp:
        store = open_store(Path(tmp), args.threads, args.embedding_runtime, args.model_cache)
        tenant_id = store.create_tenant(name="locomo-bench").id
        store.embedder.embed(["warm-up"])
        fusion = FusionConfig()
        t0 = time.perf_counter()
        feats = features(conversations, store.embedder, args.feature_cache)
        features_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        offline = Scores()
        for f in feats:
            for q, question in enumerate(f.questions):
                offline.add(question, [f.conv.turns[i].dia_id for i in rank_offline(f, q, fusion, args.k)])
        configs = grid_configs()
        recalls = recall_matrix(feats, configs, args.k)
        loo, folds = leave_one_out(feats, configs, recalls, args.k)
        strict, strict_folds = leave_one_out(feats, configs, recalls, args.k, route_settings=tuple(GRID))
        loo_s = time.perf_counter() - t0
        bm25, bm25_s = bm25_baseline(conversations, args.k)
        result["summary_recall@10"] = {
            "plain (default settings, all conversations)": _recall_row(offline),
            "leave-one-conversation-out": _recall_row(loo),
            "leave-one-conversation-out, the list route's setting chosen too": _recall_row(strict),
            "bm25 baseline": _recall_row(bm25),
        }
        result["loo"] = {
            "protocol": "for each conversation, every setting of GRID is scored on the other four (recall@10, "
                        "categories 1-4, pooled over questions), the best one is applied to it; figures pool "
                        "the held-out questions",
            "grid": {name: list(values) for name, values in GRID.items()},
            "list_dense_weight": f"chosen with the grid's setting out of {list(GRID['dense_weight'])}: the dense "
                                 "weight of list questions (memory_store.query_form.list_like)",
            "folds": folds,
            "report": loo.report(),
            "list_route_setting_chosen_too": {
                "protocol": "as above, but the list route may set any one setting of GRID to any of its values "
                            "(the store's route sets the dense weight, a choice made while reading all five "
                            "conversations): which setting it overrides is chosen in each fold as well",
                "folds": strict_folds,
                "report": strict.report(),
            },
        }
        result["calibration"] = calibration_report(feats, fusion, args.k)
        result["cached_plain"] = offline.report()
        result["bm25_baseline"] = bm25.report()
        if args.no_store:
            store.close()
            result["timings"] = {"features_s": round(features_s, 2), "loo_s": round(loo_s, 2),
                                 "total_s": round(time.perf_counter() - started, 2)}
            text = json.dumps(result, indent=2)
            print(text)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(text + "\n", encoding="utf-8")
            return 0

        t0 = time.perf_counter()
        stored = ingest(store, tenant_id, conversations)
        ingest_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        main_scores, latencies = run_store(store, tenant_id, conversations, fusion, args.k)
        search_s = time.perf_counter() - t0
        result["cached_plain_matches_store"] = main_scores.report() == offline.report()
        result["config"] = {
            "memory_text": "speaker + ': ' + text (+ ' [shares a photo: <blip_caption>]'); "
                           "occurred_at = session date; session_id = session_N; kind = turn",
            "embedder": store.embedder.model_id,
            "embedding_runtime": args.embedding_runtime,
            "fusion": dataclasses.asdict(fusion),
        }
        result["store"] = main_scores.report()

        dense_s = 0.0
        if not args.no_dense_only:
            t0 = time.perf_counter()
            dense_only = FusionConfig(lexical_weight=0.0, neighbour_weight=0.0)
            dense_scores, _ = run_store(store, tenant_id, conversations, dense_only, args.k)
            dense_s = time.perf_counter() - t0
            result["dense_only"] = dense_scores.report()

        if args.ablations:
            ablations: dict[str, Any] = {}
            for name, config in ABLATIONS.items():
                scores, _ = run_store(store, tenant_id, conversations, config, args.k,
                                      categories=lambda c: c in MAIN_CATEGORIES)
                report = scores.report()
                overall = report["overall_categories_1_4"]
                ablations[name] = {
                    "recall@5": overall["recall@5"],
                    "recall@10": overall["recall@10"],
                    "hit@10": overall["hit@10"],
                    "recall@10 by category": {
                        name: row.get("recall@10") for name, row in report["by_category"].items()
                    },
                }
            result["ablations"] = ablations
        store.close()

    recall10 = main_scores.overall_recall10()
    result["target"] = {
        "overall_recall@10_categories_1_4": round(recall10, 4),
        "required": TARGET_RECALL_AT_10,
        "met": recall10 >= TARGET_RECALL_AT_10,
        "bm25_baseline_recall@10": round(bm25.overall_recall10(), 4),
    }
    result["timings"] = {
        "ingest_s": round(ingest_s, 2),
        "ingest_memories_per_s": round(stored / ingest_s, 1) if ingest_s else None,
        "search_all_questions_s": round(search_s, 2),
        "search_p50_ms": _ms(latencies, 0.5),
        "search_p95_ms": _ms(latencies, 0.95),
        "bm25_baseline_s": round(bm25_s, 2),
        "features_s": round(features_s, 2),
        "loo_s": round(loo_s, 2),
        "dense_only_s": round(dense_s, 2),
        "total_s": round(time.perf_counter() - started, 2),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
