"""service.balance: the workers' shared load board (real files, real processes) and the middleware that asks a
worker's clients to reconnect while the worker holds more than the mean load (a real ASGI app, a driven clock)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from service.balance import STALE_AFTER_S, Rebalancer, WorkerBoard, create_board

SLOT = struct.Struct("<qdddqdd")  # a worker's load, then its admission queue (service.admission)


def _publish_from_child(path: str, load: float, ready: Any, done: Any) -> None:
    board = WorkerBoard(Path(path))
    board.publish(load, 10 * load)
    ready.set()
    done.wait(30)
    board.close()


def test_each_worker_process_claims_its_own_slot_and_sees_the_others_loads(tmp_path: Path) -> None:
    path = create_board(tmp_path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    context = multiprocessing.get_context("spawn")
    done = context.Event()
    children = []
    for load in (3.0, 7.0):
        ready = context.Event()
        child = context.Process(target=_publish_from_child, args=(str(path), load, ready, done))
        child.start()
        assert ready.wait(60)
        children.append(child)
    mine = WorkerBoard(path)
    mine.publish(5.0, 50.0)
    assert sorted(mine.loads()) == [(3.0, 30.0), (5.0, 50.0), (7.0, 70.0)]
    done.set()
    for child in children:
        child.join(30)
    assert mine.loads() == [(5.0, 50.0)]  # a worker that stopped gave its slot back
    mine.close()


def test_a_slot_of_a_process_that_is_gone_is_claimed_again_and_a_silent_worker_drops_out(tmp_path: Path) -> None:
    path = create_board(tmp_path)
    gone = multiprocessing.get_context("fork").Process(target=lambda: None)
    gone.start()
    gone.join()
    now = [1000.0]
    with path.open("r+b") as raw:  # a worker killed (kill -9) left its slot, and a live one went silent
        raw.write(SLOT.pack(gone.pid, 9.0, 90.0, 999.0, 0, 0, 0) + SLOT.pack(os.getppid(), 4.0, 40.0, 999.0, 0, 0, 0))
    board = WorkerBoard(path, clock=lambda: now[0])
    board.publish(2.0, 20.0)
    with path.open("rb") as raw:
        assert SLOT.unpack(raw.read(SLOT.size))[0] == os.getpid()  # the dead worker's slot
    assert sorted(board.loads()) == [(2.0, 20.0), (4.0, 40.0)]
    now[0] += STALE_AFTER_S + 1
    board.publish(2.0, 20.0)
    assert board.loads() == [(2.0, 20.0)]
    board.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _answer(balancer: Rebalancer) -> list[tuple[bytes, bytes]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await balancer({"type": "http", "method": "GET", "path": "/"}, receive, send)
    return list(sent[0]["headers"])


def _balancer(tmp_path: Path, peer: tuple[float, float] | None, clock: Clock) -> Rebalancer:
    path = create_board(tmp_path)
    if peer is not None:  # another worker (a live process: the test runner's parent) published this load
        with path.open("r+b") as raw:
            raw.write(SLOT.pack(os.getppid(), *peer, 1e12, 0, 0, 0))
    closed: list[int] = []
    balancer = Rebalancer(_ok, WorkerBoard(path), clock=clock, on_close=lambda: closed.append(1))
    balancer.closed_seen = closed  # type: ignore[attr-defined]
    return balancer


def _hold(balancer: Rebalancer, clock: Clock, in_flight: int, answers: int) -> None:
    """``in_flight`` requests open in this worker for one second (as the middleware counts them) while it gave
    ``answers`` answers, then a tick."""
    balancer._step(in_flight)
    clock.now += 1.0
    balancer._step(-in_flight)
    balancer._answered = answers
    balancer.tick()


@pytest.mark.parametrize(
    ("mine", "peer", "to_close"),
    [
        # Equally fast workers: each closes its excess over the mean.
        ((40, 100), (20, 100), 10),
        ((52, 100), (12, 100), 20),
        ((31, 100), (29, 100), 0),
        ((3, 100), (1, 100), 0),
        ((20, 100), (40, 100), 0),
        # One that answers more slowly holds fewer: 64 in flight over 160 answers/s is 0.4 s each, so this
        # worker's share at 64 answers/s is 25.6 requests, its peer's at 96/s 38.4.
        ((32, 64), (32, 96), 6),
        ((32, 96), (32, 64), 0),
        ((26, 64), (38, 96), 0),
        # An idle peer's speed is unknown: taken to be that of the loaded workers.
        ((16, 100), (0, 0), 8),
        ((16, 100), (0.5, 3), 7),
    ],
)
def test_a_worker_above_its_share_closes_its_excess_of_connections_after_their_answers(
    tmp_path: Path, mine: tuple[int, int], peer: tuple[float, float], to_close: int
) -> None:
    clock = Clock()
    balancer = _balancer(tmp_path, (float(peer[0]), float(peer[1])), clock)
    _hold(balancer, clock, *mine)
    assert (balancer.load, balancer.rate) == (pytest.approx(mine[0]), pytest.approx(mine[1]))
    assert balancer.to_close == to_close
    answers = [asyncio.run(_answer(balancer)) for _ in range(to_close + 3)]
    closing = [(b"connection", b"close") in headers for headers in answers]
    assert closing == [True] * to_close + [False] * 3
    assert balancer.closed == to_close and len(balancer.closed_seen) == to_close  # type: ignore[attr-defined]


def test_a_worker_alone_on_the_board_never_closes_connections(tmp_path: Path) -> None:
    clock = Clock()
    balancer = _balancer(tmp_path, None, clock)
    _hold(balancer, clock, 60, 100)
    assert balancer.to_close == 0
    assert (b"connection", b"close") not in asyncio.run(_answer(balancer))


def test_the_load_is_the_time_average_of_the_requests_in_flight_and_the_answers_per_second(tmp_path: Path) -> None:
    clock = Clock()
    balancer = _balancer(tmp_path, (1.0, 12.0), clock)
    balancer._step(10)
    clock.now += 0.25
    balancer._step(-6)  # 10 in flight for half the period, 4 for the other half; 6 answers in half a second
    clock.now += 0.25
    balancer.tick()
    assert (balancer.load, balancer.rate) == (pytest.approx(7.0), pytest.approx(12.0))
    assert balancer.to_close == 3  # equally fast: the mean of 7 and 1 is 4, an excess of 3
    balancer._step(6)  # the next period: 10 in flight, 4 answers in half a second; averaged with the last
    clock.now += 0.5
    balancer._step(-4)
    balancer.tick()
    assert (balancer.load, balancer.rate) == (pytest.approx(8.5), pytest.approx(10.0))
