"""The console's sessions, CSRF and origin checks, headers and audit records, over plain HTTP against a real server."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from typing import Any

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


# ---- hardening (review of #14) ------------------------------------------------------------------------------


def new_records(console: Seeded, tenant_id: str, since: int) -> list[Any]:
    log = console.harness.services.auditor.log
    return sorted((e for e in log.entries(tenant_id=tenant_id, limit=50) if e.seq > since), key=lambda e: e.seq)


def head_seq(console: Seeded, tenant_id: str) -> int:
    return console.harness.services.auditor.log.head(tenant_id=tenant_id)[0]


def session_rows(console: Seeded, token: str) -> int:
    digest = console.harness.services.console_sessions.digest(token)
    with console.harness.store.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM console_sessions WHERE id = :d"), {"d": digest}).scalar())


def test_signing_in_again_ends_the_session_the_browser_held(console: Seeded) -> None:
    with sign_in(console.url, console.acme.admin) as client:
        first = client.cookies["sealmem_console"]
        token = CSRF.search(client.get("/admin/login").text).group(1)  # type: ignore[union-attr]
        again = client.post("/admin/login", data={"api_key": console.acme.admin, "csrf_token": token})
        assert again.status_code == 303
        second = client.cookies["sealmem_console"]
        assert second != first and session_rows(console, second) == 1
        assert session_rows(console, first) == 0  # the old token is dead: no session outlives a new sign-in
    with httpx.Client(base_url=console.url, cookies={"sealmem_console": first}) as stale:
        assert stale.get("/admin").status_code == 303


def test_an_unexpected_error_is_a_plain_console_page(console: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("plaintext Alice lives in Lisbon at /srv/secret.py line 3")

    monkeypatch.setattr("service.console.routes.actions.tenant_overview", broken)
    with sign_in(console.url, console.acme.admin) as client:
        response = client.get("/admin")
    assert response.status_code == 500 and "internal server error" in response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "Lisbon" not in response.text and "secret.py" not in response.text and "RuntimeError" not in response.text
    assert response.headers["content-security-policy"] == CSP and response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"


def test_static_assets_carry_nosniff_and_the_csp(console: Seeded) -> None:
    with httpx.Client(base_url=console.url) as client:
        for path in ("/admin/static/htmx.min.js", "/admin/static/console.css"):
            response = client.get(path)
            assert response.status_code == 200, path
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["content-security-policy"] == CSP
            assert response.headers["x-frame-options"] == "DENY"


def test_the_overview_is_cheap_and_verifies_only_on_demand(console: Seeded) -> None:
    tenant = console.acme.id
    with sign_in(console.url, console.acme.admin) as client:
        seq = head_seq(console, tenant)
        page = client.get("/admin")
        assert page.status_code == 200
        assert [e.action for e in new_records(console, tenant, seq)] == ["admin.stats"]  # no audit.verify on GET
        assert f'id="chain-head">{seq}<' in page.text
        token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
        verified = client.post("/admin/audit/verify", data={"csrf_token": token})
        assert verified.status_code == 200 and "Chain intact" in verified.text
        page = client.get("/admin")
        assert "intact up to #" in page.text and 'action="/admin/audit/verify"' in page.text
    verify = [e for e in new_records(console, tenant, seq) if e.action == "audit.verify"]
    assert len(verify) == 1 and verify[0].detail["ok"] is True


def test_the_memory_page_reads_history_and_lineage_not_the_export(console: Seeded) -> None:
    tenant, old, new = console.acme.id, console.alice_old["id"], console.alice_new["id"]
    with sign_in(console.url, console.acme.admin) as client:
        seq = head_seq(console, tenant)
        page = client.get("/admin/memory", params={"subject": "alice", "id": old})
        assert page.status_code == 200
        assert "Alice lives in Lisbon" in page.text and "Alice moved to Porto" in page.text  # the chain
        assert 'id="supersede-chain"' in page.text and "green tea" not in page.text
    records = new_records(console, tenant, seq)
    assert [e.action for e in records] == ["memory.history"]  # no subject.export
    assert records[0].subject == "alice" and records[0].memory_ids == [old, new]


def test_subject_search_is_one_query_and_one_record(console: Seeded) -> None:
    tenant = console.acme.id
    with sign_in(console.url, console.acme.admin) as client:
        seq = head_seq(console, tenant)
        page = client.get("/admin/subjects", params={"q": "bob-"})
        assert page.status_code == 200
        assert all(f">bob-{i}<" in page.text for i in range(3)) and ">alice<" not in page.text
        none = client.get("/admin/subjects", params={"q": "Bob"})  # case-sensitive prefix
        assert "No subjects start with" in none.text
    records = new_records(console, tenant, seq)
    assert [e.action for e in records] == ["admin.subjects", "admin.subjects"]
    assert records[0].detail == {"offset": 0, "count": 3, "prefix": "bob-"}


def test_status_and_source_filters_are_applied_by_the_store(console: Seeded) -> None:
    with sign_in(console.url, console.acme.admin) as client:
        superseded = client.get("/admin/subject", params={"id": "alice", "status": "superseded"}).text
        assert "Alice lives in Lisbon" in superseded and "Porto" not in superseded
        api = client.get("/admin/subject", params={"id": "alice", "source": "api", "status": "active"}).text
        assert "Porto" in api and "green tea" in api and "Lisbon" not in api
        other = client.get("/admin/subject", params={"id": "alice", "source": "import"}).text
        assert "No memories match." in other


def test_tenant_b_cannot_reach_tenant_a_by_ids_or_form_fields(console: Seeded) -> None:
    acme, globex = console.acme, console.globex
    old = console.alice_old["id"]
    with sign_in(console.url, globex.admin) as client:
        token = csrf_of(client)
        revoke = client.post("/admin/keys/revoke", data={"key_id": acme.admin_key_id, "csrf_token": token})
        assert revoke.status_code == 404 and "API key not found" in revoke.text
        for params in ({"subject": "alice", "id": old}, {"subject": "carol", "id": old}):
            page = client.get("/admin/memory", params=params)
            assert page.status_code == 404 and "Lisbon" not in page.text and "Porto" not in page.text
        forget = client.post(
            "/admin/subject/forget", data={"subject": "alice", "confirm": "alice", "csrf_token": token}
        )
        assert forget.status_code == 404
        searched = client.post("/admin/search", data={"subject": "alice", "query": "Lisbon", "csrf_token": token})
        assert searched.status_code == 404 and "Lisbon" not in searched.text.replace('value="Lisbon"', "")
        audit = client.get("/admin/audit", params={"actor": acme.admin_key_id})
        assert audit.status_code == 200 and "No records match." in audit.text
        listing = client.get("/admin/subjects", params={"q": "ali"})
        assert ">alice<" not in listing.text
    assert console.harness.services.keys.is_active(tenant_id=acme.id, key_id=acme.admin_key_id)
    assert console.harness.count(acme.id) > 0


def test_odd_subject_ids_and_hostile_memory_text_are_escaped(console: Seeded) -> None:
    subject = "<img src=x onerror=alert(1)>\"'&x=1#?/ü"
    hostile = "<script>alert('memory')</script><b hx-get=\"/admin/keys\">bold</b>"
    added = console.harness.add(
        console.globex.app, subject, hostile, metadata={"note": "</code><script>alert(2)</script>"}
    )
    with sign_in(console.url, console.globex.admin) as client:
        listing = client.get("/admin/subjects")
        assert "<img src=x" not in listing.text and "&lt;img src=x onerror=alert(1)&gt;" in listing.text
        page = client.get("/admin/subject", params={"id": subject})
        assert page.status_code == 200
        for raw in ("<script>alert", "<b hx-get", "<img src=x"):
            assert raw not in page.text
        assert "&lt;script&gt;alert(&#39;memory&#39;)&lt;/script&gt;" in page.text
        link = re.search(r'href="(/admin/memory\?[^"]+)"', page.text)
        assert link is not None  # the history link carries the odd id through the URL intact
        history = client.get(html.unescape(link.group(1)))
        assert history.status_code == 200 and added["id"][:8] in history.text
        assert "&lt;script&gt;alert(&#39;memory&#39;)" in history.text  # the memory's facts, escaped
        assert "<script>" not in history.text and "&lt;/code&gt;&lt;script&gt;alert(2)" in history.text
        export = client.get("/admin/subject/export", params={"id": subject})
        assert export.status_code == 200
        assert re.fullmatch(
            r'attachment; filename="sealmem-export-[A-Za-z0-9._-]+\.json"', export.headers["content-disposition"]
        )


def test_failed_sign_ins_are_rate_limited(tmp_path, migrated_db) -> None:
    settings = make_settings(
        fresh_data_dir(tmp_path, migrated_db),
        chat_enabled=False,
        mcp_enabled=False,
        rate_limit_auth_failures_per_minute=3,
    )
    with Harness.start(settings) as h:
        acme = h.tenant("acme")
        client = h.client

        def attempt(key: str) -> httpx.Response:
            token = CSRF.search(client.get("/admin/login").text).group(1)  # type: ignore[union-attr]
            return client.post("/admin/login", data={"api_key": key, "csrf_token": token})

        statuses = [attempt("smk_" + "x" * 43).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        right = attempt(acme.admin)  # even the right key waits: the address is throttled before any lookup
        assert right.status_code == 429 and "sealmem_console" not in client.cookies
        assert acme.admin not in right.text


def test_the_session_table_holds_digests_only_and_purges_dead_sessions(console: Seeded) -> None:
    sessions, engine = console.harness.services.console_sessions, console.harness.store.engine
    made = [sessions.create(tenant_id=console.acme.id, key_id=console.acme.admin_key_id) for _ in range(3)]
    (idle, _), (old, _), (live, _) = made
    with engine.begin() as conn:
        rows = {r[0] for r in conn.execute(text("SELECT id FROM console_sessions"))}
        assert not {idle, old, live} & rows and {sessions.digest(t) for t in (idle, old, live)} <= rows
        conn.execute(
            text("UPDATE console_sessions SET last_seen_at = :t WHERE id = :d"),
            {"t": utcnow() - sessions.idle - timedelta(seconds=1), "d": sessions.digest(idle)},
        )
        conn.execute(
            text("UPDATE console_sessions SET expires_at = :t WHERE id = :d"),
            {"t": utcnow() - timedelta(seconds=1), "d": sessions.digest(old)},
        )
    assert sessions.purge_expired() >= 2
    assert (session_rows(console, idle), session_rows(console, old), session_rows(console, live)) == (0, 0, 1)
    assert sessions.resolve(live) is not None and sessions.resolve(idle) is None
    sessions.end(live)


# ---- one path with the API (search, history) ----------------------------------------------------------------

SEARCH_ROW = re.compile(
    r'&amp;id=([0-9a-f-]+)">[^<]*</a></td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>'
)


def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def test_console_search_is_the_api_search(console: Seeded) -> None:
    """The playground calls the function ``POST /v1/memories/search`` calls: the same hits with the same fused,
    dense, lexical scores and relevance, and the same ``memory.search`` record."""
    tenant, api = console.acme.id, console.harness.client
    body: dict[str, Any] = {"subject": "alice", "query": "Alice tea Lisbon", "k": 5}
    with sign_in(console.url, console.acme.admin) as client:
        token = csrf_of(client, "/admin/search")
        seq = head_seq(console, tenant)
        page = client.post("/admin/search", data={**body, "csrf_token": token})
        rest = api.post("/v1/memories/search", json=body, headers=bearer(console.acme.admin))
    assert page.status_code == 200 and rest.status_code == 200, rest.text
    assert '<th scope="col">Relevance</th>' in page.text
    shown = SEARCH_ROW.findall(page.text)
    results = rest.json()["results"]
    assert shown and [row[0] for row in shown] == [r["id"] for r in results]
    for row, r in zip(shown, results, strict=True):
        assert row[1:] == tuple(_score(r[name]) for name in ("score", "dense_score", "lexical_score", "relevance"))
    records = new_records(console, tenant, seq)
    assert [e.action for e in records] == ["memory.search", "memory.search"]
    assert records[0].subject == records[1].subject == "alice"
    assert records[0].memory_ids == records[1].memory_ids == [r["id"] for r in results]


def test_console_search_takes_the_api_search_parameters(console: Seeded) -> None:
    old = console.alice_old["id"]
    with sign_in(console.url, console.acme.admin) as client:
        token = csrf_of(client, "/admin/search")
        form = {"subject": "alice", "query": "Alice lives in Lisbon", "csrf_token": token}
        plain = client.post("/admin/search", data=form)
        assert plain.status_code == 200 and old not in plain.text  # superseded: left out, as over REST
        superseded = client.post("/admin/search", data={**form, "include_superseded": "true"})
        assert old in superseded.text and 'id="s-include-superseded" name="include_superseded"' in superseded.text
        preference = client.post("/admin/search", data={**form, "kind": "preference"})
        assert ">Alice likes green tea<" in preference.text and ">Alice moved to Porto<" not in preference.text
        kept = client.post("/admin/search", data={**form, "min_score": "0.5", "include_assistant": "true"})
        assert kept.status_code == 200  # the hashing embedder has no calibration: min_score filters nothing
        assert SEARCH_ROW.findall(kept.text)
        for bad in ("nan", "inf", "-1.5", "2", "x"):
            refused = client.post("/admin/search", data={**form, "min_score": bad})
            assert refused.status_code == 422, (bad, refused.text)
            assert "min_score" in refused.text


def test_blank_form_fields_mean_no_filter(console: Seeded) -> None:
    """GET forms send their empty fields (``?kind=&source=``): every page reads them as "no filter", not as
    invalid values."""
    with sign_in(console.url, console.acme.admin) as client:
        blank = {"kind": "", "source": "", "session": ""}
        page = client.get("/admin/subject", params={"id": "alice", "status": "superseded", **blank})
        assert page.status_code == 200, page.text
        assert "Alice lives in Lisbon" in page.text and "Porto" not in page.text
        every = client.get("/admin/subject", params={"id": "alice", "status": "", **blank})
        assert "Lisbon" in every.text and "Porto" in every.text and "green tea" in every.text
        audit = client.get("/admin/audit", params=dict.fromkeys(("action", "subject", "actor", "after", "before"), ""))
        assert audit.status_code == 200 and "admin." in audit.text
        assert client.get("/admin/subjects", params={"q": ""}).status_code == 200
        for path in ("/admin/search", "/admin/sessions"):
            response = client.get(path, params={"subject": ""})
            assert response.status_code == 200, (path, response.text)
        bad = client.get("/admin/subject", params={"id": "alice", "status": "gone", **blank})
        assert bad.status_code == 422 and "status" in bad.text  # a value that is there is still checked


def test_a_subjects_memories_page_through_the_pager_link(console: Seeded) -> None:
    api, admin = console.harness.client, console.acme.admin
    texts = [f"Pager memory number {i:02d}" for i in range(57)]
    body = {"memories": [{"subject": "pager", "text": t, "kind": "fact"} for t in texts]}
    assert api.post("/v1/memories/batch", json=body, headers=bearer(console.acme.app)).status_code == 201
    link = re.compile(r'<a href="(/admin/subject\?[^"]+)">Older memories</a>')
    seen: list[str] = []
    with sign_in(console.url, admin) as client:
        page = client.get("/admin/subject", params={"id": "pager", "kind": "", "status": "", "source": ""})
        for _ in range(3):
            assert page.status_code == 200, page.text
            seen += re.findall(r"Pager memory number \d\d", page.text)
            found = link.search(page.text)
            if found is None:
                break
            page = client.get(html.unescape(found.group(1)))  # the link as the browser follows it
    assert sorted(seen) == texts and len(seen) == 57  # two pages (50 + 7), nothing twice, nothing missed


def test_the_subjects_list_pages_and_shows_counts_and_activity(console: Seeded) -> None:
    api = console.harness.client
    body = {"memories": [{"subject": f"many-{i:02d}", "text": f"Subject {i} note"} for i in range(52)]}
    body["memories"].append({"subject": "many-00", "text": "A second note of subject zero"})
    assert api.post("/v1/memories/batch", json=body, headers=bearer(console.acme.app)).status_code == 201
    cell = r"<td>([^<]+)</td>"
    link = r'<tr><td><a href="/admin/subject\?id=([^"]+)">[^<]+</a></td>'
    row = re.compile(link + r"<td>(\d+)</td>" + cell + cell + "</tr>")
    with sign_in(console.url, console.acme.admin) as client:
        first = client.get("/admin/subjects", params={"q": "many-"})
        rows = row.findall(first.text)
        assert len(rows) == 50 and "Next page" in first.text and "Previous page" not in first.text
        second = client.get("/admin/subjects", params={"q": "many-", "offset": 50})
        rows += row.findall(second.text)
        assert "Previous page" in second.text and "Next page" not in second.text
    counts = {subject: int(n) for subject, n, _, _ in rows}
    assert sorted(counts) == [f"many-{i:02d}" for i in range(52)]  # each once, across the two pages
    assert counts["many-00"] == 2 and counts["many-51"] == 1
    assert all(last.endswith(" UTC") for _, _, _, last in rows)  # last activity shown for every subject


def test_audit_time_and_subject_filters(console: Seeded) -> None:
    today = utcnow().date()
    tomorrow, yesterday = today + timedelta(days=1), today - timedelta(days=1)
    subject_cell = re.compile(r"<tr><td>\d+</td><td>[^<]+</td><td>[^<]+</td><td>[^<]+</td><td>([^<]+)</td>")
    with sign_in(console.url, console.acme.admin) as client:
        later = client.get("/admin/audit", params={"after": tomorrow.isoformat()})
        assert later.status_code == 200 and "No records match." in later.text
        earlier = client.get("/admin/audit", params={"before": "2000-01-01"})
        assert "No records match." in earlier.text
        window = client.get("/admin/audit", params={"after": yesterday.isoformat(), "before": tomorrow.isoformat()})
        assert len(subject_cell.findall(window.text)) > 5
        alice = subject_cell.findall(client.get("/admin/audit", params={"subject": "alice"}).text)
        assert alice and set(alice) == {"alice"}
        bob = subject_cell.findall(client.get("/admin/audit", params={"subject": "bob-1"}).text)
        assert bob and set(bob) == {"bob-1"}
        wrong = client.get("/admin/audit", params={"after": tomorrow.isoformat(), "before": today.isoformat()})
        assert wrong.status_code == 422 and "earlier than before" in wrong.text
        actor = re.search(r'<a href="/admin/audit\?actor=([^"]+)"', window.text)
        assert actor is not None  # the actor cell links to that key's records, by its full id
        by_actor = client.get("/admin/audit", params={"actor": actor.group(1)})
        assert by_actor.status_code == 200 and "No records match." not in by_actor.text


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/admin/keys", {"role": "app", "name": "no-token"}),
        ("/admin/keys/revoke", {"key_id": "x"}),
        ("/admin/subject/forget", {"subject": "alice", "confirm": "alice"}),
        ("/admin/audit/verify", {}),
        ("/admin/logout", {}),
        ("/admin/search", {"subject": "alice", "query": "tea"}),
    ],
)
def test_every_session_post_needs_the_csrf_token(console: Seeded, path: str, data: dict[str, str]) -> None:
    tenant = console.acme.id
    with sign_in(console.url, console.acme.admin) as client:
        seq = head_seq(console, tenant)
        missing = client.post(path, data=data)
        assert missing.status_code == 403 and "CSRF" in missing.text, path
        assert new_records(console, tenant, seq) == []  # refused before anything ran, reads included
        assert client.get("/admin/keys").status_code == 200  # still signed in: a refused sign-out did nothing
    assert console.harness.count(tenant) > 0
