"""Periodic upkeep of an open store in one daemon thread: persist access times and the indexes due, and delete
memories whose ``expires_at`` has passed (they are already hidden from every read; this removes them)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from memory_store.store import MemoryStore

log = logging.getLogger("sealmem.maintenance")


class Maintenance:
    """Runs ``store.persist(only_due=True)`` every ``persist_every`` seconds and ``store.purge_all_expired()``
    (then each of ``also_purge``) every ``purge_every`` seconds until stopped; a failure is logged and retried at
    the next turn. Indexes changed too little to be due are saved when the store closes."""

    def __init__(
        self,
        store: MemoryStore,
        *,
        persist_every: float,
        purge_every: float,
        clock: Callable[[], float] = time.monotonic,
        also_purge: Sequence[Callable[[], object]] = (),
    ) -> None:
        self._store = store
        self._also_purge = tuple(also_purge)
        self._persist_every = persist_every
        self._purge_every = purge_every
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sealmem-maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        next_persist = self._clock() + self._persist_every
        next_purge = self._clock() + self._purge_every
        while not self._stop.wait(max(0.0, min(next_persist, next_purge) - self._clock())):
            now = self._clock()
            if now >= next_purge:
                next_purge = now + self._purge_every
                self._step("purge of expired memories", self._purge)
            if now >= next_persist:
                next_persist = now + self._persist_every
                self._step("persist", lambda: self._store.persist(only_due=True))

    def _purge(self) -> None:
        deleted = self._store.purge_all_expired()
        if deleted:
            log.info("deleted %d expired memories", deleted)
        for purge in self._also_purge:  # e.g. console sessions past their lifetime or idle timeout
            purge()

    @staticmethod
    def _step(name: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception:
            log.exception("periodic %s failed; retrying at the next turn", name)
