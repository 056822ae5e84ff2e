"""Per-stage latency of one chat request with prompt injection of 0, 10 and 40 memories (bundled SmolLM2).

    python bench/chat_latency.py [--repeats 5] [--max-new-tokens 32] [--threads 1] [--embedder minilm]
                                 [--out result.json]

The request goes through :class:`service.chat.service.ChatService` (the same path as ``POST /v1/chat``, minus
HTTP and auth): hybrid retrieval of the top-k memories from a real store (SQLite + FAISS, encrypted), prompt
assembly with real-token budgeting, then streamed greedy generation on the local transformers backend.
Write-back is off: it never runs in the request path anyway.

Per configuration (after one warm-up request) it reports medians over ``--repeats`` requests of:
``retrieval_ms`` (search + working-memory read), ``prompt_ms`` (prompt assembly and token counting),
``ttft_ms`` (from the start of generation to the first generated token: queueing + prefill of the whole
prompt + one decode step), ``decode_tokens_per_s`` (tokens after the first, per second) and the prompt's size
in tokens. The machine's 2 shared vCPUs are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CITIES = ["Lisbon", "Porto", "Kyoto", "Lima", "Oslo", "Tunis", "Quito", "Hanoi", "Perth", "Cork"]
THINGS = ["jazz", "chess", "sushi", "hiking", "poetry", "tennis", "baking", "cycling", "opera", "pottery"]
PEOPLE = ["Ana", "Rui", "Mei", "Omar", "Lena", "Ivo", "Sara", "Tomas", "Yuki", "Nadia"]


def synthetic_memories(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    templates = [
        lambda: f"I visited {rng.choice(CITIES)} in {rng.randint(1995, 2024)}.",
        lambda: f"My friend {rng.choice(PEOPLE)} lives in {rng.choice(CITIES)}.",
        lambda: f"I enjoy {rng.choice(THINGS)} on weekends.",
        lambda: f"My cousin {rng.choice(PEOPLE)} taught me {rng.choice(THINGS)}.",
        lambda: f"I want to learn more about {rng.choice(THINGS)} next year.",
    ]
    out: list[str] = ["My dog is named Biscuit."]
    while len(out) < n:
        text = rng.choice(templates)()
        if text not in out:
            out.append(text)
    return out


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from memory_store import HashingEmbedder, MasterKey, MemoryStore, NewMemory, StoreSettings, generate_key
    from memory_store.crypto import encode_key
    from memory_store.db import make_engine
    from memory_store.embedder import SentenceTransformerEmbedder
    from memory_store.migrate import upgrade
    from service.auditing import Caller
    from service.chat.service import ChatRequest, ChatService
    from service.chat.settings import ChatSettings
    from service.llm.backend import GenerationParams, GenerationStats
    from service.llm.loader import BUNDLED_SMOLLM2
    from service.llm.local import LocalBackend

    torch.set_num_threads(args.threads)
    data = Path(tempfile.mkdtemp(prefix="sealmem-bench-"))
    key = MasterKey(generate_key())
    store_settings = StoreSettings(data_dir=data, master_key=encode_key(key.material))
    engine = make_engine(store_settings)
    upgrade(engine)
    engine.dispose()
    embedder = (
        SentenceTransformerEmbedder(torch_threads=args.threads) if args.embedder == "minilm" else HashingEmbedder()
    )
    store = MemoryStore.open(store_settings, master_key=key, embedder=embedder)
    tenant = store.create_tenant(name="bench").id
    sizes = [int(s) for s in args.memories.split(",")]
    texts = synthetic_memories(max(max(sizes), 1))
    store.add_batch(tenant_id=tenant, items=[NewMemory(subject="ana", text=t) for t in texts])

    started = time.perf_counter()
    backend = LocalBackend(
        BUNDLED_SMOLLM2, cache_dir=Path(args.cache_dir), device=args.device, torch_threads=args.threads
    )
    await backend.start()
    load_s = time.perf_counter() - started
    settings = ChatSettings(
        llm_backend="local",
        chat_max_k=max(max(sizes), 1),
        chat_default_k=0,
        chat_min_score=-1.0,  # inject exactly k memories, relevant or not
    )
    service = ChatService(store=store, backend=backend, settings=settings)
    caller = Caller(credential_id="bench", role="app", actor="bench")
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=0.0)

    async def one(k: int) -> dict[str, float]:
        req = ChatRequest(
            tenant_id=tenant, subject="ana", session_id="bench", message="What is my dog's name?", caller=caller,
            injection="prompt", k=k, write_back=False, params=params,
        )
        prepared = await service.prepare(req)
        stats = GenerationStats()
        reply = "".join([d async for d in service.stream(prepared, stats)])
        return {
            "retrieval_ms": prepared.timings["retrieval_ms"],
            "prompt_ms": prepared.timings["prompt_ms"],
            "ttft_ms": (stats.first_token_s or 0.0) * 1000.0,
            "decode_tokens_per_s": stats.decode_tokens_per_s or 0.0,
            "generation_ms": (stats.finished_s or 0.0) * 1000.0,
            "prompt_tokens": float(stats.prompt_tokens),
            "completion_tokens": float(stats.completion_tokens),
            "memories_injected": float(len(prepared.prompt.memory_lines)),
            "biscuit": float("biscuit" in reply.lower()),
        }

    results: list[dict[str, Any]] = []
    for k in sizes:
        await one(k)  # warm-up
        runs = [await one(k) for _ in range(args.repeats)]
        results.append(
            {
                "memories": k,
                "memories_injected": int(runs[0]["memories_injected"]),
                "prompt_tokens": int(runs[0]["prompt_tokens"]),
                "retrieval_ms": median([r["retrieval_ms"] for r in runs]),
                "prompt_ms": median([r["prompt_ms"] for r in runs]),
                "ttft_ms": median([r["ttft_ms"] for r in runs]),
                "decode_tokens_per_s": median([r["decode_tokens_per_s"] for r in runs]),
                "generation_ms": median([r["generation_ms"] for r in runs]),
                "completion_tokens": int(median([r["completion_tokens"] for r in runs])),
                "reply_has_gold": all(r["biscuit"] for r in runs),
                "ttft_ms_runs": [round(r["ttft_ms"], 1) for r in runs],
            }
        )
    store.close()
    return {
        "bench": "chat_latency",
        "injection": "prompt",
        "model": backend.model_name,
        "device": backend.loaded.device,
        "torch_threads": args.threads,
        "embedder": embedder.model_id,
        "repeats": args.repeats,
        "max_new_tokens": args.max_new_tokens,
        "model_load_s": round(load_s, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--memories", default="0,10,40", help="comma-separated numbers of memories injected")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--embedder", choices=["minilm", "hashing"], default="minilm")
    parser.add_argument("--cache-dir", default=os.environ.get("SEALMEM_TEST_LLM_CACHE", "/tmp/sealmem-llm-cache"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
