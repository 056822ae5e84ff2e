"""Forgets run by other processes, applied to this one's RAM.

A forget is final everywhere through the database (tombstones checked by every write). What a process holds in
RAM of a subject — keys/values the KV engine derived from its memories — is dropped at once only in the process
that ran the forget. :class:`ForgetFollower` reads new tombstones every few seconds and drops the same entries
here: a tombstone names its subject only by keyed digest, so it is matched against the digests of the subjects
this process holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from memory_store import MemoryStore
from memory_store.models import utcnow

log = logging.getLogger("sealmem.chat")
# Tombstones are re-read this far back: one stamped (by another process's clock, or before its commit became
# visible) a little before the newest already seen is still found.
_OVERLAP = timedelta(seconds=60)


class ForgetFollower:
    """``held()`` lists the (tenant id, subject) this process holds in RAM; ``forget(tenant_id, subject)`` drops
    one. :meth:`poll` applies every tombstone it has not seen; :meth:`run` polls every ``interval`` seconds."""

    def __init__(
        self,
        store: MemoryStore,
        held: Callable[[], set[tuple[str, str]]],
        forget: Callable[[str, str], None],
        *,
        interval: float = 5.0,
    ) -> None:
        self._store = store
        self._held = held
        self._forget = forget
        self._interval = interval
        self._since: datetime = utcnow()
        self._seen: dict[int, datetime] = {}

    def poll(self) -> int:
        """Apply the tombstones not seen yet; returns how many held subjects were dropped."""
        stones = [s for s in self._store.tombstones_since(self._since - _OVERLAP) if s[0] not in self._seen]
        if not stones:
            return 0
        for stone_id, _, _, at in stones:
            self._seen[stone_id] = at
            self._since = max(self._since, at)
        self._seen = {i: at for i, at in self._seen.items() if at > self._since - 2 * _OVERLAP}
        forgotten = {(tenant_id, digest) for _, tenant_id, digest, _ in stones}
        dropped = 0
        for tenant_id, subject in self._held():
            if (tenant_id, self._store.subject_digest(tenant_id, subject)) in forgotten:
                self._forget(tenant_id, subject)
                dropped += 1
        if dropped:
            log.info("dropped what this process held of %d subjects forgotten elsewhere", dropped)
        return dropped

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            with contextlib.suppress(Exception):  # a failed poll is retried at the next interval
                await asyncio.to_thread(self.poll)
