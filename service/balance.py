"""Even load across the worker processes of one ``sealmem serve``.

The workers share one listening socket, and a connection belongs to the worker that accepted it for as long as
the client keeps it open. Which worker accepts is a race the kernel does not balance: uvloop accepts every
pending connection in one wake-up, so a burst of new connections (a client pool opening, a load generator
starting) mostly goes to whichever worker woke first. Sampled during the wrk mix (64 keep-alive connections, two
workers), the split was 22/42, 12/52, 17/47, 43/21 and 45/19 in five of seven phases. The two workers get the
same CPU, so the one holding more connections answers each of them more slowly: in one pgvector run the two
workers' mean latencies were 470 and 341 ms, and that difference is the mix's latency tail.

Each worker publishes its load (requests in flight and answers per second, averaged over the last periods) to a
small shared board, beside its admission queue (:mod:`service.admission`). A worker holding more requests than its
share asks some of its clients to reconnect: it answers their next request with ``Connection: close`` (the answer is
complete; HTTP/1.1 clients open a new connection for their next request), and the new connection goes to whichever
worker accepts it. A worker's share is what gives every worker the same mean latency (Little's law: requests in
flight / answers per second), so a worker that answers more slowly holds fewer: the two workers of one server did
not answer equally fast even with the connections split evenly (35/29: mean latencies 406 and 506 ms in one pgvector
run). The busier worker is the slower to accept, so connections drift to the other until the latencies are even. A
worker closes at most its excess per period, and none while it is within a request or two of its share.

The board is a file the server process creates before it starts its workers (:func:`create_board`, in a private
directory) and each worker maps (:class:`WorkerBoard`): one slot per worker holding its pid, its load and when it
published, then its admission queue (requests working, oldest waiting arrival) and when it published that. A worker
claims a free slot under a file lock (a slot of a process that is gone, or silent for long, is free). A worker that
stops publishing (stuck, or gone) drops out of the mean after :data:`STALE_AFTER_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import mmap
import os
import struct
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

log = logging.getLogger("sealmem.balance")

BOARD_ENV = "SEALMEM_WORKER_BOARD"  # set by ``sealmem serve`` for its workers; not a setting
_LOAD = struct.Struct("<qddd")  # pid, requests in flight, answers per second, published at (time.time())
# requests admitted and working (service.admission), arrival of the oldest waiting one (0: none), published at (both
# time.monotonic())
_QUEUE = struct.Struct("<qdd")
_SLOT_SIZE = _LOAD.size + _QUEUE.size
_SLOTS = 64
PERIOD_S = 0.5
STALE_AFTER_S = 3.0
# A worker sheds only while its load is above the mean by at least this many requests and this share.
_MIN_EXCESS = 1.5
_MIN_RATIO = 1.1

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def create_board(directory: Path) -> Path:
    """The board file for the workers of one server, in ``directory`` (which should be private to it)."""
    path = directory / "workers.board"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, bytes(_SLOTS * _SLOT_SIZE))
    finally:
        os.close(fd)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class WorkerBoard:
    """This worker's view of the shared board (see the module's description)."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        pid: int | None = None,
    ) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._pid = os.getpid() if pid is None else pid
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._map = mmap.mmap(self._fd, _SLOTS * _SLOT_SIZE)
            self._offset = self._claim() * _SLOT_SIZE
        except BaseException:
            os.close(self._fd)
            raise

    def _claim(self) -> int:
        me = self._pid
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            for slot in range(_SLOTS):
                pid, _, _, at = _LOAD.unpack_from(self._map, slot * _SLOT_SIZE)
                if pid in (0, me) or not _alive(pid) or at < self._clock() - 10 * STALE_AFTER_S:
                    _LOAD.pack_into(self._map, slot * _SLOT_SIZE, me, 0.0, 0.0, self._clock())
                    _QUEUE.pack_into(self._map, slot * _SLOT_SIZE + _LOAD.size, 0, 0.0, 0.0)
                    return slot
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        raise RuntimeError(f"the worker board has no free slot ({_SLOTS} workers at most)")

    def publish(self, in_flight: float, rate: float) -> None:
        _LOAD.pack_into(self._map, self._offset, self._pid, in_flight, rate, self._clock())

    def publish_queue(self, working: int, oldest_waiting: float | None) -> None:
        """This worker's admission queue (:mod:`service.admission`): requests working, oldest waiting arrival."""
        _QUEUE.pack_into(self._map, self._offset + _LOAD.size, working, oldest_waiting or 0.0, self._monotonic())

    def queues(self) -> tuple[int, float | None, int]:
        """The other workers' admission queues that published within :data:`STALE_AFTER_S`: requests working in
        all, the oldest waiting arrival (None: none waits) and how many workers."""
        fresh = self._monotonic() - STALE_AFTER_S
        working, oldest, workers = 0, None, 0
        for start in range(0, _SLOTS * _SLOT_SIZE, _SLOT_SIZE):
            if start == self._offset:
                continue
            held, waiting, at = _QUEUE.unpack_from(self._map, start + _LOAD.size)
            if at >= fresh and at and _LOAD.unpack_from(self._map, start)[0]:
                working += held
                workers += 1
                if waiting and (oldest is None or waiting < oldest):
                    oldest = waiting
        return working, oldest, workers

    def loads(self) -> list[tuple[float, float]]:
        """(requests in flight, answers per second) of the workers that published within :data:`STALE_AFTER_S`,
        this one's included."""
        fresh = self._clock() - STALE_AFTER_S
        found = []
        for slot in range(_SLOTS):
            pid, in_flight, rate, at = _LOAD.unpack_from(self._map, slot * _SLOT_SIZE)
            if pid and at >= fresh:
                found.append((in_flight, rate))
        return found

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._map[self._offset : self._offset + _SLOT_SIZE] = bytes(_SLOT_SIZE)
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)


class Rebalancer:
    """ASGI middleware: measures this worker's requests in flight and answers and, while it holds more requests
    than its share, answers some requests with ``Connection: close`` (see the module's description). :meth:`run`
    is the periodic task that publishes the load and sets how many connections to close."""

    def __init__(
        self,
        app: ASGIApp,
        board: WorkerBoard,
        *,
        on_close: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.board = board
        self._on_close = on_close
        self._clock = clock
        self.in_flight = 0
        self._area = 0.0  # integral of in_flight over time since the last tick
        self._changed = self._since = clock()
        self._answered = 0  # answers since the last tick
        self.load = 0.0  # requests in flight, averaged over the last periods
        self.rate = 0.0  # answers per second, averaged over the last periods
        self.to_close = 0  # connections still to close in this period
        self._ticks = 0
        self.closed = 0  # connections closed to rebalance, in all

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the worker's life: tick through it
            ticker = asyncio.create_task(self.run())
            try:
                await self.app(scope, receive, send)
            finally:
                ticker.cancel()
                self.board.close()
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.to_close > 0:
                self.to_close -= 1
                self.closed += 1
                self._on_close()
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        self._step(1)
        try:
            await self.app(scope, receive, send_closing)
        finally:
            self._step(-1)

    def _step(self, change: int) -> None:
        now = self._clock()
        self._area += self.in_flight * (now - self._changed)
        self._changed = now
        self.in_flight += change
        if change < 0:
            self._answered -= change

    def tick(self) -> None:
        """Close the period: publish this worker's load and set how many connections to close in the next one.

        The load is the requests in flight (L) and the answers per second (X), each averaged over the last
        periods (half the weight on the last). By Little's law a worker's mean latency is L / X; the workers
        share one latency when each holds X * (sum L / sum X) requests (X of a worker with less than one request
        in flight: the others' mean). A worker above its share by
        :data:`_MIN_EXCESS` requests and :data:`_MIN_RATIO` closes the difference: with equal speeds, the excess
        over the mean; a worker that answers more slowly (less CPU, longer requests) holds fewer."""
        self._step(0)
        now = self._clock()
        elapsed = max(now - self._since, 1e-9)
        load, rate = self._area / elapsed, self._answered / elapsed
        first = self._ticks == 0
        self._ticks += 1
        self.load = load if first else (self.load + load) / 2
        self.rate = rate if first else (self.rate + rate) / 2
        self._area, self._answered, self._since = 0.0, 0, now
        self.board.publish(self.load, self.rate)
        loads = self.board.loads()
        # A worker with hardly a request in flight answers as fast as it is asked: its speed is unknown, and is
        # taken to be the loaded workers' mean (so that an idle worker gets its share).
        known = [rate for held, rate in loads if held >= 1 and rate > 0]
        if len(loads) < 2 or not known:
            self.to_close = 0
            return
        typical = sum(known) / len(known)

        def speed(held: float, rate: float) -> float:
            return rate if held >= 1 and rate > 0 else typical

        total_load, total_speed = sum(held for held, _ in loads), sum(speed(*load) for load in loads)
        share = speed(self.load, self.rate) * total_load / total_speed
        excess = self.load - share
        self.to_close = int(excess) if excess >= _MIN_EXCESS and self.load >= _MIN_RATIO * share else 0

    async def run(self, period: float = PERIOD_S) -> None:
        """Tick every ``period`` seconds until cancelled."""
        while True:
            await asyncio.sleep(period)
            try:
                self.tick()
            except Exception:  # the board is an optimisation: never let it take the worker down
                log.exception("worker load board unavailable; connections are no longer rebalanced")
                return
