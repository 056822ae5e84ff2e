"""POST /v1/memories/search: relevance in each result, min_score, and the assistant's replies left out unless
the filters ask for them (real app, real all-MiniLM-L6-v2 on ONNX); the console's search playground, the same
search, shows the same hits and relevance."""

from __future__ import annotations

import re
from collections.abc import Callable

from memory_store.onnx_embedder import OnnxEmbedder
from tests.harness import Harness, bearer

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
SEARCH_ROW = re.compile(
    r'&amp;id=([0-9a-f-]+)">[^<]*</a></td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>'
)
SORRY = "I'm sorry for your loss, but it sounds like Biscuit had a wonderful life with you."


def _search(api: Harness, key: str, **body: object) -> list[dict]:
    response = api.client.post("/v1/memories/search", json={"subject": "ana", **body}, headers=bearer(key))
    assert response.status_code == 200, response.text
    return list(response.json()["results"])


def test_search_returns_relevance_honours_min_score_and_leaves_assistant_replies_out(
    make_api: Callable[..., Harness], onnx: OnnxEmbedder
) -> None:
    api = make_api(embedder=onnx)
    keys = api.tenant()
    porto = api.add(keys.app, "ana", "I moved from Lisbon to Porto in March.")
    api.add(keys.app, "ana", "My dog is a beagle named Biscuit.")
    reply = api.add(keys.app, "ana", SORRY, kind="turn", session_id="s1", metadata={"role": "assistant"})

    off_topic = _search(api, keys.app, query="quantum chromodynamics lecture schedule", k=3)
    assert off_topic and all(0 <= r["relevance"] < 0.01 for r in off_topic)
    assert _search(api, keys.app, query="quantum chromodynamics lecture schedule", k=3, min_score=0.02) == []
    moved = _search(api, keys.app, query="Which city did I move to?", k=3, min_score=0.02)
    assert moved[0]["id"] == porto["id"] and moved[0]["relevance"] >= 0.02

    query = "sorry for your loss, Biscuit had a wonderful life"
    assert reply["id"] not in [r["id"] for r in _search(api, keys.app, query=query)]
    asked = _search(api, keys.app, query=query, filters={"include_assistant": True})
    assert asked[0]["id"] == reply["id"]

    for bad in (1.5, -2, "0.1"):
        response = api.client.post(
            "/v1/memories/search", json={"subject": "ana", "query": "dog", "min_score": bad}, headers=bearer(keys.app)
        )
        assert response.status_code == 422, response.text

    # The console's playground is the same search: the same relevance, min_score and include_assistant.
    client = api.client
    login = client.get("/admin/login")
    token = CSRF.search(login.text)
    assert token is not None
    signed = client.post("/admin/login", data={"api_key": keys.admin, "csrf_token": token.group(1)})
    assert signed.status_code in (200, 303), signed.text
    form_page = client.get("/admin/search")
    csrf = CSRF.search(form_page.text)
    assert csrf is not None
    form = {"subject": "ana", "csrf_token": csrf.group(1)}

    def console_ids(**fields: str) -> list[tuple[str, str]]:
        page = client.post("/admin/search", data={**form, **fields})
        assert page.status_code == 200, page.text
        return [(row[0], row[4]) for row in SEARCH_ROW.findall(page.text)]

    rest = _search(api, keys.admin, query="Which city did I move to?", k=3, min_score=0.02)
    shown = console_ids(query="Which city did I move to?", k="3", min_score="0.02")
    assert shown == [(r["id"], f"{r['relevance']:.4f}") for r in rest]
    assert console_ids(query="quantum chromodynamics lecture schedule", k="3", min_score="0.02") == []
    assert reply["id"] not in [i for i, _ in console_ids(query=query)]
    assert console_ids(query=query, include_assistant="true")[0][0] == reply["id"]


def test_min_score_that_is_not_a_finite_number_is_a_422(make_api: Callable[..., Harness]) -> None:
    """JSON NaN and Infinity (Python's parser reads them) fail the bounds: the standard error body, no search."""
    api = make_api()
    keys = api.tenant()
    api.add(keys.app, "ana", "My dog is a beagle named Biscuit.")
    headers = {**bearer(keys.app), "Content-Type": "application/json"}
    for raw in ("NaN", "Infinity", "-Infinity", "1e309", "null", "true", "1.0000001", "-1.0000001"):
        body = '{"subject": "ana", "query": "dog", "min_score": ' + raw + "}"
        response = api.client.post("/v1/memories/search", content=body, headers=headers)
        assert response.status_code == 422, (raw, response.text)
        error = response.json()["error"]
        assert set(error) == {"code", "message", "request_id"} and error["code"] == "invalid_input"
        assert error["message"].startswith("body.min_score: "), error
    for edge in ("-1", "0", "1"):
        body = '{"subject": "ana", "query": "dog", "min_score": ' + edge + "}"
        assert api.client.post("/v1/memories/search", content=body, headers=headers).status_code == 200
