"""POST /v1/memories/search: relevance in each result, min_score, and the assistant's replies left out unless
the filters ask for them (real app, real all-MiniLM-L6-v2 on ONNX)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from memory_store.onnx_embedder import OnnxEmbedder
from tests.harness import Harness, bearer

SORRY = "I'm sorry for your loss, but it sounds like Biscuit had a wonderful life with you."


@pytest.fixture(scope="module")
def onnx(tmp_path_factory: pytest.TempPathFactory) -> OnnxEmbedder:
    return OnnxEmbedder(cache_dir=tmp_path_factory.mktemp("models"))


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
    assert off_topic and all(0 <= r["relevance"] < 0.005 for r in off_topic)
    assert _search(api, keys.app, query="quantum chromodynamics lecture schedule", k=3, min_score=0.01) == []
    moved = _search(api, keys.app, query="Which city did I move to?", k=3, min_score=0.01)
    assert moved[0]["id"] == porto["id"] and moved[0]["relevance"] >= 0.01

    query = "sorry for your loss, Biscuit had a wonderful life"
    assert reply["id"] not in [r["id"] for r in _search(api, keys.app, query=query)]
    asked = _search(api, keys.app, query=query, filters={"include_assistant": True})
    assert asked[0]["id"] == reply["id"]

    for bad in (1.5, -2, "0.1"):
        response = api.client.post(
            "/v1/memories/search", json={"subject": "ana", "query": "dog", "min_score": bad}, headers=bearer(keys.app)
        )
        assert response.status_code == 422, response.text
