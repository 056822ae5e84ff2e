"""At rest: a real ``sealmem serve`` process (chat on, its LLM a small OpenAI-compatible server in this test)
runs a workload full of canary strings: memories, metadata keys and values, edits (history), deletes, searches,
chat turns (``/v1/chat`` and ``/v1/chat/completions``, streamed and not) and the facts distilled from them.
Then every file under the data directory and the captured server log (at DEBUG) are scanned, running and
after a clean stop:

- no canary in plaintext (as written, or lower-cased);
- no raw float32 embedding of a canary text (the embedder is deterministic: the exact vectors are known);
- no master key, subject data key, tenant index key or vector-rotation key bytes (raw or base64);
- no API key, subject token or token-signing secret.

After ``DELETE /v1/admin/subjects/{subject}`` (forget), the same scan holds, the subject's wrapped data key is
gone from the files too (crypto-shredding: nothing could decrypt a leftover ciphertext page), and the export,
admin, memory and session endpoints show nothing of the subject.
"""

from __future__ import annotations

import base64
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from memory_store.crypto import MasterKey, associated_data, decode_key, subject_key_ad, tenant_index_key_ad
from memory_store.embedder import HashingEmbedder
from tests.chat.fakes import serve
from tests.chat.openai_server import Script, fake_openai_app
from tests.harness import bearer
from tests.proofs.process import ServerProcess, create_tenant, secret_env
from tests.proofs.sealmem_hashing import DIM

KEEP, FORGET = "keeper", "forget-me"


def canary(kind: str) -> str:
    return f"CANARY{kind.upper()}{secrets.token_hex(6).upper()}"


class Canaries:
    """Every secret string of the workload, and for each the subject it belongs to."""

    def __init__(self) -> None:
        self.owner: dict[str, str | None] = {}
        self.memory_texts: dict[str, str] = {}  # full memory text -> subject (their vectors are scanned for)

    def new(self, kind: str, subject: str | None) -> str:
        value = canary(kind)
        self.owner[value] = subject
        return value


@pytest.fixture
def llm_server() -> Iterator[str]:
    with serve(fake_openai_app(Script(), model="tiny-remote")) as url:
        yield url + "/v1"


def workload(server: ServerProcess, admin: str, marks: Canaries) -> dict[str, str]:
    """Returns the credentials it used (they must not be found at rest either)."""
    with server.client() as client:
        app_key = client.post("/v1/admin/keys", json={"role": "app", "name": "app"}, headers=bearer(admin)).json()[
            "key"
        ]
        token = client.post(
            "/v1/tokens", json={"subject": KEEP, "scopes": ["read", "write", "chat"]}, headers=bearer(app_key)
        ).json()["token"]
        h = bearer(app_key)
        for subject in (KEEP, FORGET):
            ids = []
            for i in range(4):
                text = f"Note {i}: my secret word is {marks.new('text', subject)} indeed"
                marks.memory_texts[text] = subject
                metadata = {"note": marks.new("metaval", subject), marks.new("metakey", subject): [1, {"x": "y"}]}
                created = client.post(
                    "/v1/memories", json={"subject": subject, "text": text, "metadata": metadata}, headers=h
                )
                assert created.status_code == 201, created.text
                ids.append(created.json()["id"])
            batch = [{"subject": subject, "text": f"Batch {marks.new('batch', subject)} item {i}"} for i in range(3)]
            marks.memory_texts.update({item["text"]: subject for item in batch})
            assert client.post("/v1/memories", json={"memories": batch}, headers=h).status_code == 201
            edited = f"Edited to {marks.new('edit', subject)} now"
            marks.memory_texts[edited] = subject
            assert client.patch(f"/v1/memories/{ids[0]}", json={"text": edited}, headers=h).status_code == 200
            assert client.delete(f"/v1/memories/{ids[1]}", headers=h).status_code == 204
            query = f"what is {marks.new('query', subject)}"
            assert client.post("/v1/memories/search", json={"subject": subject, "query": query}, headers=h).is_success
            # Chat: turns stored, a fact distilled in the background.
            said = f"My dog is named {marks.new('chat', subject)}."
            chat = client.post("/v1/chat", json={"subject": subject, "session_id": "s1", "message": said}, headers=h)
            assert chat.status_code == 200, chat.text
            streamed = client.post(
                "/v1/chat",
                json={
                    "subject": subject,
                    "session_id": "s1",
                    "message": f"I live in {marks.new('city', subject)}.",
                    "stream": True,
                },
                headers=h,
            )
            assert streamed.status_code == 200 and "event: done" in streamed.text, streamed.text[-300:]
            completion = client.post(
                "/v1/chat/completions",
                json={
                    "user": subject,
                    "messages": [{"role": "user", "content": f"I work at {marks.new('job', subject)}."}],
                },
                headers=h,
            )
            assert completion.status_code == 200, completion.text
        own = client.post(
            "/v1/chat", json={"session_id": "s2", "message": f"I like {marks.new('tok', KEEP)}."}, headers=bearer(token)
        )
        assert own.status_code == 200, own.text
        wait_for_distilled_facts(client, bearer(admin))
    return {"admin": admin, "app": app_key, "token": token}


def wait_for_distilled_facts(client: httpx.Client, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        facts = client.get("/v1/admin/memories", params={"kind": "fact", "limit": 200}, headers=headers)
        chat_facts = [m for m in facts.json().get("items", []) if m["source"] == "chat"] if facts.is_success else []
        if len(chat_facts) >= 6:  # dog, city and job for each of the two subjects
            return
        time.sleep(0.3)
    everything = client.get("/v1/admin/memories", params={"limit": 200}, headers=headers).json()
    summary = [(m["kind"], m["source"], m["text"][:60]) for m in everything.get("items", [])]
    raise AssertionError(f"the background write-back did not distil the chat facts: {summary}")


def secrets_on_disk(data_dir: Path, master: MasterKey) -> dict[str, bytes]:
    """The raw key material the files must never contain, read (wrapped) from the database and unwrapped."""
    found: dict[str, bytes] = {"master key": master.material}
    db = sqlite3.connect(f"file:{data_dir / 'sealmem.db'}?mode=ro", uri=True)
    try:
        for subject_id, tenant_id, external, wrapped in db.execute(
            "SELECT id, tenant_id, external_id, wrapped_key FROM subjects"
        ):
            found[f"data key of {external}"] = master.unwrap(wrapped, subject_key_ad(tenant_id, subject_id))
        for tenant_id, version, wrapped in db.execute("SELECT id, index_key_version, wrapped_index_key FROM tenants"):
            found[f"index key of {tenant_id}"] = master.unwrap(wrapped, tenant_index_key_ad(tenant_id, version))
        for tenant_id, wrapped in db.execute("SELECT tenant_id, wrapped_key FROM tenant_vector_keys"):
            found[f"vector key of {tenant_id}"] = master.unwrap(wrapped, associated_data("vector-key", tenant_id))
    finally:
        db.close()
    return found


def wrapped_subject_key(data_dir: Path, subject: str) -> bytes:
    db = sqlite3.connect(f"file:{data_dir / 'sealmem.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT wrapped_key FROM subjects WHERE external_id = ?", (subject,)).fetchone()
    finally:
        db.close()
    assert row is not None
    return bytes(row[0])


def needles(
    marks: Canaries, keys: dict[str, bytes], credentials: dict[str, str], token_secret: str
) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for value in marks.owner:
        out[f"canary {value}"] = value.encode()
        out[f"canary {value} (lower case)"] = value.lower().encode()
    vectors = HashingEmbedder(DIM).embed(list(marks.memory_texts))
    for text, vector in zip(marks.memory_texts, vectors, strict=True):
        raw = vector.astype("<f4").tobytes()
        out[f"embedding of {text!r}"] = raw
        nonzero = [i for i, v in enumerate(vector) if v != 0]
        if len(nonzero) >= 3:  # the stretch from first to last non-zero float: a partial copy would show it
            out[f"embedding span of {text!r}"] = raw[nonzero[0] * 4 : nonzero[-1] * 4 + 4]
    for name, key in keys.items():
        out[name] = key
        out[f"{name} (base64)"] = base64.b64encode(key)
        out[f"{name} (urlsafe base64)"] = base64.urlsafe_b64encode(key).rstrip(b"=")
        out[f"{name} (hex)"] = key.hex().encode()
    for name, credential in credentials.items():
        out[f"{name} credential"] = credential.encode()
    out["token signing secret"] = token_secret.encode()
    return out


def scan(paths: list[Path], needles_: dict[str, bytes]) -> list[str]:
    hits = []
    for path in paths:
        data = path.read_bytes()
        for name, needle in needles_.items():
            if needle and needle in data:
                hits.append(f"{name} in {path.name}")
    return hits


def files_under(folder: Path) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    return files


def test_nothing_readable_at_rest_and_forget_leaves_nothing(tmp_path: Path, llm_server: str) -> None:
    data_dir = tmp_path / "data"
    env = secret_env(
        tmp_path / "secrets",
        data_dir,
        SEALMEM_LOG_LEVEL="DEBUG",
        SEALMEM_CHAT_ENABLED="true",
        SEALMEM_LLM_BACKEND="openai",
        SEALMEM_OPENAI_BASE_URL=llm_server,
        SEALMEM_OPENAI_MODEL="tiny-remote",
        SEALMEM_PERSIST_INTERVAL_SECONDS="0.5",
        SEALMEM_INDEX_PERSIST_EVERY="5",
    )
    master = MasterKey(decode_key((tmp_path / "secrets" / "master.key").read_text().strip()))
    token_secret = (tmp_path / "secrets" / "token.secret").read_text().strip()
    admin = create_tenant(env, "acme")["admin_key"]
    log = tmp_path / "serve.log"
    marks = Canaries()
    server = ServerProcess(env, log).start()
    try:
        credentials = workload(server, admin, marks)
        with server.client(headers=bearer(admin)) as client:  # control: the canaries are really stored
            exported = client.get(f"/v1/admin/subjects/{KEEP}/export").text
        live_kinds = ("BATCH", "EDIT", "CHAT", "CITY", "JOB", "TOK")  # never edited away or deleted
        expected = [v for v, owner in marks.owner.items() if owner == KEEP and v[6:].startswith(live_kinds)]
        assert len(expected) == 8 and all(value in exported for value in expected), expected
        running_files = files_under(data_dir)
        print("scanned while running:", sorted(str(p.relative_to(data_dir)) for p in running_files))
        keys = secrets_on_disk(data_dir, master)
        all_needles = needles(marks, keys, credentials, token_secret)
        assert scan([*running_files, log], all_needles) == []
    finally:
        assert server.stop() in (0, -15)
    assert any(p.parent.name == "indexes" or "index" in p.name for p in files_under(data_dir)), "no index files"
    assert scan([*files_under(data_dir), log], all_needles) == []
    forgotten_wrapped = wrapped_subject_key(data_dir, FORGET)

    # Forget one subject, then look for it everywhere.
    server.start()
    try:
        with server.client(headers=bearer(admin)) as client:
            gone = client.delete(f"/v1/admin/subjects/{FORGET}")
            assert gone.status_code == 200 and gone.json()["memories_deleted"] > 0, gone.text
            assert_nothing_of(client, FORGET, credentials["app"], marks)
            # The other subject is intact.
            kept = client.get(f"/v1/admin/subjects/{KEEP}/export").json()["memories"]
            assert kept and all(m["subject"] == KEEP for m in kept)
    finally:
        assert server.stop() in (0, -15)
    final_files = files_under(data_dir)
    assert scan([*final_files, log], all_needles) == []
    access_lines = [line for line in log.read_text().splitlines() if '"sealmem.access"' in line]
    assert len(access_lines) > 30, "the server log was not captured"  # control: the log scan saw the traffic
    assert scan(final_files, {"wrapped data key of the forgotten subject": forgotten_wrapped}) == []


def assert_nothing_of(client: httpx.Client, subject: str, app_key: str, marks: Canaries) -> None:
    theirs = [value for value, owner in marks.owner.items() if owner == subject]
    assert client.get(f"/v1/admin/subjects/{subject}/export").status_code == 404
    assert client.delete(f"/v1/admin/subjects/{subject}").status_code == 404
    assert client.get("/v1/admin/memories", params={"subject": subject}).status_code == 404
    answers: list[Any] = [
        client.get("/v1/admin/memories", params={"limit": 200}),
        client.get("/v1/admin/subjects", params={"limit": 200}),
        client.get("/v1/admin/stats"),
        client.get("/v1/admin/audit", params={"limit": 200}),
    ]
    for response in answers:
        assert response.status_code == 200, response.text
        assert not any(value in response.text for value in theirs)
    assert all(m["subject"] != subject for m in answers[0].json()["items"])
    assert subject not in {s["subject"] for s in answers[1].json()["subjects"]}
    assert subject not in answers[2].json()["per_subject"]
    app = bearer(app_key)
    assert client.get("/v1/memories", params={"subject": subject}, headers=app).status_code == 404
    search = {"subject": subject, "query": "my secret word"}
    assert client.post("/v1/memories/search", json=search, headers=app).status_code == 404
    assert client.get("/v1/sessions", params={"subject": subject}, headers=app).status_code in (200, 404)
    sessions = client.get("/v1/sessions", params={"subject": subject}, headers=app)
    assert sessions.status_code == 404 or sessions.json()["sessions"] == []
    chat = client.post(
        "/v1/chat", json={"subject": subject, "message": "What is my dog's name?", "write_back": False}, headers=app
    )
    assert chat.status_code == 200 and chat.json()["memories_used"] == []
    assert not any(value in chat.text for value in theirs)
    assert json.dumps(answers[3].json()).count(subject) >= 1  # the audit trail keeps the forget itself (ids only)
