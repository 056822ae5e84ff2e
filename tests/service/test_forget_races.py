"""Forget is final: a subject forgotten while its work is in flight never comes back.

Each race is provoked 20 times over real HTTP (uvicorn in a thread, SQLite, FAISS): the in-flight request is
held at the racy point by a gate (an LLM that pauses after its first word, a distiller or an embedder that waits),
the subject is forgotten through the admin API, the gate opens, and then export, listing, search and the admin
subject list must all show nothing of the subject.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from memory_store import HashingEmbedder
from memory_store.models import utcnow
from service.auditing import Caller
from service.chat.distill import RuleDistiller, Statement
from service.chat.writeback import WriteBackJob, WriteBackWorker
from service.llm.backend import ChatMessage, GenerationParams, GenerationStats
from tests.chat.fakes import FakeBackend
from tests.harness import Harness, Tenant, bearer, fresh_data_dir, make_settings

RUNS = 20
GATE_TIMEOUT = 30.0


class PausingBackend(FakeBackend):
    """The fake LLM, pausing after its first word until ``resume`` is set (``paused`` tells the test it is)."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = threading.Event()
        self.resume = threading.Event()

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        stats: GenerationStats,
        *,
        cancel: threading.Event | None = None,
    ) -> AsyncIterator[str]:
        first = True
        async for delta in super().stream(messages, params, stats, cancel=cancel):
            yield delta
            if first:
                first = False
                self.paused.set()
                await asyncio.to_thread(self.resume.wait, GATE_TIMEOUT)


class GatedDistiller:
    """The rule distiller, waiting for ``resume`` first (the write-back job sits in the worker meanwhile)."""

    def __init__(self) -> None:
        self.waiting = threading.Event()
        self.resume = threading.Event()

    async def distill(self, message: str) -> list[Statement]:
        self.waiting.set()
        await asyncio.to_thread(self.resume.wait, GATE_TIMEOUT)
        return RuleDistiller().distill_sync(message)


class GatedEmbedder(HashingEmbedder):
    """Embeds like the hashing embedder, but holds any batch with a text containing HOLD until ``resume``."""

    def __init__(self) -> None:
        super().__init__(384)
        self.holding = threading.Event()
        self.resume = threading.Event()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if any("HOLD" in text for text in texts):
            self.holding.set()
            self.resume.wait(GATE_TIMEOUT)
        return super().embed(texts)


@pytest.fixture
def served(tmp_path: Path, migrated_db: Path) -> Iterator[Any]:
    def start(**parts: Any) -> Any:
        # The races need a process to run requests at once: its request threads as many as the pool allows
        # (the default of one would serialise them; several worker processes race the same way).
        data_dir = fresh_data_dir(tmp_path / "data", migrated_db)
        return Harness.serve(make_settings(data_dir, request_threads=0), **parts)

    yield start


def _forget(h: Harness, t: Tenant, subject: str) -> None:
    response = h.client.delete(f"/v1/admin/subjects/{subject}", headers=bearer(t.admin))
    assert response.status_code == 200, response.text


def _assert_gone(h: Harness, t: Tenant, subject: str) -> None:
    """Nothing of ``subject`` is visible by any route."""
    assert h.client.get(f"/v1/admin/subjects/{subject}/export", headers=bearer(t.admin)).status_code == 404
    listed = h.client.get("/v1/memories", params={"subject": subject}, headers=bearer(t.app))
    assert listed.status_code == 404, f"the forgotten subject came back: {listed.text[:300]}"
    found = h.client.post(
        "/v1/memories/search", json={"subject": subject, "query": "Lisbon cat"}, headers=bearer(t.app)
    )
    assert found.status_code == 404 or found.json()["results"] == []
    subjects = h.client.get("/v1/admin/subjects", headers=bearer(t.admin)).json()["subjects"]
    assert subject not in {s["subject"] for s in subjects}
    inspected = h.client.get("/v1/admin/memories", headers=bearer(t.admin)).json()["items"]
    assert subject not in {m["subject"] for m in inspected}


def test_forget_during_a_streaming_chat(served: Any) -> None:
    backend = PausingBackend()
    with served(llm=backend) as h:
        t = h.tenant()
        for run in range(RUNS):
            subject = f"stream-{run}"
            h.add(t.app, subject, "I live in Lisbon.")
            backend.paused.clear()
            backend.resume.clear()
            events: list[str] = []

            def consume(subject: str = subject, events: list[str] = events) -> None:
                with (
                    httpx.Client(base_url=h.url, timeout=60) as client,
                    client.stream(
                        "POST",
                        "/v1/chat",
                        json={
                            "subject": subject,
                            "message": "Where do I live? I have a cat named Tom.",
                            "stream": True,
                        },
                        headers=bearer(t.app),
                    ) as response,
                ):
                    events.extend(response.iter_lines())

            reader = threading.Thread(target=consume)
            reader.start()
            assert backend.paused.wait(GATE_TIMEOUT)
            _forget(h, t, subject)
            backend.resume.set()
            reader.join(GATE_TIMEOUT)
            assert not reader.is_alive()
            assert "event: error" in events and any("subject_forgotten" in line for line in events), events
            h.drain()
            _assert_gone(h, t, subject)
        refused = [e for e in h.audit(t.id, "chat.write") if e.outcome == "rejected"]
        assert len(refused) == RUNS  # each refused turn is on the record
        # A request made after the forget starts the subject afresh.
        backend.resume.set()
        assert h.chat(t.app, subject="stream-0", message="Hello again.")["memories_written"]


def test_forget_while_write_back_is_queued(served: Any) -> None:
    distiller = GatedDistiller()
    with served(distiller=distiller) as h:
        t = h.tenant()
        for run in range(RUNS):
            subject = f"queued-{run}"
            distiller.waiting.clear()
            distiller.resume.clear()
            out = h.chat(t.app, subject=subject, message="I have a cat named Tom. I live in Lisbon.")
            assert out["write_back"]["status"] == "queued"
            assert distiller.waiting.wait(GATE_TIMEOUT)
            _forget(h, t, subject)
            distiller.resume.set()
            h.drain()
            result = h.runtime.worker.result(out["write_back"]["job_id"])
            assert result is not None and result.status == "cancelled" and not result.added
            _assert_gone(h, t, subject)


def test_a_write_back_job_of_another_process_is_refused_by_the_store(served: Any) -> None:
    """The store's guard alone (no in-process cancellation): a worker that never heard of the forget."""
    with served() as h:
        t = h.tenant()
        keys = h.services.keys.list_keys(tenant_id=t.id)
        app_key = next(k for k in keys if k.role == "app")
        for run in range(RUNS):
            subject = f"elsewhere-{run}"
            h.add(t.app, subject, "I live in Lisbon.")
            caller = Caller(credential_id=app_key.id, role="app", actor="test", begun_at=utcnow())
            _forget(h, t, subject)
            other = WriteBackWorker(h.store, RuleDistiller())
            job = WriteBackJob(
                tenant_id=t.id,
                subject=subject,
                session_id="s",
                message_id="m",
                caller=caller,
                text="I have a cat named Tom.",
            )
            result = asyncio.run(other.process(job))
            assert (result.status, result.error, result.added) == ("cancelled", "subject_forgotten", [])
            _assert_gone(h, t, subject)


def test_forget_during_a_batch_add(served: Any) -> None:
    embedder = GatedEmbedder()
    with served(embedder=embedder) as h:
        t = h.tenant()
        for run in range(RUNS):
            subject = f"batch-{run}"
            h.add(t.app, subject, "I live in Lisbon.")
            embedder.holding.clear()
            embedder.resume.clear()
            answers: list[httpx.Response] = []

            def add(subject: str = subject, answers: list[httpx.Response] = answers) -> None:
                batch = {"memories": [{"subject": subject, "text": f"HOLD fact {i}"} for i in range(5)]}
                with httpx.Client(base_url=h.url, timeout=60) as client:
                    answers.append(client.post("/v1/memories", json=batch, headers=bearer(t.app)))

            writer = threading.Thread(target=add)
            writer.start()
            assert embedder.holding.wait(GATE_TIMEOUT)
            _forget(h, t, subject)
            embedder.resume.set()
            writer.join(GATE_TIMEOUT)
            assert len(answers) == 1 and answers[0].status_code == 409, answers[0].text
            assert answers[0].json()["error"]["code"] == "subject_forgotten"
            _assert_gone(h, t, subject)
        refused = h.audit(t.id, "memory.add")
        assert sum(e.outcome == "rejected" for e in refused) == RUNS  # each refusal is on the record


def test_revoking_a_key_stops_its_queued_write_back(served: Any) -> None:
    distiller = GatedDistiller()
    with served(distiller=distiller) as h:
        t = h.tenant()
        app_key = h.key(t.admin, "app")
        key_id = next(
            k.id
            for k in h.services.keys.list_keys(tenant_id=t.id)
            if k.role == "app" and k.name == "app-key" and k.active and k.prefix == app_key[: len(k.prefix)]
        )
        out = h.chat(app_key, subject="ana", message="I have a cat named Tom.")
        assert distiller.waiting.wait(GATE_TIMEOUT)
        assert h.client.delete(f"/v1/admin/keys/{key_id}", headers=bearer(t.admin)).status_code == 200
        distiller.resume.set()
        h.drain()
        result = h.runtime.worker.result(out["write_back"]["job_id"])
        assert result is not None and (result.status, result.error) == ("cancelled", "credential_revoked")
        facts = [m for m in h.store.list(tenant_id=t.id, subject="ana").items if m.kind != "turn"]
        assert facts == []


def test_concurrent_forgets_do_not_trip_the_worker() -> None:
    """forget() runs on request threads: many at once must neither fail nor lose one."""
    worker = WriteBackWorker.__new__(WriteBackWorker)
    WriteBackWorker.__init__(worker, None, RuleDistiller())  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def forget(n: int) -> None:
        try:
            for i in range(300):
                worker.forget("t", f"s{n}-{i}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=forget, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(worker._forgotten) == 6 * 300
