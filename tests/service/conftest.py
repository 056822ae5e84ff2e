"""Fixtures for the REST service tests: a real app over HTTP (TestClient, httpx-based) on real SQLite and
real FAISS in ``tmp_path``, with a deterministic HashingEmbedder injected through ``create_app``."""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import create_engine

from memory_store.crypto import encode_key, generate_key
from memory_store.embedder import Embedder, HashingEmbedder
from memory_store.migrate import upgrade
from service.app import create_app
from service.services import Services
from service.settings import Settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come only from what each test passes, never from the developer's or CI's SEALMEM_* variables."""
    for name in list(os.environ):
        if name.startswith("SEALMEM_"):
            monkeypatch.delenv(name)


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "master_key": SecretStr(encode_key(generate_key())),
        "token_secret": SecretStr(secrets.token_urlsafe(32)),
        "rate_limit_per_minute": 0,
        "persist_interval_seconds": 3600,
        "chat_enabled": False,  # the chat loop has its own tests (tests/chat); no LLM load per app here
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database file migrated once per session; each test gets a copy (Alembic is the slow part)."""
    folder = tmp_path_factory.mktemp("migrated")
    engine = create_engine(f"sqlite:///{folder / 'sealmem.db'}")  # not from settings: the environment is not clean yet
    upgrade(engine)
    engine.dispose()
    return folder / "sealmem.db"


def fresh_data_dir(data_dir: Path, migrated_db: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(migrated_db, data_dir / "sealmem.db")
    return data_dir


@dataclass
class Tenant:
    id: str
    admin: str
    app: str
    reader: str


class Api:
    """The app under test, its HTTP client and helpers to provision tenants, keys, tokens and memories."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    @property
    def services(self) -> Services:
        services: Services = self.client.app.state.services  # type: ignore[attr-defined]
        return services

    def tenant(self, name: str) -> Tenant:
        info = self.services.store.create_tenant(name=name)
        admin = self.services.keys.create(tenant_id=info.id, role="admin", name="admin", created_by="test").secret
        return Tenant(id=info.id, admin=admin, app=self.key(admin, "app"), reader=self.key(admin, "reader"))

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
        result: dict[str, Any] = response.json()
        return result

    def count(self, tenant_id: str) -> int:
        return self.services.store.stats(tenant_id=tenant_id).memories


def start(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, embedder=HashingEmbedder()))


@pytest.fixture
def service_settings(tmp_path: Path, migrated_db: Path) -> Settings:
    # Not named `settings`: tests/conftest.py's store fixtures use that name for StoreSettings.
    return make_settings(fresh_data_dir(tmp_path / "data", migrated_db))


@pytest.fixture
def api(service_settings: Settings) -> Iterator[Api]:
    with start(service_settings) as client:
        yield Api(client)


@pytest.fixture
def make_api(tmp_path: Path, migrated_db: Path) -> Iterator[Callable[..., Api]]:
    """Start further apps with setting overrides (or an injected embedder); all are stopped at teardown."""
    stack = ExitStack()
    numbers = itertools.count()

    def factory(*, embedder: Embedder | None = None, raise_server_exceptions: bool = True, **overrides: Any) -> Api:
        data_dir = fresh_data_dir(tmp_path / f"data-{next(numbers)}", migrated_db)
        app = create_app(make_settings(data_dir, **overrides), embedder=embedder or HashingEmbedder())
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        return Api(stack.enter_context(client))

    with stack:
        yield factory
