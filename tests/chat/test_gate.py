"""The concurrency gate of the LLM backends: one tenant's requests are served in arrival order."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.llm.backend import LLMBusyError
from service.llm.gate import FairGate


def test_waiters_are_served_in_arrival_order_and_the_line_is_bounded() -> None:
    async def scenario() -> list[int]:
        gate = FairGate(1, queue_max=5)
        order: list[int] = []
        await gate.acquire()

        async def worker(i: int) -> None:
            async with gate.slot():
                order.append(i)
                await asyncio.sleep(0)

        tasks = []
        for i in range(5):
            tasks.append(asyncio.create_task(worker(i)))
            await asyncio.sleep(0)
        assert gate.waiting == 5
        with pytest.raises(LLMBusyError):
            await gate.acquire()
        gate.release()
        await asyncio.gather(*tasks)
        assert gate.active == 0 and gate.waiting == 0
        return order

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    async def scenario() -> None:
        gate = FairGate(1, queue_max=5)
        await gate.acquire()
        waiting = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert gate.waiting == 0
        gate.release()
        assert gate.active == 0
        async with gate.slot():
            assert gate.active == 1

    asyncio.run(scenario())


def test_limit_two_runs_two_at_once() -> None:
    async def scenario() -> int:
        gate = FairGate(2, queue_max=10)
        running = peak = 0

        async def job() -> None:
            nonlocal running, peak
            async with gate.slot():
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.01)
                running -= 1

        await asyncio.gather(*(job() for _ in range(6)))
        return peak

    assert asyncio.run(scenario()) == 2


def test_local_backend_runs_a_synchronous_engine_under_its_gate() -> None:
    """The hook for engines with their own generation loop (KV injection): a thread, the same gate."""
    from collections.abc import Iterator

    from service.llm.backend import GenerationStats, LLMError
    from service.llm.local import LocalBackend

    backend = LocalBackend("unused", concurrency=1, queue_max=2)
    seen_cancel: list[bool] = []

    def engine(cancel: threading.Event) -> Iterator[str]:
        yield "Biscuit"
        yield " is"
        seen_cancel.append(cancel.is_set())

    def broken(cancel: threading.Event) -> Iterator[str]:
        yield "x"
        raise RuntimeError("engine failure")

    async def scenario() -> list[str]:
        stats = GenerationStats()
        out = [d async for d in backend.stream_sync(engine, stats)]
        assert stats.first_token_s is not None and stats.finished_s is not None
        with pytest.raises(LLMError):
            _ = [d async for d in backend.stream_sync(broken, GenerationStats())]
        await asyncio.sleep(0.05)
        assert backend.gate.active == 0
        return out

    assert asyncio.run(scenario()) == ["Biscuit", " is"]
    assert seen_cancel == [False]
