"""The concurrency limit of the LLM backends: a bounded waiting line, served round-robin across tenants.

One tenant's backlog must not hold up everyone else's chat. Waiting requests are kept in one line per tenant;
when a slot frees, the waiting tenant admitted least recently goes first (one never admitted, or not for a
long while, first of all; ties by arrival), and within a tenant requests keep their arrival order. So however
long another tenant's backlog, a newly arriving tenant waits for the generations already running plus at most
one more of each other waiting tenant (none at all when it is the least recently served). Each tenant may have
at most ``per_tenant_max`` requests waiting, and the whole line at most ``queue_max``; past either a request is
refused at once with :class:`LLMBusyError` (429, with ``Retry-After``). ``tenant=None`` (a caller outside any
tenant, e.g. background distillation) is one shared bucket of its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator

from service.llm.backend import LLMBusyError

# Admission times remembered (least recently used dropped first): a tenant forgotten this way was admitted
# at least this many admissions ago, so counting it as never admitted cannot let it jump a busier tenant.
_REMEMBERED_TENANTS = 4096


class FairGate:
    """At most ``limit`` holders; up to ``queue_max`` waiters (``per_tenant_max`` per tenant), admitted
    round-robin by tenant (least recently admitted tenant first) and in arrival order within a tenant."""

    def __init__(self, limit: int, queue_max: int, *, per_tenant_max: int | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if queue_max < 0:
            raise ValueError("queue_max must not be negative")
        if per_tenant_max is not None and per_tenant_max < 0:
            raise ValueError("per_tenant_max must not be negative")
        self._limit = limit
        self._queue_max = queue_max
        self._per_tenant_max = queue_max if per_tenant_max is None else per_tenant_max
        self._active = 0
        self._waiting = 0
        # One line per tenant with waiters: (arrival number, future), oldest first. A line is removed when empty.
        self._lines: dict[str | None, collections.deque[tuple[int, asyncio.Future[None]]]] = {}
        self._last_admitted: collections.OrderedDict[str | None, int] = collections.OrderedDict()
        self._arrivals = itertools.count()
        self._admissions = itertools.count()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def queue_max(self) -> int:
        return self._queue_max

    @property
    def per_tenant_max(self) -> int:
        return self._per_tenant_max

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return self._waiting

    def waiting_for(self, tenant: str | None) -> int:
        """Requests of ``tenant`` waiting for a slot."""
        line = self._lines.get(tenant)
        return len(line) if line is not None else 0

    def _admitted(self, tenant: str | None) -> None:
        self._last_admitted[tenant] = next(self._admissions)
        self._last_admitted.move_to_end(tenant)
        while len(self._last_admitted) > _REMEMBERED_TENANTS:
            self._last_admitted.popitem(last=False)

    def _next_tenant(self) -> str | None:
        """The waiting tenant admitted least recently (never: first); ties by its oldest waiter's arrival."""
        return min(self._lines, key=lambda t: (self._last_admitted.get(t, -1), self._lines[t][0][0]))

    async def acquire(self, tenant: str | None = None) -> None:
        """Wait for a slot for ``tenant``; raises :class:`LLMBusyError` when its line or the whole line is full."""
        if self._active < self._limit and not self._waiting:
            self._active += 1
            self._admitted(tenant)
            return
        if self._waiting >= self._queue_max:
            raise LLMBusyError("the model is busy: too many requests are waiting; retry shortly")
        if self.waiting_for(tenant) >= self._per_tenant_max:
            raise LLMBusyError(
                "the model is busy: this tenant already has the most requests waiting it may have; retry shortly"
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (next(self._arrivals), future)
        self._lines.setdefault(tenant, collections.deque()).append(entry)
        self._waiting += 1
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # admitted and cancelled at once: pass the slot on
            else:
                self._forget(tenant, entry)
            raise

    def _forget(self, tenant: str | None, entry: tuple[int, asyncio.Future[None]]) -> None:
        line = self._lines.get(tenant)
        if line is None:
            return
        with contextlib.suppress(ValueError):
            line.remove(entry)
            self._waiting -= 1
        if not line:
            del self._lines[tenant]

    def release(self) -> None:
        """Free one slot: it passes straight to the next waiter (round-robin by tenant), if any."""
        while self._lines:
            tenant = self._next_tenant()
            line = self._lines[tenant]
            _, future = line.popleft()
            self._waiting -= 1
            if not line:
                del self._lines[tenant]
            if not future.done():  # a waiter cancelled a moment ago is still in its line: skip it
                self._admitted(tenant)
                future.set_result(None)
                return
        self._active -= 1

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str | None = None) -> AsyncIterator[None]:
        await self.acquire(tenant)
        try:
            yield
        finally:
            self.release()
