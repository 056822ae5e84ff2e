"""In-process transformers backend: the model loads once; generation runs in worker threads, one per slot.

Requests wait for a slot in a :class:`~service.llm.gate.FairGate`: served round-robin by tenant
(:attr:`GenerationParams.tenant`), with a cap on each tenant's waiting requests. A generation that runs longer
than ``generation_timeout_s`` is told to stop (the same cancel event a client leaving sets): its reply ends
with ``finish_reason="length"`` and its slot frees at the next token.

For attention-level (KV) injection the loaded model and tokenizer are public (:attr:`LocalBackend.loaded`),
and :meth:`LocalBackend.stream_ids` streams from token ids with extra ``generate`` arguments (e.g. a
prebuilt ``cache=``) under the same concurrency gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from service.errors import ApiError
from service.llm.backend import (
    ChatMessage,
    GenerationParams,
    GenerationStats,
    LLMBackend,
    LLMError,
    LLMNotReadyError,
    TokenizerCounter,
    render_ids,
)
from service.llm.gate import FairGate
from service.llm.loader import LoadedModel, load_model

log = logging.getLogger("sealmem.llm")
_END = object()


class LocalBackend(LLMBackend):
    kind = "local"

    def __init__(
        self,
        spec: str,
        *,
        cache_dir: Path | None = None,
        device: str = "auto",
        torch_threads: int = 1,
        concurrency: int = 1,
        queue_max: int = 64,
        queue_per_tenant: int = 8,
        generation_timeout_s: float | None = 120.0,
        context_tokens: int | None = None,
        loaded: LoadedModel | None = None,
    ) -> None:
        self._spec = spec
        self._cache_dir = cache_dir
        self._device = device
        self._torch_threads = torch_threads
        self._context_tokens = context_tokens
        self.gate = FairGate(concurrency, queue_max, per_tenant_max=queue_per_tenant)
        self.generation_timeout_s = generation_timeout_s  # None: no deadline
        self.tokenizer_lock = threading.Lock()  # every use of the shared tokenizer, from any thread
        self._loaded = loaded
        self._counter = TokenizerCounter(loaded.tokenizer, self.tokenizer_lock) if loaded else None

    async def start(self) -> None:
        if self._loaded is None:
            started = time.perf_counter()
            self._loaded = await asyncio.to_thread(
                load_model,
                self._spec,
                cache_dir=self._cache_dir,
                device=self._device,
                torch_threads=self._torch_threads,
            )
            self._counter = TokenizerCounter(self._loaded.tokenizer, self.tokenizer_lock)
            log.info(
                "local LLM %s ready on %s in %.1fs",
                self._loaded.name,
                self._loaded.device,
                time.perf_counter() - started,
            )

    @property
    def ready(self) -> bool:
        return self._loaded is not None

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            raise LLMNotReadyError("the model is still loading")
        return self._loaded

    @property
    def model_name(self) -> str:
        if self._loaded is not None:
            return self._loaded.name.split(".Q", 1)[0]
        return self._spec.removeprefix("bundled:")

    @property
    def context_tokens(self) -> int:
        model_max = int(getattr(self.loaded.model.config, "max_position_embeddings", 2048) or 2048)
        return min(self._context_tokens, model_max) if self._context_tokens else model_max

    @property
    def counter(self) -> TokenizerCounter:
        if self._counter is None:
            raise LLMNotReadyError("the model is still loading")
        return self._counter

    def encode_messages(self, messages: Sequence[ChatMessage]) -> list[int]:
        with self.tokenizer_lock:
            return render_ids(self.loaded.tokenizer, messages)

    def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        stats: GenerationStats,
        *,
        cancel: threading.Event | None = None,
    ) -> AsyncIterator[str]:
        return self.stream_ids(self.encode_messages(messages), params, stats, cancel=cancel)

    async def stream_ids(
        self,
        input_ids: Sequence[int],
        params: GenerationParams,
        stats: GenerationStats,
        *,
        cancel: threading.Event | None = None,
        **generate_kwargs: Any,
    ) -> AsyncIterator[str]:
        """Stream the continuation of ``input_ids``; ``generate_kwargs`` go to ``model.generate``."""
        loaded = self.loaded
        ids = list(input_ids)
        cancel_event = cancel or threading.Event()

        def produce(emit: Callable[[str], None]) -> None:
            stats.prompt_tokens = len(ids)
            _generate(loaded, ids, params, stats, cancel_event, emit, generate_kwargs, self.tokenizer_lock)

        worker = self._stream_in_worker(produce, stats, cancel_event, tenant=params.tenant)
        async with contextlib.aclosing(worker) as chunks:
            async for text in chunks:
                yield text

    async def stream_sync(
        self,
        make_iterator: Callable[[threading.Event], Iterator[str]],
        stats: GenerationStats,
        *,
        tenant: str | None = None,
    ) -> AsyncIterator[str]:
        """Run a synchronous generator of text (e.g. a KV-injection engine) in a thread, under the same gate
        (queued as ``tenant``'s request) and generation deadline.

        ``make_iterator(cancel)`` is called in the worker thread; it should stop when ``cancel`` is set.
        """
        cancel = threading.Event()

        def produce(emit: Callable[[str], None]) -> None:
            for text in make_iterator(cancel):
                stats.mark_first_token()
                emit(text)
                if cancel.is_set():
                    break

        async with contextlib.aclosing(self._stream_in_worker(produce, stats, cancel, tenant=tenant)) as chunks:
            async for text in chunks:
                yield text

    async def _stream_in_worker(
        self,
        produce: Callable[[Callable[[str], None]], None],
        stats: GenerationStats,
        cancel: threading.Event,
        *,
        tenant: str | None = None,
    ) -> AsyncGenerator[str, None]:
        """Once the gate admits the request (``tenant``'s turn), run ``produce(emit)`` in a worker thread and
        yield what it emits.

        The gate slot is freed when the thread ends, not when the caller stops reading: a cancelled request
        (client gone) must not let another generation start while this one still runs. The caller leaving sets
        ``cancel``; ``produce`` checks it to stop at the next token. So does the generation deadline: past
        ``generation_timeout_s`` it sets ``cancel`` too, and the reply ends with ``finish_reason="length"``
        (``stats.info["truncated"] = "generation_timeout"``). A failure in ``produce`` is raised here: an
        :class:`~service.errors.ApiError` (an ``LLMError``, a context too long for the model, ...) as it is, since
        it carries its own status and code; anything else is unexpected: logged with its traceback and raised as
        ``LLMError("generation failed")`` chained to it.
        """
        queued = time.perf_counter()
        await self.gate.acquire(tenant)
        stats.queued_s = time.perf_counter() - queued
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()

        def post(callback: Callable[..., object], *args: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed (shutdown): nobody waits any more
                loop.call_soon_threadsafe(callback, *args)

        def emit(text: str) -> None:
            # Raises RuntimeError once the loop is closed, which ends a generation nobody reads any more.
            loop.call_soon_threadsafe(queue.put_nowait, text)

        timed_out = threading.Event()

        def deadline() -> None:
            timed_out.set()
            cancel.set()

        def work() -> None:
            try:
                produce(emit)
                if timed_out.is_set():  # recorded before the end marker, so the caller reads it with the stats
                    stats.finish_reason = "length"
                    stats.info["truncated"] = "generation_timeout"
            except BaseException as exc:  # handed to the event loop, which raises it
                if not isinstance(exc, ApiError):
                    log.exception("local generation failed")
                post(queue.put_nowait, exc)
            finally:
                post(self.gate.release)  # before the end marker, so a caller that sees the end finds the slot free
                post(queue.put_nowait, _END)

        try:
            threading.Thread(target=work, name="sealmem-generate", daemon=True).start()
        except BaseException:
            self.gate.release()
            raise
        timer = loop.call_later(self.generation_timeout_s, deadline) if self.generation_timeout_s else None
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, ApiError):
                    raise item
                if isinstance(item, BaseException):
                    raise LLMError("generation failed") from item
                assert isinstance(item, str)
                if item:
                    yield item
        finally:
            if timer is not None:
                timer.cancel()
            cancel.set()  # a client that went away stops the generation at the next token
            stats.mark_finished()


def _generate(
    loaded: LoadedModel,
    input_ids: list[int],
    params: GenerationParams,
    stats: GenerationStats,
    cancel: threading.Event,
    emit: Callable[[str], None],
    generate_kwargs: dict[str, Any],
    tokenizer_lock: threading.Lock,
) -> None:
    """Run ``model.generate`` on ``input_ids`` in the calling thread, handing each finalized text piece to
    ``emit``; stops at the next token once ``cancel`` is set and records the finish reason in ``stats``."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

    class Streamer(TextStreamer):
        def put(self, value: Any) -> None:
            if self.skip_prompt and self.next_tokens_are_prompt:
                super().put(value)  # type: ignore[no-untyped-call]
                return
            stats.completion_tokens += int(value.numel())
            stats.mark_first_token()
            with tokenizer_lock:
                super().put(value)  # type: ignore[no-untyped-call]

        def end(self) -> None:
            with tokenizer_lock:
                super().end()  # type: ignore[no-untyped-call]

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            emit(text)

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

    ids = torch.tensor([input_ids], dtype=torch.long, device=loaded.device)
    kwargs: dict[str, Any] = {
        "attention_mask": torch.ones_like(ids),
        "max_new_tokens": params.max_new_tokens,
        "streamer": Streamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True),
        "stopping_criteria": StoppingCriteriaList([Cancelled()]),
        "pad_token_id": loaded.tokenizer.pad_token_id or loaded.tokenizer.eos_token_id,
    }
    if params.temperature > 0:
        kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p or 1.0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if params.stop:
        kwargs.update(stop_strings=list(params.stop), tokenizer=loaded.tokenizer)
    kwargs.update(generate_kwargs)
    with torch.inference_mode():
        loaded.model.generate(ids, **kwargs)
    stats.finish_reason = "length" if stats.completion_tokens >= params.max_new_tokens else "stop"
    if cancel.is_set():
        stats.finish_reason = "cancelled"
