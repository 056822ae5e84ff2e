"""One end user must not block chat for every tenant: the generation queue is fair across tenants and capped per
tenant (429 ``llm_busy`` with ``Retry-After``), a generation has a deadline that frees its slot, and a request's
``max_tokens`` cannot raise the operator's reply cap.

The gate is tested on its own under many random interleavings (asyncio) and behind the local backend's worker
threads; the HTTP tests run the real app (uvicorn) with the local backend's real gate, threads and deadline around
a scripted engine instead of a model; one test runs the deadline through ``model.generate`` on a tiny model.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.chat.runtime import backend_from_settings
from service.llm.backend import ChatMessage, GenerationParams, GenerationStats, LLMBusyError
from service.llm.gate import FairGate
from service.llm.local import LocalBackend
from tests.chat.conftest import chat_settings
from tests.chat.fakes import FakeBackend, WordCounter, serve
from tests.harness import Launcher, bearer


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the gate"
        time.sleep(0.005)


# ---- the gate on its own ------------------------------------------------------------------------------


def test_a_tenant_behind_another_tenants_backlog_gets_the_next_slot() -> None:
    async def scenario() -> list[str]:
        gate = FairGate(1, queue_max=64, per_tenant_max=8)
        order: list[str] = []
        await gate.acquire("A")  # A's first request is generating

        async def request(name: str, tenant: str) -> None:
            async with gate.slot(tenant):
                order.append(name)
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(request(f"A{i}", "A")) for i in range(2, 7)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(request("B1", "B")))
        await asyncio.sleep(0)
        assert gate.waiting_for("A") == 5 and gate.waiting_for("B") == 1 and gate.waiting == 6
        gate.release()  # A's first generation ends
        await asyncio.gather(*tasks)
        assert gate.active == 0 and gate.waiting == 0
        return order

    assert asyncio.run(scenario()) == ["B1", "A2", "A3", "A4", "A5", "A6"]


def test_waiting_tenants_take_turns() -> None:
    async def scenario() -> list[str]:
        gate = FairGate(1, queue_max=64, per_tenant_max=8)
        order: list[str] = []
        await gate.acquire(None)

        async def request(name: str, tenant: str) -> None:
            async with gate.slot(tenant):
                order.append(name)
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(request(f"A{i}", "A")) for i in range(4)]
        tasks += [asyncio.create_task(request(f"B{i}", "B")) for i in range(2)]
        tasks += [asyncio.create_task(request(f"C{i}", "C")) for i in range(3)]
        await asyncio.sleep(0)
        gate.release()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["A0", "B0", "C0", "A1", "B1", "C1", "A2", "C2", "A3"]


def test_a_full_tenant_share_or_full_queue_is_refused_with_429_and_retry_after() -> None:
    async def scenario() -> None:
        gate = FairGate(1, queue_max=4, per_tenant_max=2)
        await gate.acquire("A")
        waiting = [asyncio.create_task(gate.acquire("A")) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(LLMBusyError) as refused:
            await gate.acquire("A")
        assert refused.value.status == 429 and refused.value.code == "llm_busy"
        assert int(refused.value.headers["Retry-After"]) > 0
        assert "tenant" in refused.value.message
        others = [asyncio.create_task(gate.acquire(t)) for t in ("B", "C")]  # other tenants still queue
        await asyncio.sleep(0)
        assert gate.waiting == 4
        with pytest.raises(LLMBusyError, match="too many requests"):
            await gate.acquire("D")  # the whole queue is full: refused whoever asks
        for _ in range(5):
            gate.release()
            await asyncio.sleep(0)
        await asyncio.gather(*waiting, *others)
        assert gate.active == 0 and gate.waiting == 0

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_its_tenants_line() -> None:
    async def scenario() -> None:
        gate = FairGate(1, queue_max=8, per_tenant_max=1)
        await gate.acquire("A")
        waiting = asyncio.create_task(gate.acquire("B"))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert gate.waiting == 0 and gate.waiting_for("B") == 0
        again = asyncio.create_task(gate.acquire("B"))  # its share is free again
        await asyncio.sleep(0)
        gate.release()
        await again
        gate.release()
        assert gate.active == 0

    asyncio.run(scenario())


class _LoggingGate(FairGate):
    """Logs every admission, in the order the gate makes them, into a shared event list."""

    def __init__(self, events: list[tuple[Any, ...]], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events = events

    def _admitted(self, tenant: str | None) -> None:
        self.events.append(("admit", tenant))
        super()._admitted(tenant)


async def _random_contention(seed: int, *, cancel_waiters: bool) -> int:
    """Random tenants, holds and arrivals against one gate (one noisy tenant); clients go away while holding a
    slot, and with ``cancel_waiters`` while waiting too. Checks caps, leaks and order within a tenant; without
    waiters cancelled, also the round-robin bound on every admission (replayed from the gate's own order)."""
    rng = random.Random(seed)
    limit = rng.randint(1, 3)
    per_tenant = rng.randint(1, 6)
    queue_max = rng.randint(per_tenant, 14)
    tenants: list[str | None] = [None, "t1", "t2", "t3", "t4"][: rng.randint(2, 5)]
    events: list[tuple[Any, ...]] = []
    gate = _LoggingGate(events, limit, queue_max, per_tenant_max=per_tenant)
    waited: dict[str | None, list[int]] = {t: [] for t in tenants}  # arrival order of those that had to wait
    served: dict[str | None, list[int]] = {t: [] for t in tenants}  # the order they got their slot
    holding: set[asyncio.Task[None]] = set()
    refused = 0

    async def request(number: int, tenant: str | None, hold: int) -> None:
        nonlocal refused
        must_wait = gate.active >= limit or gate.waiting > 0
        full = gate.waiting >= queue_max or gate.waiting_for(tenant) >= per_tenant
        if not (must_wait and full):
            # its place in its tenant's line, should it wait
            events.append(("arrive", number, tenant, must_wait, gate.waiting_for(tenant) + 1))
        if must_wait and not full:
            waited[tenant].append(number)
        try:
            await gate.acquire(tenant)
        except LLMBusyError as exc:
            assert must_wait and full, "refused although it could wait"
            assert exc.status == 429 and "Retry-After" in exc.headers
            refused += 1
            return
        assert not (must_wait and full), "admitted past a full queue"
        assert gate.active <= limit
        if must_wait:
            served[tenant].append(number)
        task = asyncio.current_task()
        assert task is not None
        holding.add(task)
        try:
            for _ in range(hold):
                await asyncio.sleep(0)
        finally:
            holding.discard(task)
            gate.release()

    tasks: list[asyncio.Task[None]] = []
    for number in range(rng.randint(20, 80)):
        tenant = rng.choice(tenants[:1] * 3 + tenants)  # the first tenant is the noisy one
        tasks.append(asyncio.create_task(request(number, tenant, rng.randint(0, 4))))
        if rng.random() < 0.1:
            pool = tasks if cancel_waiters else sorted(holding, key=id)
            if pool:
                rng.choice(pool).cancel()  # a client going away
        for _ in range(rng.randint(0, 2)):
            await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results), results
    assert gate.active == 0 and gate.waiting == 0, "a slot or a waiter leaked"
    for tenant in tenants:
        admitted = set(served[tenant])
        assert served[tenant] == [n for n in waited[tenant] if n in admitted], "a tenant's line lost its order"
    if not cancel_waiters:
        _check_round_robin(events, seed)
    return refused


def _check_round_robin(events: list[tuple[Any, ...]], seed: int) -> None:
    """Replay the gate's admissions: a request ``position``-th in its tenant's line on arrival waits for at most
    ``position`` admissions of each other tenant (one turn each per request ahead of it, its own included)."""
    lines: dict[Any, list[tuple[int, int, int]]] = {}  # tenant -> (number, event index, position), oldest first
    fast_path = False
    for index, event in enumerate(events):
        if event[0] == "arrive":
            _, number, tenant, waits, position = event
            if waits:
                lines.setdefault(tenant, []).append((number, index, position))
            else:
                assert events[index + 1] == ("admit", tenant), "a free slot was not taken at once"
                fast_path = True
            continue
        tenant = event[1]
        if fast_path:
            fast_path = False
            continue
        number, arrived, position = lines[tenant].pop(0)
        between = [e[1] for e in events[arrived:index] if e[0] == "admit"]
        for other in set(between) - {tenant}:
            assert between.count(other) <= position, (seed, number, tenant, other, between, position)
    assert not any(lines.values()), "a waiting request was never admitted"


def test_the_gate_under_many_random_interleavings() -> None:
    refusals = [asyncio.run(_random_contention(seed, cancel_waiters=False)) for seed in range(400)]
    assert sum(refusals) > 0  # the caps were reached in some runs, and checked


def test_the_gate_under_random_interleavings_with_waiters_going_away() -> None:
    refusals = [asyncio.run(_random_contention(seed, cancel_waiters=True)) for seed in range(400)]
    assert sum(refusals) > 0


def test_worker_threads_serve_a_newcomer_tenant_after_the_running_generation() -> None:
    """Behind the local backend's worker threads (the slot is freed from the thread via the loop), repeatedly."""
    backend = LocalBackend("unused", concurrency=1, queue_max=64, queue_per_tenant=8)

    async def scenario(backlog: int, newcomer_after: int) -> list[str]:
        started: list[str] = []
        go = threading.Event()

        def engine(name: str) -> Callable[[threading.Event], Iterator[str]]:
            def run(cancel: threading.Event) -> Iterator[str]:
                started.append(name)
                go.wait(5)
                yield name

            return run

        async def request(name: str, tenant: str) -> str:
            parts = [d async for d in backend.stream_sync(engine(name), GenerationStats(), tenant=tenant)]
            return "".join(parts)

        first = asyncio.create_task(request("A0", "A"))
        while not started:
            await asyncio.sleep(0.001)
        tasks = [first]
        for i in range(1, backlog + 1):
            tasks.append(asyncio.create_task(request(f"A{i}", "A")))
            if i == newcomer_after:
                tasks.append(asyncio.create_task(request("B0", "B")))
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        go.set()
        assert [await t for t in tasks]
        assert backend.gate.active == 0 and backend.gate.waiting == 0
        return started

    rng = random.Random(7)
    for _ in range(25):
        backlog = rng.randint(1, 7)
        started = asyncio.run(scenario(backlog, rng.randint(1, backlog)))
        assert started[:2] == ["A0", "B0"], started
        assert started[2:] == [f"A{i}" for i in range(1, backlog + 1)]


# ---- the generation deadline ----------------------------------------------------------------------------


def test_the_deadline_stops_a_long_generation_and_frees_the_slot() -> None:
    backend = LocalBackend("unused", concurrency=1, queue_max=8, generation_timeout_s=0.3)
    told_to_stop: list[bool] = []

    def endless(cancel: threading.Event) -> Iterator[str]:
        try:
            while True:
                time.sleep(0.005)
                yield "la "
        finally:  # the worker stops pulling once the cancel is set, and closes the engine
            told_to_stop.append(cancel.is_set())

    def short(cancel: threading.Event) -> Iterator[str]:
        yield "done"

    async def scenario() -> tuple[GenerationStats, GenerationStats, float, float]:
        started = time.monotonic()
        long_stats, next_stats = GenerationStats(), GenerationStats()

        async def long_request() -> str:
            return "".join([d async for d in backend.stream_sync(endless, long_stats, tenant="A")])

        async def next_request() -> str:
            return "".join([d async for d in backend.stream_sync(short, next_stats, tenant="B")])

        long_task = asyncio.create_task(long_request())
        await asyncio.sleep(0.05)
        next_task = asyncio.create_task(next_request())
        await asyncio.sleep(0.05)
        assert backend.gate.active == 1 and backend.gate.waiting == 1
        long_reply = await long_task
        long_done = time.monotonic() - started
        assert await next_task == "done" and long_reply.startswith("la ")
        assert backend.gate.active == 0 and backend.gate.waiting == 0
        return long_stats, next_stats, long_done, time.monotonic() - started

    long_stats, next_stats, long_done, all_done = asyncio.run(scenario())
    assert told_to_stop == [True]
    assert long_stats.finish_reason == "length" and long_stats.info["truncated"] == "generation_timeout"
    assert next_stats.finish_reason == "stop" and "truncated" not in next_stats.info
    assert 0.25 < long_done < 3.0 and all_done < 3.0
    assert next_stats.queued_s > 0.15  # it waited for the long one, and no longer than its deadline


def test_the_deadline_stops_model_generate_at_the_next_token() -> None:
    """The real ``model.generate`` path (a tiny random model): the stopping criterion sees the cancel."""
    from tests.kv.conftest import tiny_model

    backend = LocalBackend("unused", loaded=tiny_model(), concurrency=1, queue_max=2, generation_timeout_s=0.2)
    max_new = 1500

    async def scenario() -> tuple[GenerationStats, float]:
        stats = GenerationStats()
        started = time.monotonic()
        params = GenerationParams(max_new_tokens=max_new, tenant="A")
        # min_new_tokens: the random model must not end early on its own end-of-text token
        _ = [d async for d in backend.stream_ids(list(b"hello there"), params, stats, min_new_tokens=max_new)]
        elapsed = time.monotonic() - started
        assert backend.gate.active == 0
        return stats, elapsed

    stats, elapsed = asyncio.run(scenario())
    assert stats.finish_reason == "length" and stats.info["truncated"] == "generation_timeout"
    assert 0 < stats.completion_tokens < max_new
    assert elapsed < 5.0


def test_the_openai_backend_cuts_a_reply_at_the_deadline() -> None:
    from service.llm.openai_backend import OpenAIBackend
    from tests.chat.openai_server import Script, fake_openai_app

    messages = [ChatMessage("system", "- My dog is named Biscuit."), ChatMessage("user", "What is my dog's name?")]

    async def scenario(timeout: float) -> tuple[str, GenerationStats]:
        llm = OpenAIBackend(base_url=url + "/v1", model="tiny-remote", generation_timeout_s=timeout)
        try:
            stats = GenerationStats()
            text = "".join([d async for d in llm.stream(messages, GenerationParams(tenant="A"), stats)])
            assert llm.gate.active == 0
            return text, stats
        finally:
            await llm.aclose()

    with serve(fake_openai_app(Script())) as url:
        cut, cut_stats = asyncio.run(scenario(1e-6))
        whole, whole_stats = asyncio.run(scenario(60.0))
    assert cut == "" and cut_stats.finish_reason == "length"
    assert cut_stats.info["truncated"] == "generation_timeout"
    assert whole.startswith("You told me") and whole_stats.finish_reason == "stop"


def test_settings_reach_the_backends() -> None:
    local = backend_from_settings(
        chat_settings(llm_queue_max=20, llm_queue_per_tenant=3, llm_generation_timeout_seconds=7.5)
    )
    assert isinstance(local, LocalBackend)
    assert (local.gate.queue_max, local.gate.per_tenant_max, local.generation_timeout_s) == (20, 3, 7.5)
    remote: Any = backend_from_settings(
        chat_settings(
            llm_backend="openai",
            openai_base_url="http://127.0.0.1:9/v1",
            openai_model="m",
            llm_queue_per_tenant=2,
            llm_generation_timeout_seconds=30,
        )
    )
    assert (remote.gate.per_tenant_max, remote.generation_timeout_s) == (2, 30.0)
    defaults = chat_settings()
    assert defaults.llm_queue_per_tenant == 8 and defaults.llm_generation_timeout_seconds == 120.0


# ---- through the HTTP API ---------------------------------------------------------------------------------


class ScriptedLocal(LocalBackend):
    """The local backend's real gate, worker threads and deadline around a scripted engine instead of a model.

    Replies as :class:`FakeBackend` does, one word per step; while ``go`` is clear each generation holds its slot
    (once started); ``endless`` repeats the reply until told to stop. Records the parameters it receives and the
    tenants whose generations started, in order."""

    kind = "scripted"

    def __init__(self, *, hold: bool = False, endless: bool = False, **kwargs: Any) -> None:
        super().__init__("scripted", **kwargs)
        self.go = threading.Event()
        if not hold:
            self.go.set()
        self.endless = endless
        self.received: list[GenerationParams] = []
        self.started: list[str | None] = []
        self._words = WordCounter()

    async def start(self) -> None:
        return None

    @property
    def ready(self) -> bool:
        return True

    @property
    def model_name(self) -> str:
        return "scripted"

    @property
    def context_tokens(self) -> int:
        return 2048

    @property
    def counter(self) -> Any:
        return self._words

    def stream(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        stats: GenerationStats,
        *,
        cancel: threading.Event | None = None,
    ) -> Any:
        self.received.append(params)
        words = FakeBackend.reply_for(messages).split(" ")
        stats.prompt_tokens = self._words.count_messages(messages)

        def engine(stop: threading.Event) -> Iterator[str]:
            self.started.append(params.tenant)
            while not self.go.wait(0.01):
                if stop.is_set():
                    return
            n = 0
            while n < params.max_new_tokens and (self.endless or n < len(words)):
                if stop.is_set() or (cancel is not None and cancel.is_set()):
                    return
                if self.endless:
                    time.sleep(0.005)
                word = words[n % len(words)]
                stats.completion_tokens += 1
                yield word if n == 0 else " " + word
                n += 1
            stats.finish_reason = "length" if n < len(words) or self.endless else "stop"

        return self.stream_sync(engine, stats, tenant=params.tenant)


@pytest.fixture
def launcher(tmp_path: Path, migrated_db: Path) -> Iterator[Launcher]:
    with ExitStack() as stack:
        yield Launcher(stack, tmp_path, migrated_db)


def test_max_tokens_above_the_setting_is_capped(launcher: Launcher) -> None:
    backend = ScriptedLocal()
    harness = launcher.start(llm=backend, llm_max_new_tokens=32)
    keys = harness.tenant()
    base = {"subject": "ana", "message": "Hello there", "write_back": False}
    harness.chat(keys.app, **base, max_tokens=5000)
    harness.chat(keys.app, **base, max_tokens=8192)
    harness.chat(keys.app, **base, max_tokens=10)
    harness.chat(keys.app, **base)
    messages = [{"role": "user", "content": "Hello there"}]
    for extra in ({"max_completion_tokens": 4000}, {"max_tokens": 8000}, {"max_tokens": 8}, {}):
        response = harness.client.post(
            "/v1/chat/completions", json={"messages": messages, "user": "ana", **extra}, headers=bearer(keys.app)
        )
        assert response.status_code == 200, response.text
    assert [p.max_new_tokens for p in backend.received] == [32, 32, 10, 32, 32, 32, 8, 32]
    assert {p.tenant for p in backend.received} == {keys.id}


def test_a_tenant_over_its_queue_share_gets_429_and_others_still_get_served(launcher: Launcher) -> None:
    backend = ScriptedLocal(hold=True, concurrency=1, queue_max=64, queue_per_tenant=2)
    harness = launcher.serve(llm=backend)
    noisy, quiet = harness.tenant("noisy"), harness.tenant("quiet")
    gate = backend.gate

    def chat(key: str, message: str) -> httpx.Response:
        body = {"subject": "u1", "message": message, "write_back": False}
        with httpx.Client(base_url=harness.url, timeout=60) as client:
            return client.post("/v1/chat", json=body, headers=bearer(key))

    with ThreadPoolExecutor(max_workers=8) as pool:
        pending: list[Future[httpx.Response]] = [pool.submit(chat, noisy.app, "first")]
        wait_until(lambda: backend.started == [noisy.id])
        pending += [pool.submit(chat, noisy.app, f"more {i}") for i in range(2)]
        wait_until(lambda: gate.waiting_for(noisy.id) == 2)

        refused = chat(noisy.app, "one too many")
        assert refused.status_code == 429, refused.text
        assert refused.headers["Retry-After"] == "2"
        error = refused.json()["error"]
        assert error["code"] == "llm_busy" and "tenant" in error["message"]
        assert error["request_id"] == refused.headers["X-Request-ID"]
        streamed = harness.client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "user": "u2", "stream": True},
            headers=bearer(noisy.app),
        )
        assert streamed.status_code == 429 and streamed.json()["error"]["code"] == "llm_busy"
        assert streamed.headers["Retry-After"] == "2"

        pending.append(pool.submit(chat, quiet.app, "my turn"))  # the other tenant is not refused
        wait_until(lambda: gate.waiting_for(quiet.id) == 1)
        backend.go.set()
        responses = [f.result(timeout=60) for f in pending]
    assert [r.status_code for r in responses] == [200, 200, 200, 200], [r.text for r in responses]
    # the quiet tenant went right after the generation that was running, ahead of the noisy backlog
    assert backend.started == [noisy.id, quiet.id, noisy.id, noisy.id]
    assert gate.active == 0 and gate.waiting == 0


def test_a_generation_past_the_deadline_ends_with_length_and_frees_the_slot(launcher: Launcher) -> None:
    backend = ScriptedLocal(endless=True, generation_timeout_s=0.3)
    harness = launcher.start(llm=backend, llm_max_new_tokens=1024)
    keys = harness.tenant()
    started = time.monotonic()
    out = harness.chat(keys.app, subject="ana", message="Hello there", write_back=False)
    assert time.monotonic() - started < 5.0
    assert out["finish_reason"] == "length" and out["info"]["truncated"] == "generation_timeout"
    assert out["reply"].startswith("I don't know.") and out["usage"]["completion_tokens"] > 1
    assert backend.gate.active == 0
    response = harness.client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hello there"}], "user": "ana", "write_back": False},
        headers=bearer(keys.app),
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] == "length"
    assert backend.gate.active == 0 and backend.gate.waiting == 0


def test_the_tenant_reaches_the_gate_on_the_prompt_and_kv_paths(launcher: Launcher) -> None:
    from tests.chat.test_kv_chat import tiny_backend

    backend = tiny_backend()
    seen: list[str | None] = []
    acquire = backend.gate.acquire

    async def recording(tenant: str | None = None) -> None:
        seen.append(tenant)
        await acquire(tenant)

    backend.gate.acquire = recording  # type: ignore[method-assign]
    harness = launcher.start(llm=backend)
    keys = harness.tenant()
    harness.add(keys.app, "ana", "My dog is named Biscuit.")
    body: dict[str, Any] = {"subject": "ana", "message": "What is my dog's name?", "max_tokens": 3, "write_back": False}
    assert harness.chat(keys.app, injection="kv", **body)["info"]["injected_as"] == "kv"
    harness.chat(keys.app, injection="prompt", **body)
    assert seen == [keys.id, keys.id]
