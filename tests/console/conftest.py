"""Fixtures of the console tests: one real server (uvicorn, chat off) per module with two tenants seeded once,
sign-in helpers over plain HTTP, and a headless Chromium (selenium) per module where one is installed."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from tests.harness import Harness, Tenant, fresh_data_dir, make_settings

ROOT = Path(__file__).resolve().parents[2]
AXE_JS = Path(__file__).parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = Path(os.environ.get("SEALMEM_TEST_ARTIFACTS", ROOT / "tmp" / "artifacts")) / "console"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
# Read at import: each test runs with the SEALMEM_* variables cleared (tests/conftest.py).
REQUIRE_BROWSER = os.environ.get("SEALMEM_REQUIRE_BROWSER") == "1"
UPDATE_DOCS_SCREENSHOT = os.environ.get("SEALMEM_UPDATE_DOCS_SCREENSHOT") == "1"


@dataclass
class Seeded:
    """The server and what was written to it before the tests ran."""

    harness: Harness
    acme: Tenant
    globex: Tenant
    alice_old: dict[str, Any]  # superseded by alice_new
    alice_new: dict[str, Any]
    carol: dict[str, Any]

    @property
    def url(self) -> str:
        return self.harness.url


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, migrated_db: Path) -> Iterator[Seeded]:
    data = fresh_data_dir(tmp_path_factory.mktemp("console"), migrated_db)
    settings = make_settings(data, chat_enabled=False, mcp_enabled=False)
    with Harness.serve(settings) as h:
        acme, globex = h.tenant("acme"), h.tenant("globex")
        old = h.add(acme.app, "alice", "Alice lives in Lisbon", session_id="s-1", kind="fact")
        new = h.add(acme.app, "alice", "Alice moved to Porto", session_id="s-2", kind="fact")
        h.store.supersede(tenant_id=acme.id, memory_id=old["id"], by=new["id"], actor="test")
        h.add(acme.app, "alice", "Alice likes green tea", session_id="s-2", kind="preference")
        h.add(acme.app, "alice", "Alice asked about the weather", session_id="s-1", kind="turn")
        for i in range(3):
            h.add(acme.app, f"bob-{i}", f"Bob number {i} plays chess")
        h.add(acme.app, "dora", "Dora owns a red bicycle")
        carol = h.add(globex.app, "carol", "Carol secret of globex: the launch code is 4242")
        yield Seeded(h, acme, globex, old, new, carol)


@contextmanager
def sign_in(url: str, key: str, **client_args: Any) -> Iterator[httpx.Client]:
    """An HTTP client signed in to the console with ``key`` (through the sign-in form, CSRF token included)."""
    with httpx.Client(base_url=url, timeout=30, **client_args) as client:
        page = client.get("/admin/login")
        token = CSRF.search(page.text)
        assert token is not None
        response = client.post("/admin/login", data={"api_key": key, "csrf_token": token.group(1)})
        assert response.status_code == 303, response.text
        assert response.headers["location"] == "/admin"
        yield client


def csrf_of(client: httpx.Client, path: str = "/admin/keys") -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found is not None
    return found.group(1)


def require_or_skip(reason: str) -> NoReturn:
    """Skip a browser test whose tools are missing, or fail it where ``SEALMEM_REQUIRE_BROWSER=1`` says they must
    be there (CI sets it once it has installed them), so that the console's browser checks cannot skip unseen."""
    if REQUIRE_BROWSER:
        pytest.fail(f"SEALMEM_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium driven by selenium (Debian's chromium and chromedriver)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        require_or_skip(
            "chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)"
        )
    try:
        from selenium import webdriver
    except ImportError:
        require_or_skip("selenium is not installed (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()
