"""RoPE re-rotation of cached post-RoPE keys, and the check that a model's RoPE is one this code handles.

HF Llama-family models rotate with ``k_p = k * cos(p*theta) + rotate_half(k) * sin(p*theta)`` where
``cos``/``sin`` are ``cat(freqs, freqs)``. Rotations compose, ``R(p') = R(p' - p) R(p)``, so a key stored at
canonical position ``p`` moves to ``p'`` by the same formula with angle ``(p' - p) * theta``. The rotation is
done once, in float32, from the stored canonical position (never chained), and only keys move: values and
queries are position-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from service.errors import InternalError

# Architectures whose attention is plain HF "rotate_half" RoPE on every layer (post-RoPE keys in the cache).
# Each one is exercised by tests/kv/test_rotary.py on a small random-init model.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})


class UnsupportedModelError(InternalError):
    """The model's attention or RoPE variant is not one KV injection supports; use prompt injection."""


def _rope_parameters(config: Any) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None)  # transformers >= 5
    if isinstance(params, dict):
        return dict(params)
    legacy = getattr(config, "rope_scaling", None)  # transformers 4.x
    out: dict[str, Any] = {"rope_theta": getattr(config, "rope_theta", 10000.0)}
    if legacy:
        out.update(legacy)
        out.setdefault("rope_type", legacy.get("type", "unknown"))
    else:
        out["rope_type"] = "default"
    return out


def unsupported_reason(config: Any) -> str | None:
    """Why KV injection cannot run on a model with ``config``, or None when it can."""
    model_type = getattr(config, "model_type", "?")
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"architecture {model_type!r} is not supported for KV injection"
    params = _rope_parameters(config)
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        return f"RoPE scaling {rope_type!r} is not supported for KV injection"
    if float(params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0) != 1.0:
        return "partial rotary embeddings are not supported for KV injection"
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(kind != "full_attention" for kind in layer_types):
        return "sliding-window attention layers are not supported for KV injection"
    if model_type == "mistral" and getattr(config, "sliding_window", None) is not None:
        return "sliding-window attention is not supported for KV injection"
    return None


@dataclass(frozen=True)
class Rope:
    """The RoPE frequencies of one model (``inv_freq``: float32, ``head_dim // 2`` entries)."""

    inv_freq: torch.Tensor
    head_dim: int

    @classmethod
    def from_config(cls, config: Any) -> Rope:
        reason = unsupported_reason(config)
        if reason is not None:
            raise UnsupportedModelError(reason)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        theta = float(_rope_parameters(config)["rope_theta"])
        # The same float32 formula as transformers' default RoPE, so re-rotated angles use the model's exact
        # frequencies (a float64 inv_freq would differ by ~1e-7 relative, i.e. 1e-4 rad at offset 1000).
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        return cls(inv_freq=inv_freq, head_dim=int(head_dim))

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """The angles transformers uses at ``positions``: the float32 product ``p * inv_freq`` (as float64)."""
        return (positions.to(torch.float32)[:, None] * self.inv_freq[None, :]).to(torch.float64)

    def cos_sin(
        self, src: torch.Tensor, dst: torch.Tensor, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin ``[tokens, head_dim]`` (float32) of the rotation taking keys from positions ``src`` to ``dst``.

        The angle is ``angle(dst) - angle(src)`` with both angles exactly as transformers computes them (a
        float32 product), subtracted in float64: the moved key then carries the very angle the model would have
        given it at ``dst``, including transformers' own float32 rounding (about ``p * 6e-8`` rad at ``p``).
        """
        freqs = self.angles(dst) - self.angles(src)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(device=device, dtype=torch.float32), emb.sin().to(device=device, dtype=torch.float32)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _positions(value: torch.Tensor | int, tokens: int) -> torch.Tensor:
    if isinstance(value, int):
        return torch.arange(value, value + tokens, dtype=torch.int64)
    if value.shape != (tokens,):
        raise ValueError(f"need one position per token: {tuple(value.shape)} vs {tokens} tokens")
    return value.to(torch.int64)


def rerotate(
    keys: torch.Tensor,
    src: torch.Tensor | int,
    dst: torch.Tensor | int,
    rope: Rope,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Move post-RoPE ``keys`` ``[..., tokens, head_dim]`` from positions ``src`` to ``dst``.

    ``src``/``dst``: one position per token, or an int = the first token's position (then consecutive).
    Computed once in float32 from the stored positions; returns a new tensor in ``out_dtype`` (default: the
    keys' dtype). The input is never modified.
    """
    tokens = keys.shape[-2]
    src_pos, dst_pos = _positions(src, tokens), _positions(dst, tokens)
    out_dtype = out_dtype or keys.dtype
    if torch.equal(src_pos, dst_pos):
        return keys.to(out_dtype, copy=True)
    cos, sin = rope.cos_sin(src_pos, dst_pos, keys.device)
    k = keys.to(torch.float32)
    return (k * cos + rotate_half(k) * sin).to(out_dtype)
