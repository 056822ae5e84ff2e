"""The sync and the async client against a real server: memories, tokens, admin, errors as classes."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sealmem_client_live import Live

from sealmem_client import (
    AsyncSealmem,
    Forbidden,
    InvalidInput,
    Memory,
    NewMemory,
    NotFound,
    Sealmem,
    SealmemError,
    SensitiveDataRejected,
    Unauthorized,
)


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_memories_round_trip(app: Sealmem) -> None:
    subject = fresh("user")
    dog = app.memories.add(
        "My dog is named Biscuit and I live in Lisbon.", subject=subject, metadata={"topic": "home"}, kind="fact"
    )
    assert isinstance(dog, Memory) and dog.subject == subject and dog.metadata == {"topic": "home"}
    seat = app.memories.add("Prefers window seats on long flights.", subject=subject, kind="preference")

    hits = app.memories.search("what is my dog called?", subject=subject, k=2)
    assert hits[0].id == dog.id and hits[0].score > 0
    only_prefs = app.memories.search("seats", subject=subject, filters={"kinds": ["preference"]})
    assert [h.id for h in only_prefs] == [seat.id]

    assert app.memories.get(dog.id).text == dog.text
    expiry = datetime.now(UTC) + timedelta(days=30)
    changed = app.memories.update(dog.id, text="My dog is named Biscuit; I live in Porto.", expires_at=expiry)
    assert changed.text.endswith("Porto.") and changed.expires_at is not None
    assert app.memories.update(dog.id, expires_at=None).expires_at is None  # null clears; text untouched
    assert app.memories.get(dog.id).text.endswith("Porto.")
    actions = [e.action for e in app.memories.history(dog.id).events]
    assert actions[0] in ("add", "added", "create", "created") and len(actions) >= 3, actions

    app.memories.delete(seat.id)
    with pytest.raises(NotFound) as caught:
        app.memories.get(seat.id)
    assert caught.value.status == 404 and caught.value.code == "not_found" and caught.value.request_id


def test_batch_and_iteration_across_pages(app: Sealmem) -> None:
    subject = fresh("batch")
    added = app.memories.add_batch(
        [NewMemory(text=f"Fact number {i} about the garden.") for i in range(5)]
        + [{"text": "Likes tulips.", "kind": "preference"}],
        subject=subject,
    )
    assert len(added) == 6 and {m.subject for m in added} == {subject}
    first = app.memories.list(subject=subject, limit=2)
    assert len(first.items) == 2 and first.next_cursor
    every = list(app.memories.iter(subject=subject, page_size=2))
    assert sorted(m.id for m in every) == sorted(m.id for m in added)  # 3 pages, each memory once
    assert [m.text for m in app.memories.iter(subject=subject, kind="preference")] == ["Likes tulips."]


def test_errors_are_classes_named_after_codes(live: Live, app: Sealmem) -> None:
    subject = fresh("err")
    app.memories.add("A memory.", subject=subject)
    with Sealmem(live.url, live.reader_key) as reader:
        assert reader.memories.list(subject=subject).items  # reading is allowed
        with pytest.raises(Forbidden) as forbidden:
            reader.memories.add("A reader may not write.", subject=subject)
    assert forbidden.value.status == 403 and forbidden.value.code == "forbidden"
    with pytest.raises(InvalidInput) as invalid:
        app.memories.search("anything", subject=subject, k=0)
    assert invalid.value.status == 422 and "k" in invalid.value.message
    with Sealmem(live.url, "smk_" + "x" * 43, max_retries=0) as wrong, pytest.raises(Unauthorized) as unauthorized:
        wrong.memories.list(subject=subject)
    assert unauthorized.value.status == 401 and isinstance(unauthorized.value, SealmemError)
    with pytest.raises(NotFound):
        app.memories.list(subject=fresh("nobody"))


def test_sensitive_data_rejected(admin: Sealmem, app: Sealmem) -> None:
    policy = admin.admin.desensitisation.get()
    assert "CREDIT_CARD" in policy.types
    updated = admin.admin.desensitisation.update(actions={"CREDIT_CARD": "reject"})
    assert updated.actions["CREDIT_CARD"] == "reject" and updated.revision > policy.revision
    try:
        deadline = time.monotonic() + 10  # policies are cached up to 2 s
        while True:
            try:
                app.memories.add("My card is 4111 1111 1111 1111.", subject=fresh("card"))
            except SensitiveDataRejected as exc:
                assert exc.status == 422 and exc.code == "sensitive_data_rejected" and "4111" not in exc.message
                break
            assert time.monotonic() < deadline, "the reject policy never applied"
            time.sleep(0.5)
    finally:
        admin.admin.desensitisation.update(actions={"CREDIT_CARD": policy.actions["CREDIT_CARD"]})  # type: ignore[dict-item]


def test_subject_token_minted_and_used_by_a_second_client(app: Sealmem) -> None:
    subject, other = fresh("tok"), fresh("other")
    theirs = app.memories.add("Someone else's memory.", subject=other)
    token = app.tokens.create(subject, ["read", "write"], ttl_seconds=300)
    assert token.subject == subject and token.scopes == ["read", "write"] and token.token_type == "Bearer"
    user = app.with_api_key(token.token)
    mine = user.memories.add("I like green tea.")  # no subject: the token's
    assert mine.subject == subject
    assert [m.id for m in user.memories.list().items] == [mine.id]
    with pytest.raises(NotFound):
        user.memories.get(theirs.id)  # another subject's memory does not exist for this token
    reader = Sealmem(app.base_url, app.tokens.create(subject, ["read"]).token)
    with reader, pytest.raises(Forbidden):
        reader.memories.add("read scope only")


def test_admin_operations(admin: Sealmem, app: Sealmem) -> None:
    subjects = [fresh("adm") for _ in range(3)]
    for s in subjects:
        app.memories.add(f"Memory of {s}.", subject=s)
    page = admin.admin.subjects.list(limit=1)
    assert len(page.subjects) == 1 and page.next_offset == 1
    listed = {s.subject for s in admin.admin.subjects.iter(page_size=1)}
    assert set(subjects) <= listed
    assert admin.admin.stats().memories >= 3
    across = list(admin.admin.memories.iter(subject=subjects[0], page_size=1))
    assert [m.subject for m in across] == [subjects[0]]

    exported = admin.admin.subjects.export(subjects[0])
    assert exported.subject == subjects[0] and len(exported.memories) == 1
    assert admin.admin.subjects.forget(subjects[0]).memories_deleted == 1
    with pytest.raises(NotFound):
        app.memories.list(subject=subjects[0])

    created = admin.admin.keys.create("reader", "temporary")
    assert created.key.startswith("smk_") and created.key.startswith(created.prefix)
    assert created.id in {k.id for k in admin.admin.keys.list()}
    assert admin.admin.keys.revoke(created.id).revoked_at is not None

    audit = list(itertools.islice(admin.admin.audit.iter(page_size=3), 10))
    assert len(audit) == 10 and [a.seq for a in audit] == sorted((a.seq for a in audit), reverse=True)
    forgets = list(admin.admin.audit.iter(action="subject.forget"))
    assert forgets and all(a.action == "subject.forget" for a in forgets)
    verified = admin.admin.audit.verify()
    assert verified.ok and verified.first_broken is None and verified.records_checked >= 10
    assert admin.health.ready().status and "sealmem_http_requests_total" in admin.health.metrics()
    assert admin.request("GET", "/v1/admin/stats")["memories"] >= 2  # the escape hatch


def test_async_client(live: Live) -> None:
    async def scenario() -> None:
        subject = fresh("async")
        async with AsyncSealmem(live.url, live.app_key) as client:
            first = await client.memories.add("I moved to Porto last year.", subject=subject)
            batch = await client.memories.add_batch(
                [{"text": "Works as a nurse."}, {"text": "Plays the cello."}], subject=subject
            )
            ids = [m.id async for m in client.memories.iter(subject=subject, page_size=1)]
            assert sorted(ids) == sorted([first.id, *(m.id for m in batch)])
            hits = await client.memories.search("who plays the cello?", subject=subject, k=1)
            assert hits[0].text == "Plays the cello."
            changed = await client.memories.update(first.id, text="I moved to Braga last year.")
            assert changed.text == "I moved to Braga last year."
            assert len((await client.memories.history(first.id)).events) >= 2
            await client.memories.delete(first.id)
            with pytest.raises(NotFound):
                await client.memories.get(first.id)
            token = await client.tokens.create(subject, ["read"])
            user = client.with_api_key(token.token)
            assert len((await user.memories.list()).items) == 2
            with pytest.raises(Forbidden):
                await user.memories.add("no write scope")

    asyncio.run(scenario())


def test_conversation_ingestion(app: Sealmem) -> None:
    subject = fresh("ingest")
    first = app.memories.ingest(
        [
            {"role": "user", "content": "My dog is named Biscuit and I live in Lisbon."},
            {"role": "assistant", "content": "Nice to meet you and Biscuit!"},
        ],
        subject=subject,
    )
    assert first.events and {e.event for e in first.events} == {"ADD"}
    moved = app.memories.ingest([{"role": "user", "content": "I just moved to Porto."}], subject=subject)
    assert moved.events and moved.events[0].event in ("ADD", "UPDATE", "SUPERSEDE")
    job = app.memories.ingest_async([{"role": "user", "content": "I no longer eat meat."}], subject=subject)
    deadline = time.monotonic() + 20
    while (state := app.memories.ingest_status(job.job_id)).status in ("queued", "running"):
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert state.status == "done", state
