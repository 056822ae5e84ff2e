"""API fuzzing with schemathesis against the app's own OpenAPI document.

Every operation of the app (chat mounted on the fake LLM) is fuzzed with each kind of credential: admin, app
and reader keys, a subject token with every scope, and no credential at all, with schema-valid (positive)
and schema-violating (negative) requests over real HTTP. For every response:

- no 5xx;
- it conforms to the OpenAPI document: status code declared, content type, headers, body schema (error bodies
  included: every 4xx an operation can give is declared with the one error schema);
- a request that failed (4xx) changed no data: a digest of every data table (all but the audit trail) and the
  index vector counts are the same before and after it;
- a schema-violating request is refused (schemathesis' negative-data check), every response has an
  X-Request-ID and every error the one error body naming it;
- what the credential may do at all: nothing but 401 without one, nothing under /v1/admin/ without an admin
  key, no writes with a reader key.

The one 5xx allowed is the documented 501 for KV injection on a server without the KV injector.
``test_enough_requests_were_generated`` checks that every operation was reached and >= 1,000 requests were sent
by the default (non-slow) run; the slow variant sends five times as many.

The seed is fixed (``derandomize``) so CI is reproducible; ``SEALMEM_FUZZ_RANDOM=1`` explores new inputs and
``SEALMEM_FUZZ_EXAMPLES`` changes the number of examples per operation, role and mode.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.harness import Harness, Tenant, bearer, fresh_data_dir, make_settings
from tests.proofs.conftest import serve_app

EXAMPLES = int(os.environ.get("SEALMEM_FUZZ_EXAMPLES", "6"))
RANDOM = os.environ.get("SEALMEM_FUZZ_RANDOM") == "1"
ROLES = ("admin", "app", "reader", "subject", "anonymous")
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,  # a schema-violating request must be refused (4xx), never accepted
]
# The one 5xx a request may deliberately get: KV (attention-level) injection asked of a server without the KV
# injector answers 501 "not_implemented" (issue 4 allows 400 or 501; tests/chat pins 501).
DELIBERATE_5XX = {("POST /v1/chat", 501, "not_implemented"), ("POST /v1/chat/completions", 501, "not_implemented")}
WRITES = {"POST", "PATCH", "DELETE", "PUT"}

requests_sent: Counter[str] = Counter()


@dataclass
class World:
    served: Harness
    schema: Any
    tenant: Tenant
    other: Tenant
    subject_token: str
    memory_ids: list[str] = field(default_factory=list)

    def credential(self, role: str) -> str | None:
        if role == "anonymous":
            return None
        if role == "subject":
            return self.subject_token
        return str(getattr(self.tenant, role))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, migrated_db: Path) -> Iterator[World]:
    """One app for every role (state accumulates across roles, as in life), served over real HTTP."""
    settings = make_settings(fresh_data_dir(tmp_path_factory.mktemp("fuzz") / "data", migrated_db))
    with serve_app(settings) as served:
        tenant, other = served.tenant("acme"), served.tenant("globex")
        token = served.token(tenant.app, "user-1", ["read", "write", "chat"], ttl=3600)
        ids = [served.add(tenant.app, "user-1", f"user one fact {i}")["id"] for i in range(3)]
        ids += [served.add(other.app, "user-1", "other tenant fact")["id"]]
        schema = schemathesis.openapi.from_dict(served.app.openapi())
        yield World(served, schema, tenant, other, token, ids)


def operations(world: World) -> list[Any]:
    return [result.ok() for result in world.schema.get_all_operations()]


@dataclass
class Finding:
    role: str
    operation: str
    mode: str
    error: str


def _error_code(response: Any) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except Exception:
        return None


def check_error_contract(response: Any) -> None:
    """Every response has an X-Request-ID; every error the one body, naming the same request id."""
    values = {name.lower(): value for name, value in response.headers.items()}.get("x-request-id") or [None]
    request_id = values[0] if isinstance(values, list) else values
    assert request_id, "no X-Request-ID header"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message", "request_id"}, body
        assert body["error"]["request_id"] == request_id


def check_role(operation: Any, role: str, status: int) -> None:
    """What the credential may do at all, whatever the input: a refusal is 401/403, never a success."""
    path, method = operation.path, operation.method.upper()
    if not path.startswith("/v1/"):
        return
    if role == "anonymous":
        # 422: an unknown query parameter (checked first); 404: a mutated path that matches no route at all
        assert status in (400, 401, 404, 413, 422), f"{status} without a credential"
    elif path.startswith("/v1/admin/") and role != "admin":
        assert status >= 400, f"{role} reached an admin operation ({status})"
    elif role == "reader" and method in WRITES and path != "/v1/memories/search":
        assert status >= 400, f"a reader key wrote ({status})"


def vanished_in_serialization(case: Any, response: Any) -> bool:
    """A negative query value that cannot be sent at all (null, [], {}) leaves the parameter out of the URL: the
    request on the wire is then valid, and its acceptance is no finding."""
    sent = parse_qs(urlsplit(str(response.request.url)).query, keep_blank_values=True)
    return any(name not in sent and value in (None, [], {}) for name, value in (case.query or {}).items())


def has_inputs(operation: Any) -> bool:
    """Whether a request can violate the schema at all (negative mode needs a parameter or a body)."""
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


def fuzz_operation(world: World, operation: Any, role: str, mode: GenerationMode, examples: int) -> None:
    served = world.served
    credential = world.credential(role)
    headers = bearer(credential) if credential else {}
    # The credential is given to the strategy, so negative cases do not "violate" it by leaving it out only for
    # this test to add it back (which made valid requests count as accepted negative data).
    strategy = (
        operation.as_strategy(generation_mode=mode, headers=headers)
        if headers
        else operation.as_strategy(generation_mode=mode)
    )

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        served.drain()
        before, vectors_before = served.snapshot(), served.index_vectors()
        response = case.call(base_url=served.url, headers=headers, timeout=60)
        requests_sent[f"{role} {operation.label}"] += 1
        status = response.status_code
        if status >= 500:
            code = _error_code(response)
            assert (operation.label, status, code) in DELIBERATE_5XX, f"{status}: {response.text[:500]}"
        checks = CHECKS if not vanished_in_serialization(case, response) else CHECKS[:-1]
        case.validate_response(response, checks=checks, headers=headers)
        check_error_contract(response)
        check_role(operation, role, status)
        if role == "anonymous" and status == 404:
            assert response.json()["error"]["message"].lower() == "not found", "a 404 past authentication"
        if response.status_code >= 400:
            served.drain()
            assert served.snapshot() == before, f"a failed request ({response.status_code}) changed data"
            assert served.index_vectors() == vectors_before, "a failed request changed the index"

    run()


def fuzz_all(world: World, role: str, examples: int) -> None:
    findings: list[Finding] = []
    for operation in operations(world):
        for mode in MODES:
            if mode is GenerationMode.NEGATIVE and not has_inputs(operation):
                continue
            try:
                fuzz_operation(world, operation, role, mode, examples)
            except Exception as exc:  # collect all findings of this role, then fail with all of them
                findings.append(Finding(role, operation.label, mode.value, f"{type(exc).__name__}: {exc}"[:3000]))
    assert not findings, "\n\n".join(f"[{f.role}] {f.operation} ({f.mode}):\n{f.error}" for f in findings)


@pytest.mark.parametrize("role", ROLES)
def test_fuzz_every_operation(world: World, role: str) -> None:
    fuzz_all(world, role, EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("role", ROLES)
def test_fuzz_every_operation_thoroughly(world: World, role: str) -> None:
    fuzz_all(world, role, EXAMPLES * 5)


def test_enough_requests_were_generated(world: World) -> None:
    """Runs last in this module: the fuzzing above sent at least 1,000 requests over every operation."""
    labels = {operation.label for operation in operations(world)}
    covered = {key.split(" ", 1)[1] for key in requests_sent}
    if len(requests_sent) == 0:
        pytest.skip("run together with test_fuzz_every_operation")
    assert labels <= covered, sorted(labels - covered)
    total = sum(requests_sent.values())
    print(f"{total} generated requests over {len(labels)} operations x {len(ROLES)} credentials")
    assert total >= 1000 or EXAMPLES < 6, total
