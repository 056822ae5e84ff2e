"""CPU per store search and per store add, in process, without the embedder: what the store's own Python costs.

    python bench/store_cpu.py [--baseline /path/to/other/checkout] [--rounds 3] [--ops 1000] [--out FILE]

Each measurement runs in a fresh interpreter (``--worker``) that imports ``memory_store`` from the checkout
it is given: a SQLite store in a temporary folder with the deterministic hashing embedder (the model is not
what this measures; ``bench/load.py`` measures whole requests with it), 50 subjects x 40 memories, then
``--ops`` searches (k=10, with their read-audit record committed through the audit writer, as a request
waits for it) and ``--ops`` single adds (with their audit record), subjects and words drawn at random as
in ``bench/wrk_mix.lua``. CPU is the process's (all threads: the audit writer's commits count), per
operation. With ``--baseline`` the other checkout is measured the same way, alternating with this one,
and the JSON gives both medians and their ratio. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.checkouts import compare, emit  # noqa: E402

WORDS = [
    "dog",
    "cat",
    "Lisbon",
    "Porto",
    "jazz",
    "chess",
    "sushi",
    "hiking",
    "poetry",
    "tennis",
    "baking",
    "cycling",
    "sailing",
    "cello",
    "garden",
    "coffee",
    "marathon",
    "museum",
    "pottery",
    "camping",
]


def worker(repo: Path, ops: int) -> dict[str, float]:
    sys.path.insert(0, str(repo))
    from memory_store.audit import AuditEvent
    from memory_store.crypto import MasterKey, generate_key
    from memory_store.db import make_engine
    from memory_store.embedder import HashingEmbedder
    from memory_store.migrate import upgrade
    from memory_store.settings import StoreSettings
    from memory_store.store import MemoryStore
    from memory_store.types import NewMemory

    settings = StoreSettings(data_dir=Path(tempfile.mkdtemp(prefix="sealmem-store-cpu-")))
    engine = make_engine(settings)
    upgrade(engine)
    store = MemoryStore(
        engine=engine, master_key=MasterKey(generate_key()), embedder=HashingEmbedder(384), settings=settings
    )
    tenant = store.create_tenant(name="bench").id
    rng = random.Random(0)
    subjects = [f"u{i}" for i in range(50)]

    def text(n: int) -> str:
        return f"I really enjoy {rng.choice(WORDS)}, and last week I tried {rng.choice(WORDS)} again (note {n})."

    for subject in subjects:
        store.add_batch(tenant_id=tenant, items=[NewMemory(subject=subject, text=text(i)) for i in range(40)])

    def search(n: int) -> None:
        subject = rng.choice(subjects)
        query = f"what do I think about {rng.choice(WORDS)} and {rng.choice(WORDS)}?"
        hits = store.search(tenant_id=tenant, subject=subject, query=query, k=10, role="app")
        event = AuditEvent(
            credential_id="bench",
            role="app",
            action="memory.search",
            subject=subject,
            memory_ids=[h.memory.id for h in hits],
        )
        store.audit.submit(tenant_id=tenant, events=[event]).result()

    def add(n: int) -> None:
        subject = rng.choice(subjects)
        store.add(
            tenant_id=tenant,
            item=NewMemory(subject=subject, text=text(n)),
            audit=AuditEvent(credential_id="bench", role="app", action="memory.add", subject=subject),
        )

    out: dict[str, float] = {}
    for name, op in (("search", search), ("add", add)):
        for n in range(200):  # warm-up: caches, compiled statements, the lexical indexes
            op(n)
        cpu, wall = time.process_time(), time.perf_counter()
        for n in range(ops):
            op(n)
        out[f"{name}_cpu_ms"] = round((time.process_time() - cpu) * 1000 / ops, 3)
        out[f"{name}_wall_ms"] = round((time.perf_counter() - wall) * 1000 / ops, 3)
    store.close()
    return out


def measure(repo: Path, ops: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", str(repo), "--ops", str(ops)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout, measured the same way, alternating")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.ops)))
        return
    report = {"ops": args.ops} | compare(lambda repo: measure(repo, args.ops), args.baseline, args.rounds)
    emit(report, args.out)


if __name__ == "__main__":
    main()
