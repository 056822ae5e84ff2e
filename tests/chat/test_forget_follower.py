"""A forget run by another process drops what this process's KV cache holds of the subject (real store and
cache; the other process is a second store on the same database)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from memory_store import MemoryStore, NewMemory
from service.chat.forgets import ForgetFollower
from service.llm.kv.memory_cache import EncodedMemory, EncodingContext, MemoryKey, MemoryKVCache

CTX = EncodingContext("model-a", "prefix-1", "float32")


def _mem() -> EncodedMemory:
    return EncodedMemory(keys=torch.zeros(2, 2, 3, 8), values=torch.zeros(2, 2, 3, 8), token_ids=(1, 2, 3), start=7)


def test_tombstones_written_elsewhere_clear_this_process_kv_cache(
    open_store: Callable[..., MemoryStore], store: MemoryStore, tenant_id: str
) -> None:
    other = open_store()  # another worker process or replica on the same database
    for subject in ("ana", "bob"):
        store.add(tenant_id=tenant_id, item=NewMemory(subject=subject, text="x"))
    cache = MemoryKVCache(max_bytes=1 << 20)
    for subject in ("ana", "bob"):
        cache.put(MemoryKey(tenant_id, subject, "m1"), "v1", CTX, _mem())
    follower = ForgetFollower(store, cache.subjects, cache.forget_subject)
    assert follower.poll() == 0
    other.forget_subject(tenant_id=tenant_id, subject="ana")
    assert follower.poll() == 1
    assert cache.subjects() == {(tenant_id, "bob")}
    assert follower.poll() == 0  # each tombstone once
    cache.put(MemoryKey(tenant_id, "ana", "m2"), "v1", CTX, _mem())  # an in-flight request of the forgotten one
    assert cache.subjects() == {(tenant_id, "bob")}
