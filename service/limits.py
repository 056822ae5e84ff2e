"""Input limits from settings, checked before anything is stored (the store keeps its own hard caps)."""

from __future__ import annotations

import json
from typing import Any

from memory_store.validation import nesting_depth
from service.errors import ApiError
from service.settings import Settings


class Limits:
    def __init__(self, settings: Settings) -> None:
        self.max_text_chars = settings.max_text_chars
        self.max_metadata_bytes = settings.max_metadata_bytes
        self.max_metadata_depth = settings.max_metadata_depth
        self.max_k = settings.max_k
        self.max_page_size = settings.max_page_size
        self.max_batch = settings.max_batch

    def text(self, text: str | None, *, field: str = "text") -> None:
        if text is not None and len(text) > self.max_text_chars:
            raise ApiError(422, f"{field}: longer than {self.max_text_chars} characters")

    def metadata(self, metadata: dict[str, Any] | None, *, field: str = "metadata") -> None:
        if metadata is None:
            return
        # Depth first (iteratively): serialising JSON nested hundreds of levels deep raises RecursionError.
        if nesting_depth(metadata, stop_above=self.max_metadata_depth) > self.max_metadata_depth:
            raise ApiError(422, f"{field}: nested deeper than {self.max_metadata_depth} levels")
        try:
            # ensure_ascii=False so that lone surrogates (valid JSON escapes, invalid Unicode) fail here.
            size = len(json.dumps(metadata, allow_nan=False, ensure_ascii=False).encode("utf-8"))
        except (TypeError, ValueError, UnicodeEncodeError):
            raise ApiError(422, f"{field}: must be JSON with finite numbers and valid Unicode") from None
        if size > self.max_metadata_bytes:
            raise ApiError(422, f"{field}: larger than {self.max_metadata_bytes} bytes")

    def k(self, k: int | None, *, default: int = 10) -> int:
        """The number of results to use: ``k`` if within the cap, else a 422; unset: ``default`` (capped)."""
        if k is None:
            return min(default, self.max_k)
        if k > self.max_k:
            raise ApiError(422, f"k: at most {self.max_k}")
        return k

    def page_size(self, limit: int | None, *, default: int = 50) -> int:
        """The page size to use: ``limit`` if within the cap, else a 422; unset: ``default`` (capped)."""
        if limit is None:
            return min(default, self.max_page_size)
        if limit > self.max_page_size:
            raise ApiError(422, f"limit: at most {self.max_page_size}")
        return limit

    def batch(self, count: int) -> None:
        if count > self.max_batch:
            raise ApiError(422, f"memories: at most {self.max_batch} per batch")
