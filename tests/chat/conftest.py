"""Fixtures for the chat tests: the real service app (``tests.harness.Harness``, built by ``create_app``) on real
SQLite and FAISS in ``tmp_path``; the LLM is a deterministic fake unless a test injects another."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from memory_store import NewMemory
from service.chat.settings import ChatSettings
from tests.chat.fakes import FakeBackend
from tests.harness import Harness, Launcher, fresh_data_dir, make_settings

# Read at import: the autouse ``_clean_environment`` fixture removes every SEALMEM_* variable during tests.
LLM_CACHE = Path(os.environ.get("SEALMEM_TEST_LLM_CACHE", "/tmp/sealmem-llm-cache"))


def chat_settings(**overrides: Any) -> ChatSettings:
    """Chat settings alone (for building a backend outside an app)."""
    values: dict[str, Any] = {"llm_backend": "local", "chat_default_k": 5}
    values.update(overrides)
    return ChatSettings(**values)


@pytest.fixture
def make_chat(tmp_path: Path, migrated_db: Path) -> Iterator[Callable[..., Harness]]:
    """Start apps with setting overrides or injected ``llm``, ``embedder``, ``distiller``; all stop at teardown."""
    with ExitStack() as stack:
        yield Launcher(stack, tmp_path, migrated_db).start


@pytest.fixture
def harness(make_chat: Callable[..., Harness]) -> Harness:
    return make_chat()


@pytest.fixture
def fake(harness: Harness) -> FakeBackend:
    assert isinstance(harness.backend, FakeBackend)
    return harness.backend


@dataclass
class Server:
    """An app served over real HTTP with a tenant, for clients such as the official ``openai`` package."""

    url: str
    app: FastAPI
    fake: FakeBackend
    tenant_id: str
    app_key: str
    reader_key: str
    harness: Harness

    def client(self, key: str | None = None, **kwargs: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.app_key, max_retries=0, **kwargs)

    def add(self, subject: str, text: str) -> str:
        store = self.harness.store
        return str(store.add(tenant_id=self.tenant_id, item=NewMemory(subject=subject, text=text)).id)

    def token(self, subject: str, scopes: list[str]) -> str:
        return self.harness.token(self.app_key, subject, scopes)


@pytest.fixture
def server(tmp_path: Path, migrated_db: Path) -> Iterator[Server]:
    fake = FakeBackend()
    with Harness.serve(make_settings(fresh_data_dir(tmp_path / "data", migrated_db)), llm=fake) as served:
        tenant = served.tenant("acme")
        yield Server(served.url, served.app, fake, tenant.id, tenant.app, tenant.reader, served)
