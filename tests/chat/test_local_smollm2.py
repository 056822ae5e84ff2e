"""The chat loop on the real SmolLM2-135M-Instruct (slow: loads the model; converted weights are cached)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from memory_store.embedder import SentenceTransformerEmbedder
from service.llm.backend import ChatMessage, GenerationParams, GenerationStats, TokenizerCounter, render_ids
from service.llm.loader import BUNDLED_SMOLLM2, LoadedModel, load_model
from service.llm.local import LocalBackend
from service.llm.prompt import MemoryItem, PromptBuilder
from tests.chat.conftest import LLM_CACHE
from tests.harness import Harness, bearer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    return load_model(BUNDLED_SMOLLM2, cache_dir=LLM_CACHE, device="cpu", torch_threads=1)


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


def test_biscuit_is_remembered_across_sessions(
    make_chat: Callable[..., Harness], smollm2: LoadedModel, minilm: SentenceTransformerEmbedder
) -> None:
    harness = make_chat(llm=LocalBackend(BUNDLED_SMOLLM2, loaded=smollm2), embedder=minilm)
    keys = harness.tenant()
    first = harness.chat(
        keys.app, subject="ana", session_id="A", message="My dog is named Biscuit and I live in Lisbon."
    )
    assert first["model"] == "SmolLM2-135M-Instruct" and first["reply"]
    harness.drain()
    out = harness.chat(keys.app, subject="ana", session_id="B", message="What is my dog's name?")
    used = out["memories_used"]
    assert used, out
    assert used[0]["text"] == "My dog is named Biscuit.", used
    biscuit = harness.store.get(tenant_id=keys.id, memory_id=used[0]["id"])
    assert (biscuit.source, biscuit.session_id, biscuit.source_ref) == ("chat", "A", first["message_id"])
    assert "Biscuit" in out["reply"], out["reply"]
    assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["completion_tokens"] > 0
    assert out["timings"]["ttft_ms"] > 0

    # The same question, streamed over SSE, gives the same greedy reply.
    with harness.client.stream(
        "POST", "/v1/chat", headers=bearer(keys.app),
        json={"subject": "ana", "session_id": "C", "message": "What is my dog's name?", "stream": True},
    ) as response:
        body = response.read().decode()
    assert response.status_code == 200
    deltas = [line for line in body.splitlines() if line.startswith("data: {\"text\"")]
    assert len(deltas) > 1 and "Biscuit" in body and "event: done" in body


def test_prompt_budget_is_exact_in_real_tokens(smollm2: LoadedModel) -> None:
    counter = TokenizerCounter(smollm2.tokenizer)
    memories = [
        MemoryItem(f"m{i}", f"Memory {i}: I visited city number {i} in {1990 + i}.", 1 - i / 100) for i in range(60)
    ]
    history = [ChatMessage("user", "Tell me about my travels."), ChatMessage("assistant", "You travelled a lot.")]
    for budget in (120, 300, 700):
        built = PromptBuilder(counter).build(
            message="Which cities did I visit?", memories=memories, history=history, budget_tokens=budget,
            working_memory_tokens=40,
        )
        ids = render_ids(smollm2.tokenizer, built.messages())
        assert len(ids) == built.prompt_tokens <= budget
        kept = [m.memory_id for m in built.memory_lines]
        assert kept == [f"m{i}" for i in range(len(kept))]
        assert budget - len(ids) < 40  # the budget is used, not wasted
    assert len(built.history) == 2


def test_local_backend_streams_in_order_and_stops_when_the_reader_leaves(smollm2: LoadedModel) -> None:
    backend = LocalBackend(BUNDLED_SMOLLM2, loaded=smollm2, concurrency=1, queue_max=4)
    messages = [ChatMessage("user", "Count from one to fifty, in words.")]

    async def scenario() -> dict[str, Any]:
        order: list[str] = []

        async def run(name: str, tokens: int) -> GenerationStats:
            stats = GenerationStats()
            async for _ in backend.stream(messages, GenerationParams(max_new_tokens=tokens), stats):
                pass
            order.append(name)
            return stats

        # A reader that leaves after the first delta frees the slot for the next request.
        stats = GenerationStats()
        stream = backend.stream(messages, GenerationParams(max_new_tokens=200), stats)
        first = await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]
        results = await asyncio.gather(run("a", 8), run("b", 4), run("c", 4))
        return {"first": first, "abandoned": stats, "order": order, "results": results}

    out = asyncio.run(scenario())
    assert out["first"]
    assert out["abandoned"].completion_tokens < 200
    assert out["order"] == ["a", "b", "c"]  # one at a time, first come first served
    assert out["results"][0].completion_tokens <= 8 and out["results"][0].decode_tokens_per_s
    assert backend.gate.active == 0 and threading.active_count() < 50
