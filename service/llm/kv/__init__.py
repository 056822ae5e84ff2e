"""Attention-level memory injection: retrieved memories enter the model as precomputed keys/values.

Entry point: ``KVEngine`` (see ``engine.py`` for how the chat loop calls it). ``rotary`` re-rotates cached
keys, ``memory_cache`` stores encoded memories (RAM LRU + sealed disk tier), ``assemble`` builds the per-request
cache in the ``contiguous`` or ``shared`` layout.
"""

from service.llm.kv.engine import (
    KVContextTooLongError,
    KVEngine,
    KVRequest,
    KVResult,
    KVStream,
    KVTimings,
    MemoryText,
    split_chat_prompt,
)
from service.llm.kv.memory_cache import EncodedMemory, EncryptedKVDisk, MemoryKVCache
from service.llm.kv.settings import KVSettings, Layout

__all__ = [
    "EncodedMemory",
    "EncryptedKVDisk",
    "KVContextTooLongError",
    "KVEngine",
    "KVRequest",
    "KVResult",
    "KVSettings",
    "KVStream",
    "KVTimings",
    "Layout",
    "MemoryKVCache",
    "MemoryText",
    "split_chat_prompt",
]
