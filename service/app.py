"""The application factory. Importing this module builds nothing; ``create_app`` builds an app with every
router (the chat endpoints included), and the app's lifespan opens the store (master key from settings),
starts the periodic persist thread and the chat loop, then stops them and closes the store.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, nullcontext
from pathlib import Path

import anyio.to_thread
from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from memory_store.db import restrict_data_dir, set_owner_only_umask
from memory_store.embedder import Embedder, embedder_from_settings
from memory_store.keysource import master_key_from_settings
from memory_store.store import MemoryStore
from service.auditing import AuditBarrier
from service.balance import BOARD_ENV, Rebalancer, WorkerBoard
from service.chat.distill import Distiller, RuleDistiller
from service.chat.routes import router as chat_router
from service.chat.runtime import ChatRuntime, running_chat
from service.chat.writeback import WriteBackWorker
from service.deps import reject_unknown_query
from service.errors import install_error_handlers
from service.keyfiles import resolve_secret_files
from service.llm.backend import LLMBackend
from service.logs import configure_logging
from service.maintenance import Maintenance
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.routes import admin, health, ingest, memories, tokens
from service.routes.operations import operation_id
from service.services import build_services
from service.settings import Settings

log = logging.getLogger("sealmem.app")

DESCRIPTION = """
Encrypted, access-controlled long-term memory for LLM applications.

Authenticate with `Authorization: Bearer <credential>`: an API key of a tenant (roles `admin`, `app`,
`reader`) or a short-lived subject token minted with `POST /v1/tokens` (scopes `read`, `write`, `chat`),
which reaches only its own subject's memories. The credential alone decides the tenant.

Every error has the body `{"error": {"code", "message", "request_id"}}`, and every response an
`X-Request-ID` header.
"""

TAGS = [
    {"name": "memories", "description": "Add, read, change, delete, list and search memories of a subject."},
    {"name": "tokens", "description": "Subject tokens for end-user clients."},
    {"name": "admin", "description": "Tenant administration: inspection, export, forget, keys, audit."},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
]


def protect_data_dir(settings: Settings) -> None:
    """Make this process create owner-only files (umask 0o077), then remove group and other permissions from
    the data directory and everything in it (0700 folders, 0600 files): it holds subject ids, the audit trail,
    key hashes, index files and the secret files. Logs a warning (counts only, no file names) when it had to."""
    set_owner_only_umask()
    try:
        result = restrict_data_dir(settings.data_dir)
    except (OSError, ValueError) as exc:
        log.warning("data directory permissions left as they are: %s", exc)
        return
    if result.changed:
        log.warning(
            "data directory %s: removed group/other permissions from %d files and folders (now owner-only)",
            settings.data_dir,
            result.changed,
        )
    if result.failed:
        log.warning(
            "data directory %s: %d files or folders could not be made owner-only (owned by another user?)",
            settings.data_dir,
            result.failed,
        )


def open_store(settings: Settings, embedder: Embedder | None = None) -> MemoryStore:
    """Open the store from settings (the data directory made owner-only first: :func:`protect_data_dir`) and
    load the embedding model (so the first request is not slow)."""
    protect_data_dir(settings)
    embedder = embedder or embedder_from_settings(settings)
    store = MemoryStore.open(settings, master_key=master_key_from_settings(settings), embedder=embedder)
    try:
        _ = embedder.dim
        store.screener.detect("warm-up")  # load the sensitive-data detector now, not on the first write
    except Exception:
        store.close()
        raise
    return store


@contextmanager
def startup_objects_frozen() -> Iterator[None]:
    """While the app serves, leave the objects that exist once it has started out of garbage collection.

    A worker holds about 640,000 tracked objects by then (its modules, the sensitive-data detector's spaCy and
    presidio, the torch and transformers modules they import, the chat loop), and each full collection walked
    them all: timed with ``gc.callbacks`` under the wrk mix (bench/load.py), one or two full collections per
    worker a minute, each stopping the whole process for 210-300 ms. Frozen (``gc.freeze``), a full collection
    takes 8-22 ms. The young generations are collected first (garbage the automatic collections during startup
    have not reached yet; a full collection would cost about 250 ms per app started); objects made later are
    collected as before. Everything frozen is handed back at shutdown (``gc.unfreeze``), so a process that runs
    apps one after another, such as the tests, still collects what each left behind. The freeze is
    process-wide: with several apps in one process, the first to stop unfreezes the others too (they then
    collect as without it).
    """
    gc.collect(1)
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# Request threads per worker process when SEALMEM_REQUEST_THREADS is unset, by database (measured with
# bench/load.py's wrk mix, alternating variants; see the setting's description and the README).
DEFAULT_REQUEST_THREADS = {"sqlite": 2, "postgresql": 4}


def request_threads_for(setting: int | None, dialect: str) -> int:
    """The request threads a worker runs: ``setting`` when given (0: as many as the pool allows), otherwise the
    default for the database's ``dialect``."""
    return setting if setting is not None else DEFAULT_REQUEST_THREADS.get(dialect, 1)


def bound_worker_threads(store: MemoryStore, request_threads: int | None = None) -> tuple[int, int]:
    """Cap the threads that run store calls for routes at ``request_threads`` (0: as many as the connection
    pool allows; None: the database's default, :func:`request_threads_for`), and never so many that they exhaust
    the pool.

    A request takes its pooled connections one after the other (authentication, the store call, the audit
    append); a search reads its vector index through its own session. Store calls once held two at a time (a
    search kept its session while the index caught up in another), and more threads than half the pool then
    all held one connection and waited for a second: every request stalled for the pool timeout and failed.
    Found under load with 64 clients (bench/load.py): AnyIO's default of 40 threads against SQLite's pool of
    15. The cap stays at half the pool as a margin. Requests beyond it wait on the event loop, in arrival
    order. Returns (threads for sync routes, threads for ``asyncio.to_thread``).
    """
    pool = store.engine.pool
    size_of = getattr(pool, "size", None)
    size = int(size_of()) if callable(size_of) else 5
    capacity = size + max(0, int(getattr(pool, "_max_overflow", 0)))
    usable = max(2, capacity // 2)
    for_asyncio = max(1, usable // 3)  # the chat loop's retrieval, audit and write-back; long admin work
    for_routes = max(1, usable - for_asyncio)
    wanted = request_threads_for(request_threads, store.engine.dialect.name)
    if wanted:
        for_routes = min(for_routes, wanted)
    anyio.to_thread.current_default_thread_limiter().total_tokens = for_routes
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=for_asyncio, thread_name_prefix="sealmem-io")
    )
    return for_routes, for_asyncio


@asynccontextmanager
async def running_writeback(
    chat: ChatRuntime | None, store: MemoryStore, distiller: Distiller | None
) -> AsyncIterator[WriteBackWorker]:
    """The write-back worker conversation ingestion uses: the chat loop's when chat is on (one queue, one
    distiller), otherwise one of its own with the given distiller or the rules."""
    if chat is not None:
        yield chat.worker
        return
    worker = WriteBackWorker(store, distiller or RuleDistiller())
    worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


def mount_mcp(app: FastAPI, settings: Settings) -> Callable[[], AbstractAsyncContextManager[None]]:
    """Route the streamable-HTTP MCP endpoint (``/mcp``, :mod:`service.mcp.http`) unless ``mcp_enabled`` is
    off; returns what the lifespan enters to run its transport."""
    if not settings.mcp_enabled:
        return nullcontext
    from service.mcp.http import McpEndpoint  # the MCP SDK is imported only when it is served

    endpoint = McpEndpoint(app, max_body_bytes=settings.max_body_bytes)
    app.router.routes.append(endpoint.route)
    return endpoint.run


def mount_console(app: FastAPI, settings: Settings) -> None:
    """Serve the admin web console at ``/admin`` (:mod:`service.console`) unless ``console_enabled`` is off."""
    if not settings.console_enabled:
        return
    from starlette.staticfiles import StaticFiles

    from service.console.routes import STATIC_DIR
    from service.console.routes import router as console_router
    from service.console.security import StaticHeaders

    app.include_router(console_router)
    app.mount("/admin/static", StaticHeaders(StaticFiles(directory=STATIC_DIR)), name="console-static")


def create_app(
    settings: Settings,
    *,
    store: MemoryStore | None = None,
    embedder: Embedder | None = None,
    llm: LLMBackend | None = None,
    distiller: Distiller | None = None,
    worker_board: Path | None = None,
) -> FastAPI:
    """Build the Sealmem API.

    ``store``, ``embedder``, ``llm`` and ``distiller`` may be injected (tests pass a
    :class:`~memory_store.HashingEmbedder` and a fake LLM); an injected store is not closed by the app, one the
    app opened itself is. Without ``llm`` the chat loop loads the backend the settings describe. The chat
    routes always exist; with ``chat_enabled`` off they answer 503 and no LLM is loaded. ``worker_board``: the
    board of a server's worker processes (:mod:`service.balance`), which evens their load and orders their store work
    (:mod:`service.admission`).
    """
    metrics = Metrics()
    board = _open_board(worker_board) if worker_board is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = resolve_secret_files(settings, create=False)
        active = store if store is not None else await run_in_threadpool(open_store, resolved, embedder)
        try:
            services = build_services(resolved, active, metrics, board=board)
        except BaseException:
            if store is None:
                await run_in_threadpool(active.close)
            raise
        maintenance = Maintenance(
            active,
            persist_every=settings.persist_interval_seconds,
            purge_every=settings.purge_interval_seconds,
            also_purge=(services.console_sessions.purge_expired,),
        )
        try:
            app.state.services = services
            metrics.attach_store(active)
            bound_worker_threads(active, resolved.request_threads)
            maintenance.start()
            async with (
                mcp_running(),
                running_chat(
                    resolved,
                    store=active,
                    cache_dir=resolved.data_dir,
                    llm=llm,
                    distiller=distiller,
                ) as chat,
                running_writeback(chat, active, distiller) as writeback,
            ):
                app.state.chat = chat
                app.state.writeback = writeback
                with startup_objects_frozen():
                    log.info("sealmem ready")
                    try:
                        yield
                    finally:
                        app.state.chat = None
                        app.state.writeback = None
        finally:
            maintenance.stop()
            services.ahead.close()
            metrics.detach_store()
            if store is None:
                await run_in_threadpool(active.close)

    app = FastAPI(
        title="Sealmem",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        dependencies=[Depends(reject_unknown_query)],
        # FastAPI's native OpenTelemetry bridge looks up the global providers on every request; Sealmem exports
        # Prometheus metrics (/metrics) and does not configure OpenTelemetry, so the bridge stays off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    app.add_middleware(AuditBarrier)  # inside the request context: its status and access log see a replaced answer
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes, metrics=metrics)
    if board is not None:  # outermost: the requests in flight are counted from first to last byte
        app.add_middleware(Rebalancer, board=board, on_close=metrics.rebalanced.inc)
    app.include_router(ingest.router)
    app.include_router(memories.router)
    app.include_router(tokens.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.include_router(chat_router)
    mount_console(app, settings)
    mcp_running = mount_mcp(app, settings)
    app.state.metrics = metrics
    app.state.chat = None
    return app


def _open_board(path: Path) -> WorkerBoard | None:
    try:
        return WorkerBoard(path)
    except (OSError, RuntimeError) as exc:  # an optimisation: serve without it
        log.warning(
            "worker load board unavailable (%s); connections are not rebalanced, and each worker orders the store "
            "work of its own requests only",
            exc,
        )
        return None


def app_from_environment() -> FastAPI:
    """The app of one ``sealmem serve`` worker process: settings from ``SEALMEM_*`` (the parent process has
    already created the secret files and run the migrations)."""
    settings = Settings()
    configure_logging(settings.log_level)
    board = os.environ.get(BOARD_ENV)
    return create_app(settings, worker_board=Path(board) if board else None)
