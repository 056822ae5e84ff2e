"""Benchmark the sensitive-data detector on the labelled corpus (issue #17).

Prints ONE JSON object to stdout:

* ``per_type``: span-level precision / recall / support per entity type.
  Matching is *overlap*: a finding matches a gold span of the same type when
  the two character ranges overlap (each gold span and each finding is used
  at most once).  ``exact_match_rate`` is the share of matched gold spans
  whose finding has exactly the same start and end.
* ``overall``: micro-averaged precision / recall over all types.
* ``clean_changed_rate``: share of clean sentences with any finding.
* ``latency_ms``: ``detect`` latency per sentence, p50/p95/mean, single
  thread, after a warm-up pass, over ``--repeat`` passes of the corpus.
* ``planted_only`` / ``clean_only``: the same figures for each subset.
* ``targets_met``: recall >= 0.98 and precision >= 0.95 on each type,
  <= 2 % of clean sentences changed, p50 <= 2 ms.
* ``store_add`` (with ``--store``): what desensitisation adds to a real
  ``MemoryStore.add`` per memory (SQLite in a temp dir, hashing embedder so
  the model's noise does not hide the difference): every corpus sentence is
  added to a tenant on the default policy and to one whose policy keeps
  everything (screening skipped), alternately, and the p50 of both and of the
  paired difference are reported (detection, placeholder numbering and
  sealing of originals included).

Usage: ``python bench/desensitise.py [--corpus PATH] [--repeat N] [--store]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory_store.sensitive.detector import ENTITY_TYPES, Finding, PresidioDetector

DEFAULT_CORPUS = Path(__file__).resolve().parent / "data" / "desensitise_corpus.jsonl"

RECALL_TARGET = 0.98
PRECISION_TARGET = 0.95
CLEAN_CHANGED_TARGET = 0.02
P50_TARGET_MS = 2.0


def load(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


Span = dict[str, Any]


def match(gold: list[Span], found: list[Finding]) -> tuple[list[tuple[Span, Finding]], list[Span], list[Finding]]:
    pairs: list[tuple[dict[str, Any], Finding]] = []
    used: set[int] = set()
    missed: list[dict[str, Any]] = []
    for g in gold:
        hit = None
        for i, f in enumerate(found):
            if i in used or f.entity_type != g["type"]:
                continue
            if f.start < g["end"] and g["start"] < f.end:
                hit = i
                break
        if hit is None:
            missed.append(g)
        else:
            used.add(hit)
            pairs.append((g, found[hit]))
    spurious = [f for i, f in enumerate(found) if i not in used]
    return pairs, missed, spurious


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def score(rows: list[dict[str, Any]], results: list[list[Finding]], timings: list[list[float]]) -> dict[str, Any]:
    tp: dict[str, int] = defaultdict(int)
    fp: dict[str, int] = defaultdict(int)
    fn: dict[str, int] = defaultdict(int)
    exact: dict[str, int] = defaultdict(int)
    errors: list[dict[str, Any]] = []
    clean_total = clean_changed = 0
    for row, found in zip(rows, results, strict=True):
        pairs, missed, spurious = match(row["spans"], found)
        for g, f in pairs:
            tp[g["type"]] += 1
            exact[g["type"]] += int((f.start, f.end) == (g["start"], g["end"]))
        for g in missed:
            fn[g["type"]] += 1
        for f in spurious:
            fp[f.entity_type] += 1
        if row["kind"] == "clean":
            clean_total += 1
            clean_changed += int(bool(found))
        if (missed or spurious) and len(errors) < 25:
            errors.append({
                "text": row["text"][:160],
                "missed": [(g["type"], row["text"][g["start"]:g["end"]][:60]) for g in missed],
                "spurious": [(f.entity_type, row["text"][f.start:f.end][:60], f.score) for f in spurious],
            })  # fmt: skip
    per_type: dict[str, Any] = {}
    for etype in ENTITY_TYPES:
        support = tp[etype] + fn[etype]
        found_n = tp[etype] + fp[etype]
        if support == 0 and found_n == 0:
            continue
        per_type[etype] = {
            "precision": round(tp[etype] / found_n, 4) if found_n else 1.0,
            "recall": round(tp[etype] / support, 4) if support else 1.0,
            "support": support,
            "false_positives": fp[etype],
            "exact_match_rate": round(exact[etype] / tp[etype], 4) if tp[etype] else None,
        }
    all_tp, all_fp, all_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    flat = [t for per_row in timings for t in per_row]
    return {
        "sentences": len(rows),
        "per_type": per_type,
        "overall": {
            "precision": round(all_tp / (all_tp + all_fp), 4) if all_tp + all_fp else 1.0,
            "recall": round(all_tp / (all_tp + all_fn), 4) if all_tp + all_fn else 1.0,
            "support": all_tp + all_fn,
            "false_positives": all_fp,
        },
        "clean_changed_rate": round(clean_changed / clean_total, 4) if clean_total else 0.0,
        "latency_ms": {
            "p50": round(pct(flat, 0.5), 4),
            "p95": round(pct(flat, 0.95), 4),
            "mean": round(statistics.fmean(flat), 4) if flat else 0.0,
        },
        "errors": errors,
    }


def store_add(rows: list[dict[str, Any]], repeat: int) -> dict[str, Any]:
    """Per-memory ``MemoryStore.add`` latency, default policy against keep-everything, paired per sentence."""
    import tempfile

    from memory_store import HashingEmbedder, MasterKey, MemoryStore, NewMemory, StoreSettings, generate_key
    from memory_store.db import make_engine
    from memory_store.migrate import upgrade

    with tempfile.TemporaryDirectory() as work:
        settings = StoreSettings(data_dir=Path(work))
        engine = make_engine(settings)
        upgrade(engine)
        store = MemoryStore(
            engine=engine, master_key=MasterKey(generate_key()), embedder=HashingEmbedder(dim=384), settings=settings
        )
        screened = store.create_tenant(name="default-policy").id
        plain = store.create_tenant(name="keep-everything").id
        store.set_sensitive_policy(tenant_id=plain, actions=dict.fromkeys(ENTITY_TYPES, "keep"))
        with_ms: list[float] = []
        without_ms: list[float] = []
        for round_ in range(max(1, repeat)):
            for i, row in enumerate(rows):
                subject = f"s{i % 50}"
                order = [(screened, with_ms), (plain, without_ms)]
                for tenant_id, sink in order if (i + round_) % 2 == 0 else order[::-1]:
                    t = time.perf_counter()
                    store.add(tenant_id=tenant_id, item=NewMemory(subject=subject, text=row["text"]))
                    sink.append((time.perf_counter() - t) * 1000)
        store.close()
    diffs = [a - b for a, b in zip(with_ms, without_ms, strict=True)]
    kinds = [row["kind"] for row in rows] * max(1, repeat)
    by_kind = {
        kind: round(pct([d for d, k in zip(diffs, kinds, strict=True) if k == kind], 0.5), 3)
        for kind in ("planted", "clean")
    }
    return {
        "memories_per_policy": len(with_ms),
        "default_policy_p50_ms": round(pct(with_ms, 0.5), 3),
        "keep_everything_p50_ms": round(pct(without_ms, 0.5), 3),
        "added_p50_ms": round(pct(diffs, 0.5), 3),
        "added_mean_ms": round(statistics.fmean(diffs), 3),
        "added_p95_ms": round(pct(diffs, 0.95), 3),
        "added_p50_ms_planted_only": by_kind["planted"],
        "added_p50_ms_clean_only": by_kind["clean"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark the sensitive-data detector.")
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over the corpus")
    ap.add_argument("--store", action="store_true", help="also time MemoryStore.add with and without screening")
    args = ap.parse_args(argv)

    rows = load(args.corpus)
    t0 = time.perf_counter()
    detector = PresidioDetector()
    build_s = time.perf_counter() - t0

    results = [detector.detect(r["text"]) for r in rows]  # warm-up pass, also the scored one
    timings: list[list[float]] = [[] for _ in rows]
    for _ in range(max(1, args.repeat)):
        for i, r in enumerate(rows):
            t = time.perf_counter()
            detector.detect(r["text"])
            timings[i].append((time.perf_counter() - t) * 1000)

    report = score(rows, results, timings)
    subsets = {}
    for kind in ("planted", "clean"):
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        sub = score([rows[i] for i in idx], [results[i] for i in idx], [timings[i] for i in idx])
        sub.pop("errors")
        subsets[kind] = sub

    targets = {
        "recall_per_type": all(v["recall"] >= RECALL_TARGET for v in report["per_type"].values()),
        "precision_per_type": all(v["precision"] >= PRECISION_TARGET for v in report["per_type"].values()),
        "clean_changed": report["clean_changed_rate"] <= CLEAN_CHANGED_TARGET,
        "latency_p50": report["latency_ms"]["p50"] <= P50_TARGET_MS,
    }
    added = store_add(rows, args.repeat) if args.store else None
    if added is not None:
        targets["store_added_p50"] = added["added_p50_ms"] <= P50_TARGET_MS
    targets["all"] = all(targets.values())
    out = {
        "corpus": str(args.corpus),
        "match": "overlap (same type, character ranges overlap; exact_match_rate per type)",
        "score_threshold": detector.score_threshold,
        "build_s": round(build_s, 3),
        "planted_sentences": sum(1 for r in rows if r["kind"] == "planted"),
        "clean_sentences": sum(1 for r in rows if r["kind"] == "clean"),
        **report,
        "planted_only": subsets["planted"],
        "clean_only": subsets["clean"],
        "targets": {
            "recall_per_type": RECALL_TARGET,
            "precision_per_type": PRECISION_TARGET,
            "clean_changed_rate_max": CLEAN_CHANGED_TARGET,
            "latency_p50_ms_max": P50_TARGET_MS,
        },
        "targets_met": targets,
    }
    if added is not None:
        out["store_add"] = added
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
