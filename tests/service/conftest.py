"""Fixtures for the REST service tests: the real app (``tests.harness.Harness``) over HTTP, on real SQLite and
real FAISS in ``tmp_path``, with a deterministic HashingEmbedder and the chat loop disabled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.harness import Harness, Launcher, fresh_data_dir
from tests.harness import make_settings as harness_settings

# The chat loop has its own tests (tests/chat): no LLM per app here.
DEFAULTS: dict[str, Any] = {"chat_enabled": False}


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    return harness_settings(data_dir, **{**DEFAULTS, **overrides})


@pytest.fixture
def service_settings(tmp_path: Path, migrated_db: Path) -> Settings:
    # Not named `settings`: tests/conftest.py's store fixtures use that name for StoreSettings.
    return make_settings(fresh_data_dir(tmp_path / "data", migrated_db))


@pytest.fixture
def api(service_settings: Settings) -> Iterator[Harness]:
    with Harness.start(service_settings) as harness:
        yield harness


@pytest.fixture
def make_api(tmp_path: Path, migrated_db: Path) -> Iterator[Callable[..., Harness]]:
    """Start further apps with setting overrides (or an injected embedder); all are stopped at teardown."""
    with ExitStack() as stack:
        yield Launcher(stack, tmp_path, migrated_db, **DEFAULTS).start
