"""Settings of KV injection (environment prefix ``SEALMEM_KV_``); the service may embed them in its Settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Layout = Literal["contiguous", "shared", "hybrid"]
BaseLayout = Literal["contiguous", "shared"]
StorageDtype = Literal["model", "bfloat16", "float16", "float32"]
DEFAULT_ENCODE_LEAD = "- This is something I told you before.\n- This is another thing I told you.\n"


class KVSettings(BaseSettings):
    """Bounds and defaults for the per-memory key/value cache and the request-time cache assembly."""

    model_config = SettingsConfigDict(env_prefix="SEALMEM_KV_", env_file=None, extra="ignore")

    ram_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=0,
        description="Bound of the in-RAM LRU of encoded memories (bytes of key/value tensors); 0 disables it.",
    )
    disk_dir: Path | None = Field(
        default=None,
        description="Folder for the optional on-disk cache, AES-GCM sealed with the subject's data key.",
    )
    storage_dtype: StorageDtype = Field(
        default="model",
        description="dtype of stored keys/values: 'model' keeps the model's (exact); bfloat16 halves fp32 RAM.",
    )
    encode_lead: str = Field(
        default=DEFAULT_ENCODE_LEAD,
        description=(
            "Neutral list items every memory is encoded after (then dropped), so that independently encoded "
            "memories read like later list items rather than all being the first; match the caller's memory "
            "format. '' disables it (then one memory is exactly equivalent to prompt injection)."
        ),
    )
    layout: Layout = Field(default="hybrid", description="Default layout of the injected memories.")
    shared_temperature: float = Field(
        default=0.8,
        gt=0.0,
        le=4.0,
        description=(
            "Attention temperature on memory tokens in the 'shared' layout (APE); 1.0 is off. 0.8 raised the "
            "bench's shared-layout accuracy from 32% to 40% (only value tried)."
        ),
    )
    hybrid_text_memories: int = Field(
        default=2, ge=1, le=2, description="How many top memories 'hybrid' keeps as prompt text."
    )
    hybrid_kv_layout: BaseLayout = Field(default="contiguous", description="Layout of the KV part of 'hybrid'.")
    encode_batch_size: int = Field(default=16, ge=1, le=256, description="Memories encoded per forward pass.")
    prefix_cache_entries: int = Field(default=8, ge=1, le=1024, description="Distinct system prefixes kept.")
