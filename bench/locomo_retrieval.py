"""LoCoMo evidence retrieval through the Sealmem store, with a plain BM25 baseline in the same run.

Every dialog turn of each LoCoMo conversation becomes one memory of one subject (the conversation):
text = ``speaker + ": " + turn text`` (plus the photo caption when the turn shares an image), the session date
as ``occurred_at`` and in the metadata, the dia_id in the metadata, the session as ``session_id``. Every QA
question is then asked through ``MemoryStore.search(k=10)`` and scored by the evidence dia_ids found:
recall@k (share of a question's evidence in the top k, averaged over questions) and hit@10 (any evidence in
the top 10), per category and overall (categories 1-4; 5, adversarial, reported on its own).

    python bench/locomo_retrieval.py [--data ../shared/data/locomo-dev.json] [--embedding-runtime onnx|onnx-int8|torch]
        [--ablations] [--out FILE]

The embedder is all-MiniLM-L6-v2 run by ONNX Runtime (the service's default; exported once into
``--model-cache``, by default the run's temporary data folder) or by sentence-transformers on torch.

The data (CC BY-NC 4.0, snap-research) is read from the shared folder and never copied into the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    "score fusion, no context": FusionConfig(neighbour_weight=0.0, lexical_context=0, lexical_dates=False),
    "score + lexical context": FusionConfig(neighbour_weight=0.0, lexical_dates=False),
    "score + lexical context + dates": FusionConfig(neighbour_weight=0.0),
    "score + neighbours only": FusionConfig(lexical_context=0, lexical_dates=False),
    "score + context + dates + neighbours 0.3 (default)": FusionConfig(),
    "default, neighbour_weight 0.5": FusionConfig(neighbour_weight=0.5),
    "default, neighbour_weight 0.15": FusionConfig(neighbour_weight=0.15),
    "default, lexical_context 2": FusionConfig(lexical_context=2),
    "default, dense 1.5 : lexical 1": FusionConfig(dense_weight=1.5),
    "default, dense 1 : lexical 1.5": FusionConfig(lexical_weight=1.5),
    "lexical only (context + dates + neighbours)": FusionConfig(dense_weight=0.0),
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
    if runtime == "onnx" and model_cache is not None:
        from memory_store.onnx_embedder import OnnxEmbedder

        embedder = OnnxEmbedder(cache_dir=model_cache, threads=threads)
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
                        help="onnx: folder for the exported model (default: the run's temporary data folder, "
                             "exported again each run)")
    parser.add_argument("--ablations", action="store_true",
                        help="also run the fusion variants on categories 1-4 (about 30 s each)")
    parser.add_argument("--no-dense-only", action="store_true", help="skip the dense-only figure")
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
        t0 = time.perf_counter()
        stored = ingest(store, tenant_id, conversations)
        ingest_s = time.perf_counter() - t0

        fusion = FusionConfig()
        t0 = time.perf_counter()
        main_scores, latencies = run_store(store, tenant_id, conversations, fusion, args.k)
        search_s = time.perf_counter() - t0
        result["config"] = {
            "memory_text": "speaker + ': ' + text (+ ' [shares a photo: <blip_caption>]'); "
                           "occurred_at = session date; session_id = session_N; kind = turn",
            "embedder": store.embedder.model_id,
            "embedding_runtime": args.embedding_runtime,
            "fusion": dataclasses.asdict(fusion),
        }
        result["store"] = main_scores.report()
        bm25, bm25_s = bm25_baseline(conversations, args.k)
        result["bm25_baseline"] = bm25.report()

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
