"""Desensitisation through the REST API (real app, SQLite, FAISS, Presidio): the admin policy endpoints, who
sees pseudonymised originals, rejection as a 422 that stores nothing, audit counts and metrics."""

from __future__ import annotations

from typing import Any

from tests.harness import Harness, bearer

EMAIL = "ana.canary@example.org"
IBAN = "DE89 3704 0044 0532 0130 00"
KEY = "ghp_4fK9mQ2xL7vB1nR8tY3wZ6cD0sJ5hG2pA9eU"


def policy(api: Harness, key: str) -> dict[str, Any]:
    response = api.client.get("/v1/admin/desensitisation", headers=bearer(key))
    assert response.status_code == 200, response.text
    out: dict[str, Any] = response.json()
    return out


def patch(api: Harness, key: str, body: dict[str, Any], expect: int = 200) -> dict[str, Any]:
    response = api.client.patch("/v1/admin/desensitisation", json=body, headers=bearer(key))
    assert response.status_code == expect, response.text
    out: dict[str, Any] = response.json()
    return out


def texts(api: Harness, key: str, **params: Any) -> list[str]:
    response = api.client.get("/v1/memories", params=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    return [m["text"] for m in response.json()["items"]]


def test_default_policy_and_its_validation(api: Harness) -> None:
    t = api.tenant()
    current = policy(api, t.admin)
    assert current["actions"]["EMAIL_ADDRESS"] == "pseudonymise" and current["actions"]["API_KEY"] == "mask"
    assert all(current["actions"][name] == "mask" for name, kind in current["types"].items() if kind == "secret")
    assert current["reveal_roles"] == ["app", "subject"]
    for body, field in (
        ({"actions": {"NAME": "mask"}}, "unknown type"),
        ({"actions": {"EMAIL_ADDRESS": "encrypt"}}, "actions.EMAIL_ADDRESS"),
        ({"reveal_roles": ["root"]}, "reveal_roles"),
        ({}, "nothing to change"),
        ({"actions": {"EMAIL_ADDRESS": "mask"}, "extra": 1}, "extra"),
    ):
        error = patch(api, t.admin, body, expect=422)["error"]
        assert field in error["message"], error
    assert policy(api, t.admin)["revision"] == current["revision"]  # refused changes changed nothing
    for key in (t.app, t.reader):
        assert api.client.get("/v1/admin/desensitisation", headers=bearer(key)).status_code == 403


def test_who_sees_originals_follows_the_policy(api: Harness) -> None:
    t = api.tenant()
    added = api.add(t.app, "ana", f"My email is {EMAIL} and my IBAN is {IBAN}.")
    assert added["text"] == f"My email is {EMAIL} and my IBAN is {IBAN}."  # the app may see them
    stored = "My email is <EMAIL_ADDRESS_1> and my IBAN is <IBAN_CODE_1>."
    assert texts(api, t.reader, subject="ana") == [stored]
    token = api.token(t.app, "ana", ["read"])
    assert texts(api, token) == [added["text"]]
    search = api.client.post("/v1/memories/search", json={"subject": "ana", "query": "email"},
                             headers=bearer(t.reader))
    assert search.json()["results"][0]["text"] == stored
    export = api.client.get("/v1/admin/subjects/ana/export", headers=bearer(t.admin)).json()
    assert [m["text"] for m in export["memories"]] == [stored]
    inspect = api.client.get("/v1/admin/memories", headers=bearer(t.admin)).json()
    assert [m["text"] for m in inspect["items"]] == [stored]

    patch(api, t.admin, {"reveal_roles": ["admin", "reader"]})
    assert texts(api, t.reader, subject="ana") == [added["text"]]
    assert texts(api, t.app, subject="ana") == [stored]
    export = api.client.get("/v1/admin/subjects/ana/export", headers=bearer(t.admin)).json()
    assert [m["text"] for m in export["memories"]] == [added["text"]]

    other = api.tenant("other")  # another tenant's policy and vault are its own
    assert policy(api, other.admin)["reveal_roles"] == ["app", "subject"]
    assert api.add(other.app, "ana", "No values here.")["text"] == "No values here."


def test_rejected_types_are_a_422_naming_them_and_nothing_is_stored(api: Harness) -> None:
    t = api.tenant()
    patch(api, t.admin, {"actions": {"API_KEY": "reject", "IBAN_CODE": "reject"}})
    body = {"memories": [{"subject": "ana", "text": "A clean memory."},
                         {"subject": "ana", "text": f"Token {KEY} and IBAN {IBAN}"}]}
    response = api.client.post("/v1/memories", json=body, headers=bearer(t.app))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "sensitive_data_rejected"
    assert "API_KEY" in error["message"] and "IBAN_CODE" in error["message"]
    assert KEY not in response.text and "DE89" not in response.text
    assert api.client.get("/v1/memories", params={"subject": "ana"}, headers=bearer(t.app)).status_code == 404
    rejected = api.audit(t.id, "memory.add")
    assert rejected and rejected[0].outcome == "rejected"


def test_update_is_screened_audited_with_counts_and_counted_in_metrics(api: Harness) -> None:
    t = api.tenant()
    memory = api.add(t.app, "ana", "Nothing sensitive yet.")
    response = api.client.patch(f"/v1/memories/{memory['id']}", json={"text": f"CI token: {KEY}, mail {EMAIL}"},
                                headers=bearer(t.app))
    assert response.status_code == 200
    assert response.json()["text"] == f"CI token: <API_KEY>, mail {EMAIL}"
    (record,) = api.audit(t.id, "memory.update")
    assert record.detail["desensitised"] == {"API_KEY": 1, "EMAIL_ADDRESS": 1}
    assert KEY not in repr(record) and EMAIL not in repr(record)
    changed = patch(api, t.admin, {"actions": {"PHONE_NUMBER": "mask"}})
    (audited,) = api.audit(t.id, "policy.update")
    assert audited.detail["actions"] == {"PHONE_NUMBER": "mask"} and changed["actions"]["PHONE_NUMBER"] == "mask"
    metrics = api.client.get("/metrics").text
    assert 'sealmem_sensitive_detections_total{type="API_KEY"}' in metrics
    assert 'sealmem_sensitive_detections_total{type="EMAIL_ADDRESS"}' in metrics
