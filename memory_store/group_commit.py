"""Group commit: concurrent writes to one tenant committed together, one transaction for many callers.

Every add takes its tenant's write lock (the change-sequence row) from its sequence bump to its commit, so adds to
one tenant commit one at a time, whichever process they run in. Under load the holder also waits for the CPU and
the interpreter between its statements: in the pgvector wrk mix (70/30 search/add, 64 connections, 2 vCPUs) the
lock was held 21 ms per add (p99 56 ms; 5 ms of database time one request at a time) and busy 85 % of the time,
so adds queued on it (wait p50 23 ms, p99 155 ms) and made the mix's latency tail. :class:`GroupCommit` lets the
adds that arrive while one of theirs is committing wait for the next transaction instead, which commits them all:
the lock is taken once, and the sequence bump, the guard reads, the audit chain's head and the commit are paid
once for the group.

It never waits for company: a write that finds none of its key committing commits at once, alone, as before. Only
writes that would have queued on the lock anyway are grouped. The caller of a group's next transaction is the
first write queued (woken to lead it), so each thread runs only its own or its group's transaction.

A group whose transaction fails is retried write by write, each on its own caller's thread: one write's failure
(a forgotten subject, a revoked key, a race the caller retries) is never another's, and each caller sees exactly
the error its write would have had alone.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P")
R = TypeVar("R")

_QUEUED, _LEADS, _ALONE, _DONE = "queued", "leads", "alone", "done"


@dataclass(eq=False)
class _Write(Generic[P, R]):
    part: P
    wake: threading.Event = field(default_factory=threading.Event)
    state: str = _QUEUED  # changed by the thread that wakes it, before the wake-up
    result: R | None = None
    error: BaseException | None = None


class GroupCommit(Generic[P, R]):
    """Runs ``commit(key, parts) -> results`` (one result per part, in order) for the writes of one key that
    arrive while a commit for that key runs, together, up to ``max_size`` (by ``size(part)``) per transaction."""

    def __init__(
        self,
        commit: Callable[[Hashable, Sequence[P]], Sequence[R]],
        *,
        size: Callable[[P], int] = lambda part: 1,
        max_size: int = 256,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._commit = commit
        self._size = size
        self._max_size = max_size
        self._lock = threading.Lock()
        self._waiting: dict[Hashable, deque[_Write[P, R]]] = {}  # a key is here while a commit for it runs
        self.transactions = 0  # commits run (grouped or alone)
        self.writes = 0  # writes they committed or tried

    def queued(self, key: Hashable | None = None) -> int:
        """Writes of ``key`` (of every key when None) waiting for the next transaction."""
        with self._lock:
            if key is None:
                return sum(len(waiting) for waiting in self._waiting.values())
            return len(self._waiting.get(key, ()))

    def run(self, key: Hashable, part: P) -> R:
        """Commit ``part``, alone or with the writes of ``key`` queued beside it; returns its result or raises
        what its commit raised."""
        write: _Write[P, R] = _Write(part)
        with self._lock:
            waiting = self._waiting.get(key)
            if waiting is None:
                self._waiting[key] = deque()
                write.state = _LEADS
            else:
                waiting.append(write)
        if write.state != _LEADS:
            write.wake.wait()
        if write.state == _LEADS:
            self._lead(key, write)
        if write.state == _ALONE:
            self._count(1)
            return self._commit(key, [part])[0]
        if write.error is not None:
            raise write.error
        return write.result  # type: ignore[return-value]

    def _lead(self, key: Hashable, own: _Write[P, R]) -> None:
        """Commit ``own`` and the writes queued behind it, then hand the key to the next queued write (woken to
        lead the next transaction), or release it."""
        with self._lock:
            waiting = self._waiting[key]
            group, size = [own], self._size(own.part)
            while waiting and size + self._size(waiting[0].part) <= self._max_size:
                size += self._size(waiting[0].part)
                group.append(waiting.popleft())
        self._run(key, group)
        with self._lock:
            heir = waiting.popleft() if waiting else None
            if heir is None:
                del self._waiting[key]
            else:
                heir.state = _LEADS
        if heir is not None:
            heir.wake.set()

    def _run(self, key: Hashable, group: list[_Write[P, R]]) -> None:
        self._count(len(group))
        try:
            results = list(self._commit(key, [write.part for write in group]))
            if len(results) != len(group):
                raise RuntimeError(f"a group commit returned {len(results)} results for {len(group)} writes")
        except BaseException as exc:
            for write in group:
                if len(group) == 1:
                    write.error, write.state = exc, _DONE
                else:
                    write.state = _ALONE  # each again on its own, on its own thread
        else:
            for write, result in zip(group, results, strict=True):
                write.result, write.state = result, _DONE
        for write in group[1:]:
            write.wake.set()

    def _count(self, writes: int) -> None:
        with self._lock:
            self.transactions += 1
            self.writes += writes
