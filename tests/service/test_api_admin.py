"""Admin endpoints: inspection, subjects, stats, export, forget, reindex, key management, audit."""

from __future__ import annotations

from memory_store.access import AuditRecord
from tests.harness import bearer


def test_inspect_lists_across_subjects_decrypted_with_filters(api):
    t = api.tenant("acme")
    a = api.add(t.app, "alice", "alice's note", kind="note")
    b = api.add(t.app, "bob", "bob's fact")
    every = api.client.get("/v1/admin/memories", headers=bearer(t.admin)).json()
    assert [(m["id"], m["text"]) for m in every["items"]] == [(b["id"], "bob's fact"), (a["id"], "alice's note")]
    notes = api.client.get("/v1/admin/memories", params={"kind": "note"}, headers=bearer(t.admin)).json()
    assert [m["id"] for m in notes["items"]] == [a["id"]]
    only_bob = api.client.get("/v1/admin/memories", params={"subject": "bob"}, headers=bearer(t.admin)).json()
    assert [m["subject"] for m in only_bob["items"]] == ["bob"]


def test_subjects_have_counts_last_activity_and_pagination(api):
    t = api.tenant("acme")
    for subject, n in (("alice", 2), ("bob", 1), ("carol", 1)):
        for i in range(n):
            api.add(t.app, subject, f"{subject} {i}")
    page = api.client.get("/v1/admin/subjects", params={"limit": 2}, headers=bearer(t.admin)).json()
    assert [(s["subject"], s["memory_count"]) for s in page["subjects"]] == [("alice", 2), ("bob", 1)]
    assert page["next_offset"] == 2 and page["subjects"][0]["last_activity_at"]
    rest = api.client.get("/v1/admin/subjects", params={"limit": 2, "offset": 2}, headers=bearer(t.admin)).json()
    assert [s["subject"] for s in rest["subjects"]] == ["carol"] and rest["next_offset"] is None


def test_stats_count_memories_and_index(api):
    t = api.tenant("acme")
    api.add(t.app, "alice", "one", kind="note")
    api.add(t.app, "bob", "two")
    stats = api.client.get("/v1/admin/stats", headers=bearer(t.admin)).json()
    assert stats["memories"] == 2 and stats["subjects"] == 2
    assert stats["by_kind"] == {"note": 1, "fact": 1} and stats["per_subject"] == {"alice": 1, "bob": 1}
    assert stats["index_vectors"] == 2 and stats["index_kind"]


def test_export_returns_everything_about_the_subject(api):
    t = api.tenant("acme")
    m = api.add(t.app, "alice", "likes tea", metadata={"k": "v"})
    api.client.patch(f"/v1/memories/{m['id']}", json={"text": "likes coffee"}, headers=bearer(t.app))
    api.add(t.app, "bob", "not alice's")
    export = api.client.get("/v1/admin/subjects/alice/export", headers=bearer(t.admin)).json()
    assert export["subject"] == "alice"
    assert [(x["text"], x["metadata"]) for x in export["memories"]] == [("likes coffee", {"k": "v"})]
    assert [e["action"] for e in export["history"]] == ["add", "update"]
    assert api.client.get("/v1/admin/subjects/nobody/export", headers=bearer(t.admin)).status_code == 404


def test_subject_names_with_slashes_and_spaces_work_in_paths(api):
    t = api.tenant("acme")
    api.add(t.app, "org/user 7", "slashed")
    export = api.client.get("/v1/admin/subjects/org%2Fuser%207/export", headers=bearer(t.admin))
    assert export.status_code == 200 and export.json()["subject"] == "org/user 7"
    assert api.client.delete("/v1/admin/subjects/org/user 7", headers=bearer(t.admin)).json()["memories_deleted"] == 1


def test_forget_shreds_the_subject_everywhere(api):
    t = api.tenant("acme")
    gone = api.add(t.app, "alice", "alice secret canary")
    api.add(t.app, "bob", "bob stays")
    token = api.token(t.app, "alice", ["read"])
    response = api.client.delete("/v1/admin/subjects/alice", headers=bearer(t.admin))
    assert response.status_code == 200 and response.json() == {"subject": "alice", "memories_deleted": 1}
    assert api.client.get(f"/v1/memories/{gone['id']}", headers=bearer(t.admin)).status_code == 404
    assert api.client.get("/v1/memories", params={"subject": "alice"}, headers=bearer(t.app)).status_code == 404
    assert api.client.get("/v1/admin/subjects/alice/export", headers=bearer(t.admin)).status_code == 404
    search = api.client.post("/v1/memories/search", json={"query": "canary"}, headers=bearer(token))
    assert search.status_code == 404
    inspect = api.client.get("/v1/admin/memories", headers=bearer(t.admin)).json()
    assert [m["subject"] for m in inspect["items"]] == ["bob"]
    assert api.client.delete("/v1/admin/subjects/alice", headers=bearer(t.admin)).status_code == 404


def test_reindex_rebuilds_and_search_still_works(api):
    t = api.tenant("acme")
    m = api.add(t.app, "alice", "the violin lesson is on Tuesday")
    response = api.client.post("/v1/admin/reindex", headers=bearer(t.admin))
    assert response.status_code == 200 and response.json() == {"vectors": 1}
    hits = api.client.post("/v1/memories/search", json={"subject": "alice", "query": "violin"}, headers=bearer(t.app))
    assert hits.json()["results"][0]["id"] == m["id"]


def test_keys_are_created_listed_without_secrets_and_revoked(api):
    t = api.tenant("acme")
    created = api.client.post("/v1/admin/keys", json={"role": "reader", "name": "dashboard"}, headers=bearer(t.admin))
    assert created.status_code == 201
    key = created.json()
    assert key["key"].startswith(key["prefix"]) and len(key["key"]) >= 47 and key["role"] == "reader"
    assert api.client.get("/v1/admin/stats", headers=bearer(key["key"])).status_code == 403
    assert api.client.get("/v1/memories", params={"subject": "x"}, headers=bearer(key["key"])).status_code == 404
    listing = api.client.get("/v1/admin/keys", headers=bearer(t.admin))
    assert key["key"] not in listing.text
    row = next(k for k in listing.json()["keys"] if k["id"] == key["id"])
    assert row["last_used_at"] is not None and row["revoked_at"] is None
    revoked = api.client.delete(f"/v1/admin/keys/{key['id']}", headers=bearer(t.admin))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert api.client.get("/v1/memories", params={"subject": "x"}, headers=bearer(key["key"])).status_code == 401
    assert api.client.delete("/v1/admin/keys/no-such-key", headers=bearer(t.admin)).status_code == 404
    bad_role = api.client.post("/v1/admin/keys", json={"role": "root", "name": "x"}, headers=bearer(t.admin))
    assert bad_role.status_code == 422


def test_keys_are_stored_only_as_hashes(api):
    t = api.tenant("acme")
    with api.services.store.engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.exec_driver_sql("SELECT * FROM api_keys") for v in row)
    for secret in (t.admin, t.app, t.reader):
        assert secret not in stored and secret[12:] not in stored


def test_audit_records_reads_and_writes_without_content(api):
    t = api.tenant("acme")
    token = api.token(t.app, "alice", ["read"])
    m = api.add(t.app, "alice", "audit canary text")
    api.client.get(f"/v1/memories/{m['id']}", headers=bearer(token))
    api.client.post("/v1/memories/search", json={"query": "canary"}, headers=bearer(token))
    api.client.get(f"/v1/memories/{m['id']}", headers=bearer(t.reader))
    api.client.get("/v1/memories/no-such-id", headers=bearer(t.reader))
    page = api.client.get("/v1/admin/audit", headers=bearer(t.admin)).json()
    actions = [(e["action"], e["role"], e["outcome"]) for e in reversed(page["items"])]
    assert actions[-5:] == [
        ("memory.add", "app", "ok"),
        ("memory.get", "subject", "ok"),
        ("memory.search", "subject", "ok"),
        ("memory.get", "reader", "ok"),
        ("memory.get", "reader", "not_found"),
    ]
    get_by_token = page["items"][3]
    assert get_by_token["subject"] == "alice" and get_by_token["memory_ids"] == [m["id"]]
    assert get_by_token["token_id"] and get_by_token["request_id"]
    assert "canary" not in str(page)
    search = page["items"][2]
    assert search["memory_ids"] == [m["id"]]
    only_search = api.client.get("/v1/admin/audit", params={"action": "memory.search"}, headers=bearer(t.admin))
    assert [e["action"] for e in only_search.json()["items"]] == ["memory.search"]


def test_audit_pagination_walks_back_through_the_chain(api):
    t = api.tenant("acme")
    for i in range(5):
        api.add(t.app, "alice", f"m{i}")
    first = api.client.get("/v1/admin/audit", params={"limit": 3}, headers=bearer(t.admin)).json()
    second = api.client.get(
        "/v1/admin/audit", params={"limit": 3, "cursor": first["next_cursor"]}, headers=bearer(t.admin)
    ).json()
    seqs = [e["seq"] for e in first["items"] + second["items"]]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
    assert first["items"][1]["prev_hash"] == first["items"][2]["hash"]
    assert api.client.get("/v1/admin/audit", params={"cursor": "x1"}, headers=bearer(t.admin)).status_code == 422


def _audit_row(api, tenant_id, seq):
    with api.services.store.engine.connect() as conn:
        return conn.execute(
            AuditRecord.__table__.select().where(AuditRecord.tenant_id == tenant_id, AuditRecord.seq == seq)
        ).one()


def _verify(api, t):
    response = api.client.get("/v1/admin/audit/verify", headers=bearer(t.admin))
    assert response.status_code == 200
    return response.json()


def _populate(api, t):
    for i in range(4):
        m = api.add(t.app, "alice", f"m{i}")
        api.client.get(f"/v1/memories/{m['id']}", headers=bearer(t.reader))


def test_audit_verify_reports_an_edited_record(api):
    t = api.tenant("acme")
    _populate(api, t)
    clean = _verify(api, t)
    assert clean["ok"] is True and clean["first_broken"] is None and clean["records_checked"] == clean["head_seq"]
    with api.services.store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE audit_records SET outcome = 'not_found' WHERE tenant_id = ? AND seq = 5", (t.id,))
    report = _verify(api, t)
    assert report["ok"] is False and report["first_broken"]["seq"] == 5
    assert "altered" in report["first_broken"]["reason"]


def test_audit_verify_reports_a_rehashed_edit_at_the_next_link(api):
    from memory_store.audit import chain_hash

    t = api.tenant("acme")
    _populate(api, t)
    row = _audit_row(api, t.id, 4)._asdict()
    row["memory_ids"] = ["someone-else"]
    with api.services.store.engine.begin() as conn:
        conn.execute(
            AuditRecord.__table__.update()
            .where(AuditRecord.id == row["id"])
            .values(memory_ids=row["memory_ids"], hash=chain_hash(row))
        )
    report = _verify(api, t)
    assert report["ok"] is False and report["first_broken"]["seq"] == 5
    assert "does not link" in report["first_broken"]["reason"]


def test_audit_verify_reports_deleted_records(api):
    t = api.tenant("acme")
    _populate(api, t)
    head = _verify(api, t)["head_seq"]
    with api.services.store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_records WHERE tenant_id = ? AND seq = 3", (t.id,))
    report = _verify(api, t)
    assert (
        report["ok"] is False and report["first_broken"]["seq"] == 3 and "missing" in report["first_broken"]["reason"]
    )
    with api.services.store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_records WHERE tenant_id = ? AND seq >= 3", (t.id,))
    truncated = _verify(api, t)
    # Each verify reports the chain as it found it, then appends its own audit.verify record: two since `head`.
    assert truncated["ok"] is False and truncated["first_broken"]["seq"] == 3 and truncated["head_seq"] == head + 2
    assert "missing" in truncated["first_broken"]["reason"] and truncated["records_checked"] == 2


def test_admin_reads_are_audited_and_cross_subject_ones_once_per_subject(api):
    """Listing subjects, keys, stats and the audit itself leave records; a read or write spanning subjects is
    recorded per subject, so a per-subject audit query finds it (issue #11 item 10)."""
    t = api.tenant("acme")
    batch = {"memories": [{"subject": "ana", "text": "a"}, {"subject": "bob", "text": "b"}]}
    added = api.client.post("/v1/memories", json=batch, headers=bearer(t.app)).json()["memories"]
    for path in ("/v1/admin/subjects", "/v1/admin/keys", "/v1/admin/stats", "/v1/admin/audit", "/v1/admin/memories"):
        assert api.client.get(path, headers=bearer(t.admin)).status_code == 200, path
    log = api.services.auditor.log
    actions = [e.action for e in log.entries(tenant_id=t.id)]
    for action in ("admin.subjects", "key.list", "admin.stats", "audit.read", "admin.inspect"):
        assert action in actions, action
    for subject, memory in (("ana", added[0]), ("bob", added[1])):
        mine = {(e.action, tuple(e.memory_ids)) for e in log.entries(tenant_id=t.id, subject=subject)}
        assert ("memory.add", (memory["id"],)) in mine and ("admin.inspect", (memory["id"],)) in mine
