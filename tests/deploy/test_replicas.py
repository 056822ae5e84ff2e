"""Two real `sealmem serve` processes (started by the image's entrypoint, each with its own data directory, as two
containers would be) on one PostgreSQL: they migrate concurrently on a fresh database, a memory written through one
is found by search through the other at once, a deletion and a forgotten subject are gone from the other at once.
Run for both vector backends: pgvector (shared vectors in PostgreSQL) and faiss (each replica follows the SQL change
log before it searches)."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from memory_store import HashingEmbedder, MasterKey, MemoryStore, StoreSettings, generate_key
from memory_store.db import make_engine
from memory_store.migrate import upgrade
from tests.deploy.conftest import ENTRYPOINT, clean_env, free_port, http, write_secrets

pytestmark = pytest.mark.postgres


def pg_url(server: Any, database: str) -> str:
    base = str(server.get_uri()).replace("postgresql://", "postgresql+psycopg://", 1)
    return base.replace("/postgres?", f"/{database}?", 1)


def call(base: str, key: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    data = json.dumps(body).encode() if body is not None else None
    status, raw = http(method, base + path, data, headers)
    return status, (json.loads(raw) if raw else None)


def search(base: str, key: str, subject: str, query: str) -> list[str]:
    """Texts found, best first; an unknown (or forgotten) subject has none."""
    status, body = call(base, key, "POST", "/v1/memories/search", {"subject": subject, "query": query, "k": 10})
    if status == 404 and body["error"]["code"] == "not_found":
        return []
    assert status == 200, body
    return [hit["text"] for hit in body["results"]]


@pytest.fixture
def app_database(pg_server: Any, tmp_path: Path) -> tuple[str, Path]:
    """A fresh database owned by a password-protected, non-superuser role, as in docker-compose.yml: the URL has no
    password, the password is in a file (PGPASSWORD_FILE), and a superuser created the vector extension."""
    role = f"sealmem_{uuid.uuid4().hex[:8]}"
    password = secrets.token_hex(16)
    admin = create_engine(pg_url(pg_server, "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        hba = Path(conn.execute(text("SHOW hba_file")).scalar_one())
        hba.write_text(f"local all {role} scram-sha-256\n" + hba.read_text(encoding="utf-8"), encoding="utf-8")
        conn.execute(text("SELECT pg_reload_conf()"))
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(text(f"CREATE DATABASE {role} OWNER {role}"))
    admin.dispose()
    ext = create_engine(pg_url(pg_server, role), isolation_level="AUTOCOMMIT")
    with ext.connect() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    ext.dispose()
    url = pg_url(pg_server, role).replace("postgresql+psycopg://postgres:@", f"postgresql+psycopg://{role}@", 1)
    assert role in url and password not in url
    with pytest.raises(OperationalError, match="password"):  # the password is really required
        create_engine(url).connect().close()
    secret = tmp_path / "pg_password"
    secret.write_text(password + "\n", encoding="utf-8")
    return url, secret


@pytest.mark.slow
@pytest.mark.parametrize("vector_backend", ["pgvector", "faiss"])
def test_two_replicas_share_one_postgres(
    vector_backend: str, app_database: tuple[str, Path], tmp_path: Path, start_server
) -> None:
    url, password_file = app_database
    shared = {
        "SEALMEM_DATABASE_URL": url,
        "SEALMEM_VECTOR_BACKEND": vector_backend,
        "SEALMEM_HOST": "127.0.0.1",
        "SEALMEM_RATE_LIMIT_TOKEN_PER_MINUTE": "0",
        "SEALMEM_RATE_LIMIT_KEY_PER_MINUTE": "0",
        "SEALMEM_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE": "0",
        "SEALMEM_CHAT_ENABLED": "false",  # the LLM is not what this test is about
        "PGPASSWORD_FILE": str(password_file),
        **write_secrets(tmp_path / "secrets"),
    }
    servers = []
    for name in ("a", "b"):
        # One after the other: replicas started together on an EMPTY database can still race on binding the master
        # key (see test_replicas_starting_together_bind_the_master_key_once below).
        port = free_port()
        env = clean_env(**shared, SEALMEM_DATA_DIR=str(tmp_path / name), SEALMEM_PORT=str(port))
        servers.append(start_server([str(ENTRYPOINT)], env, port))
        servers[-1].wait_ready()
    a, b = (s.url for s in servers)

    created = subprocess.run(  # an operator command through the entrypoint, as `docker-compose exec` would
        [str(ENTRYPOINT), "tenant", "create", "acme"],
        env=clean_env(**shared, SEALMEM_DATA_DIR=str(tmp_path / "cli")),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert created.returncode == 0, created.stderr[-4000:]
    key = json.loads(created.stdout.strip().splitlines()[-1])["admin_key"]

    # Both replicas have the tenant's index in use before the writes below (the faiss case must catch up).
    status, _ = call(a, key, "POST", "/v1/memories", {"subject": "carol", "text": "Carol plays the cello."})
    assert status == 201
    for base in (a, b):
        assert search(base, key, "carol", "music") == ["Carol plays the cello."]
        assert search(base, key, "alice", "dog") == []

    status, dog = call(a, key, "POST", "/v1/memories", {"subject": "alice", "text": "Alice's dog is named Biscuit."})
    assert status == 201, dog
    status, _ = call(a, key, "POST", "/v1/memories", {"subject": "alice", "text": "Alice works as a nurse in Lyon."})
    assert status == 201
    status, _ = call(b, key, "POST", "/v1/memories", {"subject": "bob", "text": "Bob's dog is a beagle called Max."})
    assert status == 201

    # Written through A, found through B at once (and the other way round).
    assert search(b, key, "alice", "what is the name of the dog?")[0] == "Alice's dog is named Biscuit."
    assert search(a, key, "bob", "which dog does he have?") == ["Bob's dog is a beagle called Max."]

    # Deleted through B: gone from A.
    status, _ = call(b, key, "DELETE", f"/v1/memories/{dog['id']}")
    assert status == 204
    assert "Alice's dog is named Biscuit." not in search(a, key, "alice", "what is the name of the dog?")
    status, _ = call(a, key, "GET", f"/v1/memories/{dog['id']}")
    assert status == 404

    # Forgotten through A: nothing of alice is left through B; bob is untouched.
    status, body = call(a, key, "DELETE", "/v1/admin/subjects/alice")
    assert status == 200 and body["memories_deleted"] == 1, body
    assert search(b, key, "alice", "nurse in Lyon") == []
    status, page = call(b, key, "GET", "/v1/memories?subject=alice")
    assert (status, page["error"]["code"]) == (404, "not_found") if status != 200 else page["items"] == []
    assert search(b, key, "bob", "beagle") == ["Bob's dog is a beagle called Max."]
    assert search(a, key, "bob", "beagle") == ["Bob's dog is a beagle called Max."]

    for server in servers:
        assert "Traceback" not in server.log_text(), server.log_text()[-4000:]


def open_together(settings: StoreSettings, keys: list[MasterKey]) -> list[str]:
    """Open one store per key at the same instant, each in its own thread; returns "ok" or the exception name."""
    barrier = threading.Barrier(len(keys))
    outcomes: list[str] = []

    def open_one(key: MasterKey) -> None:
        barrier.wait()
        try:
            MemoryStore.open(settings, master_key=key, embedder=HashingEmbedder(384)).close()
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=open_one, args=(k,)) for k in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def test_replicas_starting_together_bind_the_master_key_once(pg_server: Any, tmp_path: Path) -> None:
    """Replicas started together on a fresh database: all with the same key start; a replica with another key is
    refused with WrongMasterKeyError, never an integrity error. Threads stand in for processes (same SQL)."""
    for attempt in range(4):
        database = f"race_{uuid.uuid4().hex[:8]}"
        admin = create_engine(pg_url(pg_server, "postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{database}"'))
        admin.dispose()
        settings = StoreSettings(data_dir=tmp_path / f"d{attempt}", database_url=pg_url(pg_server, database))
        engine = make_engine(settings)
        upgrade(engine)
        engine.dispose()
        keys = [MasterKey(generate_key())] * 3 if attempt % 2 == 0 else [MasterKey(generate_key()) for _ in range(2)]
        outcomes = open_together(settings, keys)
        expected = ["ok"] * 3 if attempt % 2 == 0 else ["WrongMasterKeyError", "ok"]
        assert sorted(outcomes) == sorted(expected), outcomes
