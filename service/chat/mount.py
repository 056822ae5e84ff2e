"""One call that adds the chat loop to the Sealmem app: its routes, and its start/stop in the app's lifespan.

``mount_chat(app, ChatSettings(), cache_dir=settings.data_dir)`` after the app is built. The chat runtime is
created inside the lifespan, after the app's own start-up (it needs the opened store and the audit log from
``app.state.services``), and stopped before the app's own shutdown closes the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from service.chat.distill import Distiller
from service.chat.runtime import ChatRuntime, backend_from_settings
from service.chat.service import Injector
from service.chat.settings import ChatSettings
from service.llm.backend import LLMBackend


def mount_chat(
    app: FastAPI,
    settings: ChatSettings,
    *,
    cache_dir: Path | None = None,
    backend: LLMBackend | None = None,
    distiller: Distiller | None = None,
    injectors: dict[str, Injector] | None = None,
    on_ready: Callable[[ChatRuntime], None] | None = None,
) -> None:
    """Include the chat router and run a :class:`ChatRuntime` for the app's lifetime (``app.state.chat``).

    ``on_ready`` is called with the started runtime (e.g. to register the KV injector).
    """
    from service.chat.routes import router

    app.include_router(router)
    inner: Callable[[Any], AbstractAsyncContextManager[Any]] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[Any]:
        async with inner(application) as state:
            services = application.state.services
            runtime = ChatRuntime(
                settings,
                store=services.store,
                backend=backend or backend_from_settings(settings, cache_dir=cache_dir),
                audit=services.auditor.log,
                distiller=distiller,
                injectors=injectors,
            )
            await runtime.start()
            application.state.chat = runtime
            if on_ready is not None:
                on_ready(runtime)
            try:
                yield state
            finally:
                application.state.chat = None
                await runtime.stop()

    app.router.lifespan_context = lifespan
