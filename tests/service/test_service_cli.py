"""The ``sealmem`` CLI, driven through typer's CliRunner with settings injected (no environment)."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from memory_store.crypto import encode_key, generate_key
from memory_store.db import make_engine
from memory_store.embedder import HashingEmbedder
from memory_store.errors import WrongMasterKeyError
from memory_store.migrate import current_revision, head_revision, upgrade
from service.app import create_app
from service.cli import make_cli
from service.settings import Settings
from tests.chat.fakes import FakeBackend
from tests.harness import bearer

runner = CliRunner()


def test_keygen_prints_a_fresh_32_byte_base64_key():
    cli = make_cli()
    first = runner.invoke(cli, ["keygen"])
    second = runner.invoke(cli, ["keygen"])
    assert first.exit_code == 0, first.output
    assert len(base64.b64decode(first.output.strip(), validate=True)) == 32
    assert first.output != second.output


def test_migrate_brings_an_empty_database_to_head(tmp_path):
    settings = Settings(data_dir=tmp_path)
    result = runner.invoke(make_cli(settings=settings), ["migrate"])
    assert result.exit_code == 0, result.output
    engine = make_engine(settings)
    try:
        assert current_revision(engine) == head_revision(engine)
        assert head_revision(engine) in result.output
    finally:
        engine.dispose()
    again = runner.invoke(make_cli(settings=settings), ["migrate"])
    assert again.exit_code == 0, again.output


def _tenant(cli, name="acme"):
    result = runner.invoke(cli, ["tenant", "create", name])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_tenant_create_on_a_fresh_data_dir_creates_secrets_and_a_working_admin_key(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    cli = make_cli(settings=settings, embedder=HashingEmbedder())
    created = _tenant(cli)
    assert set(created) == {"tenant_id", "admin_key"} and created["admin_key"].startswith("smk_")
    for name in ("master.key", "token.secret"):
        assert stat.S_IMODE((tmp_path / "data" / name).stat().st_mode) == 0o600
    duplicate = runner.invoke(cli, ["tenant", "create", "acme"])
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    # `serve` reads the same settings, so the key works against the same data directory.
    app = create_app(Settings(data_dir=tmp_path / "data"), embedder=HashingEmbedder(), llm=FakeBackend())
    with TestClient(app) as client:
        headers = bearer(created["admin_key"])
        stats = client.get("/v1/admin/stats", headers=headers)
        assert stats.status_code == 200 and stats.json()["memories"] == 0
        token = client.post("/v1/tokens", json={"subject": "u1", "scopes": ["read"]}, headers=headers)
        assert token.status_code == 201


def test_commands_needing_the_master_key_fail_cleanly_without_one(tmp_path):
    engine = make_engine(Settings(data_dir=tmp_path))
    upgrade(engine)
    engine.dispose()
    result = runner.invoke(make_cli(settings=Settings(data_dir=tmp_path), embedder=HashingEmbedder()), ["reindex"])
    assert result.exit_code == 1 and "no master key" in result.output
    assert not (tmp_path / "master.key").exists()


def _store_with_memory(settings, created, text):
    with TestClient(create_app(settings, embedder=HashingEmbedder(), llm=FakeBackend())) as client:
        response = client.post(
            "/v1/memories", json={"subject": "u1", "text": text}, headers=bearer(created["admin_key"])
        )
        assert response.status_code == 201
        return response.json()["id"]


def _read_memory(settings, created, memory_id):
    with TestClient(create_app(settings, embedder=HashingEmbedder(), llm=FakeBackend())) as client:
        return client.get(f"/v1/memories/{memory_id}", headers=bearer(created["admin_key"])).json()["text"]


def test_rotate_master_key_from_a_key_file_replaces_it_and_keeps_a_backup(tmp_path):
    data = tmp_path / "data"
    settings = Settings(data_dir=data)
    cli = make_cli(settings=settings, embedder=HashingEmbedder())
    created = _tenant(cli)
    memory_id = _store_with_memory(settings, created, "still readable after rotation")
    old_key = (data / "master.key").read_text()
    result = runner.invoke(cli, ["rotate-master-key"])
    assert result.exit_code == 0, result.output
    new_key = (data / "master.key").read_text()
    backups = list(data.glob("master.key.*.bak"))
    assert new_key != old_key and len(backups) == 1 and backups[0].read_text() == old_key
    assert not list(data.glob("*.new")) and old_key.strip() not in result.output
    assert _read_memory(settings, created, memory_id) == "still readable after rotation"
    with pytest.raises(WrongMasterKeyError):
        _read_memory(Settings(data_dir=data, master_key_file=backups[0]), created, memory_id)


def test_rotate_master_key_from_the_environment_prints_the_new_key(tmp_path):
    old = encode_key(generate_key())
    settings = Settings(data_dir=tmp_path / "data", master_key=old)
    cli = make_cli(settings=settings, embedder=HashingEmbedder())
    created = _tenant(cli)
    memory_id = _store_with_memory(settings, created, "env rotation")
    result = runner.invoke(cli, ["rotate-master-key"])
    assert result.exit_code == 0, result.output
    new = result.output.strip().splitlines()[-1]
    assert new != old and len(base64.b64decode(new)) == 32
    rotated = Settings(data_dir=tmp_path / "data", master_key=new)
    assert _read_memory(rotated, created, memory_id) == "env rotation"


def test_reindex_export_and_import_round_trip(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    cli = make_cli(settings=settings, embedder=HashingEmbedder())
    source = _tenant(cli, "source")
    _tenant(cli, "target")
    with TestClient(create_app(settings, embedder=HashingEmbedder(), llm=FakeBackend())) as client:
        batch = {"memories": [{"subject": "u1", "text": f"fact {i}", "metadata": {"i": i}} for i in range(3)]}
        assert client.post("/v1/memories", json=batch, headers=bearer(source["admin_key"])).status_code == 201
    reindexed = runner.invoke(cli, ["reindex"])
    assert reindexed.exit_code == 0 and "3 vectors" in reindexed.output
    out = tmp_path / "u1.jsonl"
    exported = runner.invoke(cli, ["export", "--tenant", "source", "--subject", "u1", str(out)])
    assert exported.exit_code == 0, exported.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["subject", "memory", "memory", "memory", "event", "event", "event"]
    again = runner.invoke(cli, ["export", "--tenant", "source", "--subject", "u1", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output
    imported = runner.invoke(cli, ["import", "--tenant", "target", "--subject", "u9", str(out)])
    assert imported.exit_code == 0, imported.output
    with TestClient(create_app(settings, embedder=HashingEmbedder(), llm=FakeBackend())) as client:
        services = client.app.state.services
        target_id = next(t.id for t in services.store.list_tenants() if t.name == "target")
        page = services.store.list(tenant_id=target_id, subject="u9")
        assert sorted((m.text, m.metadata["i"], m.source) for m in page.items) == [
            (f"fact {i}", i, "import") for i in range(3)
        ]
        entries = services.auditor.log.entries(tenant_id=target_id)
        assert [e.action for e in entries] == ["memory.import", "key.create"]  # newest first: tenant create, import
        assert entries[0].subject == "u9" and sorted(entries[0].memory_ids) == sorted(m.id for m in page.items)
        assert {(e.credential_id, e.role) for e in entries} == {("cli", "operator")}


def test_import_rejects_a_bad_file_before_writing_anything(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    cli = make_cli(settings=settings, embedder=HashingEmbedder())
    _tenant(cli)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"type": "memory", "subject": "u1", "text": "good"})
        + "\n"
        + json.dumps({"type": "memory", "subject": "u1", "text": "SECRET-CANARY", "kind": "Bad Kind"})
        + "\n"
    )
    result = runner.invoke(cli, ["import", "--tenant", "acme", str(bad)])
    assert result.exit_code == 1 and "line 2" in result.output and "SECRET-CANARY" not in result.output
    with TestClient(create_app(settings, embedder=HashingEmbedder(), llm=FakeBackend())) as client:
        services = client.app.state.services
        tenant_id = services.store.list_tenants()[0].id
        assert services.store.stats(tenant_id=tenant_id).memories == 0


def test_export_keeps_placeholders_unless_revealed_and_import_refuses_rejected_types(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    cli = make_cli(settings=settings, embedder=HashingEmbedder())
    source = _tenant(cli, "source")
    target = _tenant(cli, "target")
    with TestClient(create_app(settings, embedder=HashingEmbedder(), llm=FakeBackend())) as client:
        body = {"subject": "u1", "text": "My email is ana.canary@example.org and card 4111 1111 1111 1111."}
        assert client.post("/v1/memories", json=body, headers=bearer(source["admin_key"])).status_code == 201
        target_admin = target["admin_key"]
        changed = client.patch("/v1/admin/desensitisation", json={"actions": {"CREDIT_CARD": "reject"}},
                               headers=bearer(target_admin))
        assert changed.status_code == 200
    masked, revealed = tmp_path / "masked.jsonl", tmp_path / "revealed.jsonl"
    assert runner.invoke(cli, ["export", "--tenant", "source", "--subject", "u1", str(masked)]).exit_code == 0
    assert "<EMAIL_ADDRESS_1>" in masked.read_text() and "ana.canary" not in masked.read_text()
    result = runner.invoke(cli, ["export", "--tenant", "source", "--subject", "u1", "--reveal", str(revealed)])
    assert result.exit_code == 0 and "ana.canary@example.org" in revealed.read_text()
    refused = runner.invoke(cli, ["import", "--tenant", "target", str(revealed)])
    assert refused.exit_code == 1 and "CREDIT_CARD" in refused.output and "4111" not in refused.output
    with TestClient(create_app(settings, embedder=HashingEmbedder(), llm=FakeBackend())) as client:
        store = client.app.state.services.store
        target_id = next(t.id for t in store.list_tenants() if t.name == "target")
        assert store.stats(tenant_id=target_id).memories == 0
