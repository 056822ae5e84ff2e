"""Read records are committed by the audit writer thread, off the request thread; the response waits for them
(service.auditing.AuditBarrier). Provoked on the real app, real SQLite: the writer is slowed down or made to fail."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from tests.harness import Harness, bearer
from tests.sql_hooks import on_statement

WRITER = "sealmem-audit-writer"
SECRET = "Alice keeps her spare key under the blue flowerpot"


@contextmanager
def on_writer_insert(api: Harness, action: Callable[[], object]) -> Iterator[None]:
    """Run ``action`` in the audit writer thread before each of its audit record inserts."""
    with on_statement(api.store.engine, thread=WRITER, starts_with="INSERT INTO audit_records", action=action):
        yield


def search(api: Harness, key: str) -> Any:
    body = {"subject": "alice", "query": "where is the spare key?", "k": 5}
    return api.client.post("/v1/memories/search", json=body, headers=bearer(key))


def test_a_read_is_answered_only_after_its_record_is_committed(api: Harness) -> None:
    tenant = api.tenant()
    memory = api.add(tenant.app, "alice", SECRET)
    committed: list[float] = []

    def committing(conn: Any) -> None:
        if threading.current_thread().name == WRITER:
            committed.append(time.monotonic())

    event.listen(api.store.engine, "commit", committing)
    try:
        for _ in range(5):  # the writer takes its time each round: the answer still comes after the commit
            committed.clear()
            with on_writer_insert(api, lambda: time.sleep(0.3)):
                response = search(api, tenant.app)
                answered = time.monotonic()
            assert response.status_code == 200 and response.json()["results"][0]["id"] == memory["id"]
            assert committed and committed[0] < answered
    finally:
        event.remove(api.store.engine, "commit", committing)
    records = api.services.auditor.log.entries(tenant_id=tenant.id, action="memory.search", limit=10)
    assert len(records) == 5 and all(r.memory_ids == [memory["id"]] for r in records)


def test_a_read_whose_record_fails_to_commit_is_not_answered(api: Harness) -> None:
    tenant = api.tenant()
    api.add(tenant.app, "alice", SECRET)
    before = api.services.auditor.log.head(tenant_id=tenant.id)[0]

    def fail() -> None:
        raise RuntimeError("disk full")

    with on_writer_insert(api, fail):
        failed = search(api, tenant.app)
        listed = api.client.get("/v1/memories", params={"subject": "alice"}, headers=bearer(tenant.app))
    for response in (failed, listed):
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["code"] == "internal_error" and error["request_id"] == response.headers["X-Request-ID"]
        assert "spare key" not in response.text and "flowerpot" not in response.text  # nothing handed out
    assert api.services.auditor.log.head(tenant_id=tenant.id)[0] == before  # and nothing recorded as read
    again = search(api, tenant.app)  # the writer goes on
    assert again.status_code == 200 and SECRET in again.text
    assert api.services.auditor.log.verify(tenant_id=tenant.id).ok


def test_reads_from_many_threads_each_wait_for_their_own_record(api: Harness) -> None:
    tenant = api.tenant()
    api.add(tenant.app, "alice", SECRET)
    statuses: list[int] = []

    def reader() -> None:
        for _ in range(10):
            statuses.append(search(api, tenant.app).status_code)

    threads = [threading.Thread(target=reader) for _ in range(6)]
    with on_writer_insert(api, lambda: time.sleep(0.01)):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert statuses == [200] * 60
    records = api.services.auditor.log.entries(tenant_id=tenant.id, action="memory.search", limit=100)
    assert len(records) == 60 and api.services.auditor.log.verify(tenant_id=tenant.id).ok
