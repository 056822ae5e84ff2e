"""The console's sessions, CSRF and origin checks, headers and audit records, over plain HTTP against a real server."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text

from memory_store.models import utcnow
from service.console.security import CSP
from tests.console.conftest import CSRF, Seeded, csrf_of, sign_in
from tests.harness import Harness, bearer, fresh_data_dir, make_settings


def key_names(console: Seeded) -> list[str]:
    return [k.name for k in console.harness.services.keys.list_keys(tenant_id=console.acme.id)]


def test_sign_in_sets_a_strict_http_only_cookie_without_the_key(console: Seeded) -> None:
    with httpx.Client(base_url=console.url) as client:
        page = client.get("/admin/login")
        token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
        response = client.post("/admin/login", data={"api_key": console.acme.admin, "csrf_token": token})
        cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("sealmem_console="))
        flags = [part.strip().lower() for part in cookie.split(";")]
        assert "httponly" in flags and "samesite=strict" in flags and "path=/admin" in flags
        assert "secure" not in flags  # plain HTTP
        assert console.acme.admin not in cookie
        overview = client.get("/admin")
        assert overview.status_code == 200 and console.acme.admin not in overview.text
        digest = console.harness.services.console_sessions.digest(client.cookies["sealmem_console"])
    with console.harness.store.engine.connect() as conn:
        row = conn.execute(text("SELECT tenant_id, key_id FROM console_sessions WHERE id = :d"), {"d": digest}).one()
    assert tuple(row) == (console.acme.id, console.acme.admin_key_id)  # the session is server-side


def test_cookie_is_secure_behind_https(console: Seeded) -> None:
    # uvicorn trusts X-Forwarded-Proto from 127.0.0.1: the request is then HTTPS
    https = {"X-Forwarded-Proto": "https"}
    with httpx.Client(base_url=console.url, headers=https) as client:
        page = client.get("/admin/login")
        token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
        login_cookie = page.headers["set-cookie"]
        assert "secure" in [part.strip().lower() for part in login_cookie.split(";")]
        nonce = login_cookie.split(";")[0]  # httpx keeps a Secure cookie from this http:// URL: send it by hand
        response = client.post(
            "/admin/login",
            data={"api_key": console.acme.admin, "csrf_token": token},
            headers={"Cookie": nonce},
        )
        assert response.status_code == 303
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("sealmem_console="))
    assert "secure" in [part.strip().lower() for part in cookie.split(";")]


def test_bad_keys_are_refused_with_a_message(console: Seeded) -> None:
    with httpx.Client(base_url=console.url) as client:
        token = CSRF.search(client.get("/admin/login").text).group(1)  # type: ignore[union-attr]
        wrong = client.post("/admin/login", data={"api_key": "smk_" + "x" * 43, "csrf_token": token})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        token = CSRF.search(wrong.text).group(1)  # type: ignore[union-attr]
        reader = client.post("/admin/login", data={"api_key": console.acme.reader, "csrf_token": token})
        assert reader.status_code == 403 and "needs an admin key" in reader.text
        assert "sealmem_console" not in client.cookies


def test_sign_in_needs_its_csrf_nonce_and_the_same_origin(console: Seeded) -> None:
    with httpx.Client(base_url=console.url) as client:
        token = CSRF.search(client.get("/admin/login").text).group(1)  # type: ignore[union-attr]
        data = {"api_key": console.acme.admin, "csrf_token": token}
        cross = client.post("/admin/login", data=data, headers={"Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403 and "cross-origin" in cross.text  # login CSRF
        foreign = client.post("/admin/login", data=data, headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403
        client.cookies.clear()  # no nonce cookie: a form posted from elsewhere
        assert client.post("/admin/login", data=data).status_code == 403
    assert "sealmem_console" not in client.cookies


def test_a_form_post_without_the_csrf_token_is_refused(console: Seeded) -> None:
    before = key_names(console)
    with sign_in(console.url, console.acme.admin) as client:
        missing = client.post("/admin/keys", data={"role": "app", "name": "no-token"})
        assert missing.status_code == 403 and "CSRF" in missing.text
        with sign_in(console.url, console.acme.admin) as other:
            foreign_token = csrf_of(other)
        wrong = client.post("/admin/keys", data={"role": "app", "name": "no-token", "csrf_token": foreign_token})
        assert wrong.status_code == 403  # another session's token
        forget = client.post("/admin/subject/forget", data={"subject": "alice", "confirm": "alice"})
        assert forget.status_code == 403
    assert key_names(console) == before
    assert console.harness.count(console.acme.id) > 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
    ],
)
def test_a_cross_origin_post_is_refused_even_with_the_token(console: Seeded, headers: dict[str, str]) -> None:
    before = key_names(console)
    with sign_in(console.url, console.acme.admin) as client:
        token = csrf_of(client)
        response = client.post(
            "/admin/keys", data={"role": "app", "name": "x-origin", "csrf_token": token}, headers=headers
        )
        assert response.status_code == 403 and "cross-origin" in response.text
        same = client.post(
            "/admin/keys",
            data={"role": "app", "name": "same-origin", "csrf_token": token},
            headers={"Origin": console.url, "Sec-Fetch-Site": "same-origin"},
        )
        assert same.status_code == 201
    assert key_names(console) == [*before, "same-origin"]


def test_every_console_page_has_the_security_headers(console: Seeded) -> None:
    with sign_in(console.url, console.acme.admin) as client:
        for path in ("/admin", "/admin/subjects", "/admin/subject?id=nobody", "/admin/keys", "/admin/login"):
            response = client.get(path)
            assert response.headers["content-security-policy"] == CSP, path
            assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["referrer-policy"] == "same-origin"
            assert "<script>" not in response.text and " style=" not in response.text  # nothing inline


def test_bad_input_shows_a_message_and_changes_nothing(console: Seeded) -> None:
    with sign_in(console.url, console.acme.admin) as client:
        token = csrf_of(client)
        bad_role = client.post("/admin/keys", data={"role": "root", "name": "k", "csrf_token": token})
        assert bad_role.status_code == 422 and "role must be one of" in bad_role.text
        bad_time = client.get("/admin/audit", params={"after": "yesterday"})
        assert bad_time.status_code == 422 and "after: not a date" in bad_time.text
        unknown = client.get("/admin/subjects", params={"sort": "x"})
        assert unknown.status_code == 422 and "unknown query parameter" in unknown.text
        missing = client.get("/admin/subject", params={"id": "nobody"})
        assert missing.status_code == 404 and "subject not found" in missing.text
    assert "k" not in key_names(console)


def test_console_reads_are_audited_as_admin_reads(console: Seeded) -> None:
    log = console.harness.services.auditor.log
    with sign_in(console.url, console.acme.admin) as client:
        seq = log.entries(tenant_id=console.acme.id, limit=1)[0].seq
        assert client.get("/admin/subject", params={"id": "alice"}).status_code == 200
        assert client.get("/admin/subject/export", params={"id": "alice"}).status_code == 200
    new = [e for e in log.entries(tenant_id=console.acme.id, limit=20) if e.seq > seq]
    actions = {e.action: e for e in new}
    assert {"admin.inspect", "subject.export"} <= set(actions)
    inspect = actions["admin.inspect"]
    assert inspect.subject == "alice" and len(inspect.memory_ids) == 4
    assert inspect.role == "admin" and inspect.credential_id == console.acme.admin_key_id


def test_idle_timeout_and_lifetime_end_a_session(console: Seeded) -> None:
    engine = console.harness.store.engine
    for column, moved in (("last_seen_at", timedelta(minutes=16)), ("expires_at", timedelta(seconds=1))):
        with sign_in(console.url, console.acme.admin) as client:
            digest = console.harness.services.console_sessions.digest(client.cookies["sealmem_console"])
            stamp = utcnow() - moved
            with engine.begin() as conn:
                conn.execute(
                    text(f"UPDATE console_sessions SET {column} = :t WHERE id = :d"), {"t": stamp, "d": digest}
                )
            response = client.get("/admin/subjects")
            assert response.status_code == 303 and response.headers["location"] == "/admin/login", column
            with engine.connect() as conn:
                left = conn.execute(text("SELECT count(*) FROM console_sessions WHERE id = :d"), {"d": digest})
                assert left.scalar() == 0


def test_a_revoked_key_ends_its_sessions(console: Seeded) -> None:
    api = console.harness.client
    made = api.post("/v1/admin/keys", json={"role": "admin", "name": "short-lived"}, headers=bearer(console.acme.admin))
    key, key_id = made.json()["key"], made.json()["id"]
    with sign_in(console.url, key) as client:
        assert client.get("/admin").status_code == 200
        revoked = api.delete(f"/v1/admin/keys/{key_id}", headers=bearer(console.acme.admin))
        assert revoked.status_code == 200
        response = client.get("/admin")
        assert response.status_code == 303 and response.headers["location"] == "/admin/login"


def test_htmx_requests_without_a_session_are_redirected_by_header(console: Seeded) -> None:
    with httpx.Client(base_url=console.url) as client:
        response = client.get("/admin/subjects", headers={"HX-Request": "true"})
    assert response.status_code == 200 and response.headers["hx-redirect"] == "/admin/login"


def test_console_is_left_out_of_the_openapi_schema(console: Seeded) -> None:
    paths = console.harness.app.openapi()["paths"]
    assert not [p for p in paths if p.startswith("/admin")]


def test_the_setting_turns_the_console_off(tmp_path, migrated_db) -> None:
    settings = make_settings(
        fresh_data_dir(tmp_path, migrated_db), chat_enabled=False, mcp_enabled=False, console_enabled=False
    )
    with Harness.start(settings) as h:
        assert h.client.get("/admin/login").status_code == 404
        assert h.client.get("/admin/static/htmx.min.js").status_code == 404
