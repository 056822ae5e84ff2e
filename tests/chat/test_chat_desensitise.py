"""Desensitisation in the chat loop, on the ``openai`` backend against a real OpenAI-compatible HTTP server
that records every request: canary values told in a chat never reach the LLM server, the reply comes back with
them restored (streamed in pieces that split placeholders too), nothing of them is on disk in clear, and a
forget leaves nothing of them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from memory_store.models import SensitiveValue
from service.chat.distill import LLMDistiller
from service.chat.shield import Shield, shield_turn
from service.llm.openai_backend import OpenAIBackend
from tests.chat.fakes import serve
from tests.chat.openai_server import Script, fake_openai_app
from tests.harness import Harness, bearer

EMAIL = "ana.canary@example.org"
CARD = "4111 1111 1111 1111"
KEY = "sk-proj-Q7vX2mN9pL4kR8sT1wY6zB3cD5fG0hJ"
CANARIES = (EMAIL, CARD, CARD.replace(" ", ""), KEY)


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def llm_url(script: Script) -> Iterator[str]:
    with serve(fake_openai_app(script)) as url:
        yield url + "/v1"


@pytest.fixture
def remote(make_chat: Callable[..., Harness], llm_url: str) -> Harness:
    return make_chat(llm=OpenAIBackend(base_url=llm_url, model="tiny-remote", timeout_s=5.0, max_retries=0))


def sent(script: Script) -> str:
    return json.dumps(script.requests)


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def on_disk(folder: Path, needles: tuple[str, ...]) -> list[str]:
    found = []
    for path in files_under(folder):
        data = path.read_bytes()
        found += [f"{needle} in {path.name}" for needle in needles if needle.encode() in data]
    return found


def stream_reply(harness: Harness, key: str, **body: object) -> str:
    with harness.client.stream("POST", "/v1/chat", json={**body, "stream": True}, headers=bearer(key)) as response:
        assert response.status_code == 200
        text = "".join(response.iter_text())
    deltas = [
        json.loads(line[len("data: ") :])["text"]
        for block in text.split("\n\n")
        if block.startswith("event: delta")
        for line in block.splitlines()
        if line.startswith("data: ")
    ]
    return "".join(deltas)


def test_canaries_never_reach_the_llm_and_the_reply_is_restored(remote: Harness, script: Script) -> None:
    keys = remote.tenant()
    message = f"Remember my email {EMAIL}, my card {CARD} and my API key {KEY}."
    script.echo = True
    out = remote.chat(keys.app, subject="ana", session_id="s1", message=message)
    assert out["reply"] == "Echo: " + message  # restored for the caller, who sent them
    prompt = sent(script)
    assert not [c for c in CANARIES if c in prompt]
    assert "<EMAIL_ADDRESS_1>" in prompt and "<CREDIT_CARD_1>" in prompt and "<API_KEY_1>" in prompt
    assert out["info"]["masked_values"] == 3

    script.chunk_chars = 3  # every placeholder arrives split over several chunks
    streamed = stream_reply(remote, keys.app, subject="ana", session_id="s1", message=f"Again: {EMAIL}")
    assert streamed == f"Echo: Again: {EMAIL}"
    remote.drain()

    # What the chat stored holds placeholders; the app sees the pseudonymised originals, the secret stays masked.
    stored = remote.store.list(tenant_id=keys.id, subject="ana", limit=100).items
    assert stored and not [m for m in stored if any(c in m.text for c in CANARIES)]
    listed = remote.client.get("/v1/memories", params={"subject": "ana", "limit": 100}, headers=bearer(keys.app))
    texts = [m["text"] for m in listed.json()["items"]]
    assert any(EMAIL in t and CARD in t and "<API_KEY>" in t for t in texts)
    assert not [t for t in texts if KEY in t]
    as_reader = remote.client.get("/v1/memories", params={"subject": "ana"}, headers=bearer(keys.reader))
    assert EMAIL not in as_reader.text and "<EMAIL_ADDRESS_1>" in as_reader.text

    # A later turn: the memory goes into the prompt as a placeholder, and the reply is restored.
    script.echo, script.chunk_chars = False, 0
    remote.add(keys.app, "ana", f"My email address is {EMAIL}.")
    out = remote.chat(keys.app, subject="ana", session_id="s2", message="What is my email address?")
    assert EMAIL in out["reply"] and "<EMAIL_ADDRESS_1>" not in out["reply"]
    assert any(EMAIL in m["text"] for m in out["memories_used"])
    assert not [c for c in CANARIES if c in sent(script)]

    data_dir = Path(remote.settings.data_dir)
    assert on_disk(data_dir, CANARIES) == []  # sealed originals only
    with remote.store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(SensitiveValue)) == 2  # the email and the card

    forgot = remote.client.delete("/v1/admin/subjects/ana", headers=bearer(keys.admin))
    assert forgot.status_code == 200
    with remote.store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(SensitiveValue)) == 0
    assert on_disk(data_dir, CANARIES) == []
    gone = remote.client.post("/v1/memories/search", json={"subject": "ana", "query": "email"},
                              headers=bearer(keys.app))
    assert gone.status_code == 404


def test_a_rejected_type_refuses_the_turn_before_the_llm_sees_it(remote: Harness, script: Script) -> None:
    keys = remote.tenant()
    changed = remote.client.patch("/v1/admin/desensitisation", json={"actions": {"API_KEY": "reject"}},
                                  headers=bearer(keys.admin))
    assert changed.status_code == 200
    response = remote.client.post("/v1/chat", json={"subject": "ana", "message": f"my key is {KEY}"},
                                  headers=bearer(keys.app))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "sensitive_data_rejected" and "API_KEY" in error["message"] and KEY not in response.text
    assert script.requests == []
    listed = remote.client.get("/v1/memories", params={"subject": "ana"}, headers=bearer(keys.app))
    assert listed.status_code == 404 or listed.json()["items"] == []


def test_the_openai_compatible_endpoint_masks_client_history_and_system_text(
    remote: Harness, script: Script
) -> None:
    keys = remote.tenant()
    script.echo = True
    client = remote.client
    body = {
        "model": "tiny-remote",
        "user": "ana",
        "messages": [
            {"role": "system", "content": f"The user's email is {EMAIL}."},
            {"role": "user", "content": f"My card is {CARD}."},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": f"Repeat my email {EMAIL} please."},
        ],
    }
    response = client.post("/v1/chat/completions", json=body, headers=bearer(keys.app))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == f"Echo: Repeat my email {EMAIL} please."
    assert not [c for c in CANARIES if c in sent(script)]
    assert sent(script).count("<EMAIL_ADDRESS_1>") == 2  # one value, one placeholder, wherever it appears


def test_placeholders_split_across_chunks_are_restored() -> None:
    shield = Shield(originals={("EMAIL_ADDRESS", 1): EMAIL, ("CREDIT_CARD", 12): CARD})
    reply = "Mail <EMAIL_ADDRESS_1>, card <CREDIT_CARD_12>; <EMAIL_ADDRESS> stays, 3 < 4 > 2 and <b>ok</b> <"

    async def pieces(size: int) -> AsyncIterator[str]:
        for at in range(0, len(reply), size):
            yield reply[at : at + size]

    async def collect(size: int) -> list[str]:
        return [part async for part in shield.restore_stream(pieces(size))]

    expected = f"Mail {EMAIL}, card {CARD}; <EMAIL_ADDRESS> stays, 3 < 4 > 2 and <b>ok</b> <"
    for size in (1, 2, 3, 5, 7, 100):
        parts = asyncio.run(collect(size))
        assert "".join(parts) == expected
        assert not [p for p in parts if "EMAIL_ADDRESS_1" in p or "CREDIT_CARD_1" in p]


@pytest.fixture
def distilling(make_chat: Callable[..., Harness], llm_url: str) -> Harness:
    """The app on the outside LLM, which also distils (``SEALMEM_CHAT_DISTILLER=llm``)."""
    backend = OpenAIBackend(base_url=llm_url, model="tiny-remote", timeout_s=5.0, max_retries=0)
    return make_chat(llm=backend, distiller=LLMDistiller(backend))


def test_the_llm_distiller_sees_masked_text_and_its_statements_are_stored_screened(
    distilling: Harness, script: Script
) -> None:
    harness = distilling
    keys = harness.tenant()
    script.echo = True  # not a JSON list: the distiller falls back to its rules, on the text it was given
    harness.chat(keys.app, subject="ana", session_id="s1", message=f"My email is {EMAIL}. I live in Porto.")
    harness.drain()
    assert len(script.requests) == 2  # the reply, then the distillation
    assert not [c for c in CANARIES if c in sent(script)]
    facts = [m for m in harness.store.list(tenant_id=keys.id, subject="ana", limit=50).items if m.kind != "turn"]
    assert "My email is <EMAIL_ADDRESS_1>." in [m.text for m in facts]
    shown = harness.store.reveal(tenant_id=keys.id, records=facts, role="app")
    assert f"My email is {EMAIL}." in [m.text for m in shown]
    for memory in facts:  # slots are kept as placeholders too: metadata is not screened
        assert EMAIL not in json.dumps(memory.metadata)


def test_write_back_metadata_never_holds_a_value(harness: Harness) -> None:
    keys = harness.tenant()
    harness.chat(keys.app, subject="ana", session_id="s1", message=f"My email is {EMAIL}.")
    harness.chat(keys.app, subject="ana", session_id="s1", message="My email is other.person@example.net.")
    harness.drain()
    listed = harness.client.get("/v1/memories", params={"subject": "ana", "limit": 100}, headers=bearer(keys.reader))
    assert listed.status_code == 200
    assert EMAIL not in listed.text and "other.person" not in listed.text
    facts = [m for m in listed.json()["items"] if m["kind"] != "turn"]
    # The slot is judged on the text as stored (the turn went first, so the vault numbered the value).
    assert {m["metadata"].get("slot_value") for m in facts} == {"<email_address_1>", "<email_address_2>"}


def test_memories_stored_before_screening_are_masked_in_prompts(remote: Harness, script: Script) -> None:
    keys = remote.tenant()
    patch = {"actions": {"EMAIL_ADDRESS": "keep"}}
    assert remote.client.patch("/v1/admin/desensitisation", json=patch, headers=bearer(keys.admin)).status_code == 200
    remote.add(keys.app, "ana", f"My email address is {EMAIL}.")
    patch = {"actions": {"EMAIL_ADDRESS": "pseudonymise"}}
    assert remote.client.patch("/v1/admin/desensitisation", json=patch, headers=bearer(keys.admin)).status_code == 200
    out = remote.chat(keys.app, subject="ana", session_id="s1", message="What is my email address?", write_back=False)
    assert EMAIL not in sent(script) and "<EMAIL_ADDRESS_1>" in sent(script)
    assert EMAIL in out["reply"]


def test_a_rejected_type_in_the_reply_is_masked_in_the_stored_turn(harness: Harness) -> None:
    keys = harness.tenant()
    patch = {"actions": {"CREDIT_CARD": "keep"}}
    assert harness.client.patch("/v1/admin/desensitisation", json=patch, headers=bearer(keys.admin)).status_code == 200
    harness.add(keys.app, "ana", f"My card number is {CARD}.")
    patch = {"actions": {"CREDIT_CARD": "reject"}}
    assert harness.client.patch("/v1/admin/desensitisation", json=patch, headers=bearer(keys.admin)).status_code == 200
    out = harness.chat(keys.app, subject="ana", session_id="s1", message="What is my card number?")
    assert CARD in out["reply"]  # the local model read the old memory; the caller gets its answer
    turns = harness.store.list(tenant_id=keys.id, subject="ana", limit=50).items
    replies = [t.text for t in turns if t.kind == "turn" and t.metadata.get("role") == "assistant"]
    assert len(replies) == 1 and replies[0].startswith("You told me: My card number is <CREDIT_CARD>.")


def test_callers_who_may_not_see_originals_get_no_vault_placeholders(remote: Harness, script: Script) -> None:
    keys = remote.tenant()
    remote.add(keys.app, "ana", f"My email address is {EMAIL}.")
    shielded = shield_turn(
        remote.store, tenant_id=keys.id, subject="ana", role="reader", external=True,
        message=f"Is {EMAIL} the address?", history=[], extra_system="", memory_texts=[],
    )
    assert shielded.message == "Is <EMAIL_ADDRESS_2> the address?"  # not the vault's <EMAIL_ADDRESS_1>
    allowed = shield_turn(
        remote.store, tenant_id=keys.id, subject="ana", role="app", external=True,
        message=f"Is {EMAIL} the address?", history=[], extra_system="", memory_texts=[],
    )
    assert allowed.message == "Is <EMAIL_ADDRESS_1> the address?"
    hits = remote.store.search(tenant_id=keys.id, subject="ana", query=EMAIL, role="reader", k=1)
    assert hits  # searched as <EMAIL_ADDRESS>, matching no particular value


def test_ingestion_masks_what_the_llm_distiller_sends_to_an_outside_llm(distilling: Harness, script: Script) -> None:
    harness = distilling
    keys = harness.tenant()
    body = {"subject": "ana", "messages": [{"role": "user", "content": f"My email is {EMAIL}. I live in Porto."}]}
    response = harness.client.post("/v1/memories/ingest", json=body, headers=bearer(keys.app))
    assert response.status_code == 200, response.text
    assert script.requests and not [c for c in CANARIES if c in sent(script)]
    texts = [e["text"] for e in response.json()["events"]]
    assert f"My email is {EMAIL}." in texts  # restored for the app, stored as a placeholder
    stored = [m.text for m in harness.store.list(tenant_id=keys.id, subject="ana").items]
    assert "My email is <EMAIL_ADDRESS_1>." in stored
