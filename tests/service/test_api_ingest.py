"""Conversation ingestion (``POST /v1/memories/ingest``) on the real app, SQLite, FAISS and the rule distiller:
what happened to each statement, async jobs whose state any process can read, auth, limits and audit."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import func, select

from memory_store.models import Job
from tests.harness import Harness, bearer


def ingest(api: Harness, key: str, expect: int = 200, **body: Any) -> dict[str, Any]:
    response = api.client.post("/v1/memories/ingest", json=body, headers=bearer(key))
    assert response.status_code == expect, response.text
    out: dict[str, Any] = response.json()
    return out


def user(*texts: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": t} for t in texts]


def test_each_statement_reports_what_it_did(api: Harness) -> None:
    t = api.tenant()
    first = ingest(api, t.app, subject="ana", session_id="s1", messages=[
        {"role": "user", "content": "My dog is named Biscuit and I live in Lisbon."},
        {"role": "assistant", "content": "Lisbon is lovely! I live in the cloud."},
        {"role": "user", "content": "Thanks!"},
    ])
    assert first["session_id"] == "s1" and first["statements"] == 2
    assert [(e["event"], e["text"]) for e in first["events"]] == [
        ("ADD", "My dog is named Biscuit."), ("ADD", "I live in Lisbon.")
    ]
    lisbon = first["events"][1]["memory_id"]

    second = ingest(api, t.app, subject="ana", messages=user("I just moved to Porto. My dog is named Biscuit."))
    events = {e["text"]: e for e in second["events"]}
    moved = events["I just moved to Porto."]
    assert moved["event"] == "SUPERSEDE" and moved["replaces"] == [lisbon]
    assert events["My dog is named Biscuit."]["event"] == "NOOP"
    old = api.client.get(f"/v1/memories/{lisbon}", headers=bearer(t.app)).json()
    assert old["status"] == "superseded" and old["superseded_by"] == moved["memory_id"]

    third = ingest(api, t.app, subject="ana", messages=user("My dog is called Biscuit."))
    (update,) = third["events"]
    assert update["event"] in ("UPDATE", "NOOP")
    if update["event"] == "UPDATE":
        assert update["previous_text"] == "My dog is named Biscuit."
    written = api.client.get("/v1/memories", params={"subject": "ana"}, headers=bearer(t.app)).json()["items"]
    assert {m["source"] for m in written} == {"ingest"}
    records = api.audit(t.id, "memory.ingest")
    assert records and all(r.subject == "ana" for r in records)
    assert nothing_from_chit_chat(api, t.app)


def nothing_from_chit_chat(api: Harness, key: str) -> bool:
    out = ingest(api, key, subject="bo", messages=user("hi there", "ok thanks, bye"))
    return out["statements"] == 0 and out["events"] == []


def test_async_jobs_report_their_events_through_the_status_endpoint(api: Harness) -> None:
    t = api.tenant()
    queued = ingest(api, t.app, 202, subject="ana", messages=user("I love hiking in the Alps."), **{"async": True})
    assert queued["status"] == "queued" and queued["job_id"].startswith("job_")
    deadline = time.monotonic() + 30
    while True:
        status = api.client.get(f"/v1/memories/ingest/{queued['job_id']}", headers=bearer(t.reader)).json()
        if status["status"] not in ("queued", "running") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status["status"] == "done" and status["statements"] == 1
    (event,) = status["events"]
    assert event["event"] == "ADD" and event["text"] is None  # ids only in job state
    memory = api.client.get(f"/v1/memories/{event['memory_id']}", headers=bearer(t.app)).json()
    assert memory["text"] == "I love hiking in the Alps."
    # The state is in SQL, so another process (here: a second store on the same database) can answer.
    assert api.store.jobs.get(tenant_id=t.id, job_id=queued["job_id"]).status == "done"

    other = api.tenant("other")
    missing = api.client.get(f"/v1/memories/ingest/{queued['job_id']}", headers=bearer(other.app))
    assert missing.status_code == 404
    bo_token = api.token(t.app, "bo", ["read"])
    assert api.client.get(f"/v1/memories/ingest/{queued['job_id']}", headers=bearer(bo_token)).status_code == 404

    api.client.delete("/v1/admin/subjects/ana", headers=bearer(t.admin))
    with api.store.engine.connect() as conn:  # the forget takes the subject's jobs too
        assert conn.scalar(select(func.count()).select_from(Job).where(Job.subject == "ana")) == 0


def test_bad_requests_change_nothing(api: Harness) -> None:
    t = api.tenant()
    for body in (
        {"subject": "ana", "messages": []},
        {"subject": "ana", "messages": [{"role": "robot", "content": "hi"}]},
        {"subject": "ana", "messages": user("x"), "extra": 1},
        {"messages": user("I live in Porto.")},
    ):
        response = api.client.post("/v1/memories/ingest", json=body, headers=bearer(t.app))
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "invalid_input"
    refused = api.client.post("/v1/memories/ingest", json={"subject": "ana", "messages": user("I live in Porto.")},
                              headers=bearer(t.reader))
    assert refused.status_code == 403
    changed = api.client.patch("/v1/admin/desensitisation", json={"actions": {"CREDIT_CARD": "reject"}},
                               headers=bearer(t.admin))
    assert changed.status_code == 200
    rejected = api.client.post(
        "/v1/memories/ingest",
        json={"subject": "ana", "messages": user("My card is 4111 1111 1111 1111.")},
        headers=bearer(t.app),
    )
    assert rejected.status_code == 422 and rejected.json()["error"]["code"] == "sensitive_data_rejected"
    assert api.client.get("/v1/memories", params={"subject": "ana"}, headers=bearer(t.app)).status_code == 404


def test_subject_tokens_ingest_for_their_own_subject_and_values_are_desensitised(api: Harness) -> None:
    t = api.tenant()
    token = api.token(t.app, "ana", ["read", "write"])
    out = ingest(api, token, messages=user("My email is ana.canary@example.org."))
    (event,) = out["events"]
    assert event["text"] == "My email is ana.canary@example.org."  # the subject sees its own originals
    stored = api.client.get("/v1/memories", params={"subject": "ana"}, headers=bearer(t.reader)).json()["items"]
    assert [m["text"] for m in stored] == ["My email is <EMAIL_ADDRESS_1>."]
    other = api.client.post("/v1/memories/ingest", json={"subject": "bo", "messages": user("I live in Rome.")},
                            headers=bearer(token))
    assert other.status_code in (403, 404)


def test_limits_reserved_metadata_and_write_only_callers(api: Harness) -> None:
    t = api.tenant()
    many = [{"role": "user", "content": f"I like topic number {i}."} for i in range(101)]
    too_many = api.client.post("/v1/memories/ingest", json={"subject": "ana", "messages": many},
                               headers=bearer(t.app))
    assert too_many.status_code == 422 and "at most 100" in too_many.json()["error"]["message"]
    assert api.client.get("/v1/memories", params={"subject": "ana"}, headers=bearer(t.app)).status_code == 404
    long = [{"role": "user", "content": "I like tea. " * 1000}] * 2
    too_long = api.client.post("/v1/memories/ingest", json={"subject": "ana", "messages": long},
                               headers=bearer(t.app))
    assert too_long.status_code == 422 and "split the conversation" in too_long.json()["error"]["message"]
    reserved = api.client.post(
        "/v1/memories/ingest",
        json={"subject": "ana", "messages": user("I live in Rome."), "metadata": {"slot_value": "x"}},
        headers=bearer(t.app),
    )
    assert reserved.status_code == 422 and "slot_value" in reserved.json()["error"]["message"]

    ingest(api, t.app, subject="ana", messages=user("My dog is named Biscuit and I live in Lisbon."))
    writer = api.token(t.app, "ana", ["write"])
    out = ingest(api, writer, messages=user("I just moved to Porto."))
    assert out["events"] and all(e["text"] is None and e["previous_text"] is None for e in out["events"])
    assert "Lisbon" not in json.dumps(out) and "Biscuit" not in json.dumps(out)
