"""Fixtures for the chat tests: the real service app (``create_app``) with the chat loop mounted, on real
SQLite and FAISS in ``tmp_path``; the LLM is a deterministic fake unless a test says otherwise."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from memory_store import MemoryStore
from memory_store.crypto import encode_key, generate_key
from memory_store.db import make_engine
from memory_store.embedder import Embedder, HashingEmbedder
from memory_store.migrate import upgrade
from service.app import create_app
from service.chat.distill import Distiller
from service.chat.mount import mount_chat
from service.chat.runtime import ChatRuntime
from service.chat.settings import ChatSettings
from service.llm.backend import LLMBackend
from service.settings import Settings
from tests.chat.fakes import FakeBackend, serve

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
LLM_CACHE = Path(os.environ.get("SEALMEM_TEST_LLM_CACHE", "/tmp/sealmem-llm-cache"))


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


@pytest.fixture(scope="session")
def chat_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chat-migrated")
    engine = make_engine(Settings(data_dir=folder))
    upgrade(engine)
    engine.dispose()
    return folder / "sealmem.db"


def service_settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        master_key=SecretStr(encode_key(generate_key())),
        token_secret=SecretStr(secrets.token_urlsafe(32)),
        rate_limit_per_minute=0,
        persist_interval_seconds=3600,
    )


def chat_settings(**overrides: Any) -> ChatSettings:
    values: dict[str, Any] = {"llm_backend": "local", "chat_default_k": 5}
    values.update(overrides)
    return ChatSettings(**values)


@dataclass
class Keys:
    tenant_id: str
    admin: str
    app: str
    reader: str


class ChatHarness:
    """The app, its client, the chat runtime and helpers to provision keys and tokens."""

    def __init__(self, client: TestClient, backend: LLMBackend) -> None:
        self.client = client
        self.backend = backend

    @property
    def app(self) -> FastAPI:
        app: FastAPI = self.client.app  # type: ignore[assignment]
        return app

    @property
    def runtime(self) -> ChatRuntime:
        runtime: ChatRuntime = self.app.state.chat
        return runtime

    @property
    def store(self) -> MemoryStore:
        store: MemoryStore = self.app.state.services.store
        return store

    def tenant(self, name: str = "acme") -> Keys:
        services = self.app.state.services
        info = services.store.create_tenant(name=name)
        admin = services.keys.create(tenant_id=info.id, role="admin", name="admin", created_by="test").secret
        return Keys(info.id, admin, self.key(admin, "app"), self.key(admin, "reader"))

    def key(self, admin_key: str, role: str) -> str:
        response = self.client.post(
            "/v1/admin/keys", json={"role": role, "name": f"{role}-key"}, headers=bearer(admin_key)
        )
        assert response.status_code == 201, response.text
        return str(response.json()["key"])

    def token(self, key: str, subject: str, scopes: list[str]) -> str:
        response = self.client.post("/v1/tokens", json={"subject": subject, "scopes": scopes}, headers=bearer(key))
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def add(self, key: str, subject: str, text: str, **fields: Any) -> dict[str, Any]:
        response = self.client.post(
            "/v1/memories", json={"subject": subject, "text": text, **fields}, headers=bearer(key)
        )
        assert response.status_code == 201, response.text
        out: dict[str, Any] = response.json()
        return out

    def chat(self, key: str, expect: int = 200, **body: Any) -> dict[str, Any]:
        response = self.client.post("/v1/chat", json=body, headers=bearer(key))
        assert response.status_code == expect, response.text
        out: dict[str, Any] = response.json()
        return out

    def drain(self) -> None:
        """Wait for every queued write-back job (they run on the app's event loop)."""
        self.client.portal.call(self.runtime.worker.drain)  # type: ignore[union-attr]

    def audit(self, tenant_id: str, action: str) -> list[Any]:
        entries: list[Any] = self.app.state.services.auditor.log.entries(tenant_id=tenant_id, action=action)
        return entries


def build_app(
    data_dir: Path,
    *,
    backend: LLMBackend,
    embedder: Embedder | None = None,
    distiller: Distiller | None = None,
    **chat_overrides: Any,
) -> FastAPI:
    app = create_app(service_settings(data_dir), embedder=embedder or HashingEmbedder())
    mount_chat(app, chat_settings(**chat_overrides), backend=backend, distiller=distiller)
    return app


@pytest.fixture
def make_chat(tmp_path: Path, chat_db: Path) -> Iterator[Callable[..., ChatHarness]]:
    stack = ExitStack()
    counter = iter(range(1000))

    def factory(
        *,
        backend: LLMBackend | None = None,
        embedder: Embedder | None = None,
        distiller: Distiller | None = None,
        **chat_overrides: Any,
    ) -> ChatHarness:
        data_dir = tmp_path / f"data-{next(counter)}"
        data_dir.mkdir()
        shutil.copyfile(chat_db, data_dir / "sealmem.db")
        backend = backend or FakeBackend()
        app = build_app(data_dir, backend=backend, embedder=embedder, distiller=distiller, **chat_overrides)
        client = stack.enter_context(TestClient(app))
        return ChatHarness(client, backend)

    with stack:
        yield factory


@pytest.fixture
def harness(make_chat: Callable[..., ChatHarness]) -> ChatHarness:
    return make_chat()


@pytest.fixture
def fake(harness: ChatHarness) -> FakeBackend:
    assert isinstance(harness.backend, FakeBackend)
    return harness.backend


@dataclass
class Server:
    url: str
    app: FastAPI
    fake: FakeBackend
    tenant_id: str
    app_key: str
    reader_key: str

    def client(self, key: str | None = None, **kwargs: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.app_key, max_retries=0, **kwargs)

    def add(self, subject: str, text: str) -> str:
        from memory_store import NewMemory

        store = self.app.state.services.store
        return str(store.add(tenant_id=self.tenant_id, item=NewMemory(subject=subject, text=text)).id)

    def token(self, subject: str, scopes: list[str]) -> str:
        import httpx

        response = httpx.post(
            self.url + "/v1/tokens", json={"subject": subject, "scopes": scopes},
            headers={"Authorization": f"Bearer {self.app_key}"},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["token"])


@pytest.fixture
def server(tmp_path: Path, chat_db: Path) -> Iterator[Server]:
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(chat_db, data / "sealmem.db")
    fake = FakeBackend()
    app = build_app(data, backend=fake)
    with serve(app) as url:
        services = app.state.services
        info = services.store.create_tenant(name="acme")
        admin = services.keys.create(tenant_id=info.id, role="admin", name="a", created_by="test").secret
        app_key = services.keys.create(tenant_id=info.id, role="app", name="b", created_by="test").secret
        reader = services.keys.create(tenant_id=info.id, role="reader", name="c", created_by="test").secret
        assert admin
        yield Server(url, app, fake, info.id, app_key, reader)
