"""CoalescingEmbedder: concurrent small embedding calls run together, each caller gets exactly its own vectors,
one caller's failure stays its own, and an idle embedder never waits for company."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from memory_store.coalescing import CoalescingEmbedder
from memory_store.embedder import Embedder, HashingEmbedder, Vectors
from memory_store.onnx_embedder import OnnxEmbedder
from tests.test_onnx_embedder import real_sentences


class Gated:
    """Wraps a real embedder: the first pass is held at a gate until the test opens it, so the calls that
    arrive meanwhile queue up (the moment of load the coalescer is for). Records every pass's texts and the
    most passes running at once."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.passes: list[list[str]] = []
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        with self._lock:
            self.passes.append(list(texts))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            self.gate.wait(timeout=30)
            return self.inner.embed(texts)
        finally:
            with self._lock:
                self.running -= 1


class FailsOn(Gated):
    def __init__(self, inner: Embedder, poison: str) -> None:
        super().__init__(inner)
        self.poison = poison

    def embed(self, texts: Sequence[str]) -> Vectors:
        if self.poison in texts:
            with self._lock:
                self.passes.append(list(texts))
            raise RuntimeError("cannot embed this text")
        return super().embed(texts)


def _wait_queued(embedder: CoalescingEmbedder, count: int) -> None:
    deadline = time.monotonic() + 30
    while embedder.queued < count:
        assert time.monotonic() < deadline, f"only {embedder.queued} of {count} calls queued"
        time.sleep(0.005)


def _concurrently(
    embedder: CoalescingEmbedder, calls: list[list[str]]
) -> tuple[list[Vectors | None], list[BaseException | None]]:
    results: list[Vectors | None] = [None] * len(calls)
    errors: list[BaseException | None] = [None] * len(calls)

    def one(i: int) -> None:
        try:
            results[i] = embedder.embed(calls[i])
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    threads[0].start()
    deadline = time.monotonic() + 30
    while not (isinstance(embedder.inner, Gated) and embedder.inner.passes):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    for queued, thread in enumerate(threads[1:], start=1):
        thread.start()
        _wait_queued(embedder, queued)  # one by one: the queue's order is the calls' order
    assert isinstance(embedder.inner, Gated)
    embedder.inner.gate.set()
    for thread in threads:
        thread.join(timeout=60)
    return results, errors


def test_calls_queued_behind_a_pass_run_together_and_each_gets_its_own_vectors(onnx: OnnxEmbedder):
    sentences = real_sentences(33)
    gated = Gated(onnx)
    embedder = CoalescingEmbedder(gated, max_batch=16)
    calls = [[s] for s in sentences[:31]] + [sentences[31:33]]  # 31 single calls and one of two texts
    results, errors = _concurrently(embedder, calls)
    assert errors == [None] * len(calls)
    # The first call ran alone (nothing else was queued); the 32 that queued behind it ran in passes of at most
    # 16 texts, in arrival order, instead of 32 passes.
    assert gated.passes[0] == calls[0]
    assert [len(p) for p in gated.passes[1:]] == [16, 16]
    assert embedder.passes == 3 and embedder.calls == 32
    # Each caller got its own rows: the same vectors as embedding its texts alone.
    for call, got in zip(calls, results, strict=True):
        assert got is not None and got.shape == (len(call), onnx.dim) and got.dtype == np.float32
        alone = onnx.embed(call)
        assert float(np.min(np.sum(got * alone, axis=1))) >= 0.99999
    # Rows are the caller's own arrays, not views into a shared batch.
    first, second = results[1], results[2]
    assert first is not None and second is not None
    first[0, 0] = 42.0
    assert second[0, 0] != 42.0


def test_an_idle_embedder_runs_a_call_at_once_alone(onnx: OnnxEmbedder):
    gated = Gated(onnx)
    gated.gate.set()
    embedder = CoalescingEmbedder(gated, max_batch=16)
    for text in ("first", "second", "third"):
        embedder.embed([text])
    assert gated.passes == [["first"], ["second"], ["third"]]


def test_large_calls_go_straight_to_the_wrapped_embedder():
    gated = Gated(HashingEmbedder())
    gated.gate.set()
    embedder = CoalescingEmbedder(gated, max_batch=4)
    texts = [f"text {i}" for i in range(9)]
    np.testing.assert_array_equal(embedder.embed(texts), HashingEmbedder().embed(texts))
    assert embedder.passes == 0 and gated.passes == [texts]
    assert embedder.embed([]).shape == (0, 64)


def test_a_failing_text_fails_only_its_own_caller():
    inner = FailsOn(HashingEmbedder(), poison="poison")
    embedder = CoalescingEmbedder(inner, max_batch=16)
    calls = [["first"], ["good one"], ["poison"], ["good two", "good three"]]
    results, errors = _concurrently(embedder, calls)
    assert isinstance(errors[2], RuntimeError) and results[2] is None
    for i in (0, 1, 3):
        assert errors[i] is None
        np.testing.assert_allclose(results[i], HashingEmbedder().embed(calls[i]))  # type: ignore[arg-type]
    # The merged pass failed, then each call was retried on its own.
    assert ["good one", "poison", "good two", "good three"] in inner.passes
    assert ["good one"] in inner.passes and ["good two", "good three"] in inner.passes


@pytest.mark.parametrize("runners", [1, 2])
def test_no_more_passes_run_at_once_than_runners(runners: int):
    gated = Gated(HashingEmbedder())
    embedder = CoalescingEmbedder(gated, max_batch=2, runners=runners)
    threads = [threading.Thread(target=embedder.embed, args=([f"t{i}"],)) for i in range(40)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while gated.running < runners or embedder.queued < 40 - 2 * runners:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(0.05)
    assert gated.running == runners
    gated.gate.set()
    for thread in threads:
        thread.join(timeout=30)
    assert gated.most_running == runners
    assert embedder.calls == 40 and embedder.queued == 0


@pytest.mark.parametrize("runners", [1, 2, 3])
def test_many_callers_at_once_each_get_their_own_vectors_and_no_slot_is_lost(runners: int):
    """48 threads x 25 calls of 1-5 texts, no gate: whatever the interleaving (slots handed over, calls taken by
    another runner's pass), every caller gets exactly its texts' vectors, and afterwards no runner slot is held
    and nothing is queued (a lost slot would stall the embedder for good)."""
    exact = HashingEmbedder()
    embedder = CoalescingEmbedder(HashingEmbedder(), max_batch=8, runners=runners)
    wrong: list[str] = []

    def caller(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for i in range(25):
            texts = [f"caller {seed} call {i} text {j}" for j in range(int(rng.integers(1, 6)))]
            if not np.array_equal(embedder.embed(texts), exact.embed(texts)):
                wrong.append(texts[0])

    threads = [threading.Thread(target=caller, args=(seed,)) for seed in range(48)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not wrong
    assert embedder.calls == 48 * 25
    assert embedder.busy_runners == 0 and embedder.queued == 0


def test_settings_validate():
    with pytest.raises(ValueError):
        CoalescingEmbedder(HashingEmbedder(), max_batch=1)
    with pytest.raises(ValueError):
        CoalescingEmbedder(HashingEmbedder(), runners=0)


def test_the_store_embeds_through_it(tmp_path: Path):
    """The default settings wrap the runtime: a service built from them coalesces."""
    from memory_store import StoreSettings
    from memory_store.embedder import embedder_from_settings

    embedder = embedder_from_settings(StoreSettings(data_dir=tmp_path, embedding_coalesce_max=8, embedding_runners=2))
    assert isinstance(embedder, CoalescingEmbedder)
    assert embedder.dim == 384 and embedder.model_id == "all-MiniLM-L6-v2"
