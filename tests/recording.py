"""An embedder for tests that need to see what the store embeds (what would leave for the model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from memory_store import HashingEmbedder


class RecordingEmbedder(HashingEmbedder):
    """The real hashing embedder, keeping every text it was asked to embed; ``before``, when set, runs once
    before the next embedding (to make something happen while a write is under way)."""

    def __init__(self) -> None:
        super().__init__(dim=384)
        self.texts: list[str] = []
        self.before: Callable[[], None] | None = None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        if self.before is not None:
            hook, self.before = self.before, None
            hook()
        return super().embed(texts)
