"""Database round trips per request: statements, connection checkouts and the time spent in them, per operation,
for the real app on PostgreSQL (pgserver, started here) or SQLite. JSON on stdout.

    python bench/db_round_trips.py [--database postgres|pgvector|sqlite] [--requests 200] [--out FILE]

The app is built by ``create_app`` and driven in process (Starlette's TestClient, one request at a time, so each
statement belongs to the request in flight). Statements are timed from SQLAlchemy's cursor events
(``pg_stat_statements`` is not in the pgserver build) and grouped by their first words; a connection checkout
counts separately because ``pool_pre_ping`` costs a round trip of its own. The embedder is the deterministic
hashing one: the model is not what this measures. Seeded: 20 subjects x 40 memories.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402
from pydantic import SecretStr  # noqa: E402
from sqlalchemy import event, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from bench import postgres  # noqa: E402
from memory_store.crypto import encode_key, generate_key  # noqa: E402
from memory_store.db import make_engine  # noqa: E402
from memory_store.embedder import HashingEmbedder  # noqa: E402
from memory_store.migrate import upgrade  # noqa: E402
from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

WORDS = ["dog", "cat", "Lisbon", "Porto", "jazz", "chess", "sushi", "hiking", "poetry", "tennis", "baking"]


class Recorder:
    """Statements and checkouts of every engine, attributed to the operation being measured."""

    def __init__(self) -> None:
        self.operation: str | None = None
        self.statements: dict[str, Counter[str]] = defaultdict(Counter)
        self.seconds: dict[str, float] = defaultdict(float)
        self.shape_seconds: dict[str, Counter[str]] = defaultdict(Counter)
        self.checkouts: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.wall: dict[str, list[float]] = defaultdict(list)

    def attach(self, engine: Engine) -> None:
        @event.listens_for(engine, "before_cursor_execute")
        def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            conn.info.setdefault("sealmem_t0", []).append(time.perf_counter())

        @event.listens_for(engine, "after_cursor_execute")
        def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            started = conn.info["sealmem_t0"].pop()
            if self.operation is not None:
                shape, spent = _shape(statement), time.perf_counter() - started
                self.statements[self.operation][shape] += 1
                self.shape_seconds[self.operation][shape] += spent
                self.seconds[self.operation] += spent

        @event.listens_for(engine, "checkout")
        def checkout(*args: Any) -> None:
            if self.operation is not None:
                self.checkouts[self.operation] += 1

    @contextmanager
    def measuring(self, operation: str) -> Iterator[None]:
        self.operation = operation
        self.requests[operation] += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self.wall[operation].append(time.perf_counter() - started)
            self.operation = None

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for op, n in self.requests.items():
            shapes = self.statements[op]
            out[op] = {
                "requests": n,
                "statements_per_request": round(sum(shapes.values()) / n, 2),
                "checkouts_per_request": round(self.checkouts[op] / n, 2),
                "db_ms_per_request": round(self.seconds[op] * 1000 / n, 2),
                "wall_ms_p50": round(statistics.median(self.wall[op]) * 1000, 2),
                "statements": {
                    shape: {
                        "per_request": round(c / n, 2),
                        "ms_per_request": round(self.shape_seconds[op][shape] * 1000 / n, 2),
                    }
                    for shape, c in shapes.most_common()
                },
            }
        return out


def _shape(statement: str) -> str:
    """``SELECT memories``, ``INSERT audit_log``...: the verb and first table named."""
    words = statement.split()
    verb = words[0].upper() if words else "?"
    match = re.search(r"\b(?:FROM|INTO|UPDATE|TABLE)\s+\"?(\w+)", statement, re.IGNORECASE)
    return f"{verb} {match.group(1)}" if match else verb


def _postgres(work: Path, shared_buffers: str) -> tuple[str, Any]:
    server, base = postgres.start(work / "pg", shared_buffers)
    return postgres.database(base, "rt"), server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["postgres", "pgvector", "sqlite"], default="postgres")
    postgres.add_argument(parser)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sealmem-rt-"))
    url, server = (None, None) if args.database == "sqlite" else _postgres(work, args.pg_shared_buffers)
    settings = Settings(
        data_dir=work / "data",
        database_url=url,
        vector_backend="pgvector" if args.database == "pgvector" else "faiss",
        master_key=SecretStr(encode_key(generate_key())),
        token_secret=SecretStr(secrets.token_urlsafe(32)),
        rate_limit_token_per_minute=0,
        rate_limit_key_per_minute=0,
        rate_limit_auth_failures_per_minute=0,
        chat_enabled=False,
        persist_interval_seconds=3600,
        purge_interval_seconds=3600,
    )
    engine = make_engine(settings)
    if url is not None:
        with engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    upgrade(engine)
    engine.dispose()
    recorder = Recorder()
    rng = random.Random(0)
    try:
        app = create_app(settings, embedder=HashingEmbedder(384))
        with TestClient(app) as client:
            services = app.state.services
            recorder.attach(services.store.engine)
            tenant = services.store.create_tenant(name="bench")
            admin_key = services.keys.create(tenant_id=tenant.id, role="admin", name="admin", created_by="bench").secret
            headers = {"Authorization": f"Bearer {admin_key}"}
            app_key = client.post("/v1/admin/keys", json={"role": "app", "name": "bench"}, headers=headers).json()[
                "key"
            ]
            headers = {"Authorization": f"Bearer {app_key}"}
            subjects = [f"user-{i}" for i in range(20)]
            for s in subjects:
                batch = [
                    {"subject": s, "text": f"I like {rng.choice(WORDS)} and {rng.choice(WORDS)}"} for _ in range(40)
                ]
                client.post("/v1/memories/batch", json={"memories": batch}, headers=headers).raise_for_status()
            for i in range(args.requests):
                subject = rng.choice(subjects)
                a, b = rng.choice(WORDS), rng.choice(WORDS)
                with recorder.measuring("search"):
                    client.post(
                        "/v1/memories/search",
                        json={"subject": subject, "query": f"what about {a} and {b}? {i}", "k": 10},
                        headers=headers,
                    ).raise_for_status()
                with recorder.measuring("add"):
                    client.post(
                        "/v1/memories",
                        json={"subject": subject, "text": f"I tried {a} with {b} again (note {i})"},
                        headers=headers,
                    ).raise_for_status()
        report = {"database": args.database, "operations": recorder.report()}
    finally:
        if server is not None:
            server.cleanup()
    text_out = json.dumps(report, indent=2)
    print(text_out)
    if args.out:
        args.out.write_text(text_out + "\n")


if __name__ == "__main__":
    main()
