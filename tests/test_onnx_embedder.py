"""The default embedder: all-MiniLM-L6-v2 exported to ONNX and run by ONNX Runtime."""

from __future__ import annotations

import importlib
import logging
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from memory_store import SentenceTransformerEmbedder, StoreSettings
from memory_store.coalescing import CoalescingEmbedder
from memory_store.embedder import embedder_from_settings
from memory_store.onnx_embedder import (
    MIN_ROWS_PER_PARALLEL_PASS,
    PASS_COST_TOKENS,
    OnnxEmbedder,
    passes,
    rows_per_pass,
)
from memory_store.settings import available_cores

pytestmark = pytest.mark.slow

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_MODULES = [
    "json", "os", "re", "string", "textwrap", "collections", "functools", "itertools", "pathlib", "subprocess",
    "threading", "asyncio", "logging", "argparse", "datetime", "decimal", "fractions", "statistics", "random",
    "email", "http.client", "urllib.parse", "sqlite3", "csv", "zipfile", "tarfile", "shutil", "tempfile",
    "typing", "dataclasses", "enum", "inspect", "unittest", "doctest", "pickle", "copy", "heapq", "bisect",
    "contextlib", "abc", "io", "codecs", "locale", "gettext", "calendar", "time", "socket", "ssl", "select",
    "hashlib", "hmac", "secrets", "base64", "struct", "array", "weakref", "gc", "traceback", "warnings",
]


def real_sentences(count: int) -> list[str]:
    """English sentences from the docstrings of the standard library (deterministic for a Python version)."""
    found: list[str] = []
    seen: set[str] = set()
    for name in _MODULES:
        module = importlib.import_module(name)
        docs = [module.__doc__ or ""] + [getattr(module, a).__doc__ or "" for a in sorted(dir(module))[:200]
                                         if not a.startswith("_") and callable(getattr(module, a, None))]
        for doc in docs:
            for sentence in _SENTENCE.split(" ".join(doc.split())):
                if 20 <= len(sentence) <= 400 and sentence not in seen:
                    seen.add(sentence)
                    found.append(sentence)
                    if len(found) == count:
                        return found
    return found


def test_onnx_vectors_match_sentence_transformers_on_1000_real_sentences(onnx):
    sentences = real_sentences(1000)
    assert len(sentences) == 1000
    reference = SentenceTransformerEmbedder(torch_threads=1).embed(sentences)
    batched = onnx.embed(sentences)
    assert batched.shape == (1000, 384) and batched.dtype == np.float32
    cosines = np.sum(batched * reference, axis=1)
    assert float(cosines.min()) >= 0.999
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    one_by_one = np.vstack([onnx.embed([s]) for s in sentences[:50]])
    assert np.allclose(one_by_one, batched[:50], atol=1e-4)  # padding in a batch changes nothing
    assert onnx.model_id == "all-MiniLM-L6-v2" and onnx.dim == 384
    assert onnx.embed([]).shape == (0, 384)


def _cost(groups: list[list[int]], lengths: list[int]) -> int:
    return sum(PASS_COST_TOKENS + len(g) * max(lengths[i] for i in g) for g in groups)


def _least_cost(lengths: list[int], max_rows: int) -> int:
    """By brute force: every way of cutting the rows sorted by length into runs of at most ``max_rows``."""
    ordered = sorted(lengths)
    best = None
    for mask in range(2 ** max(len(ordered) - 1, 0)):
        runs, start = [], 0
        for k in range(1, len(ordered) + 1):
            if k == len(ordered) or mask >> (k - 1) & 1:
                runs.append(ordered[start:k])
                start = k
        if all(len(r) <= max_rows for r in runs):
            cost = sum(PASS_COST_TOKENS + len(r) * r[-1] for r in runs)
            best = cost if best is None else min(best, cost)
    assert best is not None
    return best


def test_passes_group_rows_at_the_least_padding_cost() -> None:
    import random

    rng = random.Random(5)
    for _ in range(300):
        lengths = [rng.choice([rng.randint(5, 14), rng.randint(15, 60)]) for _ in range(rng.randint(1, 10))]
        max_rows = rng.randint(1, 6)
        groups = passes(lengths, max_rows)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every row once
        assert all(len(g) <= max_rows for g in groups)
        assert _cost(groups, lengths) == _least_cost(lengths, max_rows)
    # a typical coalesced pass under load, 11 queries of 12 tokens and 5 memories of 20: two passes, not one
    assert sorted(map(len, passes([12] * 11 + [20] * 5, 64))) == [5, 11]
    assert passes([12, 13, 12], 64) == [[0, 2, 1]]  # nearly equal lengths: one pass
    assert passes([], 64) == []


def test_mixed_lengths_embed_as_each_text_alone(onnx):
    texts = ["hi", *real_sentences(6), "what do I think about Porto?", " ".join(real_sentences(8))]
    together = onnx.embed(texts)
    alone = np.vstack([onnx.embed([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-5)


class _TracedOnnx(OnnxEmbedder):
    """Records each pass's thread and how many passes ran at once; with ``meet``, a call's first two passes wait
    for each other (they can only meet if they run at the same time)."""

    def __init__(self, *args, meet: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.threads: list[str] = []
        self.most_at_once = 0
        self._running = 0
        self._count = threading.Lock()
        self._meeting = threading.Barrier(2, timeout=20) if meet else None

    def embed_encoded(self, encodings):
        with self._count:
            self.threads.append(threading.current_thread().name)
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        try:
            if self._meeting is not None and len(self.threads) <= 2:
                self._meeting.wait()  # BrokenBarrierError after 20 s if the passes ran one after the other
            return super().embed_encoded(encodings)
        finally:
            with self._count:
                self._running -= 1


def test_a_large_call_runs_its_passes_on_every_core_with_the_same_vectors(onnx):
    sentences = real_sentences(300)
    one_by_one = OnnxEmbedder(cache_dir=onnx.onnx_path().parent, parallel=1).embed(sentences)
    parallel = _TracedOnnx(cache_dir=onnx.onnx_path().parent, parallel=2, meet=True)
    vectors = parallel.embed(sentences)
    assert np.allclose(vectors, one_by_one, atol=1e-5)  # each row its own text's vector, in the caller's order
    assert parallel.most_at_once == 2  # two passes met, never more than ``parallel`` at once
    assert len(parallel.threads) >= 5 and all(name.startswith("sealmem-embed") for name in parallel.threads)
    assert len(set(parallel.threads)) == 2


def test_a_small_call_runs_its_passes_on_the_callers_thread(onnx):
    """Searches, single adds and the coalesced passes of a loaded server stay on their own thread, even when
    their lengths make several passes (short and long texts are not padded together)."""
    parallel = _TracedOnnx(cache_dir=onnx.onnx_path().parent, parallel=2)
    texts = real_sentences(2 * MIN_ROWS_PER_PARALLEL_PASS - 1)
    assert np.allclose(parallel.embed(texts), onnx.embed(texts), atol=1e-5)
    assert len(parallel.threads) > 1 and set(parallel.threads) == {threading.current_thread().name}


def test_rows_per_pass_spreads_a_call_over_the_threads_in_passes_of_16_or_more() -> None:
    assert rows_per_pass(300, 64, 1) == 64
    assert rows_per_pass(300, 64, 2) == 64  # enough texts: full passes, several for each thread
    assert rows_per_pass(64, 64, 2) == 32  # one full pass split in two
    assert rows_per_pass(40, 64, 4) == MIN_ROWS_PER_PARALLEL_PASS
    assert rows_per_pass(20, 64, 2) == MIN_ROWS_PER_PARALLEL_PASS
    assert rows_per_pass(20, 8, 2) == 8  # never above the batch size


def test_long_input_is_truncated_like_sentence_transformers(onnx):
    text = " ".join(real_sentences(120))  # far beyond 256 tokens
    reference = SentenceTransformerEmbedder(torch_threads=1).embed([text])
    assert float(onnx.embed([text])[0] @ reference[0]) >= 0.999


def test_export_happens_once_and_concurrent_loaders_share_it(tmp_path: Path):
    cache = tmp_path / "models"
    embedders = [OnnxEmbedder(cache_dir=cache) for _ in range(3)]
    errors: list[BaseException] = []

    def load(embedder: OnnxEmbedder) -> None:
        try:
            embedder.embed(["hello world"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(e,)) for e in embedders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    files = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
    assert files == [embedders[0].onnx_path().name]  # one export, no temporary left behind
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    assert (cache.stat().st_mode & 0o077) == 0  # the cache folder is private


def test_settings_choose_the_runtime(tmp_path: Path):
    default = embedder_from_settings(StoreSettings(data_dir=tmp_path))
    assert isinstance(default, CoalescingEmbedder) and isinstance(default.inner, OnnxEmbedder)
    plain = embedder_from_settings(StoreSettings(data_dir=tmp_path, embedding_coalesce_max=1))
    assert isinstance(plain, OnnxEmbedder)
    assert default.inner.parallel == available_cores()  # a large call's passes: one per core by default
    one = embedder_from_settings(StoreSettings(data_dir=tmp_path, embedding_parallel_passes=1))
    assert isinstance(one, CoalescingEmbedder) and isinstance(one.inner, OnnxEmbedder) and one.inner.parallel == 1
    torch_one = embedder_from_settings(StoreSettings(data_dir=tmp_path, embedding_runtime="torch"))
    assert isinstance(torch_one, CoalescingEmbedder) and isinstance(torch_one.inner, SentenceTransformerEmbedder)


def test_the_int8_variant_stays_close_to_the_full_model_and_shares_its_export(tmp_path: Path):
    """``SEALMEM_EMBEDDING_RUNTIME=onnx-int8``: the exported graph, quantised once beside it, one scale per output
    channel of each weight matrix; its recall cost on LoCoMo is measured by bench/locomo_retrieval.py (README)."""
    cache = tmp_path / "models"
    full = OnnxEmbedder(cache_dir=cache)
    int8 = embedder_from_settings(
        StoreSettings(data_dir=tmp_path, embedding_runtime="onnx-int8", embedding_coalesce_max=1)
    )
    assert isinstance(int8, OnnxEmbedder) and int8.onnx_path().name.endswith("-int8pc.onnx")
    sentences = real_sentences(200)
    exact, quantised = full.embed(sentences), int8.embed(sentences)
    cosines = np.sum(exact * quantised, axis=1)
    # Measured: mean 0.993, least 0.986; one scale per matrix (the first int8 graph) gave 0.959 and 0.926.
    assert float(cosines.mean()) >= 0.985 and float(cosines.min()) >= 0.96, (cosines.mean(), cosines.min())
    # The ranking, not the vectors, is what search uses: each sentence's 10 nearest others mostly stay its 10
    # nearest (measured: 92 % of them; 84 % per matrix).
    exact_near = np.argsort(-exact @ exact.T, axis=1)[:, 1:11]
    quantised_near = np.argsort(-quantised @ quantised.T, axis=1)[:, 1:11]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_near, quantised_near, strict=True)])
    assert overlap >= 0.88, overlap
    names = sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))
    assert names == sorted([full.onnx_path().name, int8.onnx_path().name])  # one export, quantised once


def test_a_cache_holding_the_int8_graph_quantised_per_matrix_keeps_it(tmp_path: Path, caplog):
    """A models cache made by an earlier release holds ``-int8.onnx`` (quantised per weight matrix): the vectors
    stored with it stay comparable with new ones only if that graph goes on embedding, so it is used (with a
    warning) and no per-channel graph is made beside it."""
    cache = tmp_path / "models"
    full = OnnxEmbedder(cache_dir=cache)
    sentences = real_sentences(20)
    exact = full.embed(sentences)
    # Stand-in for the earlier graph: the full graph under its name, so which file was run shows in the vectors.
    legacy = cache / f"{full.onnx_path().stem}-int8.onnx"
    shutil.copyfile(full.onnx_path(), legacy)
    with caplog.at_level(logging.WARNING, logger="sealmem.embedder"):
        kept = OnnxEmbedder(cache_dir=cache, int8=True)
        vectors = kept.embed(sentences)
    assert kept.onnx_path() == legacy
    assert float(np.sum(exact * vectors, axis=1).min()) > 0.99999  # the full graph ran: no quantised file was made
    assert "quantised per weight matrix" in caplog.text
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        [full.onnx_path().name, legacy.name]
    )
    # Once it is removed, the graph quantised per channel is made and used.
    legacy.unlink()
    fresh = OnnxEmbedder(cache_dir=cache, int8=True)
    assert fresh.onnx_path().name.endswith("-int8pc.onnx")
    assert float(np.sum(exact * fresh.embed(sentences), axis=1).min()) < 0.9999
