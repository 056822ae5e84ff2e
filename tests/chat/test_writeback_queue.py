"""The write-back queue is shared by chat write-back and conversation ingestion: one tenant cannot fill it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from memory_store import MemoryStore
from service.auditing import Caller
from service.chat.distill import Statement
from service.chat.writeback import WriteBackJob, WriteBackWorker


class HeldDistiller:
    """Holds every distillation until released, so submitted jobs stay queued (a fake at the model's edge)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def distill(self, message: str) -> list[Statement]:
        await self.release.wait()
        return []


def job(tenant_id: str) -> WriteBackJob:
    return WriteBackJob(
        tenant_id=tenant_id, subject="ana", session_id="s", message_id="m", text="hi", caller=Caller.operator()
    )


def test_one_tenant_cannot_take_the_whole_queue(open_store: Callable[..., MemoryStore]) -> None:
    async def scenario() -> list[str]:
        held = HeldDistiller()
        worker = WriteBackWorker(open_store(), held, queue_max=100, per_tenant_max=3)
        worker.start()
        statuses = [worker.submit(job("tenant-a")).status for _ in range(5)]
        statuses.append(worker.submit(job("tenant-b")).status)
        held.release.set()
        await worker.drain()
        statuses.append(worker.submit(job("tenant-a")).status)  # its share is free again once its jobs ran
        await worker.stop()
        return statuses

    statuses = asyncio.run(scenario())
    # A tenant's share counts its jobs queued or running: three, then refused; another tenant is not affected.
    assert statuses == ["queued"] * 3 + ["dropped"] * 2 + ["queued", "queued"]
