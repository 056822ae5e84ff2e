"""Shared fixtures: every store test runs on real SQLite and on a real PostgreSQL (pgserver)."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from memory_store import HashingEmbedder, MasterKey, MemoryStore, StoreSettings, generate_key
from memory_store.crypto import encode_key
from memory_store.db import make_engine
from memory_store.embedder import Embedder
from memory_store.migrate import upgrade
from tests.recording import RecordingEmbedder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come only from what each test passes, never from the developer's or CI's SEALMEM_* variables."""
    for name in list(os.environ):
        if name.startswith("SEALMEM_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One private PostgreSQL 16 + pgvector for the session.

    Its data directory is deliberately outside pytest's basetemp: pytest prunes old basetemp folders when a
    newer session starts, which would delete a live cluster under a concurrent run.
    """
    pgserver = pytest.importorskip("pgserver")
    folder = tempfile.mkdtemp(prefix="sealmem-pg-")
    server = pgserver.get_server(folder, cleanup_mode="stop")
    yield server
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


def _pg_url(server: Any, database: str) -> str:
    base = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    return base.replace("/postgres?", f"/{database}?", 1)


@pytest.fixture(scope="session")
def pg_template(pg_server: Any) -> str:
    """A database migrated once; each test clones it (CREATE DATABASE ... TEMPLATE is fast)."""
    admin = create_engine(_pg_url(pg_server, "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("CREATE DATABASE sealmem_template"))
    engine = create_engine(_pg_url(pg_server, "sealmem_template"))
    with engine.connect() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        conn.commit()
    upgrade(engine)
    engine.dispose()
    admin.dispose()
    return "sealmem_template"


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once per session; each store or app under test starts from a copy.

    ``database_url`` is given here because session fixtures run before ``_clean_environment``.
    """
    folder = tmp_path_factory.mktemp("migrated")
    engine = make_engine(StoreSettings(data_dir=folder, database_url=None))
    upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return folder / "sealmem.db"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("pgvector", marks=pytest.mark.postgres),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    """sqlite = SQLite + FAISS; postgres = PostgreSQL + FAISS; pgvector = PostgreSQL + pgvector."""
    return str(request.param)


@pytest.fixture
def faiss_only(backend: str) -> None:
    if backend == "pgvector":
        pytest.skip("exercises the FAISS index files")


@pytest.fixture
def database_url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str | None:
    """None means the default SQLite file in the data dir (already migrated)."""
    if backend == "sqlite":
        data = tmp_path / "data"
        data.mkdir()
        shutil.copy(request.getfixturevalue("migrated_db"), data / "sealmem.db")
        return None
    server = request.getfixturevalue("pg_server")
    template = request.getfixturevalue("pg_template")
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(_pg_url(server, "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE {template}'))
    admin.dispose()
    return _pg_url(server, name)


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey(generate_key())


@pytest.fixture
def settings(tmp_path: Path, backend: str, database_url: str | None, master_key: MasterKey) -> StoreSettings:
    return StoreSettings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        vector_backend="pgvector" if backend == "pgvector" else "faiss",
        master_key=encode_key(master_key.material),  # type: ignore[arg-type]
    )


@pytest.fixture
def embedder() -> Embedder:
    return HashingEmbedder(dim=384)


@pytest.fixture
def open_store(settings: StoreSettings, embedder: Embedder) -> Iterator[Callable[..., MemoryStore]]:
    """Open (another) store on the same database; all are closed at teardown."""
    opened: list[MemoryStore] = []

    def _open(*, key: MasterKey | None = None, embedder: Embedder = embedder, **overrides: Any) -> MemoryStore:
        store_settings = settings.model_copy(update=overrides) if overrides else settings
        master = key or MasterKey(bytes.fromhex(_hex(store_settings)))
        store = MemoryStore.open(store_settings, master_key=master, embedder=embedder)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.engine.dispose()


def _hex(settings: StoreSettings) -> str:
    import base64

    assert settings.master_key is not None
    return base64.b64decode(settings.master_key.get_secret_value()).hex()


@pytest.fixture
def store(open_store: Callable[..., MemoryStore]) -> MemoryStore:
    return open_store()


@pytest.fixture
def tenant_id(store: MemoryStore) -> str:
    return store.create_tenant(name="acme").id


@pytest.fixture
def recording() -> RecordingEmbedder:
    return RecordingEmbedder()


@pytest.fixture
def recording_store(open_store: Callable[..., MemoryStore], recording: RecordingEmbedder) -> MemoryStore:
    """A store whose embedder records every text it embeds."""
    return open_store(embedder=recording)


@pytest.fixture(scope="session")
def onnx(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The real all-MiniLM-L6-v2 on ONNX Runtime, exported once per test session (tests where the model and
    its calibrated relevance matter)."""
    from memory_store.onnx_embedder import OnnxEmbedder

    return OnnxEmbedder(cache_dir=tmp_path_factory.mktemp("models"))
