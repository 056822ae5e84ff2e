"""Paging inputs over HTTP (issue #11, item 7): a cursor or offset the service did not issue is refused with the
standard error body (422 invalid_input, like every other store ValidationError), never a 500."""

from __future__ import annotations

import base64

import pytest

from tests.harness import Harness, bearer


def _cursor(raw: str) -> str:
    """A cursor in the service's own shape (unpadded URL-safe base64 of ``v1:<id>``) around ``raw``."""
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


BAD_CURSORS = {
    "past-int64": "djE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5",  # v1:999999999999999999999999 (the report)
    "int64-plus-one": _cursor(f"v1:{2**63}"),
    "negative": _cursor("v1:-5"),
    "zero": _cursor("v1:0"),
    "leading-zero": _cursor("v1:05"),
    "plus-sign": _cursor("v1:+5"),
    "spaces": _cursor("v1: 5 "),
    "underscore": _cursor("v1:1_000"),
    "non-ascii-digits": _cursor("v1:\u0663"),
    "other-version": _cursor("v2:5"),
    "no-version": _cursor("5"),
    "not-base64": "!!!!",
    "padding-inside": "djE6MQ==djE6MQ",
    "non-ascii": "d\u00e9j\u00e0",
    "binary": base64.urlsafe_b64encode(b"\xff\xfe\x00v1:5").decode(),
    "garbage": "garbage",
    "one-char": "a",
}


@pytest.fixture
def paged(make_api) -> tuple[Harness, str]:
    """An app (server exceptions answered, not raised, so a 500 shows as one) with three memories of u1."""
    api = make_api(raise_server_exceptions=False)
    tenant = api.tenant("acme")
    for i in range(3):
        api.add(tenant.app, "u1", f"note {i}")
    return api, tenant.admin


def _assert_invalid(response, message: str) -> None:
    assert response.status_code == 422, response.text
    assert response.json() == {
        "error": {"code": "invalid_input", "message": message, "request_id": response.headers["X-Request-ID"]}
    }


@pytest.mark.parametrize("path", ["/v1/memories", "/v1/admin/memories"])
@pytest.mark.parametrize("cursor", list(BAD_CURSORS.values()), ids=list(BAD_CURSORS))
def test_a_malformed_or_out_of_range_cursor_is_a_422_with_the_standard_body(paged, path, cursor):
    api, admin = paged
    response = api.client.get(path, params={"subject": "u1", "cursor": cursor}, headers=bearer(admin))
    _assert_invalid(response, "cursor is malformed")


def test_the_cursor_bounds_themselves_are_accepted(paged):
    api, admin = paged
    everything = api.client.get("/v1/memories", params={"subject": "u1"}, headers=bearer(admin)).json()["items"]
    top = api.client.get(
        "/v1/memories", params={"subject": "u1", "cursor": _cursor(f"v1:{2**63 - 1}")}, headers=bearer(admin)
    )
    assert top.status_code == 200 and top.json()["items"] == everything
    # Padded or not, the service's own cursors keep working.
    first = api.client.get("/v1/memories", params={"subject": "u1", "limit": 1}, headers=bearer(admin)).json()
    cursor = first["next_cursor"]
    for sent in (cursor, cursor + "=" * (-len(cursor) % 4)):
        rest = api.client.get("/v1/memories", params={"subject": "u1", "cursor": sent}, headers=bearer(admin))
        assert rest.status_code == 200 and rest.json()["items"] == everything[1:]
    bottom = api.client.get("/v1/memories", params={"subject": "u1", "cursor": _cursor("v1:1")}, headers=bearer(admin))
    assert bottom.status_code == 200 and bottom.json()["items"] == []


@pytest.mark.parametrize("offset", ["-1", "10000001", str(2**63), "99999999999999999999999999", "1e3", "x"])
def test_a_subjects_offset_out_of_range_is_a_422(paged, offset):
    api, admin = paged
    response = api.client.get("/v1/admin/subjects", params={"offset": offset}, headers=bearer(admin))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["request_id"] == response.headers["X-Request-ID"]


AUDIT_BAD_CURSORS = {
    "negative": "-1",
    "decimal": "1.5",
    "19-digits": "9" * 19,
    "int64-plus-one": str(2**63),
    "past-int64": "99999999999999999999999999",
    "letter": "x1",
    "superscript-digit": "\u00b2",  # str.isdigit() alone takes it, int() does not: it was a 500
    "arabic-indic-digit": "\u0663",
    "mixed": "1\u00b2",
}


@pytest.mark.parametrize("cursor", list(AUDIT_BAD_CURSORS.values()), ids=list(AUDIT_BAD_CURSORS))
def test_a_malformed_audit_cursor_is_a_422(paged, cursor):
    api, admin = paged
    response = api.client.get("/v1/admin/audit", params={"cursor": cursor}, headers=bearer(admin))
    _assert_invalid(response, "cursor: malformed")
