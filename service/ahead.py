"""A request's screening and embedding, started before it reaches the request thread.

Each worker process runs requests' blocking work on few request threads (``request_threads``: one on SQLite), so
a search's or an add's embedding, most of its CPU, ran there alone: one text per forward pass, while the requests
behind it waited. The search and add routes first hand that work (``MemoryStore.prepare_search``,
``prepare_add``) to the threads here. The embeddings of requests that wait at the same time then meet in the
coalescing embedder and run as one batch, cheaper per text (``bench/embed_batching.py``), and the request thread
keeps working meanwhile (a forward pass does not hold the interpreter lock).

Only a head start: when preparing fails for any reason (an invalid or rejected text, a subject the caller may not
name) the request goes on without it, and the store call does the work, and answers or raises, exactly as it
did before. Nothing is prepared before the caller is authenticated and admitted. Off (no threads, no hop) when
the embedder does not coalesce (``SEALMEM_EMBEDDING_COALESCE_MAX=1``).

On Linux these threads run at a lower scheduling priority (``prepare_niceness``, default 10). A forward pass runs
without the interpreter lock and keeps a core busy for milliseconds; at equal priority the kernel gave it cores
that a request thread holding the interpreter lock (or, on PostgreSQL, its tenant's write lock) was waiting for, and
that thread's process then stood still. Lowered, the passes take the cores the other threads leave idle, and the
70/30 mix serves about 8-19 % more requests on two cores (README, "Embedding threads yield the cores").
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from memory_store.coalescing import CoalescingEmbedder
from memory_store.embedder import Embedder

log = logging.getLogger("sealmem.ahead")

P = ParamSpec("P")
T = TypeVar("T")


def lower_priority(niceness: int) -> None:
    """Raise the calling thread's niceness by ``niceness`` (Linux, where niceness is per thread; elsewhere, and
    for 0, nothing). Raising it needs no privilege; a thread can never lower it again without one."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + niceness)
    except OSError as exc:
        log.warning("could not lower the priority of %s: %s", threading.current_thread().name, exc)


class AheadOfRequests:
    """Runs preparations on ``threads`` threads of their own (0: none, and :meth:`run` answers None at once),
    ``niceness`` steps below the process's scheduling priority (see the module's doc)."""

    def __init__(self, threads: int, niceness: int = 0) -> None:
        self._pool = (
            ThreadPoolExecutor(
                max_workers=threads,
                thread_name_prefix="sealmem-ahead",
                initializer=lower_priority,
                initargs=(niceness,),
            )
            if threads
            else None
        )

    @classmethod
    def for_embedder(cls, embedder: Embedder, niceness: int = 0) -> AheadOfRequests:
        """As many threads as a coalesced pass takes texts: the requests waiting at once all meet in it."""
        if isinstance(embedder, CoalescingEmbedder):
            return cls(min(embedder.max_batch, 32), niceness)
        return cls(0)

    @property
    def enabled(self) -> bool:
        return self._pool is not None

    async def run(self, prepare: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """``prepare(*args, **kwargs)`` on these threads; None when it fails (or preparing is off)."""
        if self._pool is None:
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: prepare(*args, **kwargs))
        except Exception as exc:  # the store call does the work itself, and raises what the caller must see
            log.debug("preparation skipped: %s", type(exc).__name__)
            return None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
