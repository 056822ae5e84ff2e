"""The test harness of the service, chat and proof tests: the real app, built by ``create_app``.

Each app runs on real SQLite and FAISS in its own data folder, which starts from a copy of a database migrated
once per session (``migrated_db`` in tests/conftest.py). The embedder is a deterministic HashingEmbedder
(coalesced, as the service's own is) and the LLM the deterministic :class:`~tests.chat.fakes.FakeBackend`,
unless a test injects its own.
:meth:`Harness.start` runs the app in process (Starlette's TestClient); :meth:`Harness.serve` serves it with
uvicorn on 127.0.0.1 (real HTTP). :class:`Launcher` starts several, each on a fresh data folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import secrets
import shutil
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from anyio.from_thread import BlockingPortal
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import inspect, text
from starlette.types import Receive, Scope, Send

from memory_store import MemoryStore
from memory_store.coalescing import CoalescingEmbedder
from memory_store.crypto import encode_key, generate_key
from memory_store.embedder import Embedder, HashingEmbedder
from service.app import create_app
from service.chat.distill import Distiller
from service.chat.runtime import ChatRuntime
from service.llm.backend import LLMBackend
from service.services import Services
from service.settings import Settings
from tests.chat.fakes import FakeBackend, serve

T = TypeVar("T")


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def fresh_data_dir(data_dir: Path, migrated_db: Path) -> Path:
    """``data_dir`` with a copy of the migrated database in it (Alembic is the slow part of starting an app)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_db, data_dir / "sealmem.db")
    return data_dir


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings of a test app: fresh secrets, no rate limits, no periodic persist or purge of expired memories
    during a test (a purge between a request and the check of what it changed would look like its change)."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "master_key": SecretStr(encode_key(generate_key())),
        "token_secret": SecretStr(secrets.token_urlsafe(32)),
        "rate_limit_token_per_minute": 0,
        "rate_limit_key_per_minute": 0,
        "rate_limit_auth_failures_per_minute": 0,
        "persist_interval_seconds": 3600,
        "purge_interval_seconds": 3600,
    }
    values.update(overrides)
    return Settings(**values)


def coalesced_hashing(dim: int = 384) -> Embedder:
    """The deterministic HashingEmbedder, concurrent calls coalesced as the service's own embedder's are (so the
    app screens and embeds requests ahead of the request thread, as in production: ``service.ahead``)."""
    return CoalescingEmbedder(HashingEmbedder(dim))


def _build_app(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    llm: LLMBackend | None = None,
    distiller: Distiller | None = None,
) -> FastAPI:
    """The app as ``create_app`` builds it, with :func:`coalesced_hashing` and the fake LLM unless others are
    given."""
    return create_app(
        settings,
        embedder=embedder or coalesced_hashing(),
        llm=llm or FakeBackend(),
        distiller=distiller,
    )


@dataclass
class Tenant:
    """A tenant and one API key of each role (``admin_key_id`` is the id of the admin key)."""

    id: str
    name: str
    admin: str
    app: str
    reader: str
    admin_key_id: str


class _LoopRecorder:
    """An ASGI wrapper that remembers the event loop uvicorn runs the app on."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)


class Harness:
    """A started app (its lifespan running), an HTTP client to it and helpers to provision tenants, keys,
    tokens and memories, to talk to the chat loop and to snapshot the stored data."""

    def __init__(
        self,
        app: FastAPI,
        settings: Settings,
        client: httpx.Client | TestClient,
        url: str,
        *,
        portal: BlockingPortal | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.client = client
        self.url = url
        self._portal = portal
        self._loop = loop

    @classmethod
    @contextmanager
    def start(
        cls,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        llm: LLMBackend | None = None,
        distiller: Distiller | None = None,
        raise_server_exceptions: bool = True,
    ) -> Iterator[Harness]:
        """The app in process: requests go through Starlette's TestClient."""
        app = _build_app(settings, embedder=embedder, llm=llm, distiller=distiller)
        with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
            yield cls(app, settings, client, "http://testserver", portal=client.portal)

    @classmethod
    @contextmanager
    def serve(
        cls,
        settings: Settings,
        *,
        embedder: Embedder | None = None,
        llm: LLMBackend | None = None,
        distiller: Distiller | None = None,
    ) -> Iterator[Harness]:
        """The app served by uvicorn in a thread of this process; ``client`` talks real HTTP to it."""
        app = _build_app(settings, embedder=embedder, llm=llm, distiller=distiller)
        recorder = _LoopRecorder(app)
        with serve(recorder) as url, httpx.Client(base_url=url, timeout=60) as client:
            yield cls(app, settings, client, url, loop=recorder.loop)

    # ---- the app's parts ------------------------------------------------------------------------------

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    @property
    def store(self) -> MemoryStore:
        return self.services.store

    @property
    def runtime(self) -> ChatRuntime:
        runtime: ChatRuntime | None = self.app.state.chat
        assert runtime is not None, "the chat loop is disabled in this app"
        return runtime

    @property
    def backend(self) -> LLMBackend:
        """The LLM backend the chat loop runs on."""
        return self.runtime.backend

    def call(self, function: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``await function(*args)`` on the app's event loop and return its result."""
        if self._portal is not None:
            result: T = self._portal.call(function, *args)
            return result
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(function(*args), self._loop).result(timeout=60)

    # ---- provisioning ---------------------------------------------------------------------------------

    def tenant(self, name: str = "acme") -> Tenant:
        info = self.services.store.create_tenant(name=name)
        issued = self.services.keys.create(tenant_id=info.id, role="admin", name="admin", created_by="test")
        admin = issued.secret
        return Tenant(info.id, name, admin, self.key(admin, "app"), self.key(admin, "reader"), issued.info.id)

    def key(self, admin_key: str, role: str) -> str:
        response = self.client.post(
            "/v1/admin/keys", json={"role": role, "name": f"{role}-key"}, headers=bearer(admin_key)
        )
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    def token(self, key: str, subject: str, scopes: list[str], ttl: int | None = None) -> str:
        body: dict[str, Any] = {"subject": subject, "scopes": scopes}
        if ttl is not None:
            body["ttl_seconds"] = ttl
        response = self.client.post("/v1/tokens", json=body, headers=bearer(key))
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def add(self, key: str, subject: str, text: str, **fields: Any) -> dict[str, Any]:
        response = self.client.post(
            "/v1/memories", json={"subject": subject, "text": text, **fields}, headers=bearer(key)
        )
        assert response.status_code == 201, response.text
        out: dict[str, Any] = response.json()
        return out

    def count(self, tenant_id: str) -> int:
        return self.services.store.stats(tenant_id=tenant_id).memories

    # ---- the chat loop --------------------------------------------------------------------------------

    def chat(self, key: str, expect: int = 200, **body: Any) -> dict[str, Any]:
        response = self.client.post("/v1/chat", json=body, headers=bearer(key))
        assert response.status_code == expect, response.text
        out: dict[str, Any] = response.json()
        return out

    def drain(self) -> None:
        """Wait for every queued chat write-back job (they run on the app's event loop)."""
        chat: ChatRuntime | None = self.app.state.chat
        if chat is not None:
            self.call(chat.worker.drain)

    def audit(self, tenant_id: str, action: str) -> list[Any]:
        entries: list[Any] = self.services.auditor.log.entries(tenant_id=tenant_id, action=action)
        return entries

    # ---- stored data ----------------------------------------------------------------------------------

    def snapshot(self) -> str:
        return data_snapshot(self.services.store.engine)

    def index_vectors(self) -> dict[str, int]:
        store = self.services.store
        return {t.id: store.stats(tenant_id=t.id).index_vectors for t in store.list_tenants()}


class Launcher:
    """Starts harnesses, each on a fresh copy of the migrated database in a folder of its own, with the
    given settings defaults and a new ``embedder()`` unless a test passes one; all stop when ``stack`` closes."""

    def __init__(
        self,
        stack: ExitStack,
        folder: Path,
        migrated_db: Path,
        *,
        embedder: Callable[[], Embedder] = coalesced_hashing,
        **defaults: Any,
    ) -> None:
        self._stack = stack
        self._folder = folder
        self._migrated_db = migrated_db
        self._embedder = embedder
        self._defaults = defaults
        self._numbers = itertools.count()

    def settings(self, **overrides: Any) -> Settings:
        data_dir = fresh_data_dir(self._folder / f"data-{next(self._numbers)}", self._migrated_db)
        return make_settings(data_dir, **{**self._defaults, **overrides})

    def start(
        self,
        *,
        embedder: Embedder | None = None,
        llm: LLMBackend | None = None,
        distiller: Distiller | None = None,
        raise_server_exceptions: bool = True,
        **overrides: Any,
    ) -> Harness:
        harness = Harness.start(
            self.settings(**overrides),
            embedder=embedder or self._embedder(),
            llm=llm,
            distiller=distiller,
            raise_server_exceptions=raise_server_exceptions,
        )
        return self._stack.enter_context(harness)

    def serve(
        self,
        *,
        embedder: Embedder | None = None,
        llm: LLMBackend | None = None,
        distiller: Distiller | None = None,
        **overrides: Any,
    ) -> Harness:
        harness = Harness.serve(
            self.settings(**overrides), embedder=embedder or self._embedder(), llm=llm, distiller=distiller
        )
        return self._stack.enter_context(harness)


# Tables whose rows are *meant* to change on any authenticated request, even a refused one: the audit trail
# (every attempt is recorded) and keys' last-used time.
_ALWAYS_CHANGING = {"audit_records", "audit_heads", "alembic_version"}
_VOLATILE_COLUMNS = {"last_used_at"}


def data_snapshot(engine: Any) -> str:
    """A digest of every row of every data table (all but the audit trail and key last-use times)."""
    digest = hashlib.sha256()
    tables = sorted(set(inspect(engine).get_table_names()) - _ALWAYS_CHANGING)
    with engine.connect() as conn:
        for table in tables:
            columns = [c["name"] for c in inspect(engine).get_columns(table) if c["name"] not in _VOLATILE_COLUMNS]
            quoted = ", ".join(f'"{c}"' for c in columns)
            rows = conn.execute(text(f'SELECT {quoted} FROM "{table}"')).all()
            digest.update(table.encode())
            for row in sorted(repr(tuple(row)) for row in rows):
                digest.update(row.encode())
    return digest.hexdigest()
