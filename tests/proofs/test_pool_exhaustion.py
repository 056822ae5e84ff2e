"""Many more concurrent requests than database connections: every one is answered, none waits for the pool
timeout. Before the service bounded its worker threads (``service.app.bound_worker_threads``), 64 clients
against SQLite's pool of 15 connections stalled every request for 30 s and then failed with 500s (found by
bench/load.py): a search holds one connection while its vector index catches up in a second one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from tests.harness import Harness, bearer

CLIENTS = 64


def test_concurrent_requests_beyond_the_pool_all_succeed(make_served: Callable[..., Harness]) -> None:
    served = make_served()
    tenant = served.tenant("acme")
    for subject in ("a", "b", "c"):
        served.add(tenant.app, subject, f"{subject} likes tea and long walks")
    pool = served.services.store.engine.pool
    assert 2 * (pool.size() + pool._max_overflow) < CLIENTS  # type: ignore[attr-defined]

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=served.url, timeout=60, limits=limits) as client:

            async def one(n: int) -> int:
                subject = "abc"[n % 3]
                if n % 4 == 0:
                    body = {"subject": subject, "text": f"note {n} about coffee"}
                    response = await client.post("/v1/memories", json=body, headers=bearer(tenant.app))
                else:
                    body = {"subject": subject, "query": "what does the user like?"}
                    response = await client.post("/v1/memories/search", json=body, headers=bearer(tenant.app))
                return response.status_code

            results: list[int] = []
            for _ in range(3):  # several waves, so new index changes keep arriving while others search
                results += await asyncio.gather(*(one(n) for n in range(CLIENTS)))
            return results

    started = time.monotonic()
    statuses = asyncio.run(burst())
    elapsed = time.monotonic() - started
    assert sorted(set(statuses)) in ([200, 201], [201, 200]), statuses
    assert elapsed < 25, f"{elapsed:.1f} s: requests waited for the pool timeout"
