"""The one interface every LLM backend implements, and its errors (429/502/503/504 in :mod:`service.errors`' tree).

A backend streams text deltas for a list of chat messages. ``generate`` (the whole reply) is built on
``stream``. Token counting is part of the interface because the prompt builder budgets in real tokens.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from service.errors import ServiceError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    tenant: str | None = None  # whose turn in the backend's queue (round-robin by tenant); None: a shared bucket

    def for_tenant(self, tenant: str | None) -> GenerationParams:
        """These parameters, queued as ``tenant``'s request."""
        return replace(self, tenant=tenant)


@dataclass
class GenerationStats:
    """Filled in by a backend while it streams; read after the stream ends."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    started_at: float = field(default_factory=time.perf_counter)
    queued_s: float = 0.0
    first_token_s: float | None = None
    finished_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def mark_first_token(self) -> None:
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started_at

    def mark_finished(self) -> None:
        self.finished_s = time.perf_counter() - self.started_at

    @property
    def decode_tokens_per_s(self) -> float | None:
        if self.first_token_s is None or self.finished_s is None or self.completion_tokens < 2:
            return None
        span = self.finished_s - self.first_token_s
        return (self.completion_tokens - 1) / span if span > 0 else None


@dataclass(frozen=True)
class Generation:
    text: str
    stats: GenerationStats


class LLMError(ServiceError):
    """Base of backend failures (a 502 unless a subclass says otherwise)."""

    status = 502
    code = "llm_error"
    default_message = "the language model failed"


class LLMUnavailableError(LLMError):
    """The LLM server cannot be reached (connection refused, DNS, reset)."""

    status = 502
    code = "llm_unavailable"


class LLMTimeoutError(LLMError):
    status = 504
    code = "llm_timeout"


class LLMUpstreamError(LLMError):
    """The LLM server answered with an error status or an unusable body."""

    status = 502
    code = "llm_bad_response"


class LLMBusyError(LLMError):
    """Too many requests already wait for a generation slot: the tenant's share of the queue, or the whole queue."""

    status = 429
    code = "llm_busy"
    default_headers = {"Retry-After": "2"}


class LLMNotReadyError(LLMError):
    status = 503
    code = "llm_not_ready"


class TokenCounter(Protocol):
    def count_text(self, text: str) -> int: ...

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of the full prompt these messages render to, including the assistant turn header."""
        ...


class ApproxTokenCounter:
    """A conservative estimate (1 token per 3 characters) for remote models without a local tokenizer."""

    def __init__(self, chars_per_token: float = 3.0, per_message: int = 6) -> None:
        self._cpt = chars_per_token
        self._per_message = per_message

    def count_text(self, text: str) -> int:
        return int(len(text) / self._cpt) + 1 if text else 0

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        return sum(self.count_text(m.content) + self._per_message for m in messages) + 3


class TokenizerCounter:
    """Exact counts with a Hugging Face tokenizer and its chat template.

    ``lock`` serialises use of the tokenizer with the generation threads' streaming decoders: a fast
    tokenizer used from two threads at once can fail with "Already borrowed".
    """

    def __init__(self, tokenizer: Any, lock: threading.Lock | None = None) -> None:
        self.tokenizer = tokenizer
        self.lock = lock or threading.Lock()

    def count_text(self, text: str) -> int:
        if not text:
            return 0
        with self.lock:
            return len(self.tokenizer.encode(text, add_special_tokens=False))

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        with self.lock:
            return len(render_ids(self.tokenizer, messages))


def render_ids(tokenizer: Any, messages: Sequence[ChatMessage]) -> list[int]:
    """Token ids of ``messages`` through the tokenizer's chat template, ready for the assistant's reply."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template([m.as_dict() for m in messages], add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if not isinstance(out, list) else out
        return [int(i) for i in ids]
    text = "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant: "
    return [int(i) for i in tokenizer.encode(text)]


class LLMBackend(abc.ABC):
    """One LLM. Subclasses implement :meth:`stream`; everything else has defaults."""

    kind: str = "abstract"
    # Whether prompts leave this process (a remote server): the chat loop then masks sensitive values in them.
    external: bool = False

    @property
    @abc.abstractmethod
    def model_name(self) -> str: ...

    @property
    @abc.abstractmethod
    def context_tokens(self) -> int: ...

    @property
    @abc.abstractmethod
    def counter(self) -> TokenCounter: ...

    async def start(self) -> None:
        """Load or connect (called once at startup, may take seconds)."""
        return None

    async def aclose(self) -> None:
        """Release what :meth:`start` acquired."""
        return None

    @property
    def ready(self) -> bool:
        return True

    @abc.abstractmethod
    def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        stats: GenerationStats,
        *,
        cancel: threading.Event | None = None,
    ) -> AsyncIterator[str]:
        """Text deltas of the reply; ``stats`` is filled in as it goes. Raises :class:`LLMError`."""

    async def generate(
        self, messages: Sequence[ChatMessage], params: GenerationParams, stats: GenerationStats | None = None
    ) -> Generation:
        stats = stats or GenerationStats()
        parts = [delta async for delta in self.stream(messages, params, stats)]
        return Generation(text="".join(parts), stats=stats)
