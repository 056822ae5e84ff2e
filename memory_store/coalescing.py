"""Dynamic batching of concurrent embedding calls.

Under load, many request threads each embed one short text (a search query, a single added memory). One forward
pass over a batch of such texts costs far less per text than one pass each: for all-MiniLM-L6-v2 on ONNX
Runtime, one core, about half the CPU per text in batches of 16 (``bench/embed_batching.py``: 8.9 ms alone,
5.2 ms in fours, 4.5 ms in sixteens on the 2-vCPU development VM; with 32 concurrent callers 7.9 ms per
embedding plain against 4.8-5.1 ms coalesced). :class:`CoalescingEmbedder` wraps any
:class:`~memory_store.embedder.Embedder` and runs the calls that arrive while a pass is running together in the
next pass.

It never waits for company: a call that finds a free runner slot runs at once (alone, when nothing else is
queued), so an idle server answers exactly as fast as before. Only calls that would have queued for the CPU
anyway are merged. Calls of ``max_batch`` texts or more go straight to the wrapped embedder.

A pass that fails is retried text set by text set, so one caller's failure is never another caller's.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from memory_store.embedder import Embedder, Vectors


@dataclass(eq=False)
class _Call:
    texts: Sequence[str]
    wake: threading.Event = field(default_factory=threading.Event)
    vectors: Vectors | None = None
    error: BaseException | None = None
    done: bool = False
    leads: bool = False  # holds (or has been handed) a runner slot; changed under the embedder's lock


class CoalescingEmbedder:
    """Runs concurrent small :meth:`embed` calls as one batch each time a runner slot frees up.

    ``runners`` passes may run at once (each on its own caller thread; the wrapped embedder must be thread-safe,
    as ONNX Runtime sessions and the other embedders here are). A pass takes queued calls in arrival order, up to
    ``max_batch`` texts in all.
    """

    def __init__(self, inner: Embedder, *, max_batch: int = 16, runners: int = 1) -> None:
        if max_batch < 2:
            raise ValueError("max_batch must be at least 2")
        if runners < 1:
            raise ValueError("runners must be at least 1")
        self._inner = inner
        self._max_batch = max_batch
        self._runners = runners
        self._running = 0
        self._queue: deque[_Call] = deque()
        self._lock = threading.Lock()
        self.passes = 0  # forward passes run for coalesced calls
        self.calls = 0  # calls served by them

    @property
    def queued(self) -> int:
        """Calls waiting for a pass."""
        with self._lock:
            return len(self._queue)

    @property
    def busy_runners(self) -> int:
        with self._lock:
            return self._running

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def inner(self) -> Embedder:
        return self._inner

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    @property
    def dim(self) -> int:
        return self._inner.dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        if len(texts) >= self._max_batch or not texts:
            return self._inner.embed(texts)
        call = _Call(texts)
        with self._lock:
            self._queue.append(call)
            call.leads = self._running < self._runners
            if call.leads:
                self._running += 1
        if not call.leads:
            call.wake.wait()  # set when the call is done, or when a runner hands its slot over to this call
        if call.leads:  # (even if done meanwhile: the slot it was handed must be passed on)
            self._lead(call)
        if call.error is not None:
            raise call.error
        assert call.vectors is not None
        return call.vectors

    def _lead(self, own: _Call) -> None:
        """Hold a runner slot: run passes from the front of the queue until ``own`` is done, then hand the slot
        to the next queued call (woken to lead in turn) or give it back."""
        own.wake.clear()  # from here on it means "done" only
        while not own.done:
            with self._lock:
                if not self._queue:  # ``own`` is in another runner's pass: nothing left to lead
                    self._running -= 1
                    break
                batch = self._take()
            self._run(batch)
        else:
            with self._lock:
                heir = next((call for call in self._queue if not call.leads), None)
                if heir is None:
                    self._running -= 1
                else:
                    heir.leads = True
            if heir is not None:
                heir.wake.set()
            return
        own.wake.wait()

    def _take(self) -> list[_Call]:
        """Queued calls from the front, up to ``max_batch`` texts (always at least one call)."""
        batch = [self._queue.popleft()]
        size = len(batch[0].texts)
        while self._queue and size + len(self._queue[0].texts) <= self._max_batch:
            size += len(self._queue[0].texts)
            batch.append(self._queue.popleft())
        self.passes += 1
        self.calls += len(batch)
        return batch

    def _run(self, batch: list[_Call]) -> None:
        """Embed ``batch`` in one pass and hand each call its rows; on failure, each call on its own."""
        try:
            vectors = self._inner.embed([text for call in batch for text in call.texts])
        except BaseException as exc:
            if len(batch) == 1:
                self._settle(batch[0], None, exc)
                return
            for call in batch:
                try:
                    self._settle(call, self._inner.embed(call.texts), None)
                except BaseException as exc:
                    self._settle(call, None, exc)
            return
        start = 0
        for call in batch:
            rows = np.array(vectors[start : start + len(call.texts)], dtype=np.float32, copy=True)
            start += len(call.texts)
            self._settle(call, rows, None)

    @staticmethod
    def _settle(call: _Call, vectors: Vectors | None, error: BaseException | None) -> None:
        call.vectors = vectors
        call.error = error
        call.done = True
        call.wake.set()
