"""Typed settings of the REST service (environment prefix ``SEALMEM_``), extending the storage core's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator

from memory_store import validation
from memory_store.settings import StoreSettings, available_cores
from service.chat.settings import ChatSettings

MIN_TOKEN_SECRET_CHARS = 32
_TEXT_CAP = validation.MAX_TEXT_CHARS
_META_BYTES_CAP = validation.MAX_METADATA_BYTES
_META_DEPTH_CAP = validation.MAX_METADATA_DEPTH
_RENAMED = {
    "SEALMEM_RATE_LIMIT_PER_MINUTE": "SEALMEM_RATE_LIMIT_TOKEN_PER_MINUTE and SEALMEM_RATE_LIMIT_KEY_PER_MINUTE",
    "SEALMEM_RATE_LIMIT_BURST": "SEALMEM_RATE_LIMIT_TOKEN_BURST and SEALMEM_RATE_LIMIT_KEY_BURST",
}


class Settings(StoreSettings, ChatSettings):
    """Everything ``create_app`` and the ``sealmem`` CLI need (storage, API, chat). Secrets are ``SecretStr``
    and never logged."""

    token_secret: SecretStr | None = Field(
        default=None, description="HS256 signing secret for subject tokens (at least 32 characters)."
    )
    token_secret_file: Path | None = Field(default=None, description="File holding the token signing secret.")
    token_default_ttl_seconds: int = Field(default=900, ge=1, description="Lifetime when none is asked.")
    token_max_ttl_seconds: int = Field(default=3600, ge=1, le=7 * 86400, description="Longest lifetime.")

    host: str = Field(default="127.0.0.1", description="Address `sealmem serve` binds to.")
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Worker processes of `sealmem serve`; 0: one per CPU core available to the process. Each "
        "worker has its own caches, rate limits and (local backend) copy of the LLM.",
    )

    request_threads: int | None = Field(
        default=None,
        ge=0,
        le=256,
        description="Threads of each worker process that run requests' blocking work (store calls, audit "
        "appends); further requests wait on the event loop in arrival order. Unset: 2 on SQLite, 4 on PostgreSQL "
        "(bench/load.py). On SQLite, where writers queue for the write lock (memory_store/sqlite_writers.py), two "
        "serve about 10 % more of the 70/30 mix than one, which sat idle while it waited for the write lock or a "
        "commit's fsync; three or four serve no more than two. On PostgreSQL a request thread spends much of a "
        "store call waiting for the server, and four serve 9 % more of the 70/30 mix and 20 % more searches than "
        "one. Long admin operations (stats, "
        "export, reindex, audit verification) run on other threads. Raise it when single requests take long (large "
        "batch adds); 0: as many as the database pool allows.",
    )
    admission_per_worker: int = Field(
        default=8,
        ge=0,
        le=4096,
        description="Searches and adds whose store call each worker process runs at once, once their text is "
        "screened and embedded; more wait on the event loop and go oldest request first across all the workers of "
        "the server (service/admission.py), so that a request held up on the way catches up and requests that "
        'arrived together end together (README, "Store work admitted oldest first"). 0: no limit, every store '
        "call starts at once.",
    )
    prepare_niceness: int = Field(
        default=10,
        ge=0,
        le=19,
        description="How far below the process's scheduling priority (Linux niceness steps) the threads run that "
        "screen and embed searches and adds ahead of their request threads (service/ahead.py). Their forward passes "
        "then take the cores the request threads leave idle instead of stalling a thread that holds the interpreter "
        "lock or a database lock: on two cores the 70/30 mix serves about 10-15 % (PostgreSQL) and 8-19 % (SQLite) "
        "more requests. Other CPU-bound work at normal priority on the same cores (a local LLM's generation) then "
        "comes first. 0 leaves them at the process's priority.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest accepted request body.")
    # The storage core enforces its own hard caps; these may only tighten them.
    max_text_chars: int = Field(default=_TEXT_CAP, ge=1, le=_TEXT_CAP)
    max_metadata_bytes: int = Field(default=_META_BYTES_CAP, ge=2, le=_META_BYTES_CAP)
    max_metadata_depth: int = Field(default=_META_DEPTH_CAP, ge=1, le=_META_DEPTH_CAP)
    max_k: int = Field(default=100, ge=1, le=1000, description="Largest `k` a search may ask for.")
    max_page_size: int = Field(default=200, ge=1, le=1000, description="Largest `limit` of a listing.")
    max_batch: int = Field(default=100, ge=1, le=1000, description="Most memories in one batch add.")
    # Rate limits: token buckets in each process (every worker and replica limits on its own); 0 disables one.
    rate_limit_token_per_minute: int = Field(
        default=600,
        ge=0,
        description="Requests per minute per subject with subject tokens (all tokens of a subject share one "
        "bucket); 0 disables.",
    )
    rate_limit_token_burst: int | None = Field(
        default=None, ge=1, description="Subject bucket capacity; defaults to rate_limit_token_per_minute."
    )
    rate_limit_key_per_minute: int = Field(
        default=0,
        ge=0,
        description="Requests per minute per API key, including those of subject tokens it minted; 0: unlimited.",
    )
    rate_limit_key_burst: int | None = Field(
        default=None, ge=1, description="API key bucket capacity; defaults to rate_limit_key_per_minute."
    )
    rate_limit_auth_failures_per_minute: int = Field(
        default=60,
        ge=0,
        description="Failed authentications per minute per client address (IPv6: per /64) before requests "
        "from it with an API key get 429 without a database lookup; 0 disables.",
    )

    mcp_enabled: bool = Field(
        default=True,
        description="Serve the streamable-HTTP MCP endpoint at /mcp (subject tokens only; the tools call the REST "
        "API in process).",
    )

    console_enabled: bool = Field(
        default=True, description="Serve the admin web console at /admin (sign-in with a tenant admin key)."
    )
    console_idle_timeout_seconds: int = Field(
        default=900, ge=30, le=86400, description="A console session ends after this long without a request."
    )
    console_session_lifetime_seconds: int = Field(
        default=8 * 3600, ge=60, le=7 * 86400, description="A console session ends this long after sign-in."
    )
    console_secure_cookie: Literal["auto", "always"] = Field(
        default="auto",
        description="The console cookie's Secure flag: `auto` sets it on HTTPS requests (as uvicorn sees them: "
        "behind a TLS proxy, run uvicorn with --proxy-headers), `always` on every response.",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    persist_interval_seconds: float = Field(
        default=30.0, gt=0, description="How often the service flushes access times and saves indexes due for a save."
    )
    purge_interval_seconds: float = Field(
        default=300.0, gt=0, description="How often the service deletes memories whose expires_at has passed."
    )

    @model_validator(mode="after")
    def _check_token_secret(self) -> Settings:
        if self.token_secret is not None and self.token_secret_file is not None:
            raise ValueError("set SEALMEM_TOKEN_SECRET or SEALMEM_TOKEN_SECRET_FILE, not both")
        if self.token_secret is not None:
            check_token_secret(self.token_secret.get_secret_value())
        if self.token_default_ttl_seconds > self.token_max_ttl_seconds:
            raise ValueError("token_default_ttl_seconds must not exceed token_max_ttl_seconds")
        return self

    @model_validator(mode="after")
    def _refuse_renamed_rate_limits(self) -> Settings:
        # Silently ignoring these would lift a limit an operator set: API keys are now unlimited by default.
        for old, new in _RENAMED.items():
            if os.environ.get(old) is not None:
                raise ValueError(f"{old} was replaced by {new}; see docs/api.md, Rate limits")
        return self

    @property
    def default_master_key_file(self) -> Path:
        return self.data_dir / "master.key"

    @property
    def default_token_secret_file(self) -> Path:
        return self.data_dir / "token.secret"

    @property
    def worker_count(self) -> int:
        """``workers``, with 0 resolved to the CPU cores this process may run on."""
        return self.workers or available_cores()

    @property
    def embedded(self) -> bool:
        """True when the database is the SQLite file in ``data_dir`` (single-machine mode)."""
        return not self.database_url


def check_token_secret(secret: str) -> str:
    """Refuse short or obviously low-entropy signing secrets (``sealmem keygen`` makes a good one)."""
    if len(secret) < MIN_TOKEN_SECRET_CHARS:
        raise ValueError(f"the token secret must be at least {MIN_TOKEN_SECRET_CHARS} characters")
    if len(set(secret)) < 10:
        raise ValueError("the token secret looks like a placeholder (too few distinct characters)")
    return secret
