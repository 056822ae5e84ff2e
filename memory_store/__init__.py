"""Sealmem storage core: encrypted SQL metadata, FAISS vectors, hybrid retrieval. Never imports FastAPI."""

from memory_store.crypto import MasterKey, generate_key
from memory_store.embedder import Embedder, HashingEmbedder, SentenceTransformerEmbedder
from memory_store.errors import (
    ConfigurationError,
    ConflictError,
    DecryptionError,
    NotFoundError,
    StoreError,
    ValidationError,
    WrongMasterKeyError,
)
from memory_store.fusion import FusionConfig
from memory_store.settings import StoreSettings
from memory_store.store import MemoryStore
from memory_store.types import (
    Filters,
    HistoryEntry,
    MemoryRecord,
    NewMemory,
    Page,
    SearchHit,
    SessionSummary,
    Stats,
    StoreTotals,
)

__all__ = [
    "ConfigurationError",
    "ConflictError",
    "DecryptionError",
    "Embedder",
    "Filters",
    "FusionConfig",
    "HashingEmbedder",
    "HistoryEntry",
    "MasterKey",
    "MemoryRecord",
    "MemoryStore",
    "NewMemory",
    "NotFoundError",
    "Page",
    "SearchHit",
    "SentenceTransformerEmbedder",
    "SessionSummary",
    "Stats",
    "StoreError",
    "StoreSettings",
    "StoreTotals",
    "ValidationError",
    "WrongMasterKeyError",
    "generate_key",
]
