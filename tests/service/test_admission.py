"""service.admission: store work admitted oldest request first across workers (two admissions on one real board
file, as two worker processes would share it; real asyncio, work held open until released), and in the served app."""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.admission import Admission
from service.balance import STALE_AFTER_S, WorkerBoard, create_board
from tests.harness import Launcher, bearer


class Work:
    """Requests whose store work stays open until released, noting the order it started in."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.open = 0
        self.most_open = 0

    def finish(self, name: str) -> None:
        self.release.setdefault(name, asyncio.Event()).set()

    async def request(self, gate: Admission, name: str, arrived: float) -> None:
        async with gate.turn(arrived):
            self.started.append(name)
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            try:
                await self.release.setdefault(name, asyncio.Event()).wait()
            finally:
                self.open -= 1


def _start(work: Work, gate: Admission, name: str, arrived: float) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(work.request(gate, name, arrived))


async def _settle() -> None:
    for _ in range(20):  # long enough for the pollers (1 ms) to run a few times
        await asyncio.sleep(0.002)


def _workers(
    tmp_path: Path, per_worker: int, monotonic: Callable[[], float] | None = None
) -> tuple[Admission, Admission]:
    """Two workers' admissions on one board: this process and, for the board, its parent (a live process)."""
    path = create_board(tmp_path)
    kwargs: dict[str, Any] = {} if monotonic is None else {"monotonic": monotonic}
    first = WorkerBoard(path, **kwargs)
    second = WorkerBoard(path, pid=os.getppid(), **kwargs)
    return (
        Admission(per_worker=per_worker, board=first, poll=0.001),
        Admission(per_worker=per_worker, board=second, poll=0.001),
    )


def test_requests_are_admitted_in_arrival_order_across_two_workers(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        work = Work()
        a, b = _workers(tmp_path, per_worker=1)
        tasks = [_start(work, a, "a1", 1), _start(work, b, "b1", 2)]  # room for two: both start
        await _settle()
        tasks += [_start(work, a, "a2", 3), _start(work, b, "b2", 4), _start(work, a, "a3", 5)]
        await _settle()
        assert work.started == ["a1", "b1"]
        work.finish("b1")  # room on b, but a's a2 came before b's b2
        await _settle()
        assert work.started == ["a1", "b1", "a2"]
        work.finish("a1")  # room on a, but b's b2 came before a's a3
        await _settle()
        assert work.started == ["a1", "b1", "a2", "b2"]
        for name in ("a2", "b2", "a3"):
            work.finish(name)
        await asyncio.gather(*tasks)
        assert (a.working, b.working, a.waiting, b.waiting) == (0, 0, 0, 0)
        return work.started

    assert asyncio.run(scenario()) == ["a1", "b1", "a2", "b2", "a3"]


def test_a_request_that_arrived_earlier_goes_first_even_if_it_comes_to_wait_later(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        work = Work()
        waits: list[float] = []
        gate = Admission(per_worker=1, clock=lambda: 10.0, on_wait=waits.append)  # one worker, no board
        tasks = [_start(work, gate, "first", 1)]
        await _settle()
        tasks.append(_start(work, gate, "third", 3))
        await _settle()
        tasks.append(_start(work, gate, "second", 2))  # held up on the way (say, a late embedding pass)
        await _settle()
        for name in ("first", "second", "third"):
            work.finish(name)
            await _settle()
        await asyncio.gather(*tasks)
        assert waits == [9.0, 8.0, 7.0]  # from each request's arrival to its turn, by the clock
        return work.started

    assert asyncio.run(scenario()) == ["first", "second", "third"]


def test_under_a_random_load_the_workers_together_keep_to_the_limit_and_the_arrival_order(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], list[str], int]:
        work = Work()
        gates = _workers(tmp_path, per_worker=3)
        rng = random.Random(7)
        arrived: list[str] = []
        tasks = []
        for i in range(120):
            name = f"r{i}"
            arrived.append(name)
            tasks.append(_start(work, gates[rng.randrange(2)], name, i + 1))
            if rng.random() < 0.5:
                await asyncio.sleep(0)
            if work.started and rng.random() < 0.4:  # end one of the requests working, at random
                working = [n for n in work.started if not work.release.setdefault(n, asyncio.Event()).is_set()]
                if working:
                    work.finish(rng.choice(working))
                await _settle()
        while not all(task.done() for task in tasks):
            for name in work.started:
                work.finish(name)
            await _settle()
        return arrived, work.started, work.most_open

    arrived, started, most_open = asyncio.run(scenario())
    assert started == arrived
    assert most_open <= 6


def test_a_worker_that_stops_publishing_no_longer_holds_the_others_back(tmp_path: Path) -> None:
    now = [100.0]

    async def scenario() -> None:
        work = Work()
        a, b = _workers(tmp_path, per_worker=4, monotonic=lambda: now[0])
        assert b.board is not None
        b.board.publish_queue(3, 0.5)  # b holds a request waiting since before anything here, then goes silent
        task = _start(work, a, "a1", 1)
        await _settle()
        assert work.started == [] and a.waiting == 1
        now[0] += STALE_AFTER_S + 0.5
        await _settle()
        assert work.started == ["a1"]
        work.finish("a1")
        await task

    asyncio.run(scenario())


def test_a_closed_board_leaves_the_worker_admitting_in_its_own_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        work = Work()
        a, _ = _workers(tmp_path, per_worker=1)
        assert a.board is not None
        a.board.close()  # as when the worker stops while a request still runs
        first, second = _start(work, a, "first", 1), _start(work, a, "second", 2)
        await _settle()
        assert work.started == ["first"] and a.board is None
        work.finish("first")
        await _settle()
        assert work.started == ["first", "second"]
        work.finish("second")
        await asyncio.gather(first, second)

    asyncio.run(scenario())


def test_a_cancelled_wait_gives_its_turn_on() -> None:
    async def scenario() -> None:
        work = Work()
        gate = Admission(per_worker=1)
        first = _start(work, gate, "first", 1)
        second = _start(work, gate, "second", 2)
        third = _start(work, gate, "third", 3)
        await _settle()
        assert work.started == ["first"]
        second.cancel()
        await _settle()
        work.finish("first")
        await _settle()
        assert work.started == ["first", "third"]
        assert gate.working == 1 and gate.waiting == 0
        work.finish("third")
        await asyncio.gather(first, third)
        with pytest.raises(asyncio.CancelledError):
            await second
        assert gate.working == 0

    asyncio.run(scenario())


def test_no_limit_admits_everything_at_once() -> None:
    async def scenario() -> int:
        work = Work()
        gate = Admission(per_worker=0)
        tasks = [_start(work, gate, f"r{i}", i + 1) for i in range(50)]
        await _settle()
        opened = work.open
        for name in work.started:
            work.finish(name)
        await asyncio.gather(*tasks)
        return opened

    assert asyncio.run(scenario()) == 50


def test_the_served_app_admits_memory_requests_in_turn_and_reports_their_waits(
    tmp_path: Path, migrated_db: Path
) -> None:
    with ExitStack() as stack:
        api = Launcher(stack, tmp_path, migrated_db, chat_enabled=False).serve(admission_per_worker=1)
        tenant = api.tenant()
        api.add(tenant.app, "user-1", "My dog is named Biscuit.")

        def search(i: int) -> int:
            body = {"subject": "user-1", "query": f"what is the dog called {i}"}
            return httpx.post(f"{api.url}/v1/memories/search", json=body, headers=bearer(tenant.reader)).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(search, range(24))) == [200] * 24
        metrics = api.client.get("/metrics").text
        waits = {
            name: float(value)
            for name, value in re.findall(r"^sealmem_admission_wait_seconds_(count|sum) (\S+)$", metrics, re.M)
        }
        assert waits["count"] == 25  # the add and every search, and nothing else (the tenant's key, /metrics)
        assert waits["sum"] > 0  # eight at a time, one admitted at a time: some waited
