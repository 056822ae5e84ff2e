"""Per-memory KV store: byte-bounded LRU, invalidation, and the sealed on-disk tier."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from memory_store.crypto import generate_key
from service.llm.kv import KVEngine, KVRequest, KVSettings, MemoryText
from service.llm.kv.memory_cache import EncodedMemory, EncodingContext, EncryptedKVDisk, MemoryKey, MemoryKVCache
from tests.kv.conftest import tiny_model

CTX = EncodingContext("model-a", "prefix-1", "float32")


def _mem(tokens: int = 4, seed: int = 0) -> EncodedMemory:
    g = torch.Generator().manual_seed(seed)
    return EncodedMemory(
        keys=torch.randn(2, 2, tokens, 8, generator=g),
        values=torch.randn(2, 2, tokens, 8, generator=g),
        token_ids=tuple(range(100, 100 + tokens)),
        start=7,
    )


def _key(mid: str, subject: str = "s1") -> MemoryKey:
    return MemoryKey("t1", subject, mid)


def test_lru_is_bounded_by_bytes() -> None:
    one = _mem().nbytes
    cache = MemoryKVCache(max_bytes=3 * one)
    for i in range(5):
        cache.put(_key(f"m{i}"), "v", CTX, _mem(seed=i))
        assert cache.bytes_used <= 3 * one
    assert len(cache) == 3 and cache.stats.evictions == 2
    assert cache.get(_key("m0"), "v", CTX) is None
    assert cache.get(_key("m2"), "v", CTX) is not None  # touch m2: m3 is now the oldest
    cache.put(_key("m5"), "v", CTX, _mem())
    assert cache.get(_key("m3"), "v", CTX) is None
    assert cache.get(_key("m2"), "v", CTX) is not None
    big = MemoryKVCache(max_bytes=one - 1)
    big.put(_key("m0"), "v", CTX, _mem())  # larger than the whole budget: not kept
    assert len(big) == 0 and big.bytes_used == 0


def test_version_context_and_invalidation() -> None:
    cache = MemoryKVCache(max_bytes=1 << 20)
    cache.put(_key("m1"), "v1", CTX, _mem())
    cache.put(_key("m2"), "v1", CTX, _mem())
    cache.put(_key("m3", subject="s2"), "v1", CTX, _mem())
    assert cache.get(_key("m1"), "v2", CTX) is None  # updated memory
    assert cache.get(_key("m1"), "v1", EncodingContext("model-a", "prefix-2", "float32")) is None  # new prefix
    assert cache.get(_key("m1"), "v1", CTX) is not None
    cache.invalidate("t1", "s1", "m1")
    assert cache.get(_key("m1"), "v1", CTX) is None
    cache.forget_subject("t1", "s1")
    assert cache.get(_key("m2"), "v1", CTX) is None
    assert cache.get(_key("m3", subject="s2"), "v1", CTX) is not None
    cache.set_model("model-a")
    assert len(cache) == 1
    cache.set_model("model-b")  # model change drops everything
    assert len(cache) == 0 and cache.bytes_used == 0


def test_a_request_in_flight_cannot_refill_a_forgotten_subjects_entries(tmp_path: Path) -> None:
    cache = MemoryKVCache(max_bytes=1 << 20, disk=EncryptedKVDisk(tmp_path))
    data_key = generate_key()
    cache.put(_key("m1"), "v1", CTX, _mem(), data_key)
    cache.forget_subject("t1", "s1")
    cache.put(_key("m2"), "v1", CTX, _mem(), data_key)  # encoded before the forget, stored after it
    assert cache.get(_key("m2"), "v1", CTX, data_key) is None and len(cache) == 0
    assert not [p for p in tmp_path.rglob("*.kv")], "nothing of the forgotten subject on disk"
    cache.put(_key("m3", subject="s2"), "v1", CTX, _mem())  # other subjects are cached as before
    assert cache.get(_key("m3", subject="s2"), "v1", CTX) is not None


def test_disk_tier_is_sealed_and_bound_to_its_owner(tmp_path: Path) -> None:
    disk = EncryptedKVDisk(tmp_path)
    key = generate_key()
    mem = _mem(tokens=6)
    disk.put(_key("m1"), "v1", CTX, mem, key)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1
    blob = files[0].read_bytes()
    # No plaintext: neither the tensors' bytes nor the ids appear on disk, and the file is private.
    assert mem.keys[0, 0, 0].numpy().tobytes() not in blob
    assert b"m1" not in files[0].as_posix().encode() and b"s1" not in files[0].as_posix().encode()
    assert b"safetensors" not in blob and b"keys" not in blob
    assert stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600
    back = disk.get(_key("m1"), "v1", CTX, key)
    assert back is not None and back.start == 7 and back.token_ids == mem.token_ids
    assert torch.equal(back.keys, mem.keys) and torch.equal(back.values, mem.values)
    # Wrong key, wrong version or a different model: authentication fails, the entry is a miss and is dropped.
    assert disk.get(_key("m1"), "v1", CTX, generate_key()) is None
    assert not files[0].exists()
    disk.put(_key("m1"), "v1", CTX, mem, key)
    assert disk.get(_key("m1"), "v2", CTX, key) is None
    # A blob moved to another memory's slot fails too (the memory id is bound as associated data).
    disk.put(_key("m1"), "v1", CTX, mem, key)
    src = next(p for p in tmp_path.rglob("*.kv"))
    disk.put(_key("m2"), "v1", CTX, _mem(seed=5), key)
    dst = next(p for p in tmp_path.rglob("*.kv") if p != src)
    dst.write_bytes(src.read_bytes())
    assert disk.get(_key("m2"), "v1", CTX, key) is None


def test_disk_invalidation_and_model_change(tmp_path: Path) -> None:
    key = generate_key()
    cache = MemoryKVCache(max_bytes=1 << 20, disk=EncryptedKVDisk(tmp_path))
    cache.set_model("model-a")
    for mid in ("m1", "m2"):
        cache.put(_key(mid), "v1", CTX, _mem(), data_key=key)
    cache.put(_key("m3", subject="s2"), "v1", CTX, _mem(), data_key=key)
    cache.clear()  # RAM gone: served from disk
    assert cache.get(_key("m1"), "v1", CTX, key) is not None and cache.stats.disk_hits == 1
    assert cache.get(_key("m1"), "v1", CTX) is not None  # now in RAM again
    cache.invalidate("t1", "s1", "m1")
    cache.clear()
    assert cache.get(_key("m1"), "v1", CTX, key) is None
    cache.forget_subject("t1", "s1")
    assert cache.get(_key("m2"), "v1", CTX, key) is None
    assert cache.get(_key("m3", subject="s2"), "v1", CTX, key) is not None
    cache.set_model("model-b")
    assert not any(tmp_path.rglob("*.kv"))


def test_engine_uses_the_disk_tier_only_with_a_data_key(tmp_path: Path) -> None:
    loaded = tiny_model("llama")
    settings = KVSettings(disk_dir=tmp_path)
    mems = [MemoryText("m1", "- I keep bees.\n", "1"), MemoryText("m2", "- I was born in Oslo.\n", "1")]
    prefix = "<|im_start|>system\nFacts:\n"
    suffix = "<|im_end|>\n<|im_start|>user\nWhere was I born?<|im_end|>\n<|im_start|>assistant\n"
    engine = KVEngine(loaded, settings)
    engine.generate(KVRequest("t", "s", prefix, mems, suffix), layout="contiguous", max_new_tokens=2)
    assert not any(tmp_path.rglob("*.kv"))  # no key, no disk
    key = generate_key()
    req = KVRequest("t", "s", prefix, mems, suffix, data_key=key)
    first = engine.generate(req, layout="contiguous", max_new_tokens=4, return_first_logits=True)
    assert first.encoded_memories == 0  # RAM hits
    engine.cache.clear()
    engine.generate(req, layout="contiguous", max_new_tokens=1)  # re-encoded, now written sealed
    assert len(list(tmp_path.rglob("*.kv"))) == 2
    restarted = KVEngine(loaded, settings)  # a new process: empty RAM, same model
    again = restarted.generate(req, layout="contiguous", max_new_tokens=4, return_first_logits=True)
    assert again.encoded_memories == 0 and restarted.cache.stats.disk_hits == 2
    assert again.first_logits is not None and first.first_logits is not None
    assert torch.equal(again.first_logits, first.first_logits) and again.text == first.text
    other = KVEngine(tiny_model("llama", seed=9), settings)  # model change wipes the old model's files
    assert not any(tmp_path.rglob("*.kv"))
    assert other.fingerprint != restarted.fingerprint


@pytest.mark.parametrize("ram", [0])
def test_ram_tier_can_be_disabled(ram: int) -> None:
    engine = KVEngine(tiny_model("llama"), KVSettings(ram_max_bytes=ram))
    req = KVRequest("t", "s", "<|im_start|>system\nF:\n", [MemoryText("m", "- x\n", "1")], "<|im_end|>\n")
    assert engine.generate(req, layout="shared", max_new_tokens=1).encoded_memories == 1
    assert engine.generate(req, layout="shared", max_new_tokens=1).encoded_memories == 1
