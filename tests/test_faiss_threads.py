"""FAISS's OpenMP thread count holds in every thread, not only the one that set it.

OpenMP keeps the count per thread, and the store used to set it once, in the thread that opened it: request
threads then searched in OpenMP teams of one thread per core, spinning (measured: 3-4 ms more server CPU per
request under load, ``bench/load.py``).
"""

from __future__ import annotations

import os
import threading

import faiss
import numpy as np

from memory_store.vector_index import TenantIndex, set_faiss_threads

ODD_COUNT = 7  # neither 1 (the setting's default) nor, on the machines this runs on, OpenMP's default


def _in_a_new_thread(work: TenantIndex) -> tuple[int, int, int]:
    seen: list[int] = []

    def run() -> None:
        seen.append(faiss.omp_get_max_threads())
        work.search(np.ones(4, dtype=np.float32) / 2, 2, None)
        seen.append(faiss.omp_get_max_threads())
        work.upsert(np.array([9], dtype=np.int64), np.ones((1, 4), dtype=np.float32) / 2)
        seen.append(faiss.omp_get_max_threads())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return seen[0], seen[1], seen[2]


def test_searches_and_writes_of_any_thread_use_the_configured_count() -> None:
    index = TenantIndex(4, exact_max=100, nprobe=1)
    index.upsert(np.arange(3, dtype=np.int64), np.eye(3, 4, dtype=np.float32))
    try:
        set_faiss_threads(ODD_COUNT)
        before, after_search, after_upsert = _in_a_new_thread(index)
        if (os.cpu_count() or 1) != ODD_COUNT:
            assert before != ODD_COUNT  # a new thread starts at OpenMP's default: the test can tell
        assert after_search == ODD_COUNT
        assert after_upsert == ODD_COUNT
        set_faiss_threads(1)
        assert _in_a_new_thread(index)[1:] == (1, 1)
    finally:
        set_faiss_threads(1)
