"""Batched adds, one batch after another (``MemoryStore.add_batch``, as ``bench/store_speed.py`` fills its store)
against a bulk add (``memory_store.bulk.add_in_batches``, what ``sealmem import`` runs: the next batch embedded
on every core while one is written), on the same memories in one run; JSON on stdout.

    .venv/bin/python bench/bulk_add.py [--memories 5000] [--batch-size 256] [--rounds 2] [--threads N] [--out F]

Both ways get ``store_speed``'s synthetic corpus (the same ``--memories`` texts over ``--subjects`` subjects),
the service's default embedder (ONNX Runtime, one intra-op thread: ``SEALMEM_EMBEDDING_THREADS``; since
2026-12-05 a call of 32 or more texts runs its passes on every core: ``SEALMEM_EMBEDDING_PARALLEL_PASSES``), a fresh
SQLite + FAISS store per run with one tenant per way and round, and ``--batch-size`` memories per batch
(transaction). The ways alternate, ``--rounds`` times each, starting with ``add_batch``. ``threads``: the bulk
add's embedding threads (default: every core this process may use). The target of the performance issue is
400 memories/s on this 2-vCPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.store_speed import build_corpus
from memory_store.bulk import add_in_batches
from memory_store.crypto import MasterKey, generate_key
from memory_store.db import make_engine
from memory_store.embedder import embedder_from_settings
from memory_store.migrate import upgrade
from memory_store.settings import StoreSettings, available_cores
from memory_store.store import MemoryStore

TARGET_PER_S = 400


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memories", type=int, default=5000)
    parser.add_argument("--subjects", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="bulk add threads (default: every core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or available_cores()
    corpus = build_corpus(args.memories, args.subjects, 1, args.seed)
    items = [corpus.memory(i) for i in range(args.memories)]
    batches = [items[i : i + args.batch_size] for i in range(0, len(items), args.batch_size)]
    work = Path(tempfile.mkdtemp(prefix="sealmem-bulk-"))
    try:
        settings = StoreSettings(data_dir=work)
        embedder = embedder_from_settings(settings)
        embedder.embed(["warm up the model"])
        engine = make_engine(settings)
        upgrade(engine)
        store = MemoryStore(engine=engine, master_key=MasterKey(generate_key()), embedder=embedder, settings=settings)
        runs: dict[str, list[float]] = {"add_batch": [], "bulk": []}
        for round_ in range(args.rounds):
            for way in ("add_batch", "bulk"):
                tenant_id = store.create_tenant(name=f"{way}-{round_}").id
                started = time.perf_counter()
                if way == "add_batch":
                    for batch in batches:
                        store.add_batch(tenant_id=tenant_id, items=batch)
                else:
                    for _ in add_in_batches(store, tenant_id=tenant_id, batches=batches, threads=threads):
                        pass
                rate = len(items) / (time.perf_counter() - started)
                runs[way].append(round(rate, 1))
                print(f"round {round_ + 1} {way}: {rate:.1f} memories/s", file=sys.stderr)
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    best = {way: max(rates) for way, rates in runs.items()}
    result: dict[str, Any] = {
        "benchmark": "sealmem bulk_add",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {
            "memories": args.memories,
            "subjects": args.subjects,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "bulk_threads": threads,
            "embedder": type(embedder).__name__,
            "embedding_threads": settings.embedding_threads,
            "database": "SQLite + FAISS",
        },
        "memories_per_s": runs,
        "mean_memories_per_s": {way: round(sum(r) / len(r), 1) for way, r in runs.items()},
        "bulk_over_add_batch": round(sum(runs["bulk"]) / sum(runs["add_batch"]), 2),
        "target_per_s": TARGET_PER_S,
        "bulk_meets_target": min(runs["bulk"]) >= TARGET_PER_S,
        "best": best,
        "env": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)),
            "load_avg_end": list(os.getloadavg()),
            "commit": _commit(),
        },
    }
    output = json.dumps(result, indent=2)
    print(output)
    if args.out:
        args.out.write_text(output + "\n")
    return 0


def _commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


if __name__ == "__main__":
    raise SystemExit(main())
