"""Bulk adds: many batches stored one after another while the next ones are screened and embedded.

:meth:`MemoryStore.add_batch` embeds its batch and then writes it, so one core embeds while the others wait and
the embedding waits for the write. :func:`add_in_batches` keeps every core busy for an import: batch ``k + 1`` is
screened and embedded on ``threads`` threads (its texts split between them, so that one part is screened while
another is embedded; the embedder runs each part's forward passes on every core, at most one pass per core at
once: ``embedding_parallel_passes``) while batch ``k`` is written, and each batch is then stored exactly as
``add_batch`` stores it (one transaction, audited, guarded), with what was prepared.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from memory_store.audit import AuditEvent
from memory_store.prepared import PreparedAdd
from memory_store.settings import available_cores
from memory_store.types import MemoryRecord, NewMemory, WriteGuard

if TYPE_CHECKING:
    from memory_store.store import MemoryStore

# Below this many texts per thread a split costs more in forward passes than it gains (and calls this small meet
# in the coalescing embedder, which runs one pass at a time).
MIN_TEXTS_PER_THREAD = 16


def add_in_batches(
    store: MemoryStore,
    *,
    tenant_id: str,
    batches: Iterable[Sequence[NewMemory]],
    actor: str = "system",
    audit: AuditEvent | None = None,
    guard: WriteGuard | None = None,
    threads: int | None = None,
) -> Iterator[list[MemoryRecord]]:
    """Store ``batches`` in order, one atomic :meth:`MemoryStore.add_batch` each, yielding each batch's records
    once it is committed; the next batch is prepared on ``threads`` threads (default: every core) meanwhile.

    A batch that fails (invalid, rejected by the policy, a revoked ``guard``) raises here: the batches before it
    stay stored, none after it is written. Closing the iterator early stops after the batch last yielded."""
    workers = max(1, threads if threads is not None else available_cores())
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sealmem-bulk")
    try:
        pending = iter(batches)
        current = next(pending, None)
        current_parts = _prepare(store, pool, workers, tenant_id, current) if current is not None else []
        while current is not None:
            following = next(pending, None)
            # Queued behind the current batch's parts: its embedding runs while the current batch is written.
            following_parts = _prepare(store, pool, workers, tenant_id, following) if following is not None else []
            prepared = _merged([part.result() for part in current_parts])
            yield store.add_batch(
                tenant_id=tenant_id, items=current, actor=actor, audit=audit, guard=guard, prepared=prepared
            )
            current, current_parts = following, following_parts
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _prepare(
    store: MemoryStore, pool: ThreadPoolExecutor, workers: int, tenant_id: str, items: Sequence[NewMemory]
) -> list[Future[PreparedAdd]]:
    parts = max(1, min(workers, len(items) // MIN_TEXTS_PER_THREAD))
    size = -(-len(items) // parts)  # ceiling: ``parts`` slices cover every item
    return [
        pool.submit(store.prepare_add, tenant_id=tenant_id, items=items[start : start + size])
        for start in range(0, len(items), size)
    ]


def _merged(parts: list[PreparedAdd]) -> PreparedAdd | None:
    """One batch's prepared parts as one; None (the add screens and embeds again) if the tenant's policy changed
    between them."""
    if not parts:
        return None
    first = parts[0]
    if any(part.policy.revision != first.policy.revision for part in parts):
        return None
    return PreparedAdd(
        tenant_id=first.tenant_id,
        texts=tuple(text for part in parts for text in part.texts),
        policy=first.policy,
        screened=tuple(screen for part in parts for screen in part.screened),
        vectors=np.concatenate([part.vectors for part in parts]) if len(parts) > 1 else first.vectors,
    )
