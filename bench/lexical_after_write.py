"""Search latency right after a write: the lexical index updated in place against the full rebuild.

One subject of ``--sizes`` memories (conversation turns in sessions of ``--session-size``), SQLite + FAISS,
``MemoryStore.search(k=10)``. Rounds of three measurements, in a rotating order so machine noise hits them
alike:

* ``no_write``: a search, nothing written since the last one (the cached index);
* ``after_add``: a search right after ``add`` of one turn at the end of the latest session (the write moves
  the cached lexical index forward in place);
* ``after_add_rebuild``: the same with the in-place update turned off (``LexicalCache.incremental = False``),
  so the search rebuilds the subject's index from its rows: the behaviour before incremental updates;
* ``after_other_add``: the add is made by a second store on the same database (another worker process or
  replica), so the search brings its cached index forward from the change log.

After each write round the added turn is deleted again (same mode, then an untimed search), so the subject
keeps its size. The adds' own latency is reported per mode too. ``--embedder hashing`` (default) isolates
the store from embedding cost; ``onnx`` / ``torch`` use all-MiniLM-L6-v2.

    python bench/lexical_after_write.py [--sizes 500,2000] [--rounds 60] [--embedder hashing|onnx|torch]
        [--json-out FILE] [--code DIR]

``--code DIR`` imports ``memory_store`` from DIR instead (e.g. an older revision exported with
``git archive``); without in-place updates there, ``after_add`` is a rebuild as well.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent


def _code_path(argv: Sequence[str]) -> Path:
    for pos, arg in enumerate(argv):
        if arg == "--code" and pos + 1 < len(argv):
            return Path(argv[pos + 1]).resolve()
        if arg.startswith("--code="):
            return Path(arg.split("=", 1)[1]).resolve()
    return REPO


CODE = _code_path(sys.argv[1:])
sys.path.insert(0, str(CODE))

from memory_store import FusionConfig, MasterKey, MemoryStore, NewMemory, StoreSettings, generate_key  # noqa: E402
from memory_store.db import make_engine  # noqa: E402
from memory_store.embedder import Embedder, HashingEmbedder  # noqa: E402
from memory_store.migrate import upgrade  # noqa: E402

NAMES = ["Alice", "Bob", "Carol", "Dave"]
TOPICS = [
    "hiking", "volcano", "crater", "camera", "photos", "lake", "kayak", "tea", "coffee", "cello", "piano", "guitar",
    "painting", "garden", "tomatoes", "roses", "puppy", "kitten", "adoption", "school", "exam", "chemistry",
    "novel", "poetry", "marathon", "bicycle", "train", "ticket", "museum", "concert", "jazz", "birthday", "wedding",
    "recipe", "pasta", "curry", "bakery", "sourdough", "job", "interview", "promotion", "office", "laptop", "phone",
    "holiday", "beach", "mountain", "snow", "ski", "festival", "parade", "market", "vegetables", "neighbour",
    "cousin", "grandmother", "friend",
]
VERBS = ["loved", "visited", "bought", "lost", "found", "planned", "cooked", "painted", "learned", "booked"]
TEMPLATES = (
    "{name}: I {verb} the {a} with my {b} last week.",
    "{name}: Did you ever try the {a}? My {b} says it is great.",
    "{name}: We {verb} a {a} and then talked about {b} for hours.",
    "{name}: Honestly the {a} was better than the {b}.",
    "{name}: Next month I want to see the {a} near the {b}.",
)


def turn_text(rng: random.Random) -> str:
    a, b = rng.sample(TOPICS, 2)
    return rng.choice(TEMPLATES).format(name=rng.choice(NAMES), verb=rng.choice(VERBS), a=a, b=b)


def query_text(rng: random.Random) -> str:
    a, b = rng.sample(TOPICS, 2)
    return rng.choice(["What did {n} say about the {a}?", "When did {n} get the {a} and {b}?", "{a} {b}"]).format(
        n=rng.choice(NAMES), a=a, b=b
    )


def make_embedder(kind: str, data_dir: Path, model_cache: Path | None) -> Embedder:
    if kind == "hashing":
        return HashingEmbedder(dim=384)
    from memory_store.embedder import embedder_from_settings

    if kind == "onnx" and model_cache is not None:
        from memory_store.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(cache_dir=model_cache)
    return embedder_from_settings(StoreSettings(data_dir=data_dir, embedding_runtime=kind))


def dist_ms(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"n": len(ordered), "p50": pick(0.5), "p95": pick(0.95), "mean": round(1000 * statistics.fmean(ordered), 3)}


def measure(
    store: MemoryStore, other: MemoryStore, size: int, rounds: int, session_size: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    tenant_id = store.create_tenant(name=f"bench-{size}").id
    start = datetime(2024, 1, 1, tzinfo=UTC)
    items = [
        NewMemory(
            subject="bench",
            text=turn_text(rng),
            session_id=f"s{i // session_size}",
            kind="turn",
            occurred_at=start + timedelta(minutes=i),
        )
        for i in range(size)
    ]
    t0 = time.perf_counter()
    for first in range(0, size, 256):
        store.add_batch(tenant_id=tenant_id, items=items[first : first + 256])
    fill_s = time.perf_counter() - t0
    last_session = f"s{(size - 1) // session_size}"
    cache = store._lexical
    incremental_available = hasattr(cache, "advance")
    fusion = FusionConfig()

    def search() -> float:
        began = time.perf_counter()
        store.search(tenant_id=tenant_id, subject="bench", query=query_text(rng), k=10, fusion=fusion)
        return time.perf_counter() - began

    def set_incremental(on: bool) -> None:
        if incremental_available:
            cache.incremental = on

    minute = size
    samples: dict[str, list[float]] = {"no_write": [], "after_add": [], "after_add_rebuild": [], "after_other_add": []}
    adds: dict[str, list[float]] = {"after_add": [], "after_add_rebuild": [], "after_other_add": []}

    def after_add(mode: str) -> None:
        nonlocal minute
        set_incremental(mode != "after_add_rebuild")
        writer = other if mode == "after_other_add" else store
        minute += 1
        item = NewMemory(subject="bench", text=turn_text(rng), session_id=last_session, kind="turn",
                         occurred_at=start + timedelta(minutes=minute))
        began = time.perf_counter()
        added = writer.add(tenant_id=tenant_id, item=item)
        adds[mode].append(time.perf_counter() - began)
        samples[mode].append(search())
        writer.delete(tenant_id=tenant_id, memory_id=added.id)
        search()  # untimed: leaves a current cached index for the next measurement
        set_incremental(True)

    steps: dict[str, Callable[[], None]] = {
        "no_write": lambda: samples["no_write"].append(search()),
        "after_add": lambda: after_add("after_add"),
        "after_add_rebuild": lambda: after_add("after_add_rebuild"),
        "after_other_add": lambda: after_add("after_other_add"),
    }
    for _ in range(5):  # warm-up: caches, code paths
        for step in steps.values():
            step()
    for name in samples:
        samples[name].clear()
    for name in adds:
        adds[name].clear()
    order = list(steps)
    for round_no in range(rounds):
        shift = round_no % len(order)
        for name in order[shift:] + order[:shift]:
            steps[name]()

    result: dict[str, Any] = {
        "memories": size,
        "fill_s": round(fill_s, 2),
        "in_place_updates": incremental_available,
        "search_ms": {name: dist_ms(values) for name, values in samples.items()},
        "add_ms": {name: dist_ms(values) for name, values in adds.items()},
    }
    search_ms = result["search_ms"]
    result["after_add_vs_no_write_p50"] = round(search_ms["after_add"]["p50"] / search_ms["no_write"]["p50"], 2)
    for mode in ("after_add_rebuild", "after_other_add"):
        result[f"{mode}_vs_no_write_p50"] = round(search_ms[mode]["p50"] / search_ms["no_write"]["p50"], 2)
    return result


def environment() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=CODE, capture_output=True, text=True, timeout=10, check=False)
            return done.stdout.strip()
        except OSError:
            return ""

    return {
        "code": str(CODE),
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_memory_store": git("status", "--short", "--", "memory_store"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,2000", help="memories of the subject, comma separated")
    parser.add_argument("--rounds", type=int, default=60, help="measurements of each kind per size")
    parser.add_argument("--session-size", type=int, default=20)
    parser.add_argument("--embedder", choices=("hashing", "onnx", "torch"), default="hashing")
    parser.add_argument("--model-cache", type=Path, help="onnx: folder of the exported model (default: temporary)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--code", type=Path, help="import memory_store from this folder (default: this checkout)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)

    report: dict[str, Any] = {
        "config": {
            "sizes": args.sizes,
            "rounds": args.rounds,
            "session_size": args.session_size,
            "embedder": args.embedder,
            "store": "SQLite + FAISS (exact), one tenant, one subject",
            "search": "MemoryStore.search(k=10), default FusionConfig",
        },
        "env": environment(),
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="sealmem-lexbench-") as tmp:
        data_dir = Path(tmp)
        embedder = make_embedder(args.embedder, data_dir, args.model_cache)
        embedder.embed(["warm-up"])
        for size in (int(s) for s in args.sizes.split(",")):
            folder = data_dir / f"store-{size}"
            folder.mkdir()
            settings = StoreSettings(data_dir=folder)
            engine = make_engine(settings)
            upgrade(engine)
            key = MasterKey(generate_key())
            store = MemoryStore(engine=engine, master_key=key, embedder=embedder, settings=settings)
            # The second process: same database, its own data folder (FAISS files) and caches.
            other_settings = StoreSettings(
                data_dir=data_dir / f"other-{size}", database_url=settings.resolved_database_url
            )
            other = MemoryStore.open(other_settings, master_key=key, embedder=embedder)
            try:
                report["results"][str(size)] = measure(store, other, size, args.rounds, args.session_size,
                                                       args.seed)
            finally:
                other.close()
                store.close()
    report["env"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
