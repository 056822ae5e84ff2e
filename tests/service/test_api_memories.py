"""The memory API over HTTP: add (single and batch), get, patch, delete, list, search, history."""

from __future__ import annotations

from tests.harness import bearer


def test_add_returns_201_with_the_stored_memory(api):
    t = api.tenant("acme")
    response = api.client.post(
        "/v1/memories",
        json={"subject": "u1", "text": "Likes green tea.", "metadata": {"topic": "drinks"}, "kind": "preference"},
        headers=bearer(t.app),
    )
    assert response.status_code == 201
    body = response.json()
    assert body["subject"] == "u1" and body["text"] == "Likes green tea."
    assert body["metadata"] == {"topic": "drinks"} and body["kind"] == "preference" and body["source"] == "api"
    fetched = api.client.get(f"/v1/memories/{body['id']}", headers=bearer(t.reader))
    assert fetched.status_code == 200 and fetched.json()["text"] == "Likes green tea."


def test_batch_add_is_atomic_and_returns_all(api):
    t = api.tenant("acme")
    batch = {"memories": [{"subject": "u1", "text": "one"}, {"subject": "u2", "text": "two"}]}
    response = api.client.post("/v1/memories", json=batch, headers=bearer(t.app))
    assert response.status_code == 201
    assert [m["text"] for m in response.json()["memories"]] == ["one", "two"]
    bad = {"memories": [{"subject": "u1", "text": "three"}, {"subject": "u1", "text": ""}]}
    rejected = api.client.post("/v1/memories", json=bad, headers=bearer(t.app))
    assert rejected.status_code == 422
    assert api.count(t.id) == 2


def test_patch_changes_fields_and_history_records_it(api):
    t = api.tenant("acme")
    memory = api.add(t.app, "u1", "Lives in Lisbon.")
    patched = api.client.patch(
        f"/v1/memories/{memory['id']}", json={"text": "Lives in Porto.", "importance": 0.9}, headers=bearer(t.app)
    )
    assert patched.status_code == 200
    assert patched.json()["text"] == "Lives in Porto." and patched.json()["importance"] == 0.9
    history = api.client.get(f"/v1/memories/{memory['id']}/history", headers=bearer(t.reader)).json()
    assert [e["action"] for e in history["events"]] == ["add", "update"]
    assert sorted(history["events"][1]["detail"]["fields"]) == ["importance", "text"]
    assert "Porto" not in str(history) and "Lisbon" not in str(history)


def test_patch_can_set_and_clear_expiry_and_rejects_empty_or_null(api):
    t = api.tenant("acme")
    memory = api.add(t.app, "u1", "temporary")
    url = f"/v1/memories/{memory['id']}"
    later = "2999-01-01T00:00:00Z"
    assert (
        api.client.patch(url, json={"expires_at": later}, headers=bearer(t.app)).json()["expires_at"].startswith("2999")
    )
    assert api.client.patch(url, json={"expires_at": None}, headers=bearer(t.app)).json()["expires_at"] is None
    assert api.client.patch(url, json={}, headers=bearer(t.app)).status_code == 422
    assert api.client.patch(url, json={"text": None}, headers=bearer(t.app)).status_code == 422
    assert api.client.patch(url, json={"subject": "u2"}, headers=bearer(t.app)).status_code == 422


def test_delete_removes_memory_from_get_list_and_search(api):
    t = api.tenant("acme")
    keep = api.add(t.app, "u1", "keep the blue umbrella")
    gone = api.add(t.app, "u1", "forget the red umbrella")
    assert api.client.delete(f"/v1/memories/{gone['id']}", headers=bearer(t.app)).status_code == 204
    assert api.client.get(f"/v1/memories/{gone['id']}", headers=bearer(t.app)).status_code == 404
    assert api.client.delete(f"/v1/memories/{gone['id']}", headers=bearer(t.app)).status_code == 404
    listed = api.client.get("/v1/memories", params={"subject": "u1"}, headers=bearer(t.reader)).json()
    assert [m["id"] for m in listed["items"]] == [keep["id"]]
    found = api.client.post(
        "/v1/memories/search", json={"subject": "u1", "query": "red umbrella"}, headers=bearer(t.app)
    )
    assert gone["id"] not in [r["id"] for r in found.json()["results"]]


def test_list_filters_and_paginates_newest_first(api):
    t = api.tenant("acme")
    ids = [api.add(t.app, "u1", f"note {i}", kind="note" if i % 2 else "fact", session_id="s1")["id"] for i in range(5)]
    api.add(t.app, "u2", "other subject")
    page1 = api.client.get("/v1/memories", params={"subject": "u1", "limit": 2}, headers=bearer(t.reader)).json()
    page2 = api.client.get(
        "/v1/memories", params={"subject": "u1", "limit": 2, "cursor": page1["next_cursor"]}, headers=bearer(t.reader)
    ).json()
    page3 = api.client.get(
        "/v1/memories", params={"subject": "u1", "limit": 2, "cursor": page2["next_cursor"]}, headers=bearer(t.reader)
    ).json()
    seen = [m["id"] for m in page1["items"] + page2["items"] + page3["items"]]
    assert seen == list(reversed(ids)) and page3["next_cursor"] is None
    notes = api.client.get("/v1/memories", params={"subject": "u1", "kind": "note"}, headers=bearer(t.reader)).json()
    assert sorted(m["id"] for m in notes["items"]) == sorted([ids[1], ids[3]])
    none = api.client.get("/v1/memories", params={"subject": "u1", "session_id": "s2"}, headers=bearer(t.reader))
    assert none.json()["items"] == []


def test_list_of_unknown_subject_is_404_and_subject_is_required_with_a_key(api):
    t = api.tenant("acme")
    assert api.client.get("/v1/memories", params={"subject": "nobody"}, headers=bearer(t.app)).status_code == 404
    missing = api.client.get("/v1/memories", headers=bearer(t.app))
    assert missing.status_code == 422 and "subject" in missing.json()["error"]["message"]


def test_search_ranks_the_relevant_memory_first_and_reports_scores(api):
    t = api.tenant("acme")
    api.add(t.app, "u1", "The user has a dog named Biscuit.")
    api.add(t.app, "u1", "The user works as a nurse in Lisbon.")
    api.add(t.app, "u1", "Prefers window seats on flights.")
    response = api.client.post(
        "/v1/memories/search", json={"subject": "u1", "query": "dog named Biscuit", "k": 2}, headers=bearer(t.reader)
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 2
    assert results[0]["text"] == "The user has a dog named Biscuit."
    assert results[0]["score"] >= results[1]["score"]
    assert {"id", "text", "score", "metadata", "created_at", "dense_score", "lexical_score"} <= set(results[0])


def test_search_filters_apply_inside_the_search(api):
    t = api.tenant("acme")
    api.add(t.app, "u1", "coffee in the morning", metadata={"topic": "food"})
    wanted = api.add(t.app, "u1", "coffee with friends", metadata={"topic": "social"}, kind="event")
    body = {"subject": "u1", "query": "coffee", "filters": {"metadata": {"topic": "social"}}}
    results = api.client.post("/v1/memories/search", json=body, headers=bearer(t.app)).json()["results"]
    assert [r["id"] for r in results] == [wanted["id"]]
    body = {"subject": "u1", "query": "coffee", "filters": {"kinds": ["event"]}}
    results = api.client.post("/v1/memories/search", json=body, headers=bearer(t.app)).json()["results"]
    assert [r["id"] for r in results] == [wanted["id"]]


def test_subject_token_reads_and_writes_its_own_subject_without_naming_it(api):
    t = api.tenant("acme")
    token = api.token(t.app, "u1", ["read", "write"])
    created = api.client.post("/v1/memories", json={"text": "I like jazz."}, headers=bearer(token))
    assert created.status_code == 201 and created.json()["subject"] == "u1"
    listed = api.client.get("/v1/memories", headers=bearer(token)).json()
    assert [m["text"] for m in listed["items"]] == ["I like jazz."]
    found = api.client.post("/v1/memories/search", json={"query": "jazz"}, headers=bearer(token)).json()
    assert found["results"][0]["id"] == created.json()["id"]
    assert api.client.get(f"/v1/memories/{created.json()['id']}/history", headers=bearer(token)).status_code == 200
    history = api.client.get(f"/v1/memories/{created.json()['id']}/history", headers=bearer(token)).json()
    assert history["events"][0]["actor"].startswith("subject-token:")
