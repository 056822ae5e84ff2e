"""One real ``sealmem serve`` process for the client's tests (started once per session).

It is the repository's process harness (``tests/proofs/process.py``: the real CLI with a hashing embedder, so it
starts in seconds), with chat on an OpenAI-compatible backend served by the scripted fake of
``tests/chat/openai_server.py`` in a thread of this process, and a small rate limit for subject tokens (60 a
minute, burst 5: ``Retry-After: 1``) so retries can be shown against real 429 answers. API keys are not limited.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sealmem_client_live import Live
from tests.chat.fakes import serve
from tests.chat.openai_server import Script, fake_openai_app
from tests.proofs.process import ServerProcess, create_tenant, secret_env

from sealmem_client import Sealmem

TOKEN_PER_MINUTE = 60
TOKEN_BURST = 5


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("sealmem-client")
    with serve(fake_openai_app(Script(), model="tiny-remote")) as llm_url:
        env = secret_env(
            root / "secrets",
            root / "data",
            SEALMEM_CHAT_ENABLED="true",
            SEALMEM_LLM_BACKEND="openai",
            SEALMEM_OPENAI_BASE_URL=llm_url + "/v1",
            SEALMEM_OPENAI_MODEL="tiny-remote",
            SEALMEM_RATE_LIMIT_TOKEN_PER_MINUTE=str(TOKEN_PER_MINUTE),
            SEALMEM_RATE_LIMIT_TOKEN_BURST=str(TOKEN_BURST),
        )
        admin_key = create_tenant(env, "acme")["admin_key"]
        server = ServerProcess(env, root / "serve.log").start()
        try:
            with Sealmem(server.url, admin_key) as admin:
                app_key = admin.admin.keys.create("app", "backend").key
                reader_key = admin.admin.keys.create("reader", "dashboard").key
            yield Live(server.url, admin_key, app_key, reader_key, server)
        finally:
            server.stop()


@pytest.fixture
def app(live: Live) -> Iterator[Sealmem]:
    with Sealmem(live.url, live.app_key) as client:
        yield client


@pytest.fixture
def admin(live: Live) -> Iterator[Sealmem]:
    with Sealmem(live.url, live.admin_key) as client:
        yield client
