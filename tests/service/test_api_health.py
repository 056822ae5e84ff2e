"""Health, readiness, Prometheus metrics, OpenAPI, and the app lifecycle."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from memory_store.embedder import HashingEmbedder
from service.app import create_app
from service.errors import ErrorBody
from tests.harness import bearer, fresh_data_dir
from tests.service.conftest import make_settings


def test_healthz_and_readyz(api):
    assert api.client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = api.client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["database"] == "ok"


def test_readyz_is_503_when_the_schema_is_behind(tmp_path):
    settings = make_settings(tmp_path / "unmigrated")
    client = TestClient(create_app(settings, embedder=HashingEmbedder()))
    try:
        with client:
            pass
    except Exception as exc:  # the lifespan refuses to start on an unmigrated database
        assert "sealmem migrate" in str(exc)
    else:
        raise AssertionError("an unmigrated database must stop startup")


def test_metrics_count_requests_by_route_template_and_report_store_gauges(api):
    t = api.tenant("acme")
    m = api.add(t.app, "alice", "the quick brown fox")
    api.client.get(f"/v1/memories/{m['id']}", headers=bearer(t.app))
    api.client.post("/v1/memories/search", json={"subject": "alice", "query": "fox"}, headers=bearer(t.app))
    api.client.get("/v1/no-such-route")
    text = api.client.get("/metrics").text
    assert 'sealmem_http_requests_total{method="GET",route="/v1/memories/{memory_id}",status="200"} 1.0' in text
    assert 'route="unmatched",status="404"' in text
    assert m["id"] not in text and "alice" not in text
    assert "sealmem_search_duration_seconds_count 1.0" in text
    assert "sealmem_memories 1.0" in text and "sealmem_tenants 1.0" in text
    assert "sealmem_index_vectors 1.0" in text
    assert "sealmem_add_transactions_total 1.0" in text and "sealmem_add_calls_total 1.0" in text


def test_two_apps_in_one_process_keep_separate_metrics(api, make_api):
    other = make_api()
    api.client.get("/healthz")
    api.client.get("/healthz")
    other.client.get("/healthz")
    line = 'sealmem_http_requests_total{method="GET",route="/healthz",status="200"}'
    assert f"{line} 2.0" in api.client.get("/metrics").text
    assert f"{line} 1.0" in other.client.get("/metrics").text


def test_openapi_documents_every_operation_with_the_error_body_and_examples(api):
    spec = api.client.get("/openapi.json").json()
    operations = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert operations == {
        ("POST", "/v1/memories"),
        ("POST", "/v1/memories/batch"),
        ("POST", "/v1/memories/ingest"),
        ("GET", "/v1/memories/ingest/{job_id}"),
        ("GET", "/v1/memories"),
        ("POST", "/v1/memories/search"),
        ("GET", "/v1/memories/{memory_id}"),
        ("PATCH", "/v1/memories/{memory_id}"),
        ("DELETE", "/v1/memories/{memory_id}"),
        ("GET", "/v1/memories/{memory_id}/history"),
        ("POST", "/v1/tokens"),
        ("GET", "/v1/admin/memories"),
        ("GET", "/v1/admin/subjects"),
        ("GET", "/v1/admin/stats"),
        ("GET", "/v1/admin/subjects/{subject}/export"),
        ("DELETE", "/v1/admin/subjects/{subject}"),
        ("POST", "/v1/admin/reindex"),
        ("GET", "/v1/admin/keys"),
        ("POST", "/v1/admin/keys"),
        ("DELETE", "/v1/admin/keys/{key_id}"),
        ("GET", "/v1/admin/audit"),
        ("GET", "/v1/admin/audit/verify"),
        ("GET", "/v1/admin/desensitisation"),
        ("PATCH", "/v1/admin/desensitisation"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("POST", "/v1/chat"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model_id}"),
        ("GET", "/v1/sessions"),
        ("GET", "/v1/sessions/{session_id}"),
        ("DELETE", "/v1/sessions/{session_id}"),
    }
    error_ref = "#/components/schemas/ErrorBody"
    for path, item in spec["paths"].items():
        if path.startswith("/v1/"):
            for operation in item.values():
                responses = operation["responses"]
                for status in ("401", "403", "404", "422", "429"):
                    assert responses[status]["content"]["application/json"]["schema"]["$ref"] == error_ref
    assert spec["components"]["schemas"]["MemoryCreate"]["examples"]
    assert spec["components"]["schemas"]["SearchRequest"]["examples"]
    assert "HTTPBearer" in json.dumps(spec["components"]["securitySchemes"])
    ErrorBody.model_validate({"error": {"code": "x", "message": "y", "request_id": "z"}})


def test_lifespan_persists_and_closes_the_store(tmp_path, migrated_db):
    settings = make_settings(fresh_data_dir(tmp_path / "data", migrated_db), persist_interval_seconds=0.05)
    with TestClient(create_app(settings, embedder=HashingEmbedder())) as client:
        store = client.app.state.services.store
        tenant = store.create_tenant(name="acme")
        key = client.app.state.services.keys.create(tenant_id=tenant.id, role="app", name="k", created_by="t")
        client.post("/v1/memories", json={"subject": "a", "text": "persist me"}, headers=bearer(key.secret))
    assert (settings.index_dir / f"{tenant.id}.index").exists()
    with TestClient(create_app(settings, embedder=HashingEmbedder())) as client:
        found = client.post(
            "/v1/memories/search", json={"subject": "a", "query": "persist"}, headers=bearer(key.secret)
        ).json()
        assert found["results"][0]["text"] == "persist me"


def test_operation_ids_are_the_stable_names_clients_call(api):
    spec = api.client.get("/openapi.json").json()
    ids = {(m.upper(), p): op["operationId"] for p, item in spec["paths"].items() for m, op in item.items()}
    assert ids[("POST", "/v1/memories/search")] == "memories_search"
    assert ids[("POST", "/v1/memories")] == "memories_add"
    assert ids[("POST", "/v1/memories/batch")] == "memories_add_batch"
    assert ids[("DELETE", "/v1/admin/subjects/{subject}")] == "admin_subjects_forget"
    assert len(set(ids.values())) == len(ids)
    assert all(op_id.isidentifier() and op_id.islower() for op_id in ids.values())
    for item in spec["paths"].values():
        assert all(op["tags"] for op in item.values())


def test_batch_add_has_its_own_operation_and_the_combined_form_still_works(api):
    t = api.tenant()
    batch = {"memories": [{"subject": "ana", "text": "one"}, {"subject": "ana", "text": "two"}]}
    own = api.client.post("/v1/memories/batch", json=batch, headers=bearer(t.app))
    assert own.status_code == 201 and [m["text"] for m in own.json()["memories"]] == ["one", "two"]
    combined = api.client.post("/v1/memories", json=batch, headers=bearer(t.app))
    assert combined.status_code == 201 and len(combined.json()["memories"]) == 2
    single = api.client.post("/v1/memories/batch", json={"subject": "ana", "text": "x"}, headers=bearer(t.app))
    assert single.status_code == 422
