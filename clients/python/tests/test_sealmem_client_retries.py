"""Retries: real 429 answers of a real server (subject tokens are limited to 60 a minute, burst 5, in
conftest), and the retry policy's decisions."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from typing import Any

import httpx
import pytest
from sealmem_client_live import Live

from sealmem_client import (
    APIConnectionError,
    AsyncSealmem,
    ClientError,
    LlmBusy,
    LlmError,
    RateLimited,
    RetryPolicy,
    Sealmem,
    ServerError,
    SubjectForgotten,
    Unavailable,
)
from sealmem_client._core import Call, connection_error
from sealmem_client.errors import error_from, parse_retry_after


def limited_subject(app: Sealmem) -> tuple[str, str]:
    """A subject with one memory, a read token for it, and its rate-limit bucket emptied."""
    subject = f"rl-{uuid.uuid4().hex[:8]}"
    app.memories.add("Something to list.", subject=subject)
    token = app.tokens.create(subject, ["read"]).token
    drain(app.base_url, token)
    return subject, token


def drain(url: str, token: str) -> httpx.Response:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as raw:
        for _ in range(50):
            answer = raw.get("/v1/memories")
            if answer.status_code == 429:
                return answer
    raise AssertionError("no 429 from the rate limit")


def test_rate_limited_request_waits_retry_after_and_succeeds(app: Sealmem) -> None:
    subject, token = limited_subject(app)
    statuses: list[int] = []
    http = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    with http, Sealmem(app.base_url, token, http_client=http, max_retries=3) as user:
        started = time.monotonic()
        page = user.memories.list()
        waited = time.monotonic() - started
    assert [m.subject for m in page.items] == [subject]
    assert statuses[0] == 429 and statuses[-1] == 200, statuses
    assert waited >= 0.9, f"answered after {waited:.2f} s: Retry-After was not honoured"


def test_gives_up_after_max_retries(app: Sealmem) -> None:
    _, token = limited_subject(app)
    # Before each attempt, someone else takes the token that came back: every attempt is refused.
    statuses: list[int] = []
    hooks: dict[str, list[Any]] = {
        "request": [lambda _: drain(app.base_url, token)],
        "response": [lambda r: statuses.append(r.status_code)],
    }
    with httpx.Client(event_hooks=hooks) as http, Sealmem(app.base_url, token, http_client=http, max_retries=2) as user:
        started = time.monotonic()
        with pytest.raises(RateLimited) as caught:
            user.memories.list()
        waited = time.monotonic() - started
    assert statuses == [429, 429, 429]  # the first attempt and 2 retries
    assert caught.value.retry_after is not None and caught.value.retry_after >= 1
    assert waited >= 1.8

    with Sealmem(app.base_url, token, max_retries=0) as impatient:
        drain(app.base_url, token)
        started = time.monotonic()
        with pytest.raises(RateLimited):
            impatient.memories.list()
        assert time.monotonic() - started < 0.9  # no retry, no wait


def test_async_client_retries_too(live: Live, app: Sealmem) -> None:
    subject, token = limited_subject(app)

    async def scenario() -> None:
        statuses: list[int] = []

        async def record(response: httpx.Response) -> None:
            statuses.append(response.status_code)

        async with (
            httpx.AsyncClient(event_hooks={"response": [record]}) as http,
            AsyncSealmem(live.url, token, http_client=http) as user,
        ):
            page = await user.memories.list()
        assert [m.subject for m in page.items] == [subject]
        assert statuses[0] == 429 and statuses[-1] == 200, statuses

    asyncio.run(scenario())


def test_connection_failure_is_retried_then_raised() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with Sealmem(url, "smk_x", max_retries=1, backoff_base=0.01) as client, pytest.raises(APIConnectionError):
        client.health.live()


# ---- the policy and the error mapping, without a server ------------------------------------------------------

ADD = Call("POST", "/v1/memories", lambda d: d, idempotent=False)
GET = Call("GET", "/v1/memories/x", lambda d: d)


def answer(status: int, code: str | None = None, retry_after: str | None = None) -> Any:
    body = b'{"error": {"code": "%s", "message": "m", "request_id": "r1"}}' % code.encode() if code else b"oops"
    return error_from(status, {"retry-after": retry_after} if retry_after else {}, body)


def test_policy_retries_what_was_not_applied() -> None:
    policy = RetryPolicy(max_retries=2, backoff_base=0.5, backoff_max=8, max_retry_wait=30)
    assert policy.delay(0, answer(429, "rate_limited", "3"), ADD) == 3  # an add refused with 429 was not applied
    assert policy.delay(0, answer(503, "unavailable"), ADD) is not None  # backoff without Retry-After
    assert 0.25 <= (policy.delay(1, answer(503, "unavailable"), GET) or 0) <= 1.0  # 0.5 * 2**1, jittered
    assert policy.delay(2, answer(429, "rate_limited", "1"), GET) is None  # max_retries reached
    assert policy.delay(0, answer(429, "rate_limited", "120"), GET) is None  # longer than max_retry_wait
    for status, code in ((500, "internal_error"), (502, "llm_error"), (404, "not_found"), (422, "invalid_input")):
        assert policy.delay(0, answer(status, code), GET) is None
    refused = connection_error(httpx.ConnectError("refused"))
    reset = connection_error(httpx.ReadTimeout("slow"))
    assert policy.delay(0, refused, ADD) is not None  # never sent: safe to resend an add
    assert policy.delay(0, reset, GET) is not None  # may have arrived: only reads are resent
    assert policy.delay(0, reset, ADD) is None


def test_error_mapping() -> None:
    forgotten = answer(409, "subject_forgotten")
    assert isinstance(forgotten, SubjectForgotten) and forgotten.request_id == "r1" and forgotten.status == 409
    busy = answer(429, "llm_busy", "2")
    assert isinstance(busy, LlmBusy) and isinstance(busy, RateLimited) and busy.retry_after == 2
    novel = answer(429, "some_new_code")
    assert type(novel) is RateLimited and novel.code == "some_new_code"  # unknown code: its status' class
    teapot = answer(418, "teapot")
    assert type(teapot) is ClientError and teapot.status == 418
    proxy = answer(502)  # a proxy's HTML page, no error body
    assert type(proxy) is ServerError and proxy.message == "oops" and not isinstance(proxy, LlmError)
    assert isinstance(answer(502, "llm_unavailable"), LlmError)
    assert isinstance(answer(503, "not_ready"), Unavailable)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and parse_retry_after("x") is None
