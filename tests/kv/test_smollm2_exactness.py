"""Exactness of KV injection on the real SmolLM2-135M-Instruct (fp32, CPU). Marked slow (runs in CI)."""

from __future__ import annotations

import pytest
import torch

from service.llm.kv import KVEngine, KVRequest, KVSettings, Layout, MemoryText, split_chat_prompt
from service.llm.kv.rotary import Rope, rerotate

pytestmark = pytest.mark.slow

MEMORY = MemoryText("m1", "- I adopted a dog from the shelter and named him Biscuit.\n", "v1")
OTHERS = [
    MemoryText("m2", "- I work as a nurse at the city hospital.\n", "v1"),
    MemoryText("m3", "- My favourite colour is teal.\n", "v1"),
]


@pytest.fixture(scope="module")
def engine(smollm2) -> KVEngine:
    # No encoding lead: one memory encoded after the same prefix must be exactly the prompt path.
    return KVEngine(smollm2, KVSettings(encode_lead="", shared_temperature=1.0))


def _request(tokenizer, memories) -> KVRequest:
    prefix, suffix = split_chat_prompt(
        tokenizer,
        system_head="You are a helpful assistant. Facts about the user:\n",
        system_tail="Answer in one short sentence.",
        turns=[],
        user_message="What is my dog's name?",
    )
    return KVRequest("tenant", "subject", prefix, memories, suffix)


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    lp, lq = torch.log_softmax(p_logits.double(), -1), torch.log_softmax(q_logits.double(), -1)
    return float((lp.exp() * (lp - lq)).sum())


@pytest.mark.parametrize("layout", ["contiguous", "shared"])
def test_one_memory_kv_matches_prompt(engine: KVEngine, layout: Layout) -> None:
    req = _request(engine.tokenizer, [MEMORY])
    prompt = engine.generate(req, injection="prompt", max_new_tokens=10, return_first_logits=True)
    kv = engine.generate(req, injection="kv", layout=layout, max_new_tokens=10, return_first_logits=True)
    assert prompt.first_logits is not None and kv.first_logits is not None
    assert kv.injection == "kv" and kv.layout == layout and kv.cache_tokens > kv.prefill_tokens
    assert _kl(prompt.first_logits, kv.first_logits) < 1e-4
    assert kv.token_ids == prompt.token_ids
    assert "biscuit" in prompt.text.lower()


# Tolerances (max |dK| over all layers, heads and tokens; keys reach |K| ~ 19 on this model). Layer 0 is the
# rotation alone: <= 1e-5 at any offset. Deeper layers add the float32 drift of the shifted forward itself
# (transformers rounds p*theta to float32, ~p*6e-8 rad, in every attention), measured 2.1e-5 / 1.0e-4 /
# 1.3e-3 at p = 37 / 1000 / 6000.
_KEY_TOL = {37: 1e-4, 1000: 5e-4, 6000: 5e-3}


def test_keys_at_p_equal_keys_at_zero_rerotated(engine: KVEngine) -> None:
    """Whole sequence run at positions 0.. and p..: every layer's keys at p equal those at 0 rotated by p
    (RoPE is relative, so hidden states are shift-invariant), and the values are equal."""
    ids = engine.tokenize("<|im_start|>system\nFacts about the user:\n" + MEMORY.text)
    rope = Rope.from_config(engine.config)
    with torch.inference_mode():
        base = engine.model(torch.tensor([ids]), use_cache=True).cache
        for p, tol in _KEY_TOL.items():
            positions = torch.arange(p, p + len(ids))[None]
            shifted = engine.model(torch.tensor([ids]), position_ids=positions, use_cache=True).cache
            first = (rerotate(base.layers[0].keys, 0, p, rope) - shifted.layers[0].keys).abs().max().item()
            assert first < 1e-5, (p, first)
            worst_k = worst_v = 0.0
            for a, b in zip(base.layers, shifted.layers, strict=True):
                moved = rerotate(a.keys, 0, p, rope)
                worst_k = max(worst_k, (moved - b.keys).abs().max().item())
                worst_v = max(worst_v, (a.values - b.values).abs().max().item())
            assert worst_k < tol, (p, worst_k)
            assert worst_v < tol, (p, worst_v)


def test_three_memories_shared_layout_equals_block_masked_forward(engine: KVEngine) -> None:
    """With several memories the shared layout is exactly 'each memory sees only the prefix and itself'."""
    mems = [MEMORY, *OTHERS]
    req = _request(engine.tokenizer, mems)
    kv = engine.generate(req, layout="shared", max_new_tokens=1, return_first_logits=True)
    tok = engine.tokenize
    prefix, suffix, pieces = tok(req.prefix), tok(req.suffix), [tok(m.text) for m in mems]
    ids = prefix + [t for piece in pieces for t in piece] + suffix
    n, p = len(ids), len(prefix)
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool))
    positions, start = list(range(p)), p
    spans = []
    for piece in pieces:
        spans.append((start, start + len(piece)))
        positions += list(range(p, p + len(piece)))
        start += len(piece)
    for i, (a, b) in enumerate(spans):
        for j, (c, d) in enumerate(spans):
            if i != j:
                allowed[a:b, c:d] = False
    nxt = p + max(map(len, pieces))
    positions += list(range(nxt, nxt + len(suffix)))
    mask = torch.zeros(1, 1, n, n).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    with torch.inference_mode():
        ref = engine.model(torch.tensor([ids]), attention_mask=mask, position_ids=torch.tensor([positions])).logits[
            0, -1
        ]
    assert kv.first_logits is not None
    assert _kl(ref, kv.first_logits) < 1e-4


def test_split_chat_prompt_matches_the_template(smollm2) -> None:
    tok = smollm2.tokenizer
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    prefix, suffix = split_chat_prompt(
        tok, system_head="Facts:\n", system_tail="Be brief.", turns=turns, user_message="Q?"
    )
    full = tok.apply_chat_template(
        [{"role": "system", "content": "Facts:\n- a\nBe brief."}, *turns, {"role": "user", "content": "Q?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prefix + "- a\n" + suffix == full
