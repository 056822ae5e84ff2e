"""Fixtures for KV-injection tests: tiny random-init models with a byte tokenizer (fast) and the real
SmolLM2-135M-Instruct (``slow``; loaded once per session from a converted-weights cache dir)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from service.llm.loader import LoadedModel

IM_END = 256
PAD = 257
# Read at import: the autouse ``_clean_environment`` fixture removes every SEALMEM_* variable during tests.
LLM_CACHE = Path(os.environ.get("SEALMEM_TEST_LLM_CACHE", "/tmp/sealmem-llm-cache"))
TORCH_THREADS = int(os.environ.get("SEALMEM_TEST_THREADS", "1"))


class ByteTokenizer:
    """A minimal stand-in for an HF tokenizer: one token per UTF-8 byte, <|im_end|> = 256, pad = 257."""

    eos_token_id = IM_END
    pad_token_id = PAD
    unk_token_id = None

    class _Enc:
        def __init__(self, ids: list[int]) -> None:
            self.input_ids = ids

    def __call__(self, text: str, add_special_tokens: bool = False) -> Any:
        ids: list[int] = []
        for i, part in enumerate(text.split("<|im_end|>")):
            if i:
                ids.append(IM_END)
            ids.extend(part.encode())
        return self._Enc(ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode(errors="replace")

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return IM_END if token == "<|im_end|>" else None

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def tiny_config(model_type: str = "llama", **overrides: Any) -> Any:
    from transformers import AutoConfig

    kwargs: dict[str, Any] = dict(
        vocab_size=258,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=IM_END,
        pad_token_id=PAD,
        bos_token_id=None,
    )
    if model_type == "mistral":
        kwargs["sliding_window"] = None
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_model(model_type: str = "llama", seed: int = 0, **overrides: Any) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    # Random init makes near-uniform logits; sharpen them so greedy tokens and KL comparisons mean something.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
    return LoadedModel(
        model=model, tokenizer=ByteTokenizer(), device="cpu", dtype=torch.float32, name=f"tiny-{model_type}"
    )


@pytest.fixture
def make_tiny() -> Callable[..., LoadedModel]:
    return tiny_model


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real SmolLM2-135M-Instruct (fp32 on CPU); converted weights cached across sessions."""
    from service.llm.loader import ModelLoadError, load_model

    try:
        return load_model(cache_dir=LLM_CACHE, device="cpu", torch_threads=TORCH_THREADS)
    except ModelLoadError as exc:
        pytest.skip(f"bundled model unavailable: {exc}")
