"""Hostile input over real HTTP: every body-taking operation gets oversized, deeply nested, invalid UTF-8 and
unknown-field bodies; searches and chats get huge ``k``; listings get negative and overflowing limits; subject
names carry SQL and Unicode tricks. Each answer is a clear 4xx in the one error body, nothing is stored (a
digest of every data table and the index vector counts are unchanged) and the server stays up.

tests/service/test_api_errors.py covers the single-memory basics (malformed JSON, a few bad fields, the body
limit on POST /v1/memories); this extends the same rules to every operation, chat included.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.harness import Harness, Tenant, bearer

MAX_BODY = 4096
JSON = {"Content-Type": "application/json"}


class Probe:
    def __init__(self, served: Harness, tenant: Tenant) -> None:
        self.served = served
        self.tenant = tenant
        self.memory_id = served.add(tenant.app, "user-1", "a memory to patch", metadata={"topic": "x"})["id"]
        self.token = served.token(tenant.app, "user-1", ["read", "write", "chat"])
        served.drain()

    def send(self, method: str, path: str, *, key: str | None = None, **kwargs: Any) -> Any:
        headers = {**bearer(key or self.tenant.admin), **kwargs.pop("headers", {})}
        return self.served.client.request(method, path, headers=headers, **kwargs)

    def refused(
        self, method: str, path: str, *, status: int | tuple[int, ...] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Send a bad request: a 4xx with the error body, no data changed, the server still up."""
        served = self.served
        served.drain()
        before, vectors = served.snapshot(), served.index_vectors()
        response = self.send(method, path, **kwargs)
        assert 400 <= response.status_code < 500, (method, path, response.status_code, response.text[:300])
        if status is not None:
            allowed = (status,) if isinstance(status, int) else status
            assert response.status_code in allowed, (method, path, response.status_code, response.text[:300])
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}, body
        assert body["error"]["message"] and body["error"]["request_id"] == response.headers["X-Request-ID"]
        served.drain()
        assert served.snapshot() == before, f"{method} {path} ({response.status_code}) changed data"
        assert served.index_vectors() == vectors
        assert served.client.get("/healthz").status_code == 200
        return dict(body["error"])


@pytest.fixture
def probe(make_served: Callable[..., Harness]) -> Iterator[Probe]:
    served = make_served(max_body_bytes=MAX_BODY)
    yield Probe(served, served.tenant("acme"))


def body_operations(probe: Probe) -> list[tuple[str, str, dict[str, Any]]]:
    """Every operation with a JSON body, with a valid body for it."""
    return [
        ("POST", "/v1/memories", {"subject": "user-1", "text": "hello"}),
        ("POST", "/v1/memories", {"memories": [{"subject": "user-1", "text": "hello"}]}),
        ("PATCH", f"/v1/memories/{probe.memory_id}", {"text": "changed"}),
        ("POST", "/v1/memories/search", {"subject": "user-1", "query": "hello"}),
        ("POST", "/v1/tokens", {"subject": "user-1", "scopes": ["read"]}),
        ("POST", "/v1/admin/keys", {"role": "reader", "name": "r"}),
        ("POST", "/v1/chat", {"subject": "user-1", "message": "hello", "session_id": "s1"}),
        ("POST", "/v1/chat/completions", {"user": "user-1", "messages": [{"role": "user", "content": "hello"}]}),
    ]


def test_oversized_bodies_are_413_on_every_operation(probe: Probe) -> None:
    for method, path, valid in body_operations(probe):
        raw = json.dumps(valid).replace('"hello"', '"' + "x" * (MAX_BODY + 10) + '"', 1)
        raw = raw.replace('"user-1"', '"' + "u" * (MAX_BODY + 10) + '"', 1) if len(raw) <= MAX_BODY else raw
        raw = raw.replace('"changed"', '"' + "c" * (MAX_BODY + 10) + '"') if len(raw) <= MAX_BODY else raw
        raw = raw.replace('"r"', '"' + "r" * (MAX_BODY + 10) + '"') if len(raw) <= MAX_BODY else raw
        assert len(raw) > MAX_BODY, raw
        probe.refused(method, path, content=raw, headers=JSON, status=413)

        def chunks(data: bytes = raw.encode()) -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
            for start in range(0, len(data), 1000):
                yield data[start : start + 1000]

        probe.refused(method, path, content=chunks(), headers=JSON, status=413)
    # A Content-Length that lies (a huge number) is refused before anything is read.
    before = probe.served.snapshot()
    head = raw_request(probe, b"POST /v1/memories HTTP/1.1", {"Content-Length": str(10**12)}, b"{}")
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert probe.served.snapshot() == before
    assert probe.served.client.get("/healthz").status_code == 200


def raw_request(probe: Probe, request_line: bytes, headers: dict[str, str], body: bytes) -> bytes:
    """Send bytes httpx would refuse to send (a lying Content-Length); returns what the server answered."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(probe.served.url)
    lines = [request_line, f"Host: {url.hostname}".encode(), b"Content-Type: application/json"]
    lines.append(f"Authorization: Bearer {probe.tenant.admin}".encode())
    lines += [f"{k}: {v}".encode() for k, v in headers.items()]
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def nested(depth: int, leaf: Any = 1) -> str:
    return '{"a":' * depth + json.dumps(leaf) + "}" * depth


@pytest.mark.parametrize("depth", [6, 100, 500, 900, 2000, 50_000])
def test_deeply_nested_metadata_is_refused(probe: Probe, make_served: Callable[..., Harness], depth: int) -> None:
    deep = nested(depth)
    bodies = [
        ("POST", "/v1/memories", '{"subject":"user-1","text":"t","metadata":' + deep + "}"),
        ("POST", "/v1/memories", '{"memories":[{"subject":"user-1","text":"t","metadata":' + deep + "}]}"),
        ("PATCH", f"/v1/memories/{probe.memory_id}", '{"metadata":' + deep + "}"),
        ("POST", "/v1/memories/search", '{"subject":"user-1","query":"t","filters":{"metadata":' + deep + "}}"),
        ("POST", "/v1/memories", '{"subject":"user-1","text":"t","metadata":{"k":' + "[" * depth + "]" * depth + "}}"),
    ]
    for method, path, raw in bodies:
        if len(raw) > MAX_BODY:
            continue  # over the body limit: the 413 above; the deep cases within it are the point here
        probe.refused(method, path, content=raw.encode(), headers=JSON, status=(400, 422))


def test_deep_nesting_within_a_large_body_limit(make_served: Callable[..., Harness]) -> None:
    """With the default 1 MiB limit, JSON deep enough to exhaust Python's recursion fits in one request."""
    served = make_served()
    probe = Probe(served, served.tenant("acme"))
    for depth in (500, 950, 5_000, 200_000):
        for raw in (
            '{"subject":"user-1","text":"t","metadata":' + nested(depth) + "}",
            '{"subject":"user-1","query":"t","filters":{"metadata":' + nested(depth) + "}}",
            '{"subject":"user-1","message":"hi","session_id":' + "[" * depth + "]" * depth + "}",
        ):
            path = "/v1/memories/search" if '"query"' in raw else "/v1/chat" if '"message"' in raw else "/v1/memories"
            status = 413 if len(raw) > served.settings.max_body_bytes else (400, 422)
            probe.refused("POST", path, content=raw.encode(), headers=JSON, status=status)


INVALID_UTF8 = [
    b"\xff\xfe",  # never valid
    b"\xc0\xaf",  # overlong "/"
    b"\xe2\x82",  # truncated sequence
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
]


def test_invalid_utf8_is_4xx_on_every_operation(probe: Probe) -> None:
    """400 (not UTF-8) or 422 (an encoded surrogate decodes to a lone surrogate, refused by validation)."""
    for method, path, valid in body_operations(probe):
        raw = json.dumps(valid).encode()
        for bad in INVALID_UTF8:
            # The bad bytes inside a string value, and as raw bytes outside any string.
            inside = raw.replace(b'"hello"', b'"hel' + bad + b'lo"').replace(b'"changed"', b'"ch' + bad + b'"')
            inside = inside.replace(b'"user-1"', b'"user-' + bad + b'"') if inside == raw else inside
            inside = inside.replace(b'"r"', b'"r' + bad + b'"') if inside == raw else inside
            assert inside != raw
            probe.refused(method, path, content=inside, headers=JSON, status=(400, 422))
            probe.refused(method, path, content=bad + raw, headers=JSON, status=400)


LONE_SURROGATES = ["\\ud800", "\\udfff", "x\\udbffy"]


def test_lone_surrogate_escapes_are_422_in_every_string_field(probe: Probe) -> None:
    """Valid JSON, invalid Unicode: they must never reach storage (they made later reads fail)."""
    for method, path, valid in body_operations(probe):
        raw = json.dumps(valid)
        for escape in LONE_SURROGATES:
            for field_value in ('"hello"', '"user-1"', '"changed"', '"r"', '"s1"'):
                if field_value not in raw:
                    continue
                bad = raw.replace(field_value, f'"{escape}"', 1)
                probe.refused(method, path, content=bad.encode(), headers=JSON, status=(400, 422))
    key = '{"subject":"user-1","text":"t","metadata":{"' + LONE_SURROGATES[0] + '":1}}'
    probe.refused("POST", "/v1/memories", content=key.encode(), headers=JSON, status=422)


def test_wrong_types_and_non_objects_are_422(probe: Probe) -> None:
    for method, path, valid in body_operations(probe):
        bad: Any
        for bad in ([1, 2], "string", 42, None, True, {}):
            probe.refused(method, path, json=bad, status=(400, 422))
        for field in valid:
            for wrong in (12345, [1], {"x": 1}, 1.5e308):
                if field in ("metadata",):
                    continue
                probe.refused(method, path, json={**valid, field: wrong}, status=422)


def test_unknown_fields_are_422_and_named(probe: Probe) -> None:
    for method, path, valid in body_operations(probe):
        if path == "/v1/chat/completions":
            continue  # OpenAI-compatible: clients send OpenAI's many optional fields; unknown ones are ignored
        error = probe.refused(method, path, json={**valid, "tenant_id": "another"}, status=422)
        assert "tenant_id" in error["message"], error
    nested_unknowns = [
        ("POST", "/v1/memories", {"memories": [{"subject": "user-1", "text": "t", "owner": "x"}]}, "owner"),
        ("POST", "/v1/memories/search", {"subject": "user-1", "query": "q", "filters": {"tenant": "x"}}, "tenant"),
    ]
    for method, path, body, name in nested_unknowns:
        assert name in probe.refused(method, path, json=body, status=422)["message"]


def test_unknown_query_parameters_are_422(probe: Probe) -> None:
    """A misspelt filter must fail rather than widen the result (``subjet`` would list every subject)."""
    for path in ("/v1/admin/memories?subjet=user-1", "/v1/memories?subject=user-1&tenant=x", "/healthz?verbose=1"):
        error = probe.refused("GET", path, status=422)
        assert "unknown query parameter" in error["message"]
    probe.refused("POST", "/v1/memories/search?tenant_id=x", json={"subject": "user-1", "query": "q"}, status=422)
    probe.refused("DELETE", f"/v1/memories/{probe.memory_id}?force=1", status=422)
    # A single-valued parameter given twice is ambiguous: refused rather than silently taking the last one.
    error = probe.refused("GET", "/v1/memories?subject=user-1&subject=user-2", status=422)
    assert "more than once" in error["message"]
    probe.refused("GET", "/v1/admin/audit?action=memory.add&action=memory.get", status=422)


def test_openai_endpoint_ignores_unknown_fields_but_not_the_credential(probe: Probe) -> None:
    """Unknown fields on /v1/chat/completions are tolerated for compatibility, yet cannot name a tenant or a
    subject other than the credential's: a subject token's ``user`` must be its own subject."""
    body = {"messages": [{"role": "user", "content": "hi"}], "user": "someone-else", "tenant_id": "x"}
    probe.refused("POST", "/v1/chat/completions", key=probe.token, json=body, status=404)


@pytest.mark.parametrize("k", [10**9, 10**30, -1, 0, 1.5, "ten", "10", True, [5], None])
def test_huge_or_invalid_k(probe: Probe, k: Any) -> None:
    searches = [
        ("/v1/memories/search", {"subject": "user-1", "query": "hello", "k": k}),
        ("/v1/chat", {"subject": "user-1", "message": "hello", "k": k}),
        ("/v1/chat/completions", {"user": "user-1", "messages": [{"role": "user", "content": "hi"}], "k": k}),
    ]
    for path, body in searches:
        if k is None or (k == 0 and k is not True and path != "/v1/memories/search"):
            continue  # null means the default; k=0 is a valid "no memories" for chat
        probe.refused("POST", path, json=body, status=422)


def test_loose_types_are_not_coerced(probe: Probe) -> None:
    """Strict request types: a number is not a string, a date not a number (0 was read as 1970-01-01, so
    ``{"expires_at": 0}`` stored an already-expired memory), a boolean not 1 or "yes"."""
    memory = {"subject": "user-1", "text": "t"}
    for field, value in (("expires_at", 0), ("occurred_at", 1700000000), ("importance", "0.5"), ("kind", 5)):
        assert field in probe.refused("POST", "/v1/memories", json={**memory, field: value}, status=422)["message"]
    probe.refused("POST", "/v1/memories", json={"memories": [{**memory, "expires_at": 0}]}, status=422)
    probe.refused("PATCH", f"/v1/memories/{probe.memory_id}", json={"expires_at": 0}, status=422)
    search = {"subject": "user-1", "query": "q"}
    probe.refused("POST", "/v1/memories/search", json={**search, "filters": {"created_after": 0}}, status=422)
    probe.refused("POST", "/v1/memories/search", json={**search, "filters": {"include_superseded": "yes"}}, status=422)
    probe.refused("POST", "/v1/tokens", json={"subject": "user-1", "ttl_seconds": "60"}, status=422)
    probe.refused("POST", "/v1/chat", json={"subject": "user-1", "message": "hi", "stream": 1}, status=422)
    ok = probe.send("POST", "/v1/memories", json={**memory, "expires_at": "2099-01-01T00:00:00Z", "importance": 1})
    assert ok.status_code == 201, ok.text  # ISO strings and integral floats stay fine


LISTINGS = [
    "/v1/memories?subject=user-1",
    "/v1/admin/memories",
    "/v1/admin/subjects",
    "/v1/admin/audit",
    "/v1/sessions?subject=user-1",
    "/v1/sessions/s1?subject=user-1",
]


@pytest.mark.parametrize("value", ["-1", "0", "-9223372036854775809", str(10**30), "abc", "1e3", ""])
def test_negative_and_overflowing_limits(probe: Probe, value: str) -> None:
    for path in LISTINGS:
        sep = "&" if "?" in path else "?"
        probe.refused("GET", f"{path}{sep}limit={value}", status=422)
    if value != "0":
        probe.refused("GET", f"/v1/admin/subjects?offset={value}", status=422)
        probe.refused("GET", f"/v1/admin/audit?cursor={value}", status=422)
        probe.refused("GET", f"/v1/memories?subject=user-1&cursor={value}", status=422)


TRICKY_VALID = [
    "' OR '1'='1",
    '"; DROP TABLE memories; --',
    "%",
    "_",
    "*",
    "user-1%",
    "user-_",
    "\\",
    "../../etc/passwd",
    "a/../user-1",
    "user-1/export",
    "user\u200b-1",  # zero-width space
    "user-1\u202e",  # right-to-left override
    "\uff55ser-1",  # full-width u
    "e\u0301",  # e + combining acute (NFD)
    "\u00e9",  # é (NFC)
    "\U0001f600",
    "x" * 256,
]
TRICKY_INVALID = [
    "",
    " user-1",
    "user-1 ",
    "user\x00-1",
    "user\n1",
    "user\x7f",
    "x" * 257,
]


def test_tricky_subject_names_are_isolated_or_refused(probe: Probe) -> None:
    served, tenant = probe.served, probe.tenant
    for subject in TRICKY_VALID:
        served.add(tenant.app, subject, f"memory of [{subject}]")
    served.drain()
    everyone = served.snapshot()
    for subject in TRICKY_VALID:
        listing = probe.send("GET", "/v1/memories", params={"subject": subject})
        assert listing.status_code == 200, (subject, listing.text)
        assert [m["subject"] for m in listing.json()["items"]] == [subject], subject
        found = probe.send("POST", "/v1/memories/search", json={"subject": subject, "query": "memory of", "k": 100})
        assert {r["subject"] for r in found.json()["results"]} == {subject}, subject
        exported = probe.send("GET", f"/v1/admin/subjects/{_path(subject)}/export")
        assert exported.status_code == 200, (subject, exported.text)
        assert {m["subject"] for m in exported.json()["memories"]} == {subject}, subject
        # A token of a look-alike subject reaches nothing of this one.
        if subject != "user-1":
            probe.refused("GET", "/v1/memories", key=probe.token, params={"subject": subject}, status=404)
    # The original user-1 still has exactly its own memory.
    own = probe.send("GET", "/v1/memories", key=probe.token).json()["items"]
    assert [m["subject"] for m in own] == ["user-1"]
    assert served.snapshot() == everyone
    for subject in TRICKY_INVALID:
        probe.refused("POST", "/v1/memories", json={"subject": subject, "text": "t"}, status=422)
        probe.refused("POST", "/v1/tokens", json={"subject": subject}, status=422)
        if subject and "/" not in subject:
            probe.refused("GET", "/v1/memories", params={"subject": subject}, status=(404, 422))
    # Forgetting a wildcard-looking subject removes only that subject.
    gone = probe.send("DELETE", f"/v1/admin/subjects/{_path('%')}")
    assert gone.status_code == 200 and gone.json()["memories_deleted"] == 1
    subjects = {s["subject"] for s in probe.send("GET", "/v1/admin/subjects", params={"limit": 200}).json()["subjects"]}
    assert subjects == ({*TRICKY_VALID, "user-1"} - {"%"})


def _path(subject: str) -> str:
    from urllib.parse import quote

    return quote(subject, safe="")


def test_the_server_still_works_after_all_of_it(probe: Probe) -> None:
    """A hostile burst of every kind above, then ordinary use on the same server."""
    for raw in (b"\xff", b"{" * 10_000, b'{"subject":', b"null", b"[]" * 100):
        probe.refused("POST", "/v1/memories", content=raw, headers=JSON, status=(400, 413, 422))
    probe.refused("POST", "/v1/memories", content=b"subject=a&text=b", headers={"Content-Type": "text/plain"})
    added = probe.served.add(probe.tenant.app, "user-1", "still working after the abuse")
    found = probe.send("POST", "/v1/memories/search", json={"subject": "user-1", "query": "still working"})
    assert found.json()["results"][0]["id"] == added["id"]
