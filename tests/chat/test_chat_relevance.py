"""The chat loop injects nothing for an unrelated message (relevance below chat_min_score), and the memories
that answer a related one (real app, real all-MiniLM-L6-v2 on ONNX, fake LLM)."""

from __future__ import annotations

from collections.abc import Callable

from memory_store.onnx_embedder import OnnxEmbedder
from tests.harness import Harness


def test_an_unrelated_message_injects_no_memories(make_chat: Callable[..., Harness], onnx: OnnxEmbedder) -> None:
    harness = make_chat(embedder=onnx, chat_write_back=False)
    keys = harness.tenant()
    porto = harness.add(keys.app, "ana", "I moved from Lisbon to Porto in March.")
    harness.add(keys.app, "ana", "My dog is a beagle named Biscuit.")
    out = harness.chat(keys.app, subject="ana", session_id="s1", message="quantum chromodynamics lecture schedule")
    assert out["memories_used"] == []
    out = harness.chat(keys.app, subject="ana", session_id="s1", message="Which city did I move to?")
    assert [m["id"] for m in out["memories_used"]][:1] == [porto["id"]]
    assert out["memories_used"][0]["relevance"] >= 0.01
