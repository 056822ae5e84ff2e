"""Per-memory key/value store: a RAM LRU bounded by bytes, and an optional sealed on-disk tier.

Keys and values reveal the memory's content, so they are never written in plaintext: a disk entry is a
safetensors blob sealed with AES-256-GCM under the subject's data key, with associated data binding the tenant,
subject, memory id, memory version and the encoding context (model fingerprint, prefix fingerprint, dtype). A
blob copied to another memory, subject, model or version fails authentication and is treated as a miss.

Entries are invalidated on update (a new ``version`` misses), delete / forget (``invalidate``,
``forget_subject``) and model change (``set_model`` drops every other model's entries, RAM and disk).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from memory_store.crypto import associated_data, open_sealed, seal
from memory_store.errors import DecryptionError

log = logging.getLogger("sealmem.llm.kv")


@dataclass(frozen=True, eq=False)
class EncodedMemory:
    """One memory's post-RoPE keys and values, encoded after the shared prefix.

    ``keys``/``values``: ``[layers, kv_heads, tokens, head_dim]``; the keys carry RoPE positions
    ``start .. start + tokens - 1`` (``start`` = the prefix length it was encoded after). Never mutated.
    """

    keys: torch.Tensor
    values: torch.Tensor
    token_ids: tuple[int, ...]
    start: int

    @property
    def tokens(self) -> int:
        return int(self.keys.shape[2])

    @property
    def nbytes(self) -> int:
        return int(self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size())


@dataclass(frozen=True)
class MemoryKey:
    tenant_id: str
    subject: str  # the subject's name (``KVRequest.subject``); ``forget_subject`` matches on it
    memory_id: str


@dataclass(frozen=True)
class EncodingContext:
    """What an encoding depends on besides the memory text: the model, the shared prefix and the stored dtype."""

    model_fingerprint: str
    prefix_fingerprint: str
    dtype: str

    @property
    def tag(self) -> str:
        return f"{self.model_fingerprint}/{self.prefix_fingerprint}/{self.dtype}"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    disk_hits: int = 0
    evictions: int = 0
    invalidations: int = 0


@dataclass
class _Entry:
    version: str
    context_tag: str
    memory: EncodedMemory


def _h(*parts: object) -> str:
    return hashlib.sha256(associated_data("kv-name", *parts)).hexdigest()[:32]


class EncryptedKVDisk:
    """Sealed on-disk tier: ``root/<model>/<subject>/<memory>.kv``, names are hashes (no ids in the clear)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _subject_dir(self, model_fp: str, tenant_id: str, subject: str) -> Path:
        return self.root / _h("model", model_fp) / _h("subject", tenant_id, subject)

    def _path(self, key: MemoryKey, model_fp: str) -> Path:
        return self._subject_dir(model_fp, key.tenant_id, key.subject) / (_h("memory", key.memory_id) + ".kv")

    @staticmethod
    def _ad(key: MemoryKey, version: str, context: EncodingContext) -> bytes:
        return associated_data(
            "kv-cache",
            key.tenant_id,
            key.subject,
            key.memory_id,
            version,
            context.model_fingerprint,
            context.prefix_fingerprint,
            context.dtype,
        )

    def put(
        self, key: MemoryKey, version: str, context: EncodingContext, memory: EncodedMemory, data_key: bytes
    ) -> None:
        tensors = {
            "keys": memory.keys.detach().to("cpu").contiguous(),
            "values": memory.values.detach().to("cpu").contiguous(),
            "token_ids": torch.tensor(memory.token_ids, dtype=torch.int64),
        }
        plaintext = st_save(tensors, metadata={"start": str(memory.start)})
        blob = seal(data_key, plaintext, self._ad(key, version, context))
        path = self._path(key, context.model_fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
            os.replace(tmp, path)
        except OSError as exc:  # an optimisation: never fail a request over it
            log.warning("could not write a KV cache entry: %s", exc)
            tmp.unlink(missing_ok=True)

    def get(self, key: MemoryKey, version: str, context: EncodingContext, data_key: bytes) -> EncodedMemory | None:
        path = self._path(key, context.model_fingerprint)
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        try:
            plaintext = open_sealed(data_key, blob, self._ad(key, version, context))
        except DecryptionError:
            # Stale version/context, another subject's key, or tampering: never use it, and drop it.
            path.unlink(missing_ok=True)
            return None
        tensors = st_load(plaintext)
        start = _read_start(plaintext)
        return EncodedMemory(
            keys=tensors["keys"],
            values=tensors["values"],
            token_ids=tuple(int(t) for t in tensors["token_ids"].tolist()),
            start=start,
        )

    def delete(self, key: MemoryKey) -> None:
        if not self.root.is_dir():
            return
        for model_dir in self.root.iterdir():
            sub = model_dir / _h("subject", key.tenant_id, key.subject) / (_h("memory", key.memory_id) + ".kv")
            sub.unlink(missing_ok=True)

    def delete_subject(self, tenant_id: str, subject: str) -> None:
        if not self.root.is_dir():
            return
        for model_dir in self.root.iterdir():
            shutil.rmtree(model_dir / _h("subject", tenant_id, subject), ignore_errors=True)

    def keep_only_model(self, model_fp: str) -> None:
        if not self.root.is_dir():
            return
        keep = _h("model", model_fp)
        for model_dir in self.root.iterdir():
            if model_dir.name != keep:
                shutil.rmtree(model_dir, ignore_errors=True)


def _read_start(safetensors_bytes: bytes) -> int:
    """The ``start`` metadata field of a safetensors blob (8-byte little-endian header length, then JSON)."""
    import json

    n = int.from_bytes(safetensors_bytes[:8], "little")
    header = json.loads(safetensors_bytes[8 : 8 + n])
    return int(header["__metadata__"]["start"])


# Seconds after a forget during which nothing is cached for the subject: as long as the store keeps tombstones
# (a request older than that cannot write either), so no request that began before the forget, however long it
# waited in the generation queue, can refill the cache.
FORGET_QUARANTINE_S = 86_400.0


@dataclass
class MemoryKVCache:
    """Thread-safe RAM LRU of encoded memories bounded by ``max_bytes``, over an optional sealed disk tier."""

    max_bytes: int
    disk: EncryptedKVDisk | None = None
    model_fingerprint: str | None = None
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self._entries: OrderedDict[MemoryKey, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()
        # Subjects forgotten recently (monotonic time): a request that was encoding their memories when the
        # forget came must not put the result back, so nothing is cached for them for a while.
        self._forgotten: dict[tuple[str, str], float] = {}

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def subjects(self) -> set[tuple[str, str]]:
        """(tenant id, subject) of every entry held in RAM."""
        with self._lock:
            return {(key.tenant_id, key.subject) for key in self._entries}

    def set_model(self, model_fingerprint: str) -> None:
        """Bind the cache to a model; a different model drops every entry of the previous one (RAM and disk)."""
        with self._lock:
            # (RAM entries can never be served to another model - the context tag holds the model fingerprint -
            # so this is about reclaiming memory; an unbound cache just adopts the model.)
            if self.model_fingerprint not in (None, model_fingerprint):
                self._entries.clear()
                self._bytes = 0
            self.model_fingerprint = model_fingerprint
            if self.disk is not None:
                self.disk.keep_only_model(model_fingerprint)

    def get(
        self, key: MemoryKey, version: str, context: EncodingContext, data_key: bytes | None = None
    ) -> EncodedMemory | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.version == version and entry.context_tag == context.tag:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return entry.memory
        if self.disk is not None and data_key is not None:
            memory = self.disk.get(key, version, context, data_key)
            if memory is not None:
                with self._lock:
                    self.stats.hits += 1
                    self.stats.disk_hits += 1
                    self._store(key, _Entry(version, context.tag, memory))
                return memory
        with self._lock:
            self.stats.misses += 1
        return None

    def put(
        self,
        key: MemoryKey,
        version: str,
        context: EncodingContext,
        memory: EncodedMemory,
        data_key: bytes | None = None,
    ) -> None:
        with self._lock:
            forgotten = self._forgotten.get((key.tenant_id, key.subject))
            if forgotten is not None and time.monotonic() - forgotten < FORGET_QUARANTINE_S:
                return  # an in-flight request of a forgotten subject: caching is only an optimisation
            self._store(key, _Entry(version, context.tag, memory))
        if self.disk is not None and data_key is not None:
            self.disk.put(key, version, context, memory, data_key)

    def _store(self, key: MemoryKey, entry: _Entry) -> None:
        self._drop(key)
        size = entry.memory.nbytes
        if size > self.max_bytes:
            return
        self._entries[key] = entry
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.memory.nbytes
            self.stats.evictions += 1

    def _drop(self, key: MemoryKey) -> bool:
        old = self._entries.pop(key, None)
        if old is None:
            return False
        self._bytes -= old.memory.nbytes
        return True

    def invalidate(self, tenant_id: str, subject: str, memory_id: str) -> None:
        """A memory was updated or deleted: drop its entries (RAM and disk)."""
        key = MemoryKey(tenant_id, subject, memory_id)
        with self._lock:
            if self._drop(key):
                self.stats.invalidations += 1
        if self.disk is not None:
            self.disk.delete(key)

    def forget_subject(self, tenant_id: str, subject: str) -> None:
        """A subject was forgotten: drop all of its entries (RAM and disk), and cache nothing for it for
        :data:`FORGET_QUARANTINE_S` (longer than any generation may run), so in-flight requests cannot refill it."""
        with self._lock:
            now = time.monotonic()
            self._forgotten = {k: at for k, at in self._forgotten.items() if now - at < FORGET_QUARANTINE_S}
            self._forgotten[(tenant_id, subject)] = now
            for key in [k for k in self._entries if k.tenant_id == tenant_id and k.subject == subject]:
                self._drop(key)
                self.stats.invalidations += 1
        if self.disk is not None:
            self.disk.delete_subject(tenant_id, subject)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
