"""Child process of the audit crash proof: changes memories, each with its audit record, until it is killed.

``argv``: store settings JSON (the master key arrives in ``SEALMEM_MASTER_KEY``), tenant id, seed, and a
"die at" step: ``random`` (the parent kills it whenever) or ``N:before``/``N:after`` (SIGKILL itself inside the
N-th audit append, before or after the record is written, while the change's transaction is still open).
Prints one line per committed change, so the parent knows how far it got.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from typing import Any

import memory_store.store as store_module
from memory_store import HashingEmbedder, MasterKey, MemoryStore, NewMemory, NotFoundError, StoreSettings
from memory_store.audit import AuditEvent
from memory_store.crypto import decode_key

WHO = AuditEvent(credential_id="crash-writer", role="app", action="memory.change")


def _die_inside_appends(step: int, when: str) -> None:
    real = store_module.append_all_in
    count = 0

    def append_all_in(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        if count == step and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        entry = real(*args, **kwargs)
        if count == step and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return entry

    store_module.append_all_in = append_all_in  # type: ignore[assignment]


def main() -> None:
    settings = StoreSettings.model_validate_json(sys.argv[1])
    settings = settings.model_copy(update={"master_key": StoreSettings().master_key})
    tenant_id, rng, die_at = sys.argv[2], random.Random(int(sys.argv[3])), sys.argv[4]
    if die_at != "random":
        step, when = die_at.split(":")
        _die_inside_appends(int(step), when)
    assert settings.master_key is not None
    store = MemoryStore.open(
        settings,
        master_key=MasterKey(decode_key(settings.master_key.get_secret_value())),
        embedder=HashingEmbedder(384),
    )
    live: list[str] = []
    for n in range(10_000):
        subject = f"s{rng.randrange(6)}"
        op = rng.random()
        try:
            if op < 0.5 or not live:
                records = store.add_batch(
                    tenant_id=tenant_id,
                    items=[
                        NewMemory(subject=subject, text=f"m{n}"),
                        NewMemory(subject=f"s{rng.randrange(6)}", text=f"n{n}"),
                    ],
                    audit=WHO,
                )
                live.extend(r.id for r in records)
            elif op < 0.7:
                store.update(tenant_id=tenant_id, memory_id=rng.choice(live), text=f"u{n}", audit=WHO)
            elif op < 0.9:
                live.remove(gone := rng.choice(live))
                store.delete(tenant_id=tenant_id, memory_id=gone, audit=WHO)
            else:
                store.forget_subject(tenant_id=tenant_id, subject=subject, audit=WHO)
        except NotFoundError:  # a memory of a subject forgotten earlier
            pass
        print(n, flush=True)


if __name__ == "__main__":
    main()
