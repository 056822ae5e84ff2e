"""Everything the chat loop needs for one app instance, built from :class:`ChatSettings`.

The app's lifespan enters :func:`running_chat`, which builds one :class:`ChatRuntime` and keeps it on
``app.state.chat``: ``await runtime.start()`` loads the model (off the event loop) and starts the write-back
worker; ``await runtime.stop()`` finishes queued write-backs and releases the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memory_store import MemoryStore
from service.chat.distill import Distiller, LLMDistiller, RuleDistiller
from service.chat.forgets import ForgetFollower
from service.chat.service import ChatService
from service.chat.settings import ChatSettings
from service.chat.writeback import WriteBackWorker
from service.llm.backend import LLMBackend, TokenCounter, TokenizerCounter
from service.llm.loader import BUNDLED_SMOLLM2, bundled_gguf_path

if TYPE_CHECKING:
    from service.llm.kv import KVEngine

log = logging.getLogger("sealmem.chat")


def load_tokenizer(spec: str) -> Any:
    """A Hugging Face tokenizer from a folder, a .gguf file or the bundled SmolLM2, offline."""
    from transformers import AutoTokenizer

    path = bundled_gguf_path() if spec == BUNDLED_SMOLLM2 else Path(spec)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def backend_from_settings(settings: ChatSettings, *, cache_dir: Path | None = None) -> LLMBackend:
    if settings.llm_backend == "openai":
        from service.llm.openai_backend import OpenAIBackend

        assert settings.openai_base_url is not None and settings.openai_model is not None
        counter: TokenCounter | None = None
        if settings.openai_tokenizer:
            counter = TokenizerCounter(load_tokenizer(settings.openai_tokenizer))
        return OpenAIBackend(
            base_url=settings.openai_base_url,
            model=settings.openai_model,
            api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
            timeout_s=settings.openai_timeout_seconds,
            connect_timeout_s=settings.openai_connect_timeout_seconds,
            max_retries=settings.openai_max_retries,
            concurrency=settings.llm_concurrency,
            queue_max=settings.llm_queue_max,
            queue_per_tenant=settings.llm_queue_per_tenant,
            generation_timeout_s=settings.llm_generation_timeout_seconds,
            context_tokens=settings.llm_context_tokens,
            counter=counter,
        )
    from service.llm.local import LocalBackend

    return LocalBackend(
        settings.llm_model,
        cache_dir=settings.llm_cache_dir or cache_dir,
        device=settings.llm_device,
        torch_threads=settings.llm_torch_threads,
        concurrency=settings.llm_concurrency,
        queue_max=settings.llm_queue_max,
        queue_per_tenant=settings.llm_queue_per_tenant,
        generation_timeout_s=settings.llm_generation_timeout_seconds,
        context_tokens=settings.llm_context_tokens,
    )


class ChatRuntime:
    def __init__(
        self,
        settings: ChatSettings,
        *,
        store: MemoryStore,
        backend: LLMBackend,
        distiller: Distiller | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.kv_engine: KVEngine | None = None
        if distiller is None:
            distiller = LLMDistiller(backend) if settings.chat_distiller == "llm" else RuleDistiller()
        self.worker = WriteBackWorker(
            store,
            distiller,
            queue_max=settings.chat_writeback_queue_max,
            duplicate_similarity=settings.chat_duplicate_similarity,
            duplicate_dense=settings.chat_duplicate_dense,
        )
        self.service = ChatService(store=store, backend=backend, settings=settings, worker=self.worker)
        self._store = store
        self._following: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.backend.start()
        await self._register_kv()
        self.worker.start()
        engine = self.kv_engine
        if engine is not None:  # keys/values of subjects forgotten by other worker processes leave RAM too
            follower = ForgetFollower(self._store, engine.cache.subjects, engine.forget_subject)
            self._following = asyncio.get_running_loop().create_task(follower.run(), name="sealmem-forgets")

    async def _register_kv(self) -> None:
        """``injection: "kv"`` on the local backend: one KV engine on the loaded model, built at start.

        Other backends keep answering 501 for "kv". A model the engine does not support still gets the
        injector: the engine falls back to prompt injection and says so in the response's warnings.
        """
        from service.llm.local import LocalBackend

        if not isinstance(self.backend, LocalBackend):
            return
        from service.chat.kv_injector import KVInjector, build_engine

        try:
            engine = await asyncio.to_thread(build_engine, self.backend)
        except Exception:
            log.exception("KV injection unavailable: building the KV engine failed")
            return
        if not engine.supported:
            log.warning("KV injection will fall back to prompt injection: %s", engine.unsupported_reason)
        self.kv_engine = engine
        self.service.register_injector("kv", KVInjector(self.backend, engine))
        log.info(
            "KV injection ready (layout %s, %d bytes per memory token)",
            engine.settings.layout,
            engine.bytes_per_token,
        )

    def forget_subject(self, tenant_id: str, subject: str) -> None:
        """After a forget: cancel the subject's queued write-back and drop keys/values derived from its memories
        from RAM (and the disk cache)."""
        self.worker.forget(tenant_id, subject)
        if self.kv_engine is not None:
            self.kv_engine.forget_subject(tenant_id, subject)

    async def stop(self, *, drain_timeout: float = 10.0) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
        await self.worker.stop(drain_timeout=drain_timeout)
        await self.backend.aclose()


@asynccontextmanager
async def running_chat(
    settings: ChatSettings,
    *,
    store: MemoryStore,
    cache_dir: Path | None = None,
    llm: LLMBackend | None = None,
    distiller: Distiller | None = None,
) -> AsyncIterator[ChatRuntime | None]:
    """A started :class:`ChatRuntime` for the duration of the block, stopped at its end.

    With ``chat_enabled`` off it yields None and loads no model. ``llm`` replaces the backend the settings
    describe (tests inject a fake); ``cache_dir`` (the data dir) keeps converted GGUF weights between starts.
    """
    if not settings.chat_enabled:
        yield None
        return
    runtime = ChatRuntime(
        settings,
        store=store,
        backend=llm or backend_from_settings(settings, cache_dir=cache_dir),
        distiller=distiller,
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()
