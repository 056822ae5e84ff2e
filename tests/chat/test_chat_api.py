"""POST /v1/chat over HTTP on the real app: retrieval, injection, turns, write-back, access and errors."""

from __future__ import annotations

import json
from typing import Any

from service.llm.backend import LLMTimeoutError, LLMUnavailableError
from tests.chat.fakes import FakeBackend
from tests.harness import Harness, bearer


def _sse(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_chat_uses_the_subjects_memories_and_says_which(harness: Harness, fake: FakeBackend) -> None:
    keys = harness.tenant()
    dog = harness.add(keys.app, "ana", "My dog is named Biscuit.")
    harness.add(keys.app, "ana", "I work as a nurse.")
    harness.add(keys.app, "bob", "My dog is named Rex.")
    out = harness.chat(keys.app, subject="ana", session_id="s1", message="What is my dog's name?")
    assert out["reply"] == "You told me: My dog is named Biscuit. (" + dog["created_at"][:10] + ")"
    used = [m["id"] for m in out["memories_used"]]
    assert used[0] == dog["id"]
    assert all(m["score"] > 0 for m in out["memories_used"])
    assert "Rex" not in json.dumps(fake.calls[-1], default=str)  # another subject's memory never leaks
    system = fake.calls[-1][0]
    assert system.role == "system" and "- My dog is named Biscuit." in system.content
    assert system.content.startswith("Facts about the user:\n")
    assert system.content.endswith("Answer in one short sentence.")
    assert out["session_id"] == "s1" and out["message_id"].startswith("msg_")
    assert out["injection"] == "prompt" and out["model"] == "fake-llm"
    assert out["usage"]["completion_tokens"] > 0
    assert {"retrieval_ms", "prompt_ms", "ttft_ms", "total_ms"} <= set(out["timings"])
    written = out["memories_written"]
    assert [(w["kind"], w["role"], w["status"]) for w in written] == [
        ("turn", "user", "written"), ("turn", "assistant", "written"), ("fact", None, "queued"),
    ]
    assert out["write_back"]["status"] == "queued" and out["write_back"]["job_id"]
    retrieve = harness.audit(keys.id, "chat.retrieve")
    assert len(retrieve) == 1 and dog["id"] in retrieve[0].memory_ids and retrieve[0].subject == "ana"
    assert "Biscuit" not in json.dumps([e.detail for e in retrieve])
    writes = harness.audit(keys.id, "chat.write")
    assert writes[0].memory_ids == [w["id"] for w in written if w["id"]]


def test_turns_are_working_memory_of_the_session_only(harness: Harness, fake: FakeBackend) -> None:
    keys = harness.tenant()
    harness.chat(keys.app, subject="ana", session_id="s1", message="Hello there!")
    harness.chat(keys.app, subject="ana", session_id="s1", message="Let us plan a trip.")
    prompt = fake.calls[-1]
    history = [(m.role, m.content) for m in prompt if m.role != "system"]
    assert history == [("user", "Hello there!"), ("assistant", "I don't know."), ("user", "Let us plan a trip.")]
    harness.chat(keys.app, subject="ana", session_id="s2", message="Hi again.")
    assert [(m.role, m.content) for m in fake.calls[-1] if m.role != "system"] == [("user", "Hi again.")]
    harness.chat(keys.app, subject="bob", session_id="s1", message="Hi, I am Bob.")
    assert [(m.role, m.content) for m in fake.calls[-1] if m.role != "system"] == [("user", "Hi, I am Bob.")]


def test_turns_are_stored_encrypted_with_provenance(harness: Harness) -> None:
    keys = harness.tenant()
    out = harness.chat(keys.app, subject="ana", session_id="s1", message="I keep bees in my garden.")
    user_turn = harness.store.get(tenant_id=keys.id, memory_id=out["memories_written"][0]["id"])
    assert (user_turn.kind, user_turn.source, user_turn.session_id, user_turn.source_ref) == (
        "turn", "chat", "s1", out["message_id"],
    )
    assert user_turn.metadata["role"] == "user" and user_turn.text == "I keep bees in my garden."
    with harness.store.engine.connect() as conn:
        blobs = [row[0] for row in conn.exec_driver_sql("SELECT text_ct FROM memories")]
    assert blobs and all(b"bees" not in bytes(blob) for blob in blobs)


def test_write_back_distils_atomic_facts_with_provenance(harness: Harness) -> None:
    keys = harness.tenant()
    out = harness.chat(
        keys.app, subject="ana", session_id="s1", message="Hi! My dog is named Biscuit and I live in Lisbon."
    )
    harness.drain()
    job = harness.runtime.worker.result(out["write_back"]["job_id"])
    assert job is not None and job.status == "done" and len(job.added) == 2
    facts = harness.store.list(tenant_id=keys.id, subject="ana").items
    facts = sorted((m for m in facts if m.kind != "turn"), key=lambda m: m.text)
    assert [m.text for m in facts] == ["I live in Lisbon.", "My dog is named Biscuit."]
    for fact in facts:
        assert (fact.source, fact.session_id, fact.source_ref) == ("chat", "s1", out["message_id"])
        assert fact.metadata["message_id"] == out["message_id"]
        assert fact.metadata["turn_id"] == out["memories_written"][0]["id"]
    # One record per change, each written in the change's transaction.
    audit = harness.audit(keys.id, "chat.write_back")
    assert sorted(m for e in audit for m in e.memory_ids) == sorted(job.added)
    assert {e.detail["job_id"] for e in audit} == {job.job_id} and {e.subject for e in audit} == {"ana"}


def test_chit_chat_and_questions_are_not_distilled(harness: Harness) -> None:
    keys = harness.tenant()
    for message in ("Hello!", "Thanks, that's great.", "What is the capital of France?", "Can you help me?"):
        harness.chat(keys.app, subject="ana", session_id="s1", message=message)
    harness.drain()
    kinds = {m.kind for m in harness.store.list(tenant_id=keys.id, subject="ana").items}
    assert kinds == {"turn"}


def test_a_near_duplicate_updates_the_memory_and_keeps_history(harness: Harness) -> None:
    keys = harness.tenant()
    harness.chat(keys.app, subject="ana", session_id="s1", message="I live in Lisbon.")
    harness.drain()
    second = harness.chat(keys.app, subject="ana", session_id="s2", message="I live in Lisbon now.")
    harness.drain()
    job = harness.runtime.worker.result(second["write_back"]["job_id"])
    assert job is not None and job.added == [] and len(job.updated) == 1
    facts = [m for m in harness.store.list(tenant_id=keys.id, subject="ana").items if m.kind != "turn"]
    assert len(facts) == 1
    fact = facts[0]
    assert fact.text == "I live in Lisbon now." and fact.metadata["mentions"] == 2
    assert fact.metadata["last_message_id"] == second["message_id"]
    history = harness.store.history(tenant_id=keys.id, memory_id=fact.id)
    assert [h.action for h in history] == ["add", "update"]
    assert "text" in history[1].detail["fields"]


def test_the_same_fact_in_other_words_is_a_duplicate_by_slot(harness: Harness) -> None:
    keys = harness.tenant()
    harness.add(keys.app, "ana", "My cat's name is Tom.")
    harness.chat(keys.app, subject="ana", session_id="s1", message="I have a cat called Tom.")
    harness.drain()
    facts = [m for m in harness.store.list(tenant_id=keys.id, subject="ana").items if m.kind != "turn"]
    assert len(facts) == 1 and facts[0].metadata["mentions"] == 2


def test_a_contradiction_supersedes_the_old_fact_and_the_new_one_ranks_first(harness: Harness) -> None:
    keys = harness.tenant()
    harness.chat(keys.app, subject="ana", session_id="s1", message="My dog is named Biscuit and I live in Lisbon.")
    harness.drain()
    moved = harness.chat(keys.app, subject="ana", session_id="s2", message="I moved to Porto.")
    harness.drain()
    job = harness.runtime.worker.result(moved["write_back"]["job_id"])
    assert job is not None and len(job.added) == 1 and len(job.superseded) == 1
    porto_id = job.added[0]
    lisbon = harness.store.get(tenant_id=keys.id, memory_id=job.superseded[0]["id"])
    assert lisbon.text == "I live in Lisbon." and lisbon.status == "superseded"
    assert lisbon.superseded_by == porto_id
    actions = [h.action for h in harness.store.history(tenant_id=keys.id, memory_id=lisbon.id)]
    assert actions == ["add", "supersede"]
    out = harness.chat(keys.app, subject="ana", session_id="s3", message="Where do I live? Porto or Lisbon?")
    used = [m["text"] for m in out["memories_used"]]
    assert used[0] == "I moved to Porto." and "I live in Lisbon." not in used
    response = harness.client.post(
        "/v1/memories/search", json={"subject": "ana", "query": "live in Lisbon", "k": 5,
                                     "filters": {"kinds": ["fact"]}}, headers=bearer(keys.app),
    )
    texts = [r["text"] for r in response.json()["results"]]
    assert "I live in Lisbon." not in texts and "I moved to Porto." in texts


def test_negation_supersedes_a_preference(harness: Harness) -> None:
    keys = harness.tenant()
    harness.chat(keys.app, subject="ana", session_id="s1", message="I love coffee.")
    harness.drain()
    harness.chat(keys.app, subject="ana", session_id="s1", message="I don't like coffee anymore.")
    harness.drain()
    prefs = harness.store.list(tenant_id=keys.id, subject="ana").items
    status = {m.text: m.status for m in prefs if m.kind == "preference"}
    assert status == {"I love coffee.": "superseded", "I don't like coffee anymore.": "active"}


def test_request_latency_does_not_include_distillation(make_chat: Any) -> None:
    from tests.chat.fakes import SlowDistiller

    slow = SlowDistiller(seconds=3.0)
    harness = make_chat(distiller=slow)
    keys = harness.tenant()
    import time

    started = time.perf_counter()
    out = harness.chat(keys.app, subject="ana", session_id="s1", message="I live in Lisbon.")
    elapsed = time.perf_counter() - started
    assert elapsed < 1.5, elapsed
    assert out["write_back"]["status"] == "queued" and not slow.finished.is_set()
    harness.drain()
    assert slow.finished.is_set()
    facts = [m.text for m in harness.store.list(tenant_id=keys.id, subject="ana").items if m.kind == "fact"]
    assert facts == ["I live in Lisbon."]


def test_write_back_false_stores_nothing(harness: Harness) -> None:
    keys = harness.tenant()
    out = harness.chat(keys.app, subject="ana", session_id="s1", message="I live in Lisbon.", write_back=False)
    harness.drain()
    assert out["memories_written"] == [] and out["write_back"]["status"] == "disabled"
    assert harness.client.get("/v1/sessions?subject=ana", headers=bearer(keys.app)).json() == {"sessions": []}


def test_injection_none_and_k_zero_skip_memories(harness: Harness, fake: FakeBackend) -> None:
    keys = harness.tenant()
    harness.add(keys.app, "ana", "My dog is named Biscuit.")
    for body in ({"injection": "none"}, {"k": 0}):
        out = harness.chat(keys.app, subject="ana", session_id="s1", message="What is my dog's name?", **body)
        assert out["memories_used"] == [] and out["reply"] == "I don't know."
        assert all("Biscuit" not in m.content for m in fake.calls[-1])


def test_kv_injection_is_501_until_it_is_plugged_in(harness: Harness) -> None:
    keys = harness.tenant()
    response = harness.client.post(
        "/v1/chat", json={"subject": "ana", "message": "hi there", "injection": "kv"}, headers=bearer(keys.app)
    )
    assert response.status_code == 501
    body = response.json()
    assert body["error"]["code"] == "not_implemented" and "kv" in body["error"]["message"]
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]


def test_a_plugged_in_injector_serves_its_mode(harness: Harness) -> None:
    from service.chat.service import InjectionRequest

    seen: list[InjectionRequest] = []

    class Echo:
        async def stream(self, request: InjectionRequest, params: Any, stats: Any, *, cancel: Any) -> Any:
            seen.append(request)
            stats.info["layout"] = "test"
            yield f"{len(request.prompt.memory_lines)} memories"

    harness.runtime.service.register_injector("kv", Echo())
    keys = harness.tenant()
    harness.add(keys.app, "ana", "My dog is named Biscuit.")
    out = harness.chat(keys.app, subject="ana", message="What is my dog's name?", injection="kv")
    assert out["reply"] == "1 memories" and out["info"] == {"layout": "test"}
    prompt = seen[0].prompt
    assert prompt.prefix == "Facts about the user:\n" and prompt.suffix == "Answer in one short sentence."
    assert prompt.memory_lines[0].line.startswith("- My dog is named Biscuit. (")
    assert prompt.system_text == prompt.prefix + prompt.memory_lines[0].line + prompt.suffix


def test_sse_streams_deltas_then_the_memory_lists(harness: Harness) -> None:
    keys = harness.tenant()
    dog = harness.add(keys.app, "ana", "My dog is named Biscuit.")
    with harness.client.stream(
        "POST", "/v1/chat", json={"subject": "ana", "session_id": "s1", "message": "What is my dog's name?",
                                  "stream": True}, headers=bearer(keys.app),
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse(response.read().decode())
    deltas = [data["text"] for name, data in events if name == "delta"]
    assert len(deltas) > 3 and "".join(deltas).startswith("You told me: My dog is named Biscuit.")
    name, done = events[-1]
    assert name == "done" and done["reply"] == "".join(deltas)
    assert done["memories_used"][0]["id"] == dog["id"]
    assert [w["role"] for w in done["memories_written"]] == ["user", "assistant", None]
    turns = harness.client.get("/v1/sessions/s1?subject=ana", headers=bearer(keys.app)).json()["turns"]
    assert [t["role"] for t in turns] == ["user", "assistant"]


def test_llm_failures_become_502_and_504_error_bodies(harness: Harness, fake: FakeBackend) -> None:
    keys = harness.tenant()
    for error, status, code in (
        (LLMUnavailableError("the LLM server cannot be reached"), 502, "llm_unavailable"),
        (LLMTimeoutError("the LLM server did not answer in time"), 504, "llm_timeout"),
    ):
        fake.fail = error
        for stream in (False, True):
            response = harness.client.post(
                "/v1/chat", json={"subject": "ana", "message": "hello there", "stream": stream},
                headers=bearer(keys.app),
            )
            assert response.status_code == status, response.text
            assert response.json()["error"]["code"] == code
    fake.fail = None
    assert harness.client.get("/v1/sessions?subject=ana", headers=bearer(keys.app)).json() == {"sessions": []}


def test_access_rules(harness: Harness) -> None:
    keys = harness.tenant()
    other = harness.tenant("other")
    harness.add(keys.app, "ana", "My dog is named Biscuit.")
    body: dict[str, Any] = {"subject": "ana", "message": "What is my dog's name?"}

    def post(credential: str | None, **extra: Any) -> Any:
        headers = bearer(credential) if credential else {}
        return harness.client.post("/v1/chat", json={**body, **extra}, headers=headers)

    assert post(None).status_code == 401
    assert post("smk_notakey").status_code == 401
    assert post(keys.reader).status_code == 403
    assert post(keys.admin).status_code == 200
    chat_token = harness.token(keys.app, "ana", ["chat"])
    assert post(chat_token).status_code == 200
    no_subject = harness.client.post("/v1/chat", json={"message": "hi there"}, headers=bearer(chat_token))
    assert no_subject.status_code == 200
    assert post(chat_token, subject="bob").status_code == 404
    read_token = harness.token(keys.app, "ana", ["read", "write"])
    assert post(read_token).status_code == 403
    assert harness.client.post("/v1/chat", json={"message": "hi"}, headers=bearer(keys.app)).status_code == 422
    # another tenant's key sees nothing of ana
    out = harness.chat(other.app, **body)
    assert out["memories_used"] == []


def test_bad_input_is_a_4xx(harness: Harness) -> None:
    keys = harness.tenant()
    for body in (
        {"subject": "ana", "message": ""},
        {"subject": "ana", "message": "hi", "k": -1},
        {"subject": "ana", "message": "hi", "k": 51},
        {"subject": "ana", "message": "hi", "injection": "telepathy"},
        {"subject": "ana", "message": "x" * 9000},
        {"subject": "ana", "message": "hi", "unknown": 1},
    ):
        response = harness.client.post("/v1/chat", json=body, headers=bearer(keys.app))
        assert 400 <= response.status_code < 500, (body, response.text)
        assert set(response.json()["error"]) == {"code", "message", "request_id"}


def test_a_message_longer_than_the_context_is_422(make_chat: Any) -> None:
    harness = make_chat(llm=FakeBackend(context_tokens=300))
    keys = harness.tenant()
    response = harness.client.post(
        "/v1/chat", json={"subject": "ana", "message": "word " * 400}, headers=bearer(keys.app)
    )
    assert response.status_code == 422 and response.json()["error"]["code"] == "message_too_long"


def test_sessions_list_get_delete(harness: Harness) -> None:
    keys = harness.tenant()
    harness.chat(keys.app, subject="ana", session_id="s1", message="My dog is named Biscuit.")
    harness.chat(keys.app, subject="ana", session_id="s1", message="Nice weather today.")
    harness.chat(keys.app, subject="ana", session_id="s2", message="Hello.")
    harness.chat(keys.app, subject="bob", session_id="s3", message="Hello.")
    harness.drain()
    listed = harness.client.get("/v1/sessions?subject=ana", headers=bearer(keys.reader)).json()["sessions"]
    assert [(s["session_id"], s["turns"]) for s in listed] == [("s2", 2), ("s1", 4)]
    detail = harness.client.get("/v1/sessions/s1?subject=ana", headers=bearer(keys.reader)).json()
    assert [t["text"] for t in detail["turns"] if t["role"] == "user"] == [
        "My dog is named Biscuit.", "Nice weather today.",
    ]
    token = harness.token(keys.app, "ana", ["chat"])
    assert harness.client.get("/v1/sessions/s1", headers=bearer(token)).status_code == 200
    assert harness.client.get("/v1/sessions/s3?subject=bob", headers=bearer(token)).status_code == 404
    assert harness.client.get("/v1/sessions/s3?subject=ana", headers=bearer(keys.app)).status_code == 404
    assert harness.client.get("/v1/sessions?subject=bob", headers=bearer(token)).status_code == 404
    assert harness.client.delete("/v1/sessions/s1?subject=ana", headers=bearer(keys.reader)).status_code == 403
    assert harness.client.delete("/v1/sessions/s1?subject=ana", headers=bearer(keys.app)).status_code == 204
    assert harness.client.get("/v1/sessions/s1?subject=ana", headers=bearer(keys.app)).status_code == 404
    remaining = harness.store.list(tenant_id=keys.id, subject="ana").items
    assert [m.text for m in remaining if m.session_id == "s1"] == ["My dog is named Biscuit."]  # the fact stays
    # Deleting derived facts is a write: a chat-only token may delete its session's turns, not the facts.
    refused = harness.client.delete("/v1/sessions/s2?subject=ana&include_derived=true", headers=bearer(token))
    assert refused.status_code == 403 and "'write' scope" in refused.json()["error"]["message"]
    assert harness.client.get("/v1/sessions/s2", headers=bearer(token)).status_code == 200  # nothing deleted
    writer = harness.token(keys.app, "ana", ["chat", "write"])
    assert harness.client.delete(
        "/v1/sessions/s2?subject=ana&include_derived=true", headers=bearer(writer)
    ).status_code == 204
    assert harness.client.delete("/v1/sessions/s2?subject=ana", headers=bearer(keys.app)).status_code == 404
    deletes = harness.audit(keys.id, "session.delete")
    assert {e.outcome for e in deletes} == {"ok", "not_found", "rejected"}
    assert all(e.memory_ids for e in deletes if e.outcome == "ok")  # the change's record names what went


def test_models_lists_the_configured_model(harness: Harness) -> None:
    keys = harness.tenant()
    out = harness.client.get("/v1/models", headers=bearer(keys.reader)).json()
    model = {"id": "fake-llm", "object": "model", "created": 0, "owned_by": "sealmem"}
    assert out == {"object": "list", "data": [model]}
    assert harness.client.get("/v1/models").status_code == 401


def test_a_client_that_leaves_mid_stream_still_gets_its_turn_stored(server: Any) -> None:
    import time

    import httpx

    server.fake.delay_s = 0.2
    headers = {"Authorization": f"Bearer {server.app_key}"}
    body = {"subject": "ana", "session_id": "gone", "message": "My dog is named Biscuit.", "stream": True}
    with (
        httpx.Client(base_url=server.url, timeout=10) as client,
        client.stream("POST", "/v1/chat", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        first = next(response.iter_lines())
        assert first.startswith("event: delta")
    deadline = time.monotonic() + 10
    turns: list[Any] = []
    while time.monotonic() < deadline and not turns:
        time.sleep(0.1)
        turns = server.app.state.chat.service.sessions.recent_turns(
            tenant_id=server.tenant_id, subject="ana", session_id="gone", limit=10
        )
    assert [t.metadata["role"] for t in turns][:1] == ["user"]
    assert turns[0].text == "My dog is named Biscuit."


def test_an_injector_error_keeps_its_status(harness: Harness) -> None:
    from tests.chat.fakes import ChatError, InjectionRequest

    class TooLong:
        async def stream(self, request: InjectionRequest, params: Any, stats: Any, *, cancel: Any) -> Any:
            raise ChatError(422, "kv_context_too_long", "the memories do not fit the model's positions")
            yield ""

    harness.runtime.service.register_injector("kv", TooLong())
    keys = harness.tenant()
    for stream in (False, True):
        response = harness.client.post(
            "/v1/chat", json={"subject": "ana", "message": "hi there", "injection": "kv", "stream": stream},
            headers=bearer(keys.app),
        )
        assert response.status_code == 422 and response.json()["error"]["code"] == "kv_context_too_long"


def test_the_factory_runs_the_injected_llm_and_disabled_chat_is_503(tmp_path: Any, migrated_db: Any) -> None:
    from service.chat.routes import router
    from tests.harness import fresh_data_dir, make_settings

    settings = make_settings(fresh_data_dir(tmp_path / "data", migrated_db))
    injected = FakeBackend(model="injected")
    with Harness.start(settings, llm=injected) as running:
        mounted = [
            r for r in running.app.routes
            if getattr(r, "original_router", None) is router or getattr(r, "path", "") == "/v1/chat"
        ]
        assert len(mounted) == 1  # included once (FastAPI keeps an included router whole, or flattens its routes)
        assert running.runtime.backend is injected
        key = running.tenant("t").app
        assert running.client.get("/v1/models", headers=bearer(key)).json()["data"][0]["id"] == "injected"
    with Harness.start(settings.model_copy(update={"chat_enabled": False})) as disabled:
        assert disabled.app.state.chat is None  # no runtime, so no model loaded
        response = disabled.client.post("/v1/chat", json={"subject": "ana", "message": "hi"}, headers=bearer(key))
        assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"
