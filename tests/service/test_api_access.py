"""The access matrix: every endpoint x every kind of credential, subject-token edge cases, cross-tenant probes.

401: no or bad credential; 403: valid credential lacking the role or scope; 404: outside the credential's
tenant, or another subject than a subject token's.
"""

from __future__ import annotations

import base64
import json
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import jwt
import pytest

from memory_store.models import utcnow
from service.tokens import AUDIENCE, ISSUER, TokenSigner
from tests.harness import Harness, Tenant, bearer, fresh_data_dir
from tests.service.conftest import make_settings


@dataclass
class World:
    api: Harness
    a: Tenant
    b: Tenant
    secret: str
    alice_memory: str = ""
    bob_memory: str = ""
    b_alice_memory: str = ""
    credentials: dict[str, str | None] = field(default_factory=dict)

    def fresh_memory(self, subject: str = "alice") -> str:
        return self.api.add(self.a.admin, subject, f"throwaway {uuid.uuid4().hex}")["id"]

    def fresh_subject(self) -> str:
        subject = f"gone-{uuid.uuid4().hex[:8]}"
        self.fresh_memory(subject)
        return subject

    def fresh_key_id(self) -> str:
        issued = self.api.services.keys.create(tenant_id=self.a.id, role="reader", name="spare", created_by="test")
        return issued.info.id


def _tamper_payload(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["subject"] = "bob"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{header}.{forged}.{signature}"


def _flip_signature(token: str) -> str:
    head, _, signature = token.rpartition(".")
    return f"{head}.{('A' if signature[0] != 'A' else 'B')}{signature[1:]}"


def _hs512(claims: dict[str, Any], secret: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns that the key is short for HS512: that is the point
        return jwt.encode(claims, secret, algorithm="HS512")


def _claims(world: World, **overrides: Any) -> dict[str, Any]:
    now = int(utcnow().timestamp())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "tenant": world.a.id,
        "subject": "alice",
        "scopes": ["read", "write"],
        "kid": world.api.services.keys.list_keys(tenant_id=world.a.id)[1].id,  # the app key
    }
    claims.update(overrides)
    return claims


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, migrated_db):
    settings = make_settings(fresh_data_dir(tmp_path_factory.mktemp("access") / "data", migrated_db))
    with Harness.start(settings) as api:
        client = api.client
        w = World(
            api=api, a=api.tenant("acme"), b=api.tenant("globex"), secret=settings.token_secret.get_secret_value()
        )
        w.alice_memory = api.add(w.a.app, "alice", "Alice drinks green tea.")["id"]
        w.bob_memory = api.add(w.a.app, "bob", "Bob drinks black coffee.")["id"]
        w.b_alice_memory = api.add(w.b.app, "alice", "Another tenant's Alice likes rooibos.")["id"]

        doomed_key = api.key(w.a.admin, "app")
        doomed_token = api.token(doomed_key, "alice", ["read", "write"])
        doomed_id = next(
            k.id
            for k in api.services.keys.list_keys(tenant_id=w.a.id)
            if k.active and k.name == "app-key" and k.id != _claims(w)["kid"]
        )
        assert client.delete(f"/v1/admin/keys/{doomed_id}", headers=bearer(w.a.admin)).status_code == 200

        valid = api.token(w.a.app, "alice", ["read", "write"])
        expired_signer = TokenSigner(w.secret, max_ttl_seconds=3600, now=lambda: utcnow() - timedelta(hours=2))
        expired, _ = expired_signer.mint(
            tenant_id=w.a.id, subject="alice", scopes=["read"], key_id=_claims(w)["kid"], ttl_seconds=60
        )
        w.credentials = {
            "admin": w.a.admin,
            "app": w.a.app,
            "reader": w.a.reader,
            "token_read": api.token(w.a.app, "alice", ["read"]),
            "token_write": api.token(w.a.app, "alice", ["write"]),
            "token_chat": api.token(w.a.app, "alice", ["chat"]),
            "token_all": api.token(w.a.admin, "alice", ["read", "write", "chat"]),
            # --- invalid: every one of these must get 401 everywhere
            "none": None,
            "garbage_key": "smk_" + "A" * 43,
            "garbage_token": "not-a-token",
            "revoked_key": doomed_key,
            "token_of_revoked_key": doomed_token,
            "expired_token": expired,
            "tampered_payload": _tamper_payload(valid),
            "tampered_signature": _flip_signature(valid),
            "wrong_secret": jwt.encode(_claims(w), "x" * 16 + uuid.uuid4().hex, algorithm="HS256"),
            "alg_none": jwt.encode(_claims(w), None, algorithm="none"),
            "alg_hs512": _hs512(_claims(w), w.secret),
            "ttl_over_max": jwt.encode(
                _claims(w, exp=int(utcnow().timestamp()) + 86400 * 30), w.secret, algorithm="HS256"
            ),
            "missing_kid": jwt.encode({k: v for k, v in _claims(w).items() if k != "kid"}, w.secret, algorithm="HS256"),
            "unknown_kid": jwt.encode(_claims(w, kid=str(uuid.uuid4())), w.secret, algorithm="HS256"),
        }
        yield w


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: Callable[[World], str]
    body: dict[str, Any] | None
    access: str  # read | write | mint | admin
    ok: int = 200


ENDPOINTS: dict[str, Endpoint] = {
    "add": Endpoint("POST", lambda w: "/v1/memories", {"subject": "alice", "text": "matrix add"}, "write", 201),
    "add_batch": Endpoint(
        "POST", lambda w: "/v1/memories", {"memories": [{"subject": "alice", "text": "matrix batch"}]}, "write", 201
    ),
    "get": Endpoint("GET", lambda w: f"/v1/memories/{w.alice_memory}", None, "read"),
    "patch": Endpoint("PATCH", lambda w: f"/v1/memories/{w.alice_memory}", {"importance": 0.7}, "write"),
    "delete": Endpoint("DELETE", lambda w: f"/v1/memories/{w.fresh_memory()}", None, "write", 204),
    "list": Endpoint("GET", lambda w: "/v1/memories?subject=alice", None, "read"),
    "search": Endpoint("POST", lambda w: "/v1/memories/search", {"subject": "alice", "query": "tea"}, "read"),
    "history": Endpoint("GET", lambda w: f"/v1/memories/{w.alice_memory}/history", None, "read"),
    "mint_token": Endpoint("POST", lambda w: "/v1/tokens", {"subject": "alice", "scopes": ["read"]}, "mint", 201),
    "admin_memories": Endpoint("GET", lambda w: "/v1/admin/memories", None, "admin"),
    "admin_subjects": Endpoint("GET", lambda w: "/v1/admin/subjects", None, "admin"),
    "admin_stats": Endpoint("GET", lambda w: "/v1/admin/stats", None, "admin"),
    "admin_export": Endpoint("GET", lambda w: "/v1/admin/subjects/alice/export", None, "admin"),
    "admin_forget": Endpoint("DELETE", lambda w: f"/v1/admin/subjects/{w.fresh_subject()}", None, "admin"),
    "admin_reindex": Endpoint("POST", lambda w: "/v1/admin/reindex", None, "admin"),
    "admin_keys_list": Endpoint("GET", lambda w: "/v1/admin/keys", None, "admin"),
    "admin_keys_create": Endpoint("POST", lambda w: "/v1/admin/keys", {"role": "reader", "name": "m"}, "admin", 201),
    "admin_keys_revoke": Endpoint("DELETE", lambda w: f"/v1/admin/keys/{w.fresh_key_id()}", None, "admin"),
    "admin_audit": Endpoint("GET", lambda w: "/v1/admin/audit", None, "admin"),
    "admin_audit_verify": Endpoint("GET", lambda w: "/v1/admin/audit/verify", None, "admin"),
}

KEY_ACCESS = {"admin": {"read", "write", "mint", "admin"}, "app": {"read", "write", "mint"}, "reader": {"read"}}
TOKEN_SCOPES = {
    "token_read": {"read"},
    "token_write": {"write"},
    "token_chat": {"chat"},
    "token_all": {"read", "write", "chat"},
}
VALID = [*KEY_ACCESS, *TOKEN_SCOPES]
INVALID = [
    "none",
    "garbage_key",
    "garbage_token",
    "revoked_key",
    "token_of_revoked_key",
    "expired_token",
    "tampered_payload",
    "tampered_signature",
    "wrong_secret",
    "alg_none",
    "alg_hs512",
    "ttl_over_max",
    "missing_kid",
    "unknown_kid",
]


def expected_status(principal: str, endpoint: Endpoint) -> int:
    if principal in INVALID:
        return 401
    if principal in KEY_ACCESS:
        return endpoint.ok if endpoint.access in KEY_ACCESS[principal] else 403
    allowed = endpoint.access in ("read", "write") and endpoint.access in TOKEN_SCOPES[principal]
    return endpoint.ok if allowed else 403


def call(world: World, principal: str, endpoint: Endpoint):
    credential = world.credentials[principal]
    headers = bearer(credential) if credential is not None else {}
    return world.api.client.request(endpoint.method, endpoint.path(world), json=endpoint.body, headers=headers)


@pytest.mark.parametrize("principal", VALID + INVALID)
@pytest.mark.parametrize("name", list(ENDPOINTS))
def test_access_matrix(world, name, principal):
    endpoint = ENDPOINTS[name]
    response = call(world, principal, endpoint)
    want = expected_status(principal, endpoint)
    assert response.status_code == want, (name, principal, response.text)
    if want >= 400:
        error = response.json()["error"]
        assert error["code"] == {401: "unauthorized", 403: "forbidden"}[want]
        assert error["request_id"] == response.headers["X-Request-ID"]
    if want == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"


BOB_PROBES = [
    ("GET", lambda w: f"/v1/memories/{w.bob_memory}", None),
    ("PATCH", lambda w: f"/v1/memories/{w.bob_memory}", {"importance": 0.1}),
    ("DELETE", lambda w: f"/v1/memories/{w.bob_memory}", None),
    ("GET", lambda w: f"/v1/memories/{w.bob_memory}/history", None),
    ("GET", lambda w: "/v1/memories?subject=bob", None),
    ("POST", lambda w: "/v1/memories/search", {"subject": "bob", "query": "coffee"}),
    ("POST", lambda w: "/v1/memories", {"subject": "bob", "text": "planted by alice"}),
]


@pytest.mark.parametrize("probe", range(len(BOB_PROBES)))
def test_subject_token_gets_404_for_another_subject(world, probe):
    method, path, body = BOB_PROBES[probe]
    response = world.api.client.request(method, path(world), json=body, headers=bearer(world.credentials["token_all"]))
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"
    bob = world.api.services.store.get(tenant_id=world.a.id, memory_id=world.bob_memory)
    assert bob.importance != 0.1 and bob.text == "Bob drinks black coffee."
    listed = world.api.services.store.list(tenant_id=world.a.id, subject="bob").items
    assert "planted by alice" not in [m.text for m in listed]


def test_wrong_subject_404_is_indistinguishable_from_a_missing_one(world):
    token = bearer(world.credentials["token_all"])
    other = world.api.client.get(f"/v1/memories/{world.bob_memory}", headers=token).json()["error"]
    missing = world.api.client.get(f"/v1/memories/{uuid.uuid4()}", headers=token).json()["error"]
    assert (other["code"], other["message"]) == (missing["code"], missing["message"])


CROSS_TENANT_PROBES = [
    ("GET", lambda w: f"/v1/memories/{w.bob_memory}", None),
    ("PATCH", lambda w: f"/v1/memories/{w.bob_memory}", {"text": "overwritten by globex"}),
    ("DELETE", lambda w: f"/v1/memories/{w.bob_memory}", None),
    ("GET", lambda w: f"/v1/memories/{w.bob_memory}/history", None),
    ("GET", lambda w: "/v1/memories?subject=bob", None),
    ("POST", lambda w: "/v1/memories/search", {"subject": "bob", "query": "coffee"}),
    ("GET", lambda w: "/v1/admin/memories?subject=bob", None),
    ("GET", lambda w: "/v1/admin/subjects/bob/export", None),
    ("DELETE", lambda w: "/v1/admin/subjects/bob", None),
    ("DELETE", lambda w: f"/v1/admin/keys/{w.api.services.keys.list_keys(tenant_id=w.a.id)[0].id}", None),
]


@pytest.mark.parametrize("probe", range(len(CROSS_TENANT_PROBES)))
def test_other_tenants_admin_gets_404_and_changes_nothing(world, probe):
    method, path, body = CROSS_TENANT_PROBES[probe]
    response = world.api.client.request(method, path(world), json=body, headers=bearer(world.b.admin))
    assert response.status_code == 404, response.text
    bob = world.api.services.store.get(tenant_id=world.a.id, memory_id=world.bob_memory)
    assert bob.text == "Bob drinks black coffee."
    assert world.api.services.keys.list_keys(tenant_id=world.a.id)[0].active


def test_same_subject_name_in_two_tenants_stays_separate(world):
    a_results = world.api.client.post(
        "/v1/memories/search", json={"query": "tea rooibos"}, headers=bearer(world.credentials["token_read"])
    ).json()["results"]
    assert world.b_alice_memory not in [r["id"] for r in a_results]
    b_token = world.api.token(world.b.app, "alice", ["read"])
    b_view = world.api.client.get(f"/v1/memories/{world.alice_memory}", headers=bearer(b_token))
    assert b_view.status_code == 404
    own = world.api.client.get(f"/v1/memories/{world.b_alice_memory}", headers=bearer(b_token))
    assert own.status_code == 200 and own.json()["text"] == "Another tenant's Alice likes rooibos."


def test_token_for_another_tenants_key_is_rejected(world):
    """A token naming tenant A but minted by tenant B's key id does not authenticate."""
    b_app_id = world.api.services.keys.list_keys(tenant_id=world.b.id)[1].id
    forged = jwt.encode(_claims(world, kid=b_app_id), world.secret, algorithm="HS256")
    assert world.api.client.get("/v1/memories", headers=bearer(forged)).status_code == 401


def test_minting_rules(world):
    client, app = world.api.client, bearer(world.a.app)
    too_long = client.post("/v1/tokens", json={"subject": "alice", "ttl_seconds": 10**6}, headers=app)
    assert too_long.status_code == 422
    bad_scope = client.post("/v1/tokens", json={"subject": "alice", "scopes": ["admin"]}, headers=app)
    assert bad_scope.status_code == 422
    minted = client.post("/v1/tokens", json={"subject": "alice", "scopes": ["write", "read"]}, headers=app).json()
    assert minted["scopes"] == ["read", "write"] and minted["token_type"] == "Bearer"
    claims = jwt.decode(minted["token"], world.secret, algorithms=["HS256"], audience=AUDIENCE)
    assert claims["tenant"] == world.a.id and claims["subject"] == "alice" and claims["exp"] - claims["iat"] == 900
    assert claims["kid"] == _claims(world)["kid"] and claims["jti"] == minted["token_id"]


def test_the_shared_memory_reads_confine_a_subject_token_to_its_subject(make_api: Callable[..., Harness]) -> None:
    """``service.memory_actions``, which the REST routes and the console call: a subject token reaches only its
    own subject even where a caller asks for the tenant-wide admin listing or for another subject's history."""
    from starlette.requests import Request

    from memory_store.types import Filters
    from service import memory_actions
    from service.errors import ApiError

    api = make_api()
    keys = api.tenant()
    mine = api.add(keys.app, "alice", "Alice lives in Porto")
    theirs = api.add(keys.app, "bob", "Bob lives in Faro")
    principal = api.services.auth.authenticate(api.token(keys.app, "alice", ["read"]), client=None)
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [], "app": api.app})
    listing = memory_actions.list_memories(
        api.services, request, principal, subject=None, filters=Filters(), cursor=None, limit=None,
        across_subjects=True,
    )  # fmt: skip
    assert [m.id for m in listing.items] == [mine["id"]]
    with pytest.raises(ApiError) as refused:
        memory_actions.history(api.services, request, principal, memory_id=theirs["id"], subject="bob")
    assert refused.value.status == 404
    found = memory_actions.history(api.services, request, principal, memory_id=mine["id"], lineage=True)
    assert [m.id for m in found.lineage] == [mine["id"]]
    hits = memory_actions.search(api.services, request, principal, subject=None, query="lives", k=5)
    assert [h.memory.id for h in hits] == [mine["id"]]
