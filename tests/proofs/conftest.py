"""Fixtures of the reliability and security proofs (issue 7).

In-process: the real app (``create_app``) with the chat loop mounted on a deterministic fake LLM
(``tests.chat.fakes.FakeBackend``), real SQLite and FAISS in ``tmp_path`` and a HashingEmbedder.
Out of process: ``sealmem serve`` as a real subprocess (``serve_process``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import create_engine, inspect, text

from memory_store.crypto import encode_key, generate_key
from memory_store.embedder import Embedder, HashingEmbedder
from memory_store.migrate import upgrade
from service.app import create_app
from service.chat.mount import mount_chat
from service.services import Services
from service.settings import Settings
from tests.chat.fakes import FakeBackend, serve

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

EMBED_DIM = 384


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come only from what each test passes, never from SEALMEM_* variables of the environment."""
    for name in list(os.environ):
        if name.startswith("SEALMEM_"):
            monkeypatch.delenv(name)


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


@pytest.fixture(scope="session")
def proofs_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database migrated once per session; each app gets a copy."""
    folder = tmp_path_factory.mktemp("proofs-migrated")
    engine = create_engine(f"sqlite:///{folder / 'sealmem.db'}")
    upgrade(engine)
    engine.dispose()
    return folder / "sealmem.db"


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "master_key": SecretStr(encode_key(generate_key())),
        "token_secret": SecretStr(secrets.token_urlsafe(32)),
        "rate_limit_per_minute": 0,
        "persist_interval_seconds": 3600,
        "chat_default_k": 5,
    }
    values.update(overrides)
    return Settings(**values)


def build_app(
    settings: Settings,
    *,
    backend: FakeBackend | None = None,
    embedder: Embedder | None = None,
    on_ready: Callable[[Any], None] | None = None,
) -> FastAPI:
    """The service app exactly as the factory builds it (chat mounted), the LLM swapped for the fake."""
    app = create_app(settings, embedder=embedder or HashingEmbedder(EMBED_DIM))
    mount_chat(app, settings, backend=backend or FakeBackend(), on_ready=on_ready)
    return app


@dataclass
class Tenant:
    id: str
    name: str
    admin: str
    app: str
    reader: str
    admin_key_id: str = ""


class Harness:
    """A started app, its client and helpers to provision tenants, keys and tokens and to snapshot data."""

    def __init__(self, client: TestClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    @property
    def app(self) -> FastAPI:
        app: FastAPI = self.client.app  # type: ignore[assignment]
        return app

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    def tenant(self, name: str) -> Tenant:
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

    def drain(self) -> None:
        """Wait for queued chat write-back jobs (they run on the app's event loop)."""
        chat = self.app.state.chat
        if chat is not None:
            self.client.portal.call(chat.worker.drain)  # type: ignore[union-attr]

    def snapshot(self) -> str:
        return data_snapshot(self.services.store.engine)

    def index_vectors(self) -> dict[str, int]:
        store = self.services.store
        return {t.id: store.stats(tenant_id=t.id).index_vectors for t in store.list_tenants()}


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


@pytest.fixture
def make_harness(tmp_path: Path, proofs_db: Path) -> Iterator[Callable[..., Harness]]:
    """Start apps (chat mounted on a fake LLM) with setting overrides; all are stopped at teardown."""
    stack = ExitStack()
    counter = iter(range(10_000))

    def factory(*, backend: FakeBackend | None = None, **overrides: Any) -> Harness:
        data_dir = tmp_path / f"data-{next(counter)}"
        data_dir.mkdir()
        shutil.copyfile(proofs_db, data_dir / "sealmem.db")
        settings = make_settings(data_dir, **overrides)
        app = build_app(settings, backend=backend)
        client = stack.enter_context(TestClient(app, raise_server_exceptions=False))
        return Harness(client, settings)

    with stack:
        yield factory


class Served(Harness):
    """The app served by uvicorn on 127.0.0.1 in a thread (real HTTP); ``client`` is an httpx client."""

    def __init__(self, app: FastAPI, settings: Settings, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self._app = app
        self.settings = settings
        self.url = url
        self.loop = loop
        self.client = httpx.Client(base_url=url, timeout=60)  # type: ignore[assignment]

    @property
    def app(self) -> FastAPI:
        return self._app

    def drain(self) -> None:
        chat = self._app.state.chat
        if chat is not None:
            asyncio.run_coroutine_threadsafe(chat.worker.drain(), self.loop).result(timeout=60)


@pytest.fixture
def make_served(tmp_path: Path, proofs_db: Path) -> Iterator[Callable[..., Served]]:
    """Like ``make_harness``, but over real HTTP: uvicorn in a thread of this process."""
    stack = ExitStack()
    counter = iter(range(10_000))

    def factory(*, backend: FakeBackend | None = None, **overrides: Any) -> Served:
        data_dir = tmp_path / f"served-{next(counter)}"
        data_dir.mkdir()
        shutil.copyfile(proofs_db, data_dir / "sealmem.db")
        settings = make_settings(data_dir, **overrides)
        loops: list[asyncio.AbstractEventLoop] = []
        app = build_app(settings, backend=backend, on_ready=lambda _: loops.append(asyncio.get_running_loop()))
        url = stack.enter_context(serve(app))
        served = Served(app, settings, url, loops[0])
        stack.callback(served.client.close)
        return served

    with stack:
        yield factory
