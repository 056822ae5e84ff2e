"""Crash safety of a real ``sealmem serve`` process: concurrent writers, ``kill -9`` at a random moment,
restart, and every write the server acknowledged (201) is present, decryptable and searchable; nothing half
written is visible; the index and SQL agree; the audit chain still verifies. Several rounds on the same data
directory, each killed at another moment (index persistence is made frequent, so kills also land while index
files are being written).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.harness import bearer
from tests.proofs.process import ServerProcess, create_tenant, secret_env

pytestmark = pytest.mark.slow

ROUNDS = 4
WRITERS = 8
SUBJECTS = ("ana", "ben", "cai")


@dataclass
class Ledger:
    """What the writers sent, and what the server acknowledged."""

    acknowledged: dict[str, str] = field(default_factory=dict)  # memory id -> text
    unknown: set[str] = field(default_factory=set)  # texts sent without an answer (in flight at the kill)
    lock: threading.Lock = field(default_factory=threading.Lock)


def writer(url: str, key: str, tag: str, ledger: Ledger, stop: threading.Event) -> None:
    n = 0
    with httpx.Client(base_url=url, timeout=30, headers=bearer(key)) as client:
        while not stop.is_set():
            n += 1
            batch = n % 3 == 0
            texts = [f"{tag} note {n} item {i} token{tag}x{n}x{i}" for i in range(3 if batch else 1)]
            subject = SUBJECTS[n % len(SUBJECTS)]
            items = [{"subject": subject, "text": t, "metadata": {"n": n}} for t in texts]
            body = {"memories": items} if batch else items[0]
            try:
                response = client.post("/v1/memories", json=body)
            except httpx.TransportError:
                with ledger.lock:
                    ledger.unknown.update(texts)
                return
            assert response.status_code == 201, response.text
            created = response.json()["memories"] if batch else [response.json()]
            with ledger.lock:
                for memory in created:
                    ledger.acknowledged[memory["id"]] = memory["text"]


def verify(server: ServerProcess, admin: str, ledger: Ledger) -> None:
    with server.client(headers=bearer(admin)) as client:
        # Present and decryptable: read back one by one.
        for memory_id, text in ledger.acknowledged.items():
            got = client.get(f"/v1/memories/{memory_id}")
            assert got.status_code == 200, (memory_id, got.text)
            assert got.json()["text"] == text
        # Nothing half-written: everything stored is one complete write we sent (acknowledged or in flight).
        sent = set(ledger.acknowledged.values()) | ledger.unknown
        stored: dict[str, str] = {}
        for subject in SUBJECTS:
            cursor = None
            while True:
                params: dict[str, str | int] = {"subject": subject, "limit": 200}
                if cursor:
                    params["cursor"] = cursor
                page = client.get("/v1/memories", params=params)
                if page.status_code == 404:
                    break
                assert page.status_code == 200, page.text
                stored.update({m["id"]: m["text"] for m in page.json()["items"]})
                cursor = page.json()["next_cursor"]
                if not cursor:
                    break
        assert set(stored.values()) <= sent
        assert set(ledger.acknowledged) <= set(stored)
        # A batch is atomic: all of its items, or none.
        for text in ledger.unknown:
            sibling_prefix = text.rsplit(" item ", 1)[0]
            present = [t for t in stored.values() if t.startswith(sibling_prefix + " item ")]
            expected = [t for t in sent if t.startswith(sibling_prefix + " item ")]
            assert present == [] or sorted(present) == sorted(expected), (present, expected)
        # Searchable: each acknowledged memory is found by its own text, through its vector (the deterministic
        # embedding of the same text: cosine 1) and through the keyword index.
        owners = {
            memory_id: SUBJECTS[int(text.split(" note ")[1].split()[0]) % len(SUBJECTS)]
            for memory_id, text in ledger.acknowledged.items()
        }
        for memory_id, text in ledger.acknowledged.items():
            found = client.post("/v1/memories/search", json={"subject": owners[memory_id], "query": text, "k": 3})
            assert found.status_code == 200, found.text
            top = found.json()["results"][0]
            assert top["id"] == memory_id, (text, top["text"])
            assert top["dense_score"] == pytest.approx(1.0, abs=1e-4) and top["lexical_score"] > 0, top
        # Index and SQL agree, without a reindex.
        stats = client.get("/v1/admin/stats").json()
        assert stats["memories"] == len(stored) == stats["index_vectors"], stats
        # The audit chain survived the kill.
        verdict = client.get("/v1/admin/audit/verify").json()
        assert verdict["ok"], verdict


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    rng = random.Random(20261128)
    data_dir = tmp_path / "data"
    env = secret_env(
        tmp_path / "secrets",
        data_dir,
        SEALMEM_PERSIST_INTERVAL_SECONDS="0.3",
        SEALMEM_INDEX_PERSIST_EVERY="25",
    )
    admin = create_tenant(env, "acme")["admin_key"]
    server = ServerProcess(env, tmp_path / "serve.log").start()
    with server.client() as client:
        created = client.post("/v1/admin/keys", json={"role": "app", "name": "writers"}, headers=bearer(admin))
        app_key = created.json()["key"]
    ledger = Ledger()
    kills = []
    try:
        for round_number in range(ROUNDS):
            stop = threading.Event()
            threads = [
                threading.Thread(target=writer, args=(server.url, app_key, f"r{round_number}w{w}", ledger, stop))
                for w in range(WRITERS)
            ]
            for thread in threads:
                thread.start()
            kill_after = rng.uniform(0.2, 2.5)
            kills.append(round(kill_after, 2))
            time.sleep(kill_after)
            before = len(ledger.acknowledged)
            server.kill9()
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            assert len(ledger.acknowledged) >= before > 0, "the writers never got going before the kill"
            server.start()
            verify(server, admin, ledger)
    finally:
        server.stop()
    assert len(kills) == ROUNDS and len(set(kills)) == ROUNDS
    print(f"kills after {kills} s; {len(ledger.acknowledged)} acknowledged, {len(ledger.unknown)} in flight")
