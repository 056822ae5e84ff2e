"""KV injection on tiny random-init models (fast): every layout against an exact single-forward reference."""

from __future__ import annotations

import pytest
import torch

from service.llm.kv import (
    KVContextTooLongError,
    KVEngine,
    KVRequest,
    KVSettings,
    Layout,
    MemoryText,
    split_chat_prompt,
)
from tests.kv.conftest import tiny_model

PREFIX = "<|im_start|>system\nFacts about the user:\n"
SUFFIX = "Answer briefly.<|im_end|>\n<|im_start|>user\nWhat is my dog called?<|im_end|>\n<|im_start|>assistant\n"
MEMS = [
    MemoryText("m1", "- My dog is called Biscuit.\n", "1"),
    MemoryText("m2", "- I live in Lisbon.\n", "1"),
    MemoryText("m3", "- My sister plays the cello on weekends.\n", "1"),
]


def _request(memories=MEMS) -> KVRequest:
    return KVRequest("tenant", "subject", PREFIX, list(memories), SUFFIX)


LEAD = "- This is a neutral item.\n"


def _reference_logits(engine: KVEngine, memories, layout: str, text_memories=(), lead: str = "") -> torch.Tensor:
    """One forward over prefix + lead + memories + tail with a block mask: each memory attends to the prefix,
    the lead and itself; everything after the memories attends to the prefix and all memories but never to the
    lead; RoPE positions as the layout places them.

    Exact for the ``shared`` layout (each memory sits at the positions it is encoded at). In ``contiguous``
    a later memory was encoded right after the prefix but is read from further away, which no single forward
    reproduces; see ``_contiguous_native_logits``."""
    tok = engine.tokenize
    prefix, lead_ids, suffix = tok(PREFIX), tok(lead) if lead else [], tok(SUFFIX)
    mems = [tok(m.text) for m in memories]
    tail = [t for m in text_memories for t in tok(m.text)] + suffix
    ids = prefix + lead_ids + [t for m in mems for t in m] + tail
    n, p, d = len(ids), len(prefix), len(lead_ids)
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool))
    positions = list(range(p + d))
    spans, start = [], p + d
    for m in mems:
        spans.append((start, start + len(m)))
        start += len(m)
    for i, (a, b) in enumerate(spans):
        for j, (c, e) in enumerate(spans):
            if i != j:
                allowed[a:b, c:e] = False
        base = p + d if layout == "shared" else a
        positions += list(range(base, base + b - a))
    allowed[start:, p : p + d] = False  # the lead is only seen while encoding
    nxt = p + d + (max((len(m) for m in mems), default=0) if layout == "shared" else sum(map(len, mems)))
    positions += list(range(nxt, nxt + len(tail)))
    mask = torch.zeros(1, 1, n, n)
    mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        out = engine.model(torch.tensor([ids]), attention_mask=mask, position_ids=torch.tensor([positions]))
    logits: torch.Tensor = out.logits[0, -1].float()
    return logits


def _contiguous_native_logits(engine: KVEngine, memories, lead: str = "") -> torch.Tensor:
    """The contiguous layout built without re-rotation: each memory is encoded after prefix + lead with the
    whole block shifted so the memory lands natively at its target positions (RoPE is relative, so the shift
    changes nothing but the absolute key angles); then the suffix is prefilled after prefix + memories."""
    from transformers import DynamicCache

    tok, model = engine.tokenize, engine.model
    prefix = tok(PREFIX)
    context = prefix + (tok(lead) if lead else [])
    c = len(context)
    with torch.no_grad():
        pre = model(torch.tensor([prefix]), use_cache=True).cache
        ks = [[layer.keys] for layer in pre.layers]
        vs = [[layer.values] for layer in pre.layers]
        start = c
        for m in memories:
            ids = tok(m.text)
            shifted = torch.arange(start - c, start + len(ids))[None]
            out = model(torch.tensor([context + ids]), position_ids=shifted, use_cache=True).cache
            for i, layer in enumerate(out.layers):
                ks[i].append(layer.keys[:, :, c:])
                vs[i].append(layer.values[:, :, c:])
            start += len(ids)
        cache = DynamicCache(
            ddp_cache_data=[(torch.cat(k, 2), torch.cat(v, 2)) for k, v in zip(ks, vs, strict=True)],
            config=model.config,
        )
        suffix = tok(SUFFIX)
        out = model(torch.tensor([suffix]), cache=cache, position_ids=torch.arange(start, start + len(suffix))[None])
    logits: torch.Tensor = out.logits[0, -1].float()
    return logits


@pytest.mark.parametrize("lead", ["", LEAD])
@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_shared_layout_matches_the_block_masked_reference(model_type: str, lead: str) -> None:
    engine = KVEngine(tiny_model(model_type), KVSettings(encode_lead=lead, shared_temperature=1.0))
    result = engine.generate(_request(), layout="shared", max_new_tokens=1, return_first_logits=True)
    assert result.injection == "kv" and result.layout == "shared"
    ref = _reference_logits(engine, MEMS, "shared", lead=lead)
    assert result.first_logits is not None
    assert (result.first_logits - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("lead", ["", LEAD])
@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_contiguous_layout_matches_memories_encoded_at_their_positions(model_type: str, lead: str) -> None:
    engine = KVEngine(tiny_model(model_type), KVSettings(encode_lead=lead, shared_temperature=1.0))
    result = engine.generate(_request(), layout="contiguous", max_new_tokens=1, return_first_logits=True)
    assert result.injection == "kv" and result.layout == "contiguous"
    ref = _contiguous_native_logits(engine, MEMS, lead=lead)
    assert result.first_logits is not None
    assert (result.first_logits - ref).abs().max().item() < 1e-4
    # ... and it is not the block-masked single forward: a memory read from afar differs from one encoded there.
    assert (result.first_logits - _reference_logits(engine, MEMS, "contiguous", lead=lead)).abs().max().item() > 1e-3


def test_hybrid_keeps_the_top_memories_as_text() -> None:
    engine = KVEngine(
        tiny_model("llama"),
        KVSettings(hybrid_text_memories=1, hybrid_kv_layout="shared", encode_lead=LEAD, shared_temperature=1.0),
    )
    result = engine.generate(_request(), layout="hybrid", max_new_tokens=1, return_first_logits=True)
    ref = _reference_logits(engine, MEMS[1:], "shared", text_memories=MEMS[:1], lead=LEAD)
    assert result.first_logits is not None
    assert (result.first_logits - ref).abs().max().item() < 1e-4
    assert result.prefill_tokens == len(engine.tokenize(MEMS[0].text)) + len(engine.tokenize(SUFFIX))


@pytest.mark.parametrize("layout", ["contiguous", "shared", "hybrid"])
def test_one_memory_kv_equals_prompt_and_generation_is_identical(layout: Layout) -> None:
    engine = KVEngine(tiny_model("llama", seed=3), KVSettings(encode_lead="", shared_temperature=1.0))
    req = _request(MEMS[:1])
    kv = engine.generate(req, layout=layout, max_new_tokens=12, return_first_logits=True)
    prompt = engine.generate(req, injection="prompt", max_new_tokens=12, return_first_logits=True)
    assert kv.first_logits is not None and prompt.first_logits is not None
    assert (kv.first_logits - prompt.first_logits).abs().max().item() < 1e-4
    assert kv.token_ids == prompt.token_ids
    assert prompt.injection == "prompt" and prompt.layout is None


def test_shared_temperature_scales_only_memory_keys() -> None:
    plain = KVEngine(tiny_model("llama"), KVSettings(shared_temperature=1.0))
    sharp = KVEngine(tiny_model("llama"), KVSettings(shared_temperature=0.5))
    a = plain.generate(_request(), layout="shared", max_new_tokens=1, return_first_logits=True)
    b = sharp.generate(_request(), layout="shared", max_new_tokens=1, return_first_logits=True)
    assert a.first_logits is not None and b.first_logits is not None
    assert (a.first_logits - b.first_logits).abs().max().item() > 1e-3
    # With no memories there is nothing to scale: identical.
    a0 = plain.generate(_request([]), layout="shared", max_new_tokens=1, return_first_logits=True)
    b0 = sharp.generate(_request([]), layout="shared", max_new_tokens=1, return_first_logits=True)
    assert a0.first_logits is not None and b0.first_logits is not None
    assert torch.equal(a0.first_logits, b0.first_logits)


def test_stored_tensors_are_never_mutated_and_hits_skip_encoding() -> None:
    engine = KVEngine(tiny_model("llama"), KVSettings())
    first = engine.generate(_request(), layout="contiguous", max_new_tokens=4)
    assert first.encoded_memories == 3
    snapshot = {k: (e.memory.keys.clone(), e.memory.values.clone()) for k, e in engine.cache._entries.items()}
    second = engine.generate(_request(), layout="contiguous", max_new_tokens=4)
    assert second.encoded_memories == 0 and second.text == first.text
    for k, e in engine.cache._entries.items():
        assert torch.equal(e.memory.keys, snapshot[k][0]) and torch.equal(e.memory.values, snapshot[k][1])
    # A new version of one memory is a miss; the others still hit.
    changed = [MEMS[0], MemoryText("m2", "- I live in Porto.\n", "2"), MEMS[2]]
    third = engine.generate(_request(changed), layout="contiguous", max_new_tokens=1)
    assert third.encoded_memories == 1


def test_batched_encoding_equals_one_at_a_time() -> None:
    loaded = tiny_model("llama")
    batched = KVEngine(loaded, KVSettings(encode_batch_size=8))
    single = KVEngine(loaded, KVSettings(encode_batch_size=1))
    prefix = batched.prefix_kv(PREFIX)
    texts = [m.text for m in MEMS]
    for a, b in zip(batched.encode_texts(prefix, texts), single.encode_texts(prefix, texts), strict=True):
        assert a.token_ids == b.token_ids and a.start == b.start == prefix.memory_start
        assert torch.allclose(a.keys, b.keys, atol=1e-5) and torch.allclose(a.values, b.values, atol=1e-5)


def test_stream_yields_the_text() -> None:
    engine = KVEngine(tiny_model("llama"), KVSettings())
    stream = engine.stream(_request(), layout="shared", max_new_tokens=8)
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text
    assert stream.result.timings.ttft_s > 0


def test_unsupported_model_falls_back_to_prompt_with_a_warning() -> None:
    loaded = tiny_model("llama", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    engine = KVEngine(loaded, KVSettings())
    assert not engine.supported
    result = engine.generate(_request(), layout="contiguous", max_new_tokens=3)
    assert result.injection == "prompt" and result.layout is None
    assert result.warnings and "scaling" in result.warnings[0]
    assert result.cache_tokens == 0


def test_position_budget_is_enforced() -> None:
    engine = KVEngine(tiny_model("llama", max_position_embeddings=180), KVSettings(encode_lead=""))
    with pytest.raises(KVContextTooLongError):
        engine.generate(_request(), layout="contiguous", max_new_tokens=8)
    # The shared layout needs fewer positions: the same request fits.
    engine.generate(_request(), layout="shared", max_new_tokens=8)


def test_bytes_per_token() -> None:
    engine = KVEngine(tiny_model("llama"), KVSettings())
    assert engine.bytes_per_token == 2 * 2 * 2 * 16 * 4  # 2 (k,v) x layers x kv heads x head dim x fp32
    half = KVEngine(tiny_model("llama"), KVSettings(storage_dtype="bfloat16"))
    assert half.bytes_per_token == engine.bytes_per_token // 2
    result = half.generate(_request(), layout="contiguous", max_new_tokens=1)
    entry = next(iter(half.cache._entries.values()))
    assert entry.memory.keys.dtype == torch.bfloat16 and result.injection == "kv"


def test_split_chat_prompt_round_trips() -> None:
    tok = tiny_model("llama").tokenizer
    prefix, suffix = split_chat_prompt(
        tok,
        system_head="Facts:\n",
        system_tail="Be brief.",
        turns=[{"role": "user", "content": "hi"}],
        user_message="Who am I?",
    )
    assert prefix == "<|im_start|>system\nFacts:\n"
    assert suffix.startswith("Be brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>")
    assert suffix.endswith("<|im_start|>assistant\n")


def test_changed_text_under_the_same_version_is_re_encoded() -> None:
    engine = KVEngine(tiny_model("llama"), KVSettings())
    engine.generate(_request(MEMS[:1]), layout="contiguous", max_new_tokens=1)
    edited = [MemoryText("m1", "- My dog is called Pretzel.\n", MEMS[0].version)]
    assert engine.generate(_request(edited), layout="contiguous", max_new_tokens=1).encoded_memories == 1
    engine.invalidate_memory("tenant", "subject", "m1")
    assert engine.generate(_request(edited), layout="contiguous", max_new_tokens=1).encoded_memories == 1
    engine.forget_subject("tenant", "subject")
    assert len(engine.cache) == 0


def test_backend_worker_raises_a_too_long_context_as_itself_and_frees_the_gate() -> None:
    """Run under ``LocalBackend.stream_sync`` (as the chat loop does), the engine's 422 error keeps its type."""
    import asyncio
    import threading
    from collections.abc import Iterator

    from service.llm.backend import GenerationStats, LLMError
    from service.llm.local import LocalBackend

    loaded = tiny_model("llama", max_position_embeddings=180)
    engine = KVEngine(loaded, KVSettings(encode_lead=""))
    backend = LocalBackend("unused", loaded=loaded, concurrency=1, queue_max=2)

    def too_long(cancel: threading.Event) -> Iterator[str]:
        yield from engine.stream(_request(), layout="contiguous", max_new_tokens=8)

    def broken(cancel: threading.Event) -> Iterator[str]:
        raise RuntimeError("engine failure")
        yield ""

    async def scenario() -> None:
        with pytest.raises(KVContextTooLongError):
            _ = [d async for d in backend.stream_sync(too_long, GenerationStats())]
        with pytest.raises(LLMError, match="generation failed") as failed:
            _ = [d async for d in backend.stream_sync(broken, GenerationStats())]
        assert isinstance(failed.value.__cause__, RuntimeError)
        await asyncio.sleep(0.05)
        assert backend.gate.active == 0

    asyncio.run(scenario())
