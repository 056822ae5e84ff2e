"""One error body for every error, X-Request-ID everywhere, limits, bad input changes nothing, rate limit."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from service.errors import ErrorBody
from tests.harness import bearer

CANARY = "CANARY-7f3a-plaintext"


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    ErrorBody.model_validate(body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["code"] == code and body["error"]["message"]
    assert body["error"]["request_id"] == response.headers["X-Request-ID"]
    return body["error"]


def test_unknown_route_method_and_auth_errors_share_the_body(api):
    assert_error(api.client.get("/v1/nothing-here"), 404, "not_found")
    not_allowed = api.client.put("/v1/memories")
    assert_error(not_allowed, 405, "method_not_allowed")
    assert "POST" in not_allowed.headers["Allow"]
    assert_error(api.client.get("/v1/memories"), 401, "unauthorized")
    assert_error(api.client.get("/v1/memories", headers={"Authorization": "Basic abc"}), 401, "unauthorized")


def test_every_response_has_a_unique_server_request_id_and_a_valid_client_id_is_kept_beside_it(api):
    assert len(api.client.get("/healthz").headers["X-Request-ID"]) >= 16
    first, second = (api.client.get("/healthz", headers={"X-Request-ID": "trace-123"}) for _ in range(2))
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"] != "trace-123"
    assert first.headers["X-Client-Request-ID"] == second.headers["X-Client-Request-ID"] == "trace-123"
    bad = api.client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert "X-Client-Request-ID" not in bad.headers and bad.headers["X-Request-ID"] != "bad id\twith spaces"


def test_a_repeated_client_request_id_still_gets_distinct_audit_records(api):
    t = api.tenant("acme")
    headers = {**bearer(t.app), "X-Request-ID": "retry-1"}
    for _ in range(2):
        assert api.client.post("/v1/memories", json={"subject": "u", "text": "x"}, headers=headers).status_code == 201
    entries = api.services.auditor.log.entries(tenant_id=t.id, action="memory.add")
    assert len({e.request_id for e in entries}) == 2 and all(e.request_id != "retry-1" for e in entries)
    assert [e.detail["client_request_id"] for e in entries] == ["retry-1", "retry-1"]


def test_malformed_json_and_invalid_utf8_are_400(api):
    t = api.tenant("acme")
    headers = {**bearer(t.app), "Content-Type": "application/json"}
    assert_error(
        api.client.post("/v1/memories", content=b'{"subject": "a", "text": ', headers=headers), 400, "malformed_json"
    )
    assert_error(
        api.client.post("/v1/memories", content=b'{"subject": "a", "text": "\xff\xfe"}', headers=headers),
        400,
        "bad_request",
    )
    assert api.count(t.id) == 0


def test_bad_input_is_rejected_with_a_clear_message_and_nothing_is_stored(api):
    t = api.tenant("acme")
    cases = [
        ({"subject": "a", "text": CANARY, "colour": "red"}, "colour"),
        ({"subject": "a", "text": 42}, "text"),
        ({"subject": "a"}, "text"),
        ({"subject": "a", "text": "   "}, "text"),
        ({"subject": "", "text": CANARY}, "subject"),
        ({"subject": "a\u0000b", "text": CANARY}, "subject"),
        ({"subject": " padded ", "text": CANARY}, "subject"),
        ({"subject": "a", "text": CANARY, "metadata": [1, 2]}, "metadata"),
        ({"subject": "a", "text": CANARY, "kind": "Not A Kind"}, "kind"),
        ({"subject": "a", "text": CANARY, "importance": 7}, "importance"),
        ({"subject": "a", "text": CANARY, "occurred_at": "2024-01-01T00:00:00"}, "occurred_at"),
        ({"subject": "a", "text": CANARY, "agent_id": "x" * 300}, "agent_id"),
        ({"memories": []}, "memories"),
        ({"memories": [{"subject": "a", "text": CANARY}], "extra": 1}, "extra"),
        ([1, 2, 3], "body"),
        ("just a string", "body"),
    ]
    for body, field in cases:
        response = api.client.post("/v1/memories", json=body, headers=bearer(t.app))
        assert 400 <= response.status_code < 500, (body, response.text)
        error = response.json()["error"]
        assert field in error["message"], (body, error)
        assert CANARY not in response.text
    json_headers = {**bearer(t.app), "Content-Type": "application/json"}
    for raw in (  # lone surrogates: valid JSON escapes, invalid Unicode
        b'{"subject": "a", "text": "lone \\ud800 surrogate"}',
        b'{"subject": "a", "text": "ok", "metadata": {"k": "lone \\udfff"}}',
        b'{"subject": "a", "text": "ok", "metadata": {"\\ud800": 1}}',
        b'{"subject": "\\ud800", "text": "ok"}',
    ):
        assert api.client.post("/v1/memories", content=raw, headers=json_headers).status_code == 422, raw
    assert api.count(t.id) == 0


def test_search_and_list_bounds(api):
    t = api.tenant("acme")
    api.add(t.app, "a", "x")
    search = lambda body: api.client.post("/v1/memories/search", json=body, headers=bearer(t.app))  # noqa: E731
    assert_error(search({"subject": "a", "query": "x", "k": 10**9}), 422, "invalid_input")
    assert_error(search({"subject": "a", "query": "x", "k": 0}), 422, "invalid_input")
    assert_error(search({"subject": "a", "query": ""}), 422, "invalid_input")
    assert_error(search({"subject": "a", "query": "x", "filters": {"nope": 1}}), 422, "invalid_input")
    listing = lambda **p: api.client.get("/v1/memories", params={"subject": "a", **p}, headers=bearer(t.app))  # noqa: E731
    assert_error(listing(limit=-1), 422, "invalid_input")
    assert_error(listing(limit=5000), 422, "invalid_input")
    assert_error(listing(cursor="!!not-a-cursor!!"), 422, "invalid_input")


def test_configured_limits_apply(make_api):
    api = make_api(
        max_text_chars=50, max_metadata_bytes=64, max_metadata_depth=2, max_k=5, max_page_size=10, max_batch=2
    )
    t = api.tenant("acme")
    post = lambda body: api.client.post("/v1/memories", json=body, headers=bearer(t.app))  # noqa: E731
    assert "50 characters" in assert_error(post({"subject": "a", "text": "y" * 51}), 422, "invalid_input")["message"]
    assert (
        "64 bytes"
        in assert_error(post({"subject": "a", "text": "x", "metadata": {"k": "v" * 80}}), 422, "invalid_input")[
            "message"
        ]
    )
    deep = {"a": {"b": {"c": 1}}}
    assert (
        "nested" in assert_error(post({"subject": "a", "text": "x", "metadata": deep}), 422, "invalid_input")["message"]
    )
    three = {"memories": [{"subject": "a", "text": "x"}] * 3}
    assert "per batch" in assert_error(post(three), 422, "invalid_input")["message"]
    assert api.count(t.id) == 0
    fine = api.add(t.app, "a", "fine", metadata={"a": {"b": 1}})
    unset_k = api.client.post("/v1/memories/search", json={"subject": "a", "query": "fine"}, headers=bearer(t.app))
    assert unset_k.status_code == 200 and len(unset_k.json()["results"]) == 1  # default 10 capped at 5
    search = api.client.post("/v1/memories/search", json={"subject": "a", "query": "x", "k": 6}, headers=bearer(t.app))
    assert "at most 5" in assert_error(search, 422, "invalid_input")["message"]
    listing = api.client.get("/v1/memories", params={"subject": "a", "limit": 11}, headers=bearer(t.app))
    assert "at most 10" in assert_error(listing, 422, "invalid_input")["message"]
    patched = api.client.patch(f"/v1/memories/{fine['id']}", json={"text": "z" * 60}, headers=bearer(t.app))
    assert_error(patched, 422, "invalid_input")
    assert api.client.get(f"/v1/memories/{fine['id']}", headers=bearer(t.app)).json()["text"] == "fine"


def test_body_size_limit_with_and_without_content_length(make_api):
    api = make_api(max_body_bytes=2048)
    t = api.tenant("acme")
    big = {"subject": "a", "text": "x" * 4000}
    assert_error(api.client.post("/v1/memories", json=big, headers=bearer(t.app)), 413, "payload_too_large")

    def chunks() -> Sequence[bytes]:
        yield b'{"subject": "a", "text": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}'

    streamed = api.client.post(
        "/v1/memories", content=chunks(), headers={**bearer(t.app), "Content-Type": "application/json"}
    )
    assert_error(streamed, 413, "payload_too_large")
    assert api.count(t.id) == 0


def test_rate_limit_per_credential_returns_429_with_retry_after(make_api):
    api = make_api(rate_limit_key_per_minute=3)
    t = api.tenant("acme")
    for _ in range(3):
        assert api.client.get("/v1/memories", params={"subject": "a"}, headers=bearer(t.app)).status_code == 404
    limited = api.client.get("/v1/memories", params={"subject": "a"}, headers=bearer(t.app))
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) >= 1
    # The bucket is per credential: another key of the same tenant is unaffected.
    assert api.client.get("/v1/admin/keys", headers=bearer(t.reader)).status_code == 403


class ExplodingEmbedder:
    model_id = "exploding"
    dim = 8

    def embed(self, texts):
        if texts and texts[0].startswith("boom"):
            raise RuntimeError(f"internal failure while embedding {texts[0]!r}")
        return np.eye(len(texts), 8, dtype=np.float32)


def test_unexpected_errors_are_500_with_the_same_body_and_no_details(make_api, caplog):
    api = make_api(embedder=ExplodingEmbedder(), raise_server_exceptions=False)
    t = api.tenant("acme")
    with caplog.at_level(logging.INFO):
        response = api.client.post(
            "/v1/memories", json={"subject": "a", "text": f"boom {CANARY}"}, headers=bearer(t.app)
        )
    error = assert_error(response, 500, "internal_error")
    assert CANARY not in response.text and "RuntimeError" not in error["message"]
    assert any(r.levelno == logging.ERROR and error["request_id"] in r.getMessage() for r in caplog.records)
    audit = api.client.get("/v1/admin/audit", params={"action": "memory.add"}, headers=bearer(t.admin)).json()
    assert audit["items"][0]["outcome"] == "error"


def test_logs_carry_request_ids_but_never_content_keys_or_tokens(api, caplog):
    t = api.tenant("acme")
    with caplog.at_level(logging.DEBUG):
        token = api.token(t.app, "alice", ["read", "write"])
        api.add(t.app, "alice", CANARY, metadata={"secret": CANARY})
        api.client.post("/v1/memories/search", json={"query": CANARY}, headers=bearer(token))
        api.client.post("/v1/memories", json={"subject": "alice", "text": CANARY, "bad": 1}, headers=bearer(t.app))
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    access = [r for r in caplog.records if r.name == "sealmem.access"]
    assert access and all(getattr(r, "request_id", None) for r in access)
    assert {getattr(r, "route", None) for r in access} >= {"/v1/memories", "/v1/memories/search", "/v1/tokens"}
    for secret in (CANARY, t.app, t.admin, token):
        assert secret not in text
