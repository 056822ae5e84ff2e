"""Fixtures of the reliability and security proofs (issue 7).

In-process: the real app (``tests.harness.Harness``, built by ``create_app``) on a deterministic fake LLM
(``tests.chat.fakes.FakeBackend``), real SQLite and FAISS in ``tmp_path`` and a HashingEmbedder, served by
uvicorn over real HTTP. Out of process: ``sealmem serve`` as a real subprocess (``tests.proofs.process``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from functools import partial
from pathlib import Path

import pytest

from memory_store.embedder import HashingEmbedder
from service.settings import Settings
from tests.harness import Harness, Launcher, coalesced_hashing

EMBED_DIM = 384


def serve_app(settings: Settings) -> AbstractContextManager[Harness]:
    """The app served over real HTTP, as ``make_served`` starts it, for fixtures wider than one test."""
    return Harness.serve(settings, embedder=HashingEmbedder(EMBED_DIM))


@pytest.fixture
def make_served(tmp_path: Path, migrated_db: Path) -> Iterator[Callable[..., Harness]]:
    """Serve apps (uvicorn in a thread of this process) with setting overrides; all are stopped at teardown."""
    with ExitStack() as stack:
        yield Launcher(stack, tmp_path, migrated_db, embedder=partial(coalesced_hashing, EMBED_DIM)).serve
