"""Rate limits through the real app: per subject (tokens), per API key (off by default), and failed
authentications per client address, refused before any database lookup."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import event
from starlette.testclient import TestClient

from service.ratelimit import RateLimiter
from service.settings import Settings
from tests.harness import Harness, bearer
from tests.service.conftest import make_settings

_LIMIT_FIELDS = (
    "rate_limit_token_per_minute",
    "rate_limit_token_burst",
    "rate_limit_key_per_minute",
    "rate_limit_key_burst",
    "rate_limit_auth_failures_per_minute",
)
# The shipped defaults (tests/harness.py turns every limit off; these tests turn them back on).
DEFAULT_LIMITS: dict[str, Any] = {name: Settings.model_fields[name].default for name in _LIMIT_FIELDS}


def _unknown_key() -> str:
    """A well-formed key that no tenant has: authenticating it costs a database lookup."""
    return "smk_" + secrets.token_urlsafe(32)


@contextmanager
def key_lookups(api: Harness) -> Iterator[list[str]]:
    """The SQL statements touching ``api_keys`` while the block runs (observed on the app's own engine)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "api_keys" in statement:
            seen.append(statement)

    engine = api.store.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _metric(api: Harness, name: str, labels: str = "") -> float:
    text = api.client.get("/metrics").text
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _assert_429(response: Any) -> int:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limited"
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


def _other_address(api: Harness, host: str) -> TestClient:
    """A client of the same running app that connects from ``host`` (no second lifespan)."""
    return TestClient(api.app, client=(host, 40000))


# ---- defaults ---------------------------------------------------------------------------------------------


def test_defaults_are_per_subject_only():
    assert DEFAULT_LIMITS["rate_limit_key_per_minute"] == 0  # API keys: unlimited
    assert DEFAULT_LIMITS["rate_limit_token_per_minute"] == 600
    assert DEFAULT_LIMITS["rate_limit_auth_failures_per_minute"] == 60


def _authenticated(api: Harness, credential: str) -> Any:
    """One cheap authenticated request: the limits are applied while authenticating, before the route's
    permission check, so a 403 from an admin route has passed them exactly as a read would (and is quick)."""
    return api.client.get("/v1/admin/keys", headers=bearer(credential))


def test_with_the_defaults_an_app_key_bursts_2000_requests_without_429(make_api):
    api = make_api(**DEFAULT_LIMITS)
    t = api.tenant()
    api.add(t.app, "alice", "likes tea")
    statuses = [_authenticated(api, t.app).status_code for _ in range(2000)]
    assert statuses == [403] * 2000
    assert api.client.get("/v1/memories", params={"subject": "alice"}, headers=bearer(t.app)).status_code == 200
    assert _metric(api, "sealmem_rate_limited_total") == 0


def test_with_the_defaults_a_subject_token_is_limited_after_its_burst(make_api):
    api = make_api(**DEFAULT_LIMITS)
    t = api.tenant()
    api.add(t.app, "alice", "likes tea")
    token = api.token(t.app, "alice", ["read"])
    per_second = DEFAULT_LIMITS["rate_limit_token_per_minute"] / 60
    burst = DEFAULT_LIMITS["rate_limit_token_burst"] or DEFAULT_LIMITS["rate_limit_token_per_minute"]
    started = time.monotonic()
    statuses: list[int] = []
    while not statuses or (statuses[-1] != 429 and len(statuses) < 4 * burst):
        response = _authenticated(api, token)
        statuses.append(response.status_code)
    refilled = (time.monotonic() - started) * per_second
    _assert_429(response)  # a subject token is limited by default
    assert burst <= statuses.index(429) <= burst + refilled + 1
    assert set(statuses[:-1]) == {403}
    # The app key that minted it is not limited by default.
    assert api.client.get("/v1/memories", params={"subject": "alice"}, headers=bearer(t.app)).status_code == 200


# ---- subject tokens ---------------------------------------------------------------------------------------


def test_a_subject_token_gets_429_with_retry_after_past_its_limit(make_api):
    # 5 at once, then one per minute: nothing refills while the test runs.
    api = make_api(rate_limit_token_per_minute=1, rate_limit_token_burst=5)
    t = api.tenant()
    for subject in ("alice", "bob"):
        api.add(t.app, subject, f"{subject} likes tea")
    token = api.token(t.app, "alice", ["read"])
    for _ in range(5):
        assert api.client.get("/v1/memories", headers=bearer(token)).status_code == 200
    retry_after = _assert_429(api.client.get("/v1/memories", headers=bearer(token)))
    assert retry_after <= 60  # one per minute: a token is back within 60 s
    # All tokens of the subject share its bucket, whichever key minted them: a new token does not reset it.
    _assert_429(api.client.get("/v1/memories", headers=bearer(api.token(t.admin, "alice", ["read"]))))
    # Another subject, and the API keys, are unaffected.
    assert api.client.get("/v1/memories", headers=bearer(api.token(t.app, "bob", ["read"]))).status_code == 200
    assert api.client.get("/v1/memories", params={"subject": "alice"}, headers=bearer(t.app)).status_code == 200
    assert _metric(api, "sealmem_rate_limited_total") == 2


def test_token_requests_drain_the_minting_keys_bucket_when_a_key_limit_is_set(make_api):
    api = make_api(rate_limit_key_per_minute=1, rate_limit_key_burst=10, rate_limit_token_per_minute=600)
    t = api.tenant()  # provisioning uses the admin key only
    subjects = [f"user-{i}" for i in range(4)]
    for subject in subjects:
        api.add(t.admin, subject, "likes tea")
    tokens = [api.token(t.app, subject, ["read"]) for subject in subjects]  # 4 of the app key's 10
    # Each subject's own bucket is nearly full, yet together the tokens get only what is left of the key's.
    statuses = [api.client.get("/v1/memories", headers=bearer(tokens[i % 4])).status_code for i in range(8)]
    assert statuses[:6] == [200] * 6
    assert statuses[6:] == [429, 429]
    # The app key itself is spent too; another key of the tenant is not.
    _assert_429(api.client.get("/v1/memories", params={"subject": "user-0"}, headers=bearer(t.app)))
    _assert_429(api.client.post("/v1/tokens", json={"subject": "x", "scopes": ["read"]}, headers=bearer(t.app)))
    assert api.client.get("/v1/memories", params={"subject": "user-0"}, headers=bearer(t.admin)).status_code == 200


def test_a_key_limit_alone_caps_an_api_key(make_api):
    api = make_api(rate_limit_key_per_minute=1, rate_limit_key_burst=4, rate_limit_token_per_minute=0)
    t = api.tenant()
    api.add(t.admin, "alice", "likes tea")
    for _ in range(4):
        assert api.client.get("/v1/memories", params={"subject": "alice"}, headers=bearer(t.reader)).status_code == 200
    assert _assert_429(api.client.get("/v1/memories", params={"subject": "alice"}, headers=bearer(t.reader))) <= 60


# ---- failed authentications -------------------------------------------------------------------------------


def test_failed_authentications_exhaust_the_address_then_429_before_any_lookup(make_api):
    api = make_api(rate_limit_auth_failures_per_minute=3)
    t = api.tenant()
    api.add(t.app, "alice", "likes tea")
    token = api.token(t.app, "alice", ["read"])

    for _ in range(3):
        with key_lookups(api) as lookups:
            assert api.client.get("/v1/memories", headers=bearer(_unknown_key())).status_code == 401
        assert lookups, "an unknown well-formed key is looked up"

    with key_lookups(api) as lookups:
        guess = api.client.get("/v1/memories", headers=bearer(_unknown_key()))
        # A valid key from the same address is refused as well: telling it from a guess is the lookup.
        valid = api.client.get("/v1/memories", params={"subject": "alice"}, headers=bearer(t.app))
    assert lookups == []
    assert 1 <= _assert_429(guess) <= 20  # 3 per minute: one failure is allowed again within 20 s
    _assert_429(valid)

    # A correctly signed subject token from that address is still served (its lookup is bounded by its subject).
    assert api.client.get("/v1/memories", headers=bearer(token)).status_code == 200
    # Another address is unaffected.
    other = _other_address(api, "198.51.100.7")
    assert other.get("/v1/memories", params={"subject": "alice"}, headers=bearer(t.app)).status_code == 200

    assert _metric(api, "sealmem_auth_failures_total", '{reason="unknown_key"}') == 3
    assert _metric(api, "sealmem_rate_limited_total") == 2


def test_tokens_of_a_revoked_key_count_as_failures(make_api):
    api = make_api(rate_limit_auth_failures_per_minute=2)
    t = api.tenant()
    created = api.client.post("/v1/admin/keys", json={"role": "app", "name": "doomed"}, headers=bearer(t.admin))
    doomed = created.json()
    token = api.token(doomed["key"], "alice", ["read"])
    assert api.client.delete(f"/v1/admin/keys/{doomed['id']}", headers=bearer(t.admin)).status_code == 200
    for _ in range(2):
        assert api.client.get("/v1/memories", headers=bearer(token)).status_code == 401
    _assert_429(api.client.get("/v1/admin/keys", headers=bearer(t.admin)))
    assert _metric(api, "sealmem_auth_failures_total", '{reason="token_key_revoked"}') == 2


def test_malformed_credentials_cost_no_lookup_and_are_not_counted(make_api):
    api = make_api(rate_limit_auth_failures_per_minute=1)
    t = api.tenant()
    api.add(t.app, "alice", "likes tea")
    malformed = ["smk_", "smk_short", "smk_" + "A" * 42, "smk_" + "A" * 44, "smk_" + "*" * 43, "smk_" + "A" * 500]
    with key_lookups(api) as lookups:
        for credential in [*malformed, "not-a-token", "a.b.c"]:
            assert api.client.get("/v1/memories", headers=bearer(credential)).status_code == 401
    assert lookups == []
    assert _metric(api, "sealmem_auth_failures_total", '{reason="malformed_key"}') == len(malformed)
    # None of them spent the address's single failure: a valid key is still served.
    assert api.client.get("/v1/memories", params={"subject": "alice"}, headers=bearer(t.app)).status_code == 200


def test_ipv6_clients_are_counted_per_64_network(make_api):
    api = make_api(rate_limit_auth_failures_per_minute=1)
    t = api.tenant()
    first = _other_address(api, "2001:db8:0:1::1")
    assert first.get("/v1/admin/keys", headers=bearer(_unknown_key())).status_code == 401
    neighbour = _other_address(api, "2001:db8:0:1:ffff::2")  # same /64
    _assert_429(neighbour.get("/v1/admin/keys", headers=bearer(t.admin)))
    elsewhere = _other_address(api, "2001:db8:0:2::1")  # the next /64
    assert elsewhere.get("/v1/admin/keys", headers=bearer(t.admin)).status_code == 200


# ---- settings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("old", ["SEALMEM_RATE_LIMIT_PER_MINUTE", "SEALMEM_RATE_LIMIT_BURST"])
def test_the_replaced_settings_are_refused_not_ignored(old, tmp_path, monkeypatch):
    monkeypatch.setenv(old, "100")
    with pytest.raises(ValidationError, match="was replaced by SEALMEM_RATE_LIMIT_TOKEN_"):
        make_settings(tmp_path)


# ---- the bucket itself ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_continuously_and_wait_takes_nothing():
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=2, clock=clock)
    assert limiter.acquire("k") is None and limiter.acquire("k") is None
    assert limiter.wait("k") == pytest.approx(1.0)
    assert limiter.acquire("k") == pytest.approx(1.0)
    clock.now += 0.5
    assert limiter.wait("k") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.wait("k") is None and limiter.wait("k") is None  # peeking takes nothing
    assert limiter.acquire("k") is None
    assert limiter.acquire("k") is not None
    assert RateLimiter(per_minute=0).acquire("k") is None


def test_buckets_stay_bounded_under_a_flood_of_distinct_keys():
    clock = Clock()
    limiter = RateLimiter(per_minute=1, clock=clock, max_buckets=100)
    for i in range(5000):
        limiter.acquire(f"addr-{i}")  # every bucket drained, none refilled: nothing is "full"
        assert len(limiter) <= 100
    # The most recently used buckets are kept: the last key is still limited.
    assert limiter.acquire("addr-4999") is not None
