"""Backend for any OpenAI-compatible server (vLLM, TGI, Ollama, llama.cpp server, OpenAI itself).

The official ``openai`` client does the HTTP; its own retries are off and tenacity retries connection
errors, 429 and 5xx before the first token (never after: a half-streamed reply cannot be replayed).

``structured`` asks for a whole reply in JSON following a schema (``response_format`` of type ``json_schema``:
OpenAI's structured outputs, vLLM's guided decoding), e.g. for the LLM distiller; it shares the gate, timeouts and
retries.

Requests wait for one of ``concurrency`` slots in a :class:`~service.llm.gate.FairGate` (round-robin by tenant,
a cap on each tenant's waiting requests). Once admitted, a reply has ``generation_timeout_s``: a reply still
streaming then is cut at the next chunk and ends with ``finish_reason="length"`` (a server that sends nothing
at all is ended by the client's read timeout, ``timeout_s``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import openai
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from service.llm.backend import (
    ApproxTokenCounter,
    ChatMessage,
    GenerationParams,
    GenerationStats,
    LLMBackend,
    LLMError,
    LLMTimeoutError,
    LLMUnavailableError,
    LLMUpstreamError,
    TokenCounter,
)
from service.llm.gate import FairGate

_RETRYABLE = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)


def map_openai_error(exc: BaseException) -> LLMError:
    """A clear backend error for what the client raised (never including prompt text)."""
    if isinstance(exc, openai.APITimeoutError):
        return LLMTimeoutError("the LLM server did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return LLMUnavailableError("the LLM server cannot be reached")
    if isinstance(exc, openai.APIStatusError):
        return LLMUpstreamError(f"the LLM server answered HTTP {exc.status_code}")
    return LLMUpstreamError("the LLM server sent an unusable response")


class OpenAIBackend(LLMBackend):
    kind = "openai"
    external = True

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_retries: int = 2,
        concurrency: int = 32,
        queue_max: int = 256,
        queue_per_tenant: int = 8,
        generation_timeout_s: float | None = 120.0,
        context_tokens: int | None = None,
        counter: TokenCounter | None = None,
        retry_wait_s: float = 0.2,
    ) -> None:
        self._model = model
        self._context_tokens = context_tokens or 8192
        self._counter = counter or ApproxTokenCounter()
        self._max_retries = max_retries
        self._retry_wait_s = retry_wait_s
        self.gate = FairGate(concurrency, queue_max, per_tenant_max=queue_per_tenant)
        self.generation_timeout_s = generation_timeout_s  # None: no deadline
        self.client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "sealmem-no-key",
            timeout=openai.Timeout(timeout_s, connect=connect_timeout_s),
            max_retries=0,
        )

    @property
    def model_name(self) -> str:
        return self._model

    @property
    def context_tokens(self) -> int:
        return self._context_tokens

    @property
    def counter(self) -> TokenCounter:
        return self._counter

    async def aclose(self) -> None:
        await self.client.close()

    async def _create(self, request: dict[str, Any]) -> Any:
        """``chat.completions.create`` with the retries (a stream: before its first chunk)."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_RETRYABLE),
            stop=stop_after_attempt(self._max_retries + 1),
            wait=wait_exponential_jitter(multiplier=self._retry_wait_s, max=4.0),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self.client.chat.completions.create(**request)
        raise AssertionError("unreachable")

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        stats: GenerationStats,
        *,
        cancel: threading.Event | None = None,
    ) -> AsyncIterator[str]:
        request: dict[str, Any] = {
            "model": self._model,
            "messages": [m.as_dict() for m in messages],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "stream": True,
        }
        if params.top_p is not None:
            request["top_p"] = params.top_p
        if params.stop:
            request["stop"] = list(params.stop)
        queued = time.perf_counter()
        async with self.gate.slot(params.tenant):
            stats.queued_s = time.perf_counter() - queued
            stats.prompt_tokens = self._counter.count_messages(messages)
            timeout = self.generation_timeout_s
            deadline = time.monotonic() + timeout if timeout else None
            try:
                response = await self._create(request)
                try:
                    async for chunk in response:
                        if deadline is not None and time.monotonic() > deadline:
                            stats.finish_reason = "length"
                            stats.info["truncated"] = "generation_timeout"
                            break
                        if cancel is not None and cancel.is_set():
                            stats.finish_reason = "cancelled"
                            break
                        usage = getattr(chunk, "usage", None)
                        if usage is not None:
                            stats.prompt_tokens = int(usage.prompt_tokens or stats.prompt_tokens)
                            stats.completion_tokens = int(usage.completion_tokens or stats.completion_tokens)
                        if not chunk.choices:
                            continue
                        choice = chunk.choices[0]
                        if choice.finish_reason:
                            stats.finish_reason = str(choice.finish_reason)
                        delta = choice.delta.content if choice.delta is not None else None
                        if delta:
                            stats.mark_first_token()
                            if usage is None:
                                stats.completion_tokens += 1
                            yield delta
                finally:
                    await response.close()
            except openai.OpenAIError as exc:
                raise map_openai_error(exc) from exc
            finally:
                stats.mark_finished()

    async def structured(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        *,
        name: str,
        schema: dict[str, Any],
        stats: GenerationStats | None = None,
    ) -> str:
        """The whole reply (not streamed) to ``messages``, constrained to JSON following ``schema``: sent as
        ``response_format={"type": "json_schema", ...}``, which vLLM enforces with guided decoding. Waits for a
        slot of the gate like :meth:`stream`; retried like it; the reply must come within
        ``generation_timeout_s`` of admission (else :class:`LLMTimeoutError`). Returns the message content,
        unparsed: validating it is the caller's business."""
        request: dict[str, Any] = {
            "model": self._model,
            "messages": [m.as_dict() for m in messages],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}},
        }
        if params.top_p is not None:
            request["top_p"] = params.top_p
        if params.stop:
            request["stop"] = list(params.stop)
        stats = stats if stats is not None else GenerationStats()
        queued = time.perf_counter()
        async with self.gate.slot(params.tenant):
            stats.queued_s = time.perf_counter() - queued
            stats.prompt_tokens = self._counter.count_messages(messages)
            try:
                if self.generation_timeout_s:
                    response = await asyncio.wait_for(self._create(request), self.generation_timeout_s)
                else:
                    response = await self._create(request)
            except TimeoutError as exc:
                stats.finish_reason = "timeout"
                raise LLMTimeoutError("the LLM server did not answer in time") from exc
            except openai.OpenAIError as exc:
                raise map_openai_error(exc) from exc
            finally:
                stats.mark_finished()
        usage = getattr(response, "usage", None)
        if usage is not None:
            stats.prompt_tokens = int(usage.prompt_tokens or stats.prompt_tokens)
            stats.completion_tokens = int(usage.completion_tokens or 0)
        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices and choices[0].message is not None else None
        if choices and choices[0].finish_reason:
            stats.finish_reason = str(choices[0].finish_reason)
        if not isinstance(content, str) or not content.strip():
            raise LLMUpstreamError("the LLM server sent no content")
        stats.mark_first_token()
        return content
