"""Embedding cost per text, alone and in batches, and under concurrent callers with and without the
:class:`~memory_store.coalescing.CoalescingEmbedder`; JSON on stdout.

    python bench/embed_batching.py [--threads 32] [--calls 15] [--out FILE]

The real all-MiniLM-L6-v2 on ONNX Runtime (one intra-op thread, as the service runs it), exported once into a
temporary folder. Part 1: CPU ms per text for batch sizes 1, 4, 16, 64 (one caller), and for a pass of mixed
lengths (11 queries, 5 memories) padded as one against grouped by ``passes()``. Part 2: ``--threads``
threads each embed ``--calls`` single short texts, as concurrent requests do; reported per variant (the plain
embedder first and last, as baselines in the same run, and the coalescer with 1 and 2 runners): embeddings/s
wall clock and CPU ms per embedding of this process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memory_store.coalescing import CoalescingEmbedder
from memory_store.embedder import Embedder
from memory_store.onnx_embedder import OnnxEmbedder, passes


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def batches(embedder: OnnxEmbedder, texts: list[str]) -> dict[str, float]:
    out = {}
    for size in (1, 4, 16, 64):
        started = _cpu()
        for start in range(0, 256, size):
            embedder.embed(texts[start : start + size])
        out[str(size)] = round((_cpu() - started) * 1000 / 256, 2)
    return out


def mixed_lengths(embedder: OnnxEmbedder, rounds: int = 40) -> dict[str, Any]:
    """A coalesced pass as the 70/30 search/add mix makes them, 11 short queries and 5 longer memories: CPU ms per
    text in one padded pass against the least-cost grouping of ``passes()`` (what ``embed`` does)."""
    queries = [f"what do I think about jazz and {w}?" for w in ("chess", "sushi", "tennis", "cello", "coffee")]
    memories = [f"I really enjoy hiking, and last week I tried {w} again (note {i})." for i, w in enumerate(queries)]
    texts = [queries[i % 5] for i in range(11)] + memories
    encodings = embedder.tokenizer.encode_batch(texts)
    groups = passes([len(e.ids) for e in encodings], 64)
    out: dict[str, Any] = {"token_counts": sorted({len(e.ids) for e in encodings}), "passes": len(groups)}
    one_pass = [list(range(len(texts)))]
    for name, runs in (("one_pass", one_pass), ("grouped", groups), ("one_pass_again", one_pass)):
        started = _cpu()
        for _ in range(rounds):
            for rows in runs:
                embedder.embed_encoded([encodings[i] for i in rows])
        out[f"{name}_cpu_ms_per_text"] = round((_cpu() - started) * 1000 / (rounds * len(texts)), 3)
    return out


def concurrent(embedder: Embedder, texts: list[str], threads: int, calls: int) -> dict[str, Any]:
    def work(k: int) -> None:
        for i in range(calls):
            embedder.embed([texts[(k * calls + i) % len(texts)]])

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    cpu, wall = _cpu(), time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    n = threads * calls
    result: dict[str, Any] = {
        "embeddings_per_s": round(n / (time.perf_counter() - wall), 1),
        "cpu_ms_per_embedding": round((_cpu() - cpu) * 1000 / n, 2),
    }
    if isinstance(embedder, CoalescingEmbedder):
        result["passes"], result["calls"] = embedder.passes, embedder.calls
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    base = OnnxEmbedder(cache_dir=Path(tempfile.mkdtemp(prefix="sealmem-embed-")))
    texts = [f"what do I think about jazz and hiking again, note {i}?" for i in range(2000)]
    base.embed(texts[:2])
    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "cpu_ms_per_text_by_batch": {}}
    report["cpu_ms_per_text_by_batch"] = batches(base, texts)
    report["mixed_lengths"] = mixed_lengths(base)
    variants: list[tuple[str, Embedder]] = [
        ("plain", base),
        ("coalesce_1_runner", CoalescingEmbedder(base, max_batch=16, runners=1)),
        ("coalesce_2_runners", CoalescingEmbedder(base, max_batch=16, runners=2)),
        ("plain_again", base),
    ]
    report["concurrent"] = {name: concurrent(e, texts, args.threads, args.calls) for name, e in variants}
    plain = (
        report["concurrent"]["plain"]["cpu_ms_per_embedding"]
        + report["concurrent"]["plain_again"]["cpu_ms_per_embedding"]
    ) / 2
    report["cpu_per_embedding_vs_plain"] = {
        name: round(report["concurrent"][name]["cpu_ms_per_embedding"] / plain, 2)
        for name in ("coalesce_1_runner", "coalesce_2_runners")
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
