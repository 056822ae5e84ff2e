"""``injection: "kv"`` for the local backend: the chat loop's prompt pieces handed to the KV engine.

The chat loop builds its prompt as separable pieces (:class:`~service.llm.prompt.BuiltPrompt`): a system prefix,
one line per retrieved memory and a suffix, then the working-memory turns and the user message. The chat
template is rendered around a slot where the memory lines go (``split_chat_prompt``), so that
``prefix + lines + suffix`` is exactly the text prompt injection would feed; the engine then serves each memory
line from its per-memory key/value cache (encoding the misses once) and prefills only the rest.

Cache validity: a memory's cache entry is keyed by (tenant, subject, memory id) and versioned by the memory's
``updated_at`` plus a hash of the exact line (the engine adds the hash), so an updated memory - or one shown
with a different date - is re-encoded rather than served stale. Ids are never reused, so nothing of a deleted
or forgotten memory can be served for another one; its entry just ages out of the RAM LRU. Only the RAM tier
is used (no data key is passed): nothing derived from memory content is written to disk here.

Generation runs in a worker thread under the :class:`LocalBackend`'s concurrency gate (``stream_sync``), and
stops at the next token when the client goes away. The engine decodes greedily.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from service.chat.service import InjectionRequest
from service.llm.backend import GenerationParams, GenerationStats
from service.llm.kv import KVEngine, KVRequest, KVResult, KVSettings, Layout, MemoryText
from service.llm.kv import split_chat_prompt as _split_chat_prompt
from service.llm.loader import LoadedModel
from service.llm.local import LocalBackend

log = logging.getLogger("sealmem.chat.kv")


class LockedTokenizer:
    """The shared tokenizer, every call under the backend's tokenizer lock.

    A fast tokenizer used from two threads at once can fail with "Already borrowed"; the engine tokenizes and
    decodes in its worker thread while other requests count tokens in theirs.
    """

    def __init__(self, tokenizer: Any, lock: threading.Lock) -> None:
        self._tokenizer = tokenizer
        self._lock = lock

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._tokenizer(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._tokenizer.decode(*args, **kwargs)

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._tokenizer.encode(*args, **kwargs)

    def convert_tokens_to_ids(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._tokenizer.convert_tokens_to_ids(*args, **kwargs)

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._tokenizer.apply_chat_template(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # plain attributes (eos_token_id, pad_token_id, ...)
        return getattr(self._tokenizer, name)


def build_engine(backend: LocalBackend, settings: KVSettings | None = None) -> KVEngine:
    """The KV engine on the backend's loaded model (once per start; RAM cache only)."""
    from service.llm.kv import MemoryKVCache

    settings = settings or KVSettings()
    if settings.disk_dir is not None:
        log.warning("SEALMEM_KV_DISK_DIR is set but the chat service keeps encoded memories in RAM only")
    loaded = backend.loaded
    shared = LoadedModel(
        model=loaded.model,
        tokenizer=LockedTokenizer(loaded.tokenizer, backend.tokenizer_lock),
        device=loaded.device,
        dtype=loaded.dtype,
        name=loaded.name,
    )
    return KVEngine(shared, settings, cache=MemoryKVCache(max_bytes=settings.ram_max_bytes))


def memory_version(request: InjectionRequest, memory_id: str) -> str:
    for hit in request.hits:
        if hit.memory.id == memory_id:
            return hit.memory.updated_at.isoformat()
    return "0"


class KVInjector:
    """Implements :class:`~service.chat.service.Injector` with a :class:`KVEngine` on a :class:`LocalBackend`."""

    def __init__(self, backend: LocalBackend, engine: KVEngine, *, layout: Layout | None = None) -> None:
        self.backend = backend
        self.engine = engine
        self.layout: Layout = layout or engine.settings.layout

    def kv_request(self, request: InjectionRequest) -> KVRequest:
        prompt = request.prompt
        prefix, suffix = _split_chat_prompt(
            self.engine.tokenizer,
            system_head=prompt.prefix,
            system_tail=prompt.suffix,
            turns=[m.as_dict() for m in prompt.history],
            user_message=prompt.user_message,
        )
        memories = [
            MemoryText(id=line.memory_id, text=line.line, version=memory_version(request, line.memory_id))
            for line in prompt.memory_lines
        ]
        return KVRequest(request.tenant_id, request.subject, prefix, memories, suffix)

    async def stream(
        self,
        request: InjectionRequest,
        params: GenerationParams,
        stats: GenerationStats,
        *,
        cancel: threading.Event,
    ) -> AsyncIterator[str]:
        if not request.prompt.memory_lines:
            # Nothing to inject: exactly the prompt path (same messages, same sampling).
            stats.info.update(layout=None, injected_as="prompt", warnings=["no memories to inject"])
            async for delta in self.backend.stream(request.prompt.messages(), params, stats, cancel=cancel):
                yield delta
            return
        warnings: list[str] = []
        if params.temperature > 0:
            warnings.append("KV injection decodes greedily; temperature and top_p are ignored")
        kv_request = self.kv_request(request)
        layout = self.layout
        stats.prompt_tokens = request.prompt.prompt_tokens  # until the engine reports what it ran
        stats.info.update(layout=layout, injected_as="kv", warnings=warnings)

        def run(inner: threading.Event) -> Iterator[str]:
            return self._generate(
                kv_request, layout, params, stats, warnings, cancelled=lambda: cancel.is_set() or inner.is_set()
            )

        # stream_sync raises errors that carry a status (a context too long for the model: 422) as they are
        async for delta in self.backend.stream_sync(run, stats, tenant=params.tenant):
            yield delta

    def _generate(
        self,
        kv_request: KVRequest,
        layout: Layout,
        params: GenerationParams,
        stats: GenerationStats,
        warnings: list[str],
        *,
        cancelled: Callable[[], bool],
    ) -> Iterator[str]:
        """The engine's text deltas up to the first stop string; runs in the backend's worker thread."""
        state = {"stop": False}
        kv = self.engine.stream(
            kv_request,
            injection="kv",
            layout=layout,
            max_new_tokens=params.max_new_tokens,
            should_stop=lambda _text: state["stop"] or cancelled(),
        )
        text, emitted = "", 0
        deltas = iter(kv)
        try:
            for delta in deltas:
                text += delta
                end, state["stop"] = _cut_at_stop(text, params.stop, stopped=state["stop"])
                if end > emitted:
                    yield text[emitted:end]
                    emitted = end
                if state["stop"]:
                    break
        finally:
            close = getattr(deltas, "close", None)
            if close is not None:
                close()  # a stop string or a cancel: end the engine's generation (and its inference mode) now
        if state["stop"] or cancelled():
            stats.finish_reason = "stop" if state["stop"] else "cancelled"
            stats.completion_tokens = len(self.engine.tokenize(text)) if text else 0
            return
        _record(stats, kv.result, warnings)


def _cut_at_stop(text: str, stops: Sequence[str], *, stopped: bool) -> tuple[int, bool]:
    """Where ``text`` ends before the earliest stop string, and whether one was found (or ``stopped`` was)."""
    end = len(text)
    for stop in stops:
        at = text.find(stop)
        if at >= 0:
            end = min(end, at)
            stopped = True
    return end, stopped


def _record(stats: GenerationStats, result: KVResult, warnings: list[str]) -> None:
    """What the engine ran, into ``stats`` (and its ``info``: layout, warnings, cache and timing figures)."""
    stats.prompt_tokens = result.cache_tokens + result.prefill_tokens
    stats.completion_tokens = len(result.token_ids)
    stats.finish_reason = result.finish_reason
    stats.info.update(
        layout=result.layout,
        injected_as=result.injection,
        warnings=warnings + list(result.warnings),
        kv={
            "cache_tokens": result.cache_tokens,
            "prefill_tokens": result.prefill_tokens,
            "memory_tokens": result.memory_tokens,
            "encoded_memories": result.encoded_memories,
            "encode_ms": round(result.timings.encode_s * 1000.0, 2),
            "assemble_ms": round(result.timings.assemble_s * 1000.0, 2),
            "prefill_ms": round(result.timings.prefill_s * 1000.0, 2),
        },
    )
