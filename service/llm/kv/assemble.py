"""Request-time assembly of a fresh model cache: shared prefix + retrieved memories' keys/values.

Every memory is encoded once, independently, after the shared prefix ``P`` tokens long, optionally followed by
an *encoding lead* of ``D`` tokens (neutral list items such as "- This is something I told you before.\n"). The
lead is attended to while encoding, so each memory reads like a later item of the list rather than the first
one, but it is never part of the assembled cache: its ``D`` positions stay empty. A memory therefore sits at
canonical positions ``P + D .. P + D + L_i - 1``.

Layouts (``L_i`` = memory lengths):

* ``contiguous``: memory ``i`` occupies positions ``P + D + sum(L_<i) ..``, one after the other as in a prompt;
  the suffix starts at ``P + D + sum(L)``. Keys are re-rotated from their stored positions to the targets.
* ``shared`` (APE-style): every memory keeps the positions it was encoded at (``P + D ..``), so no rotation is
  needed; the suffix starts at ``P + D + max(L)``. Uses far fewer positions.
  An attention temperature ``T`` on the memory tokens is applied by scaling the memory keys by ``1/T``: the
  logit ``q.k/sqrt(d)`` of every later query on a memory token becomes ``q.k/(T sqrt(d))``, exactly APE's
  temperature. APE's second knob, the scale ``S`` applied to the memory block through the log-sum-exp, is a
  per-query-row correction that needs a custom attention kernel; it is not implemented.

The stored tensors are never modified: concatenation and rotation produce new tensors, and a new cache
object is built on every call (the forward pass mutates it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import DynamicCache

from service.llm.kv.memory_cache import EncodedMemory
from service.llm.kv.rotary import Rope, rerotate

BaseLayout = Literal["contiguous", "shared"]


@dataclass(frozen=True, eq=False)
class PrefixKV:
    """The shared system prefix (``P`` tokens) and the encoding lead (``D`` tokens), encoded once.

    ``keys``/``values``: ``[layers, kv_heads, P + D, head_dim]`` at positions ``0 .. P + D - 1``. Only the first
    ``P`` entries enter an assembled cache; memories are encoded after all ``P + D``.
    """

    keys: torch.Tensor
    values: torch.Tensor
    token_ids: tuple[int, ...]  # prefix then lead
    prefix_tokens: int
    fingerprint: str

    @property
    def tokens(self) -> int:
        """``P``: prefix entries placed in every assembled cache."""
        return self.prefix_tokens

    @property
    def lead_tokens(self) -> int:
        """``D``: the encoding lead's length (an empty gap in the assembled cache)."""
        return len(self.token_ids) - self.prefix_tokens

    @property
    def memory_start(self) -> int:
        """Canonical position of a memory's first token: ``P + D``."""
        return len(self.token_ids)


@dataclass
class AssembledCache:
    cache: Any  # transformers DynamicCache
    next_position: int  # RoPE position of the first token fed after the cache
    cache_tokens: int  # entries in the cache (prefix + memory tokens)
    memory_spans: list[tuple[int, int]]  # RoPE [start, end) of each memory


def memory_targets(first: int, lengths: Sequence[int], layout: BaseLayout) -> tuple[list[int], int]:
    """Target start position of each memory (the first one at ``first``) and the next free position."""
    if layout == "contiguous":
        starts, pos = [], first
        for n in lengths:
            starts.append(pos)
            pos += n
        return starts, pos
    if layout == "shared":
        return [first] * len(lengths), first + max(lengths, default=0)
    raise ValueError(f"unknown layout {layout!r}")


def assemble(
    prefix: PrefixKV,
    memories: Sequence[EncodedMemory],
    *,
    layout: BaseLayout,
    rope: Rope,
    dtype: torch.dtype,
    device: torch.device | str,
    config: Any = None,
    temperature: float = 1.0,
) -> AssembledCache:
    """Build a fresh ``DynamicCache`` holding the prefix then ``memories`` placed by ``layout``."""
    p = prefix.tokens
    lengths = [m.tokens for m in memories]
    starts, next_position = memory_targets(prefix.memory_start, lengths, layout)
    keys = prefix.keys[:, :, :p].to(device=device, dtype=dtype)
    values = prefix.values[:, :, :p].to(device=device, dtype=dtype)
    if memories:
        src = torch.cat([torch.arange(m.start, m.start + m.tokens) for m in memories])
        dst = torch.cat([torch.arange(s, s + m.tokens) for m, s in zip(memories, starts, strict=True)])
        mem_k = torch.cat([m.keys for m in memories], dim=2).to(device)
        mem_v = torch.cat([m.values for m in memories], dim=2).to(device=device, dtype=dtype)
        mem_k = rerotate(mem_k, src, dst, rope, out_dtype=torch.float32)
        if temperature != 1.0:
            mem_k = mem_k * (1.0 / temperature)
        keys = torch.cat([keys, mem_k.to(dtype)], dim=2)
        values = torch.cat([values, mem_v], dim=2)
    else:
        keys, values = keys.clone(), values.clone()
    cache = DynamicCache(
        ddp_cache_data=[(keys[i].unsqueeze(0), values[i].unsqueeze(0)) for i in range(keys.shape[0])],
        config=config,
    )
    spans = [(s, s + n) for s, n in zip(starts, lengths, strict=True)]
    return AssembledCache(cache=cache, next_position=next_position, cache_tokens=int(keys.shape[2]), memory_spans=spans)
