"""all-MiniLM-L6-v2 run by ONNX Runtime: the default embedder.

The bundled sentence-transformers folder is exported once to ONNX with ``torch.onnx.export`` (offline, a few
seconds) into a models cache folder, under a name that includes a hash of the source weights, so a changed model
is exported again. Inference then needs only ``onnxruntime`` and the model's fast tokenizer (``tokenizers``):
mean pooling over the attention mask and L2 normalisation, as the model's sentence-transformers modules do.
Vectors match the sentence-transformers ones to cosine >= 0.9999 (tests/test_onnx_embedder.py).

A call of many texts (a batch add, an import) runs its forward passes on ``parallel`` threads at once, each pass
on one core (a session's ``run`` may be called from several threads; it releases the interpreter lock), so one
call uses every core. Calls of fewer than 32 texts (searches, single adds, the coalesced passes of a loaded
server) run on the caller's thread, as before.

The export is written to a temporary file and renamed into place, under an exclusive file lock, so several
processes starting at once export it once and never read a partial file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from memory_store.embedder import BUNDLED_MINILM, Vectors, model_folder
from memory_store.errors import ConfigurationError

log = logging.getLogger("sealmem.embedder")

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17
# The int8 graph's file name ends so (quantised per output channel). A models cache made before holds the graph
# quantised per weight matrix under LEGACY_INT8_SUFFIX: that one is kept while it is there (see onnx_path).
INT8_SUFFIX = "-int8pc"
LEGACY_INT8_SUFFIX = "-int8"


def _source_digest(folder: Path) -> str:
    """Hash of the files that define the model's graph and weights (the export is keyed by it)."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        path = folder / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def export_onnx(source: Path, target: Path) -> None:
    """Export the transformer of a sentence-transformers folder to ``target`` (atomic rename)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source), local_files_only=True)
    model.eval()

    class _Encoder(torch.nn.Module):
        # Inputs by keyword: BertModel.forward's positional order is not stable across transformers releases.
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    sample = torch.ones(1, 8, dtype=torch.long)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on advanced indexing; positive indices only here
            torch.onnx.export(
                _Encoder(model),
                (sample, sample, torch.zeros_like(sample)),
                str(temporary),
                input_names=list(INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "last_hidden_state")},
                opset_version=OPSET,
                dynamo=False,
            )
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def quantise_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the exported graph's weights (ONNX Runtime's ``quantize_dynamic``), one scale
    per output channel of each weight matrix: about 2.3x faster per sentence on one core here. One scale per
    matrix, as first shipped, is as fast but strays much further from the full model (cosine to its vectors on
    1,024 LoCoMo turns and questions: mean 0.958, least 0.887, against 0.993 and 0.982 per channel); the recall
    cost is measured by ``bench/locomo_retrieval.py`` (README)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        quantize_dynamic(str(source), str(temporary), weight_type=QuantType.QInt8, per_channel=True)
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


class OnnxEmbedder:
    """A sentence-transformers model (mean pooling + normalisation) run by ONNX Runtime, loaded on first use."""

    def __init__(
        self,
        model: str = BUNDLED_MINILM,
        *,
        cache_dir: Path,
        batch_size: int = 64,
        threads: int = 1,
        int8: bool = False,
        parallel: int = 1,
    ) -> None:
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self._path, self._model_id = model_folder(model)
        self._int8 = int8
        self._cache_dir = Path(cache_dir)
        self._batch_size = batch_size
        self._threads = threads
        self._parallel = parallel
        self._pool: ThreadPoolExecutor | None = None  # the passes of large calls; made on first need
        self._session: Any = None
        self._tokenizer: Any = None
        self._dim: int | None = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def parallel(self) -> int:
        """Forward passes of one large call that run at once."""
        return self._parallel

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._load()
        assert self._dim is not None
        return self._dim

    @cached_property
    def _stem(self) -> str:
        """The graph files' common name: the model and a hash of its weights (read once per embedder)."""
        return f"{self.model_id}-{_source_digest(self._path)}"

    def onnx_path(self) -> Path:
        """Where the graph this embedder runs lives (exported, and for int8 quantised, on first load when missing).

        For int8, the graph quantised per channel; but a cache that already holds the graph quantised per matrix
        (made by an earlier release) keeps it, so that the vectors stored with it stay comparable with new ones
        (cosine about 0.96 between the two graphs' vectors). Removing that file moves to the per-channel graph."""
        if not self._int8:
            return self._cache_dir / f"{self._stem}.onnx"
        current = self._cache_dir / f"{self._stem}{INT8_SUFFIX}.onnx"
        legacy = self._cache_dir / f"{self._stem}{LEGACY_INT8_SUFFIX}.onnx"
        return legacy if legacy.is_file() and not current.is_file() else current

    def _ensure_export(self) -> Path:
        target = self.onnx_path()
        if target.is_file():
            return target
        self._cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cache_dir.chmod(0o700)
        with (self._cache_dir / ".export.lock").open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            if not target.is_file():
                full = self._cache_dir / f"{self._stem}.onnx"
                if not full.is_file():
                    log.info("exporting embedding model %s to ONNX (once)", self.model_id)
                    export_onnx(self._path, full)
                if self._int8:
                    log.info("quantising embedding model %s to int8 (once)", self.model_id)
                    quantise_int8(full, target)
        return target

    def _load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            if not self._path.is_dir():
                raise ConfigurationError(f"embedding model folder {self._path} does not exist")
            import onnxruntime
            from tokenizers import Tokenizer

            graph = self._ensure_export()
            if graph.name.endswith(f"{LEGACY_INT8_SUFFIX}.onnx"):
                log.warning(
                    "embedding with the int8 graph quantised per weight matrix found in %s, as the vectors stored "
                    "with it were; remove that file to quantise per channel (closer to the full model, see README)",
                    self._cache_dir,
                )
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self._threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = onnxruntime.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])
            tokenizer = Tokenizer.from_file(str(self._path / "tokenizer.json"))
            tokenizer.enable_truncation(max_length=self._max_tokens())
            tokenizer.no_padding()  # the file asks for 128 tokens each; each pass pads its own rows (passes())
            self._dim = int(session.get_outputs()[0].shape[-1])
            self._tokenizer = tokenizer
            self._session = session

    def _max_tokens(self) -> int:
        config = self._path / "sentence_bert_config.json"
        if config.is_file():
            return int(json.loads(config.read_text()).get("max_seq_length", 256))
        return 256

    def embed(self, texts: Sequence[str]) -> Vectors:
        self._load()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        lengths = [len(e.ids) for e in encodings]
        spread = self._parallel > 1 and len(texts) >= 2 * MIN_ROWS_PER_PARALLEL_PASS
        groups = passes(lengths, rows_per_pass(len(texts), self._batch_size, self._parallel if spread else 1))
        if not spread or len(groups) == 1:
            for rows in groups:
                out[rows] = self.embed_encoded([encodings[i] for i in rows])
            return out
        pool = self._passes_pool()
        running = [(rows, pool.submit(self.embed_encoded, [encodings[i] for i in rows])) for rows in groups]
        for rows, future in running:
            out[rows] = future.result()
        return out

    def _passes_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._parallel, thread_name_prefix="sealmem-embed")
            return self._pool

    @property
    def tokenizer(self) -> Any:
        """The model's fast tokenizer (truncating, not padding)."""
        self._load()
        return self._tokenizer

    def embed_encoded(self, encodings: list[Any]) -> Vectors:
        """One forward pass over tokenised texts (``tokenizer`` output), padded to the longest of them."""
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)  # 0 is [PAD]
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        (hidden,) = self._session.run(["last_hidden_state"], feed)
        weights = mask[:, :, None].astype(np.float32)
        summed = (hidden * weights).sum(axis=1)
        pooled = summed / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.ascontiguousarray(pooled / np.clip(norms, 1e-12, None), dtype=np.float32)


# The fewest rows a pass of a call spread over several threads gets: below this, a pass's fixed cost outweighs the
# gain. A call of fewer than twice this many texts (a search, a single add, a coalesced pass under load) runs its
# passes on the caller's thread, as with ``parallel=1``.
MIN_ROWS_PER_PARALLEL_PASS = 16


def rows_per_pass(texts: int, batch_size: int, parallel: int) -> int:
    """The most rows a pass of a call of ``texts`` texts takes: ``batch_size``, or fewer so that the call's passes
    spread over ``parallel`` threads (at least :data:`MIN_ROWS_PER_PARALLEL_PASS` rows each)."""
    if parallel == 1:
        return batch_size
    return max(1, min(batch_size, max(MIN_ROWS_PER_PARALLEL_PASS, -(-texts // parallel))))


# What one forward pass costs beyond its padded tokens, in tokens: all-MiniLM-L6-v2 on ONNX Runtime, one thread,
# costs about 0.15 ms per padded token plus 1 to 1.7 ms per pass (bench/embed_batching.py: a 14-token text 3.8 ms
# alone, 2.2 ms each in sixteens).
PASS_COST_TOKENS = 10


def passes(lengths: Sequence[int], max_rows: int) -> list[list[int]]:
    """Rows (indices into ``lengths``, token counts) grouped into forward passes of at most ``max_rows`` rows,
    at the least total cost: each pass pads its rows to its longest, so short texts batched with long ones
    pay for the padding (a pass of 11 queries of 12 tokens and 5 memories of 20 costs about 15% more than two
    passes), while every pass also costs :data:`PASS_COST_TOKENS`. Optimal over contiguous runs of the rows
    sorted by length (dynamic programming; a call has a few dozen rows at most)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]  # sorted: the last row of a run is its longest
        for i in range(max(0, j - max_rows), j):
            cost = best[i] + PASS_COST_TOKENS + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]
