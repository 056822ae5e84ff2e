"""RoPE re-rotation: exact against transformers' own rotary embedding, and the supported-model check."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from service.llm.kv.rotary import Rope, UnsupportedModelError, rerotate, unsupported_reason
from tests.kv.conftest import tiny_config, tiny_model


def _hf_rotate(model, k_raw: torch.Tensor, start: int) -> torch.Tensor:
    positions = torch.arange(start, start + k_raw.shape[-2])[None]
    cos, sin = model.model.rotary_emb(k_raw, positions)
    _, k = apply_rotary_pos_emb(k_raw, k_raw, cos, sin)
    rotated: torch.Tensor = k
    return rotated


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_inv_freq_matches_the_model(model_type: str) -> None:
    loaded = tiny_model(model_type)
    rope = Rope.from_config(loaded.model.config)
    assert torch.equal(rope.inv_freq, loaded.model.model.rotary_emb.inv_freq.float())


@pytest.mark.parametrize("offset", [1, 37, 1000, 7000])
def test_rerotated_keys_equal_keys_rotated_at_the_target(offset: int) -> None:
    loaded = tiny_model("llama", rope_theta=100000.0, head_dim=64, hidden_size=256)
    torch.manual_seed(1)
    raw = torch.randn(1, 2, 24, 64) * 3
    at_zero = _hf_rotate(loaded.model, raw, 0)
    at_offset = _hf_rotate(loaded.model, raw, offset)
    moved = rerotate(at_zero, 0, offset, Rope.from_config(loaded.model.config))
    # The moved keys carry transformers' own float32 angle at the target, so only cos/sin rounding remains.
    assert (moved - at_offset).abs().max().item() < 2e-5


def test_rotations_compose_and_inputs_are_untouched() -> None:
    rope = Rope.from_config(tiny_config("llama"))
    keys = torch.randn(3, 2, 10, 16)
    before = keys.clone()
    there = rerotate(keys, 0, 500, rope)
    back = rerotate(there, 500, 0, rope)
    assert torch.equal(keys, before)
    assert torch.allclose(back, keys, atol=1e-5)
    per_token = rerotate(keys, torch.zeros(10, dtype=torch.long), torch.arange(10) * 7, rope)
    for t in range(10):
        assert torch.allclose(per_token[..., t, :], rerotate(keys[..., t : t + 1, :], 0, 7 * t, rope)[..., 0, :])
    assert rerotate(keys, 3, 3, rope).data_ptr() != keys.data_ptr()


def test_bf16_keys_are_rotated_in_float32() -> None:
    rope = Rope.from_config(tiny_config("llama"))
    keys = torch.randn(1, 2, 8, 16)
    exact = rerotate(keys, 0, 300, rope)
    via_bf16 = rerotate(keys.bfloat16(), 0, 300, rope, out_dtype=torch.float32)
    # Only the storage rounding remains (bf16 has 8 mantissa bits), no rotation error on top.
    assert (via_bf16 - exact).abs().max() <= 2 * (keys.bfloat16().float() - keys).abs().max() + 1e-6


def test_unsupported_models_are_reported() -> None:
    assert unsupported_reason(tiny_config("llama")) is None
    assert unsupported_reason(tiny_config("qwen2")) is None
    scaled = tiny_config("llama", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    assert "scaling" in (unsupported_reason(scaled) or "")
    with pytest.raises(UnsupportedModelError):
        Rope.from_config(scaled)
    assert "sliding" in (unsupported_reason(tiny_config("mistral", sliding_window=64)) or "")
    assert "architecture" in (unsupported_reason(tiny_config("gpt2")) or "")
