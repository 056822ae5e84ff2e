"""Saving and loading one tenant's encrypted FAISS index file: time, GIL stall and peak memory, per checkout.

    python bench/index_file.py [--baseline /path/to/other/checkout] [--vectors 100000] [--rounds 2] [--out FILE]

A save runs on a thread of the serving process (the periodic upkeep, or the due save after a write), so what it
costs the process's request threads is the time it holds the GIL: a ticker thread sleeps 1 ms at a time beside
``TenantIndex.save`` and the report sums its waits over 5 ms (``save_gil_stall_ms``) and gives the longest. A load
runs when a worker first needs the index; its peak memory decides whether a large tenant fits a container:
``load_peak_rss_growth_mb`` is ``ru_maxrss`` after ``TenantIndex.load`` less before, in a fresh interpreter.

Each measurement runs in a fresh interpreter (``--worker``) that imports ``memory_store`` from the checkout it is
given, on ``--vectors`` random unit vectors of 384 dims (all-MiniLM-L6-v2's; a flat index as the store keeps it up
to ``SEALMEM_INDEX_EXACT_MAX``). With ``--baseline`` the other checkout is measured the same way, alternating with
this one, and the JSON gives both medians and their ratio. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.checkouts import compare, emit  # noqa: E402


def _save(repo: Path, vectors: int, folder: Path) -> dict[str, float]:
    import numpy as np

    sys.path.insert(0, str(repo))
    from memory_store.vector_index import TenantIndex

    key = bytes.fromhex((folder / "key").read_text())
    rng = np.random.default_rng(7)
    data = rng.standard_normal((vectors, 384)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    index = TenantIndex(384, exact_max=vectors + 1, nprobe=8)
    index.upsert(np.arange(vectors, dtype=np.int64), data)
    index.key_version = 1  # checkouts before f383751 keep no version: an attribute they ignore
    extra = {"seq": 0} if "seq" in inspect.signature(TenantIndex.save).parameters else {}

    waits: list[float] = []
    stop = threading.Event()

    def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            waits.append(now - last)
            last = now

    thread = threading.Thread(target=ticker)
    thread.start()
    time.sleep(0.05)
    start = time.perf_counter()
    index.save(folder / "t.index", tenant_id="t", key=key, key_version=1, **extra)
    took = time.perf_counter() - start
    stop.set()
    thread.join()
    return {
        "save_ms": round(took * 1000, 1),
        "save_gil_stall_ms": round(sum(w for w in waits if w > 0.005) * 1000, 1),
        "save_longest_stall_ms": round(max(waits) * 1000, 1),
        "file_mb": round((folder / "t.index").stat().st_size / 1e6, 1),
    }


def _load(repo: Path, vectors: int, folder: Path) -> dict[str, float]:
    sys.path.insert(0, str(repo))
    from memory_store.vector_index import TenantIndex

    key = bytes.fromhex((folder / "key").read_text())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    index = TenantIndex.load(folder / "t.index", tenant_id="t", key=key, key_version=1, exact_max=vectors + 1, nprobe=8)
    took = time.perf_counter() - start
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    if index.ntotal != vectors:
        raise SystemExit(f"loaded {index.ntotal} vectors, saved {vectors}")
    return {"load_ms": round(took * 1000, 1), "load_peak_rss_growth_mb": round(grown / 1024, 1)}


def _run(step: str, repo: Path, vectors: int, folder: Path) -> dict[str, float]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            step,
            "--repo",
            str(repo),
            "--vectors",
            str(vectors),
            "--dir",
            str(folder),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(repo: Path, vectors: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="sealmem-index-file-") as tmp:
        folder = Path(tmp)
        (folder / "key").write_text(os.urandom(32).hex())
        return _run("save", repo, vectors, folder) | _run("load", repo, vectors, folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout, measured the same way, alternating")
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", choices=["save", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        step = _save if args.worker == "save" else _load
        print(json.dumps(step(args.repo, args.vectors, args.dir)))
        return
    report = {"vectors": args.vectors} | compare(lambda repo: measure(repo, args.vectors), args.baseline, args.rounds)
    emit(report, args.out)


if __name__ == "__main__":
    main()
