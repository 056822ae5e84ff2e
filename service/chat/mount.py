"""One call that adds the chat loop to the Sealmem app: its routes, and its start/stop in the app's lifespan.

``mount_chat(app, ChatSettings(), cache_dir=settings.data_dir)`` after the app is built. The chat runtime is
created inside the lifespan, after the app's own start-up (it needs the opened store and the audit log from
``app.state.services``), and stopped before the app's own shutdown closes the store.

Calling it again on the same app (before it starts) only replaces the configuration, e.g. a test that swaps
in a fake LLM on an app whose factory already mounted the chat. With ``chat_enabled=False`` the routes
answer 503 and no model is loaded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from service.chat.distill import Distiller
from service.chat.runtime import ChatRuntime, backend_from_settings
from service.chat.service import Injector
from service.chat.settings import ChatSettings
from service.llm.backend import LLMBackend


@dataclass
class ChatMount:
    settings: ChatSettings
    cache_dir: Path | None = None
    backend: LLMBackend | None = None
    distiller: Distiller | None = None
    injectors: dict[str, Injector] | None = None
    on_ready: Callable[[ChatRuntime], None] | None = None


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

    ``backend`` replaces the one the settings describe (tests inject a fake); ``on_ready`` is called with
    the started runtime (e.g. to register the KV injector with ``runtime.service.register_injector``).
    """
    mount = ChatMount(settings, cache_dir, backend, distiller, injectors, on_ready)
    already = getattr(app.state, "chat_mount", None) is not None
    app.state.chat_mount = mount
    if already:
        return
    app.state.chat = None

    from service.chat.routes import router

    app.include_router(router)
    inner: Callable[[Any], AbstractAsyncContextManager[Any]] = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[Any]:
        async with inner(application) as state:
            config: ChatMount = application.state.chat_mount
            if not config.settings.chat_enabled:
                yield state
                return
            services = application.state.services
            runtime = ChatRuntime(
                config.settings,
                store=services.store,
                backend=config.backend or backend_from_settings(config.settings, cache_dir=config.cache_dir),
                audit=services.auditor.log,
                distiller=config.distiller,
                injectors=config.injectors,
            )
            await runtime.start()
            application.state.chat = runtime
            if config.on_ready is not None:
                config.on_ready(runtime)
            try:
                yield state
            finally:
                application.state.chat = None
                await runtime.stop()

    app.router.lifespan_context = lifespan
