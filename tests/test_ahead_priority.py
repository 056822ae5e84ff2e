"""The threads that screen and embed requests ahead of their request threads (``service.ahead``) run at a lower
scheduling priority (``prepare_niceness``), and only they: read back from the kernel for the thread that
embedded a real search's query through the real app, on real SQLite."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest

from memory_store.coalescing import CoalescingEmbedder
from memory_store.embedder import HashingEmbedder, Vectors
from service.ahead import AheadOfRequests, lower_priority
from tests.harness import Harness, Launcher, bearer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness is per thread on Linux only")


def niceness() -> int:
    """The calling thread's niceness, as the kernel has it."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class SeenBy(HashingEmbedder):
    """The hashing embedder, noting the name and niceness of each thread that embeds a text."""

    def __init__(self) -> None:
        super().__init__(384)
        self.seen: dict[str, tuple[str, int]] = {}

    def embed(self, texts: Sequence[str]) -> Vectors:
        for text in texts:
            self.seen[text] = (threading.current_thread().name, niceness())
        return super().embed(texts)


@pytest.fixture
def launch(tmp_path: Path, migrated_db: Path) -> Iterator[Launcher]:
    with ExitStack() as stack:
        yield Launcher(stack, tmp_path, migrated_db)


def search_embedded_by(launch: Launcher, **settings: int) -> tuple[str, int]:
    """(thread name, niceness) of the thread that embedded a search's query in an app started with ``settings``
    (and checks that the thread that embedded an added memory was the same kind, at the same niceness)."""
    seen = SeenBy()
    harness: Harness = launch.start(embedder=CoalescingEmbedder(seen), **settings)
    headers = bearer(harness.tenant().app)
    fact = "I play the cello in a quartet on Thursdays."
    added = harness.client.post("/v1/memories", json={"subject": "ana", "text": fact}, headers=headers)
    assert added.status_code == 201, added.text
    # a subject's first search learns its internal id on the request thread; later ones are embedded ahead
    warm = {"subject": "ana", "query": "warm up", "k": 1}
    assert harness.client.post("/v1/memories/search", json=warm, headers=headers).status_code == 200
    query = "what did I say about the cello?"
    response = harness.client.post(
        "/v1/memories/search", json={"subject": "ana", "query": query, "k": 5}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"]
    assert seen.seen[fact][0].startswith("sealmem-ahead") and seen.seen[fact][1] == seen.seen[query][1]
    return seen.seen[query]


def test_a_search_is_embedded_ahead_on_a_lowered_thread(launch: Launcher) -> None:
    base = niceness()
    name, nice = search_embedded_by(launch, prepare_niceness=7)
    assert name.startswith("sealmem-ahead")
    assert nice == min(base + 7, 19)
    assert niceness() == base  # the thread that started the app is untouched


def test_niceness_zero_leaves_the_threads_as_they_were(launch: Launcher) -> None:
    base = niceness()
    name, nice = search_embedded_by(launch, prepare_niceness=0)
    assert name.startswith("sealmem-ahead")
    assert nice == base


def test_the_default_lowers_by_ten(launch: Launcher) -> None:
    assert search_embedded_by(launch)[1] == min(niceness() + 10, 19)


def test_lowering_one_thread_leaves_the_others() -> None:
    base = niceness()
    seen: dict[str, int] = {}

    def lowered() -> None:
        lower_priority(3)
        seen["lowered"] = niceness()
        # a thread started from a lowered thread inherits its niceness; one started elsewhere does not
        child = threading.Thread(target=lambda: seen.__setitem__("child", niceness()))
        child.start()
        child.join()

    def plain() -> None:
        seen["plain"] = niceness()

    first = threading.Thread(target=lowered)
    first.start()
    first.join()
    second = threading.Thread(target=plain)
    second.start()
    second.join()
    assert seen == {"lowered": min(base + 3, 19), "child": min(base + 3, 19), "plain": base}
    assert niceness() == base


def test_the_pool_runs_every_preparation_lowered() -> None:
    base = niceness()
    ahead = AheadOfRequests(3, niceness=4)
    try:

        async def many() -> list[int]:
            return [n for n in await asyncio.gather(*(ahead.run(niceness) for _ in range(12))) if n is not None]

        results = asyncio.run(many())
    finally:
        ahead.close()
    assert results == [min(base + 4, 19)] * 12
