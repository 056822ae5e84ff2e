"""``request_threads``: how many threads of a worker process run requests' blocking work."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio.to_thread

from memory_store import MemoryStore
from service.app import bound_worker_threads, request_threads_for
from service.settings import Settings


def _limits(store: MemoryStore, request_threads: int | None) -> tuple[tuple[int, int], float]:
    async def run() -> tuple[tuple[int, int], float]:
        bounded = bound_worker_threads(store, request_threads)
        return bounded, anyio.to_thread.current_default_thread_limiter().total_tokens

    return asyncio.run(run())


def test_request_threads_caps_the_route_threads_and_never_exceeds_half_the_pool(store: MemoryStore) -> None:
    pool = store.engine.pool
    half = (pool.size() + pool._max_overflow) // 2  # type: ignore[attr-defined]
    (routes, io), tokens = _limits(store, 1)
    assert (routes, tokens) == (1, 1) and io >= 1
    (routes, io), tokens = _limits(store, 0)  # 0: as many as the pool allows
    assert routes == tokens == half - io > 1
    (routes, _), tokens = _limits(store, 1000)
    assert routes == tokens == half - io


def test_unset_it_is_two_threads_on_sqlite_and_four_on_postgresql(store: MemoryStore, tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).request_threads is None
    (routes, io), tokens = _limits(store, None)
    pool = store.engine.pool
    half = (pool.size() + pool._max_overflow) // 2  # type: ignore[attr-defined]
    expected = min(2, half - io) if store.engine.dialect.name == "sqlite" else min(4, half - io)
    assert routes == tokens == expected
    assert request_threads_for(None, "sqlite") == 2
    assert request_threads_for(None, "postgresql") == 4
    assert request_threads_for(2, "postgresql") == 2
    assert request_threads_for(0, "sqlite") == 0
