"""The store work of searches and adds admitted oldest request first, across the worker processes of one server.

Every worker started the store work of all its clients' requests at once (32 each at 64 connections), and the
requests overtook one another at each stage they pass through (the request threads, the embedding passes, the
tenant's commit), so requests that arrived together left at very different times. Timed stage by stage in the 70/30
pgvector mix, the requests that reached one worker in the same quarter second took up to 1.4 times their mean (p99),
and in some seconds one worker's mean was 1.5 times the other's. Here a search or an add, once its text is
screened and embedded (:mod:`service.ahead`, whose coalesced passes still see every request that waits), waits on
the event loop until the workers together work on fewer than ``per_worker`` such requests each and no request that
reached the server earlier is waiting, on any worker; then it runs its store call. Requests delayed on the way (a
late embedding pass, an authentication behind others) catch up here, and the requests of one moment end together
(README, "Store work admitted oldest first").

Each worker publishes on the workers' board (:class:`service.balance.WorkerBoard`) how many requests it works on and
when its oldest waiting request arrived (``time.monotonic``: one clock for every process of the machine). Waiting
requests are admitted when one of this worker's ends, when one comes to wait, and every :data:`POLL_S` while some
wait (another worker's requests ending frees room here). A worker that stops publishing drops out after
:data:`service.balance.STALE_AFTER_S`. Two workers may admit at the same moment, so the sum can pass the limit by a
request or two: it shapes the order, it is no quota. Without a board (one worker) the order and the limit are this
process's.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from service.balance import WorkerBoard

log = logging.getLogger("sealmem.admission")

POLL_S = 0.004


@dataclass(order=True)
class _Waiter:
    arrived: float
    seq: int
    admitted: asyncio.Future[None] = field(compare=False, repr=False)


class Admission:
    """Admits store work oldest request first (see the module's description). ``per_worker`` 0: no limit, nothing
    waits. ``on_wait`` is told each admitted request's wait in seconds."""

    def __init__(
        self,
        *,
        per_worker: int,
        board: WorkerBoard | None = None,
        poll: float = POLL_S,
        clock: Callable[[], float] = time.monotonic,
        on_wait: Callable[[float], None] = lambda _seconds: None,
    ) -> None:
        self.per_worker = per_worker
        self.board = board
        self._poll = poll
        self._clock = clock
        self._on_wait = on_wait
        self._waiting: list[_Waiter] = []  # a heap: the earliest arrival first
        self._seq = itertools.count()
        self.working = 0  # admitted and not yet finished, in this worker
        self._poller: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiting if not w.admitted.done())

    @asynccontextmanager
    async def turn(self, arrived: float | None = None) -> AsyncIterator[None]:
        """Hold a place among the requests working from this request's turn until the block ends. ``arrived``: when
        the request reached the server (``time.monotonic()``; None: now)."""
        if self.per_worker <= 0:
            yield
            return
        await self._enter(self._clock() if arrived is None else arrived)
        try:
            yield
        finally:
            self._leave()

    async def _enter(self, arrived: float) -> None:
        waiter = _Waiter(arrived, next(self._seq), asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiting, waiter)
        self.admit()
        if not waiter.admitted.done():
            if self.board is not None:  # another worker's requests ending frees room here
                self._keep_polling()
            try:
                await waiter.admitted
            except BaseException:  # cancelled: skipped when its turn comes, or given back if it had come
                if waiter.admitted.done() and not waiter.admitted.cancelled():
                    self._leave()
                else:
                    waiter.admitted.cancel()
                raise
        self._on_wait(max(self._clock() - arrived, 0.0))

    def _leave(self) -> None:
        self.working -= 1
        self.admit()

    def admit(self) -> None:
        """Admit this worker's earliest waiting requests while there is room and no other worker's is earlier."""
        others_working, others_oldest, others = self._others()
        limit = self.per_worker * (others + 1)
        waiting = self._waiting
        while waiting and self.working + others_working < limit:
            head = waiting[0]
            if head.admitted.done():  # cancelled while waiting
                heapq.heappop(waiting)
                continue
            if others_oldest is not None and others_oldest < head.arrived:
                break
            heapq.heappop(waiting)
            self.working += 1
            head.admitted.set_result(None)
        while waiting and waiting[0].admitted.done():
            heapq.heappop(waiting)
        if self.board is not None:
            try:
                self.board.publish_queue(self.working, waiting[0].arrived if waiting else None)
            except (ValueError, OSError) as exc:
                self._lose_board(exc)

    def _others(self) -> tuple[int, float | None, int]:
        if self.board is not None:
            try:
                return self.board.queues()
            except (ValueError, OSError) as exc:  # closed (the worker is stopping) or gone
                self._lose_board(exc)
        return 0, None, 0

    def _lose_board(self, exc: BaseException) -> None:
        """The board is an optimisation: without it, this worker admits in its own order."""
        log.warning("worker board unavailable (%s); store work is admitted in this worker's order only", exc)
        self.board = None

    def _keep_polling(self) -> None:
        poller = self._poller
        if poller is None or poller.done() or poller.get_loop() is not asyncio.get_running_loop():
            self._poller = asyncio.get_running_loop().create_task(self._poll_while_waiting())

    async def _poll_while_waiting(self) -> None:
        while self._waiting:
            await asyncio.sleep(self._poll)
            self.admit()
