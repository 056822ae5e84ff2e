"""The admin console in a real headless Chromium: sign in, every page, search, a memory's history, keys, forget,
the audit chain, tenant isolation, accessibility (axe-core) and no Content-Security-Policy violations.

The tests of this module share one browser and one server, and run in file order (sign-in first)."""

from __future__ import annotations

import json
import shutil
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import text

from tests.console.conftest import ARTIFACTS, AXE_JS, ROOT, UPDATE_DOCS_SCREENSHOT, Seeded, require_or_skip
from tests.harness import bearer

PAGES = {
    "overview": "/admin",
    "subjects": "/admin/subjects",
    "subject": "/admin/subject?id=alice",
    "search": "/admin/search?subject=alice",
    "sessions": "/admin/sessions?subject=alice",
    "audit": "/admin/audit",
    "keys": "/admin/keys",
}


def by(kind: str) -> Any:
    from selenium.webdriver.common.by import By

    return getattr(By, kind)


def wait_for(browser: Any, css: str, timeout: float = 10) -> Any:
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(ec.presence_of_element_located((by("CSS_SELECTOR"), css)))


def wait_for_text(browser: Any, xpath: str, wanted: str, timeout: float = 10) -> str:
    """The text of the element at `xpath` once it contains `wanted`. A click that posts a plain form navigates: until
    the new page is in, the element may be the old one, stale, or absent, so each of those is simply tried again.
    Chromium also reports an element of the page being left as a node that "does not belong to the document"
    (seen once in CI): tried again too."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def current(driver: Any) -> str | bool:
        try:
            text: str = driver.find_element(by("XPATH"), xpath).text
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return False
            raise
        return text if wanted in text else False

    ignored = (NoSuchElementException, StaleElementReferenceException)
    result: str = WebDriverWait(browser, timeout, ignored_exceptions=ignored).until(current)
    return result


def go(browser: Any, console: Seeded, path: str) -> None:
    browser.get(console.url + path)


def shot(browser: Any, name: str) -> None:
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def csp_violations(browser: Any) -> list[str]:
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
    ]


def browser_sign_in(browser: Any, console: Seeded, key: str) -> None:
    browser.delete_all_cookies()
    go(browser, console, "/admin")
    assert browser.current_url.endswith("/admin/login")  # no session: the sign-in page
    browser.find_element(by("ID"), "api_key").send_keys(key)
    browser.find_element(by("CSS_SELECTOR"), "form button[type=submit]").click()
    wait_for(browser, "#total-memories")


def test_sign_in_and_browse_every_page(browser: Any, console: Seeded) -> None:
    browser_sign_in(browser, console, console.acme.admin)
    cookies = {c["name"]: c for c in browser.get_cookies()}
    session = cookies["sealmem_console"]
    assert session["httpOnly"] is True and session["sameSite"] == "Strict"
    assert console.acme.admin not in session["value"]
    assert console.acme.admin not in browser.page_source  # the key is nowhere in the page
    assert browser.find_element(by("ID"), "total-memories").text == "8"
    assert browser.find_element(by("ID"), "total-subjects").text == "5"
    assert browser.find_element(by("ID"), "chain-status").text == "not verified yet"  # the overview recomputes nothing
    assert int(browser.find_element(by("ID"), "chain-head").text) > 0
    by_status = browser.find_element(by("ID"), "by-status").text
    assert "active 7" in by_status and "superseded 1" in by_status
    assert "preference 1" in browser.find_element(by("ID"), "by-kind").text
    bars = browser.find_elements(by("CSS_SELECTOR"), "#writes-chart svg rect.bar")
    assert len(bars) == 30 and float(bars[-1].get_attribute("height")) > 0  # today's writes drawn
    browser.find_element(by("ID"), "verify-button").click()  # "Verify now", swapped in place by htmx
    assert wait_for(browser, "#verify-result p.ok").text.startswith("Chain intact")
    assert browser.current_url == console.url + "/admin"
    go(browser, console, "/admin")
    assert browser.find_element(by("ID"), "chain-status").text.startswith("intact up to #")
    shot(browser, "overview")
    if UPDATE_DOCS_SCREENSHOT:  # a test run leaves the working tree as it was
        shutil.copyfile(ARTIFACTS / "overview.png", ROOT / "docs" / "console-overview.png")

    expected = {
        "subjects": ("#subjects", "alice"),
        "subject": ("#memories", "Alice likes green tea"),
        "search": ("#s-query", ""),
        "sessions": ("#sessions", "s-2"),
        "audit": ("#audit", "admin.stats"),
        "keys": ("#keys", "reader-key"),
    }
    for name, (css, needle) in expected.items():
        go(browser, console, PAGES[name])
        element = wait_for(browser, css)
        assert needle in element.text or needle in (element.get_attribute("value") or ""), name
        shot(browser, name)
    subjects = browser.find_elements(by("CSS_SELECTOR"), "nav a[aria-current=page]")
    assert [a.text for a in subjects] == ["API keys"]
    assert csp_violations(browser) == []


def test_subject_filters(browser: Any, console: Seeded) -> None:
    from selenium.webdriver.support.ui import Select

    go(browser, console, "/admin/subject?id=alice")
    Select(browser.find_element(by("ID"), "f-status")).select_by_value("superseded")
    browser.find_element(by("CSS_SELECTOR"), "form[aria-label='Filter memories'] button").click()  # the form itself
    rows = wait_for_text(browser, "//table[@id='memories']", "Lisbon")  # its blank fields mean "any"
    assert "Alice lives in Lisbon" in rows and "green tea" not in rows
    assert "status=superseded" in browser.current_url
    browser.find_element(by("ID"), "f-source").send_keys("api")
    Select(browser.find_element(by("ID"), "f-status")).select_by_value("")
    browser.find_element(by("CSS_SELECTOR"), "form[aria-label='Filter memories'] button").click()
    rows = wait_for_text(browser, "//table[@id='memories']", "green tea")
    assert "Porto" in rows and "Lisbon" in rows
    go(browser, console, "/admin/subject?id=alice&kind=turn")
    rows = wait_for(browser, "#memories").text
    assert "weather" in rows and "Lisbon" not in rows
    go(browser, console, "/admin/subject?id=alice&session=s-1")
    rows = wait_for(browser, "#memories").text
    assert "Lisbon" in rows and "weather" in rows and "Porto" not in rows


def test_search_playground_ranks_with_scores(browser: Any, console: Seeded) -> None:
    go(browser, console, "/admin/search?subject=alice")
    browser.find_element(by("ID"), "s-query").send_keys("green tea")
    browser.find_element(by("CSS_SELECTOR"), "form.stack button[type=submit]").click()
    table = wait_for(browser, "#search-results")
    rows = table.find_elements(by("CSS_SELECTOR"), "tbody tr")
    first = [cell.text for cell in rows[0].find_elements(by("TAG_NAME"), "td")]
    assert first[1] == "Alice likes green tea"
    fused, dense, lexical = (float(v) for v in first[2:5])
    assert fused > 0 and dense > 0 and lexical > 0
    assert browser.current_url.endswith("/admin/search?subject=alice")  # htmx swapped the results in place
    assert csp_violations(browser) == []  # the swapped-in results obey the CSP too
    shot(browser, "search-results")


def test_memory_history_timeline_and_supersede_chain(browser: Any, console: Seeded) -> None:
    go(browser, console, "/admin/subject?id=alice&status=superseded")
    wait_for(browser, "#memories").find_element(by("LINK_TEXT"), "History").click()
    timeline = wait_for(browser, "#timeline").text
    assert "add" in timeline and "supersede" in timeline
    chain = [li.text for li in browser.find_elements(by("CSS_SELECTOR"), "#supersede-chain li")]
    assert len(chain) == 2 and "Lisbon" in chain[0] and "Porto" in chain[1]
    shot(browser, "memory-history")


def test_create_and_revoke_a_key(browser: Any, console: Seeded) -> None:
    go(browser, console, "/admin/keys")
    browser.find_element(by("ID"), "k-name").send_keys("browser-made")
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(by("ID"), "k-role")).select_by_value("reader")
    browser.find_element(by("CSS_SELECTOR"), "form[aria-label='Create a key'] button").click()
    secret = wait_for(browser, "#new-secret").get_attribute("value")
    assert secret.startswith("smk_")
    shot(browser, "key-created")
    api = console.harness.client
    assert api.get("/v1/memories", params={"subject": "alice"}, headers=bearer(secret)).status_code == 200
    go(browser, console, "/admin/keys")  # the secret is shown once only
    assert secret not in browser.page_source
    row = browser.find_element(by("XPATH"), "//tr[td[1][text()='browser-made']]")
    row.find_element(by("CSS_SELECTOR"), "button.dangerous").click()  # a plain form post: the page reloads
    assert "revoked" in wait_for_text(browser, "//table[@id='keys']//tr[td[1][text()='browser-made']]", "revoked")
    assert api.get("/v1/memories", params={"subject": "alice"}, headers=bearer(secret)).status_code == 401


def test_forget_a_subject_through_the_typed_confirmation(browser: Any, console: Seeded) -> None:
    api, admin = console.harness.client, bearer(console.acme.admin)
    go(browser, console, "/admin/subject?id=dora")
    browser.find_element(by("ID"), "confirm").send_keys("dor")  # a typo
    browser.find_element(by("ID"), "forget-button").click()
    error = wait_for(browser, "p.error").text
    assert "422" in error and "confirmation does not match" in error
    assert api.get("/v1/admin/subjects/dora/export", headers=admin).status_code == 200  # nothing changed
    go(browser, console, "/admin/subject?id=dora")
    browser.find_element(by("ID"), "confirm").send_keys("dora")
    browser.find_element(by("ID"), "forget-button").click()
    assert "1 memories deleted" in wait_for(browser, "#forgotten").text
    shot(browser, "forgotten")
    assert api.get("/v1/admin/subjects/dora/export", headers=admin).status_code == 404


def test_audit_verify_and_filters(browser: Any, console: Seeded) -> None:
    go(browser, console, "/admin/audit?action=key.create")
    rows = wait_for(browser, "#audit").find_elements(by("CSS_SELECTOR"), "tbody tr")
    assert rows and all(" key.create " in f" {r.text} " for r in rows)
    go(browser, console, f"/admin/audit?actor={console.acme.admin_key_id}&action=subject.forget")
    assert "dora" in wait_for(browser, "#audit").text
    browser.find_element(by("ID"), "verify-button").click()
    result = wait_for(browser, "#verify-result p.ok").text
    assert result.startswith("Chain intact")
    shot(browser, "audit-verified")


def test_tenant_b_never_sees_tenant_a(browser: Any, console: Seeded) -> None:
    browser_sign_in(browser, console, console.globex.admin)
    assert browser.find_element(by("ID"), "total-memories").text == "1"
    go(browser, console, "/admin/subjects")
    listing = wait_for(browser, "#subjects").text
    assert "carol" in listing and "alice" not in listing
    alice_id = console.alice_new["id"]
    typed = [
        "/admin/subject?id=alice",
        f"/admin/memory?subject=alice&id={alice_id}",
        f"/admin/memory?subject=carol&id={alice_id}",
        "/admin/subject/export?id=alice",
        "/admin/sessions?subject=alice",
        "/admin/audit?subject=alice",
    ]
    for path in typed:
        go(browser, console, path)
        assert "Alice" not in browser.page_source and "Lisbon" not in browser.page_source, path
    go(browser, console, "/admin/subject?id=alice")
    assert "404" in wait_for(browser, "p.error").text
    shot(browser, "error-not-found")
    go(browser, console, "/admin/search?subject=alice")
    browser.find_element(by("ID"), "s-query").send_keys("Lisbon")
    browser.find_element(by("CSS_SELECTOR"), "form.stack button[type=submit]").click()
    wait_for(browser, "#results p.error, #search-results")
    assert "Lisbon" not in browser.find_element(by("ID"), "results").text
    go(browser, console, "/admin/keys")
    assert console.acme.admin_key_id not in browser.page_source


def test_audit_verify_shows_where_the_chain_breaks(browser: Any, console: Seeded) -> None:
    """Signed in as globex (previous test): its chain edited in the database is reported broken at that record."""
    with console.harness.store.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_records SET outcome = 'edited' WHERE tenant_id = :t AND seq = 2"),
            {"t": console.globex.id},
        )
    go(browser, console, "/admin/audit")
    browser.find_element(by("ID"), "verify-button").click()
    result = wait_for(browser, "#verify-result p.error").text
    assert "Chain broken at record #2" in result
    shot(browser, "audit-broken")


def test_no_page_has_a_serious_accessibility_violation(browser: Any, console: Seeded) -> None:
    if not AXE_JS.is_file():
        require_or_skip(f"axe-core is not installed ({AXE_JS}; run `npm ci` in tests/console/axe)")
    source = AXE_JS.read_text(encoding="utf-8")
    browser_sign_in(browser, console, console.acme.admin)
    memory = f"/admin/memory?subject=alice&id={quote(console.alice_old['id'])}"
    found: dict[str, list[str]] = {}

    def check(name: str) -> None:
        browser.execute_script(source)
        result = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {resultTypes: ['violations']}).then(r => done(JSON.stringify(r.violations)))"
            ".catch(e => done(JSON.stringify([{id: 'axe-error', impact: 'critical', help: String(e)}])));"
        )
        bad = [v for v in json.loads(result) if v.get("impact") in ("critical", "serious")]
        if bad:
            found[name] = [f"{v['id']}: {v.get('help')}" for v in bad]

    for name, path in {**PAGES, "memory": memory, "error": "/admin/subject?id=nobody"}.items():
        go(browser, console, path)
        check(name)
    go(browser, console, "/admin/search?subject=alice")  # the states a page reaches after a form
    browser.find_element(by("ID"), "s-query").send_keys("green tea")
    browser.find_element(by("CSS_SELECTOR"), "form.stack button[type=submit]").click()
    wait_for(browser, "#search-results")
    check("search results")
    go(browser, console, "/admin/keys")
    browser.find_element(by("ID"), "k-name").send_keys("axe-made")
    browser.find_element(by("CSS_SELECTOR"), "form[aria-label='Create a key'] button").click()
    wait_for(browser, "#new-secret")
    check("key created")
    go(browser, console, "/admin/audit")
    browser.find_element(by("ID"), "verify-button").click()
    wait_for(browser, "#verify-result p")
    check("audit verified")
    browser.delete_all_cookies()
    go(browser, console, "/admin/login")
    check("login")
    shot(browser, "login")
    assert found == {}


def test_sign_out_ends_the_session(browser: Any, console: Seeded) -> None:
    browser_sign_in(browser, console, console.acme.admin)
    token = browser.get_cookie("sealmem_console")["value"]
    browser.find_element(by("CSS_SELECTOR"), "form.signout button").click()
    wait_for(browser, "#api_key")
    assert browser.get_cookie("sealmem_console") is None
    with httpx.Client(base_url=console.url, cookies={"sealmem_console": token}) as client:
        response = client.get("/admin")  # the old token is dead on the server too
    assert response.status_code == 303 and response.headers["location"] == "/admin/login"
