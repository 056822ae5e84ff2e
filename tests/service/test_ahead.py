"""Searches and adds are screened and embedded ahead of the request thread (``service.ahead``): concurrent
requests' texts meet in one coalesced forward pass although one request thread runs their store calls, and a
request whose preparation fails answers exactly as without it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np

from memory_store.coalescing import CoalescingEmbedder
from memory_store.embedder import HashingEmbedder
from service.app import request_threads_for
from tests.harness import Harness, Launcher, bearer

EMAIL = "ana.canary@example.org"
ANIMALS = [
    "bees",
    "goats",
    "llamas",
    "owls",
    "ferrets",
    "geese",
    "ponies",
    "rabbits",
    "turtles",
    "hamsters",
    "parrots",
    "alpacas",
]


class SlowPasses(HashingEmbedder):
    """The hashing embedder, each forward pass taking ``seconds`` (as a model's does), keeping its passes."""

    def __init__(self, seconds: float) -> None:
        super().__init__(dim=384)
        self.seconds = seconds
        self.passes: list[list[str]] = []
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self.passes.append(list(texts))
        time.sleep(self.seconds)
        return super().embed(texts)


def _concurrently(calls: list[Callable[[], object]]) -> list[object]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_concurrent_searches_and_adds_are_embedded_together_with_one_request_thread(tmp_path, migrated_db) -> None:
    slow = SlowPasses(0.05)
    with ExitStack() as stack:
        api = Launcher(stack, tmp_path, migrated_db, chat_enabled=False, request_threads=1).serve(
            embedder=CoalescingEmbedder(slow, max_batch=16)
        )
        _embedded_together(api, slow)


def _embedded_together(api: Harness, slow: SlowPasses) -> None:
    assert request_threads_for(api.settings.request_threads, "sqlite") == 1
    tenant = api.tenant()
    for i in range(len(ANIMALS)):
        api.add(tenant.app, "ana", f"I keep {ANIMALS[i]} on the roof")
    api.client.post("/v1/memories/search", json={"subject": "ana", "query": "warm up"}, headers=bearer(tenant.app))
    slow.passes.clear()

    def search(i: int) -> Callable[[], object]:
        body = {"subject": "ana", "query": f"where are the {ANIMALS[i]}?", "k": 1}
        return lambda: api.client.post("/v1/memories/search", json=body, headers=bearer(tenant.app))

    def add(i: int) -> Callable[[], object]:
        body = {"subject": "ana", "text": f"new fact {i}: the hive is painted blue"}
        return lambda: api.client.post("/v1/memories", json=body, headers=bearer(tenant.app))

    answers = _concurrently([search(i) for i in range(12)] + [add(i) for i in range(8)])
    assert [a.status_code for a in answers] == [200] * 12 + [201] * 8  # type: ignore[attr-defined]
    for i, answer in enumerate(answers[:12]):
        assert answer.json()["results"][0]["text"] == f"I keep {ANIMALS[i]} on the roof"  # type: ignore[attr-defined]
    # 20 texts in far fewer passes: the request thread never held more than one of them at a time.
    texts = [t for p in slow.passes for t in p]
    assert len(texts) == 20
    assert max(len(p) for p in slow.passes) > 1
    assert len(slow.passes) < 20
    assert api.count(tenant.id) == 20
    # /metrics shows it: more small embedding calls than passes.
    counts = dict(
        line.split(" ")
        for line in api.client.get("/metrics").text.splitlines()
        if line.startswith(("sealmem_embedding_calls_total ", "sealmem_embedding_passes_total "))
    )
    assert float(counts["sealmem_embedding_calls_total"]) > float(counts["sealmem_embedding_passes_total"]) > 0


def test_requests_whose_preparation_fails_answer_as_without_it(make_api) -> None:
    api: Harness = make_api()
    assert api.services.ahead.enabled
    tenant = api.tenant()
    api.add(tenant.app, "ana", "I play the cello.")
    token = api.token(tenant.app, "ana", ["read", "write"])
    other = api.client.post("/v1/memories/search", json={"subject": "bo", "query": "cello"}, headers=bearer(token))
    assert other.status_code == 404
    missing = api.client.post("/v1/memories/search", json={"query": "cello"}, headers=bearer(tenant.app))
    assert missing.status_code == 422
    too_long = api.client.post(
        "/v1/memories", json={"subject": "ana", "text": "x" * 40_000}, headers=bearer(tenant.app)
    )
    assert too_long.status_code == 422
    policy = api.client.patch(
        "/v1/admin/desensitisation", json={"actions": {"EMAIL_ADDRESS": "reject"}}, headers=bearer(tenant.admin)
    )
    assert policy.status_code == 200, policy.text
    rejected = api.client.post(
        "/v1/memories", json={"subject": "ana", "text": f"mail me at {EMAIL}"}, headers=bearer(tenant.app)
    )
    assert rejected.status_code == 422
    assert rejected.json()["error"]["code"] == "sensitive_data_rejected"
    assert api.count(tenant.id) == 1
    failed = [e for e in api.audit(tenant.id, "memory.add") if e.outcome != "ok"]
    assert len(failed) == 1  # the rejected text, audited once (the over-long one never passed the body schema)
