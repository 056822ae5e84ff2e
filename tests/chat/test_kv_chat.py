"""``POST /v1/chat`` with ``injection: "kv"`` through the real app: a tiny random model (fast) and the real
SmolLM2-135M-Instruct (slow)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from service.auditing import Caller
from service.chat.kv_injector import KVInjector
from service.chat.service import ChatRequest
from service.llm.backend import GenerationParams
from service.llm.kv import KVRequest, KVResult, KVSettings, KVStream, KVTimings
from service.llm.loader import BUNDLED_SMOLLM2, LoadedModel, load_model
from service.llm.local import LocalBackend
from tests.chat.conftest import LLM_CACHE
from tests.harness import Harness, bearer
from tests.kv.conftest import ByteTokenizer, tiny_model


class CountingByteTokenizer(ByteTokenizer):
    """The KV tests' byte tokenizer plus ``encode``, which the chat loop's token counter uses."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self(text).input_ids)


def tiny_backend() -> LocalBackend:
    loaded = tiny_model()
    loaded.tokenizer = CountingByteTokenizer()
    loaded.name = "tiny-llama"
    return LocalBackend("tiny", loaded=loaded)


def test_kv_chat_on_a_tiny_model_names_the_layout_and_reuses_the_cache(
    make_chat: Callable[..., Harness],
) -> None:
    harness = make_chat(llm=tiny_backend())
    injector = harness.runtime.service.injectors["kv"]
    assert isinstance(injector, KVInjector)
    seen: list[KVRequest] = []
    kv_request = injector.kv_request

    def recording(request: Any) -> KVRequest:
        seen.append(kv_request(request))
        return seen[-1]

    injector.kv_request = recording  # type: ignore[method-assign]
    keys = harness.tenant()
    dog = harness.add(keys.app, "ana", "My dog is named Biscuit.")
    body: dict[str, Any] = {"subject": "ana", "message": "What is my dog's name?", "injection": "kv",
                            "max_tokens": 6, "write_back": False}
    out = harness.chat(keys.app, **body)
    assert out["injection"] == "kv" and out["memories_used"][0]["id"] == dog["id"]
    info = out["info"]
    assert info["layout"] == "hybrid" and info["injected_as"] == "kv" and info["warnings"] == []
    assert info["kv"]["encoded_memories"] == 0  # hybrid: the top memory stays text
    assert out["usage"]["prompt_tokens"] > 0 and 0 < out["usage"]["completion_tokens"] <= 6

    # The pieces: exactly the text prompt injection would feed, memory line versioned by updated_at.
    request = seen[-1]
    (memory,) = request.memories
    assert memory.id == dog["id"] and memory.text.startswith("- My dog is named Biscuit. (")
    assert memory.version == harness.store.get(tenant_id=keys.id, memory_id=dog["id"]).updated_at.isoformat()
    prompt_text = harness.backend.loaded.tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        [{"role": "system", "content": "Facts about the user:\n" + memory.text + "Answer in one short sentence."},
         {"role": "user", "content": "What is my dog's name?"}], tokenize=False, add_generation_prompt=True,
    )
    assert request.prefix + memory.text + request.suffix == prompt_text

    # Contiguous layout: the memory becomes keys/values, encoded once, then served from the RAM cache.
    injector.layout = "contiguous"
    first = harness.chat(keys.app, **body)
    again = harness.chat(keys.app, **body)
    assert first["info"]["layout"] == "contiguous"
    assert first["info"]["kv"]["encoded_memories"] == 1 and again["info"]["kv"]["encoded_memories"] == 0
    assert first["reply"] == again["reply"]

    # An update changes updated_at and the text: the cache misses instead of serving stale keys/values.
    response = harness.client.patch(
        f"/v1/memories/{dog['id']}", json={"text": "My dog is named Pretzel."}, headers=bearer(keys.app)
    )
    assert response.status_code == 200, response.text
    updated = harness.chat(keys.app, **body)
    assert updated["info"]["kv"]["encoded_memories"] == 1
    assert seen[-1].memories[0].text.startswith("- My dog is named Pretzel.")

    # Streaming gives the same greedy reply, and the done event names the layout.
    with harness.client.stream(
        "POST", "/v1/chat", json={**body, "stream": True}, headers=bearer(keys.app)
    ) as streamed:
        text = streamed.read().decode()
    assert streamed.status_code == 200 and "event: done" in text and '"layout":"contiguous"' in text

    # Forgetting the subject also drops its keys/values from the engine's RAM cache at once.
    engine = harness.runtime.kv_engine
    assert engine is not None and len(engine.cache) > 0
    forgot = harness.client.delete("/v1/admin/subjects/ana", headers=bearer(keys.admin))
    assert forgot.status_code == 200, forgot.text
    assert len(engine.cache) == 0


def test_kv_without_memories_is_the_prompt_path(make_chat: Callable[..., Harness]) -> None:
    harness = make_chat(llm=tiny_backend())
    keys = harness.tenant()
    body: dict[str, Any] = {"subject": "bo", "message": "Hello there", "max_tokens": 4, "write_back": False}
    kv = harness.chat(keys.app, injection="kv", **body)
    plain = harness.chat(keys.app, injection="prompt", **body)
    assert kv["reply"] == plain["reply"] and kv["info"]["layout"] is None
    assert kv["info"]["warnings"] == ["no memories to inject"]


class ScriptedEngine:
    """Stands in for the KV engine: yields fixed deltas, honouring ``should_stop`` like the real one."""

    settings = KVSettings()
    tokenizer = CountingByteTokenizer()

    def __init__(self, deltas: list[str]) -> None:
        self.deltas = deltas
        self.yielded = 0
        self.closed = False

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode())

    def stream(self, request: KVRequest, *, should_stop: Callable[[str], bool], **kwargs: Any) -> KVStream:
        holder: list[KVResult] = []

        def gen() -> Iterator[str]:
            text = ""
            try:
                for delta in self.deltas:
                    text += delta
                    self.yielded += 1
                    yield delta
                    if should_stop(text):
                        return
            finally:
                self.closed = True
            holder.append(KVResult(
                text=text, token_ids=list(range(len(self.deltas))), injection="kv", layout=kwargs["layout"],
                finish_reason="length", warnings=[], timings=KVTimings(), prefill_tokens=3, cache_tokens=7,
                memory_tokens=4, encoded_memories=1,
            ))

        return KVStream(gen(), holder)


def test_stop_strings_and_usage_of_the_kv_reply(make_chat: Callable[..., Harness]) -> None:
    harness = make_chat(llm=tiny_backend())
    injector = harness.runtime.service.injectors["kv"]
    assert isinstance(injector, KVInjector)
    keys = harness.tenant()
    harness.add(keys.app, "ana", "My dog is named Biscuit.")
    service = harness.runtime.service

    def chat(stop: tuple[str, ...]) -> Any:
        req = ChatRequest(
            tenant_id=keys.id, subject="ana", session_id="s", message="What is my dog's name?",
            caller=Caller(credential_id="c", role="app", actor="test"), injection="kv", write_back=False,
            params=GenerationParams(max_new_tokens=12, stop=stop),
        )
        return harness.client.portal.call(service.chat, req)  # type: ignore[union-attr]

    engine = ScriptedEngine(["Your dog ", "is Bis", "cuit.\nUser: ", "more"])
    injector.engine = engine  # type: ignore[assignment]
    full = chat(())
    assert full.reply == "Your dog is Biscuit.\nUser: more" and full.stats.finish_reason == "length"
    assert (full.stats.prompt_tokens, full.stats.completion_tokens) == (10, 4)
    assert full.stats.info["kv"]["encoded_memories"] == 1 and full.stats.info["layout"] == "hybrid"
    engine.yielded, engine.closed = 0, False
    cut = chat(("\nUser:",))
    assert cut.reply == "Your dog is Biscuit." and cut.stats.finish_reason == "stop"
    assert engine.yielded == 3 and engine.closed  # generation ended at the stop string


@pytest.mark.slow
def test_biscuit_through_kv_on_smollm2(make_chat: Callable[..., Harness]) -> None:
    loaded: LoadedModel = load_model(BUNDLED_SMOLLM2, cache_dir=LLM_CACHE, device="cpu", torch_threads=1)
    harness = make_chat(llm=LocalBackend(BUNDLED_SMOLLM2, loaded=loaded), embedder=_minilm())
    keys = harness.tenant()
    fact = harness.add(keys.app, "ana", "My dog is named Biscuit and I live in Lisbon.")
    for layout in ("hybrid", "contiguous", "shared"):
        harness.runtime.service.injectors["kv"].layout = layout  # type: ignore[attr-defined]
        out = harness.chat(
            keys.app, subject="ana", session_id=f"kv-{layout}", message="What is my dog's name?", injection="kv",
            write_back=False,
        )
        assert out["injection"] == "kv" and out["info"]["layout"] == layout, out
        assert out["info"]["injected_as"] == "kv" and out["info"]["warnings"] == []
        assert fact["id"] in [m["id"] for m in out["memories_used"]], out
        assert "Biscuit" in out["reply"], (layout, out["reply"])
        assert out["usage"]["prompt_tokens"] > 0 and out["usage"]["completion_tokens"] > 0


def _minilm() -> Any:
    from memory_store.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()
