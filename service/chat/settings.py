"""Settings of the chat loop (environment prefix ``SEALMEM_``), kept apart so the app can merge them.

Every field is read from ``SEALMEM_<FIELD NAME>``; e.g. ``SEALMEM_LLM_BACKEND=openai``,
``SEALMEM_OPENAI_BASE_URL=http://gpu-host:8000/v1``, ``SEALMEM_OPENAI_API_KEY=...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.llm.loader import BUNDLED_SMOLLM2

Injection = Literal["prompt", "none", "kv"]


class ChatSettings(BaseSettings):
    """LLM backend, context budgets, concurrency and write-back of the chat loop."""

    model_config = SettingsConfigDict(env_prefix="SEALMEM_", env_file=None, extra="ignore")

    chat_enabled: bool = Field(default=True, description="Serve the chat endpoints (and load the LLM at start).")

    # ---- backend -----------------------------------------------------------------------------------
    llm_backend: Literal["local", "openai"] = Field(
        default="local",
        description="'local': transformers in-process; 'openai': an OpenAI-compatible server.",
    )
    llm_model: str = Field(
        default=BUNDLED_SMOLLM2,
        description="Local backend: 'bundled:SmolLM2-135M-Instruct', a .gguf file or a model folder.",
    )
    llm_device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1'.")
    llm_torch_threads: int = Field(default=1, ge=1, le=256, description="Torch threads of the local backend.")
    llm_cache_dir: Path | None = Field(
        default=None, description="Where converted GGUF weights are cached; the app passes its data dir."
    )
    llm_concurrency: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Generations running at once (local: 1 on CPU); others queue, served round-robin by tenant.",
    )
    llm_queue_max: int = Field(
        default=64,
        ge=0,
        description="Requests waiting for a generation slot, all tenants together, before new ones get 429.",
    )
    llm_queue_per_tenant: int = Field(
        default=8,
        ge=0,
        description="Requests of one tenant waiting for a generation slot before its new ones get 429 "
        "(llm_busy, with Retry-After); the queue admits tenants in turn.",
    )
    llm_generation_timeout_seconds: float = Field(
        default=120.0,
        gt=0,
        description="Longest one generation may run once it has its slot; then it stops, the slot is freed and "
        "the reply ends with finish_reason 'length'.",
    )
    llm_max_new_tokens: int = Field(
        default=128,
        ge=1,
        le=8192,
        description="Reply length cap: the default, and the most a request's max_tokens may ask for.",
    )
    llm_temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 means greedy decoding.")
    llm_context_tokens: int | None = Field(
        default=None, ge=256, description="Context window; default: the model's (local) or 8192 (openai)."
    )

    openai_base_url: str | None = Field(default=None, description="e.g. http://vllm:8000/v1")
    openai_model: str | None = Field(default=None, description="Model name served by the OpenAI-compatible server.")
    openai_api_key: SecretStr | None = Field(default=None, description="Bearer key of that server.")
    openai_timeout_seconds: float = Field(default=60.0, gt=0, description="Whole-request read timeout.")
    openai_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    openai_max_retries: int = Field(default=2, ge=0, le=10, description="Retries of connection errors, 429, 5xx.")
    openai_tokenizer: str | None = Field(
        default=None,
        description="Local tokenizer (folder, .gguf or 'bundled:...') of the served model for exact budgeting; "
        "unset: a conservative estimate of 1 token per 3 characters.",
    )

    # ---- prompt ------------------------------------------------------------------------------------
    chat_system_prompt: str = Field(default="", description="Optional first line of every system message.")
    chat_facts_header: str = Field(default="Facts about the user:")
    chat_answer_instruction: str = Field(default="Answer in one short sentence.")
    chat_default_injection: Injection = "prompt"
    chat_default_k: int = Field(default=5, ge=0, le=100, description="Memories retrieved per message.")
    chat_max_k: int = Field(default=50, ge=1, le=1000)
    chat_min_score: float = Field(
        default=0.02,
        ge=-1.0,
        le=1.0,
        description="Retrieved memories whose relevance (estimated probability of being relevant, comparable "
        "across queries; see memory_store.calibration) is below this are not injected: the default keeps 98% "
        "of relevant hits on LoCoMo and drops memories unrelated to the message (about 0.006); -1 injects every "
        "retrieved memory.",
    )
    chat_working_memory_tokens: int = Field(
        default=512, ge=0, description="Token budget of the session's recent turns in the prompt."
    )
    chat_working_memory_turns: int = Field(default=40, ge=0, le=1000, description="Most turns read back.")
    chat_memory_tokens: int | None = Field(
        default=None,
        ge=0,
        description="Cap on tokens of injected memories (default: what the context allows).",
    )
    chat_max_message_chars: int = Field(default=8000, ge=1, le=32_000)
    chat_session_header: str = Field(default="X-Session-ID", description="Session header of /v1/chat/completions.")
    chat_retrieve_turns: bool | None = Field(
        default=None,
        description="Also retrieve past turns of other sessions (default: only when distillation is off).",
    )

    # ---- write-back --------------------------------------------------------------------------------
    chat_write_back: bool = Field(default=True, description="Default of the request's write_back.")
    chat_store_assistant_turns: bool = Field(default=True, description="Also store the reply as a turn.")
    chat_distill: bool = Field(default=True, description="Distil facts from user turns in the background.")
    chat_distiller: Literal["rules", "llm"] = Field(
        default="rules",
        description="'llm' uses the configured backend (meant for 'openai'); rules otherwise.",
    )
    chat_duplicate_similarity: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="Word overlap (Jaccard) at or above which a fact is a duplicate.",
    )
    chat_duplicate_dense: float = Field(
        default=0.95, gt=0.0, le=1.0, description="Embedding cosine at or above which a fact is a duplicate."
    )
    chat_writeback_queue_max: int = Field(default=1000, ge=1, description="Pending distillation jobs kept.")

    @model_validator(mode="after")
    def _check_backend(self) -> ChatSettings:
        if self.llm_backend == "openai" and (not self.openai_base_url or not self.openai_model):
            raise ValueError("llm_backend 'openai' needs SEALMEM_OPENAI_BASE_URL and SEALMEM_OPENAI_MODEL")
        if self.chat_default_k > self.chat_max_k:
            raise ValueError("chat_default_k must not exceed chat_max_k")
        return self

    @property
    def retrieve_turns(self) -> bool:
        return (not self.chat_distill) if self.chat_retrieve_turns is None else self.chat_retrieve_turns
