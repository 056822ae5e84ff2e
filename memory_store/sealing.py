"""Encrypt and decrypt the content fields of one memory under its subject's data key."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt

from memory_store.crypto import memory_field_ad, open_sealed, seal


class MemorySealer:
    """Binds every field's ciphertext to (tenant, subject, memory uid, field name)."""

    def __init__(self, key: bytes, tenant_id: str, subject_id: str) -> None:
        self._key = key
        self._tenant_id = tenant_id
        self._subject_id = subject_id

    def _ad(self, field: str, uid: str) -> bytes:
        return memory_field_ad(field, self._tenant_id, self._subject_id, uid)

    def seal_text(self, uid: str, text: str) -> bytes:
        return seal(self._key, text.encode("utf-8"), self._ad("text", uid))

    def seal_metadata(self, uid: str, metadata: dict[str, Any]) -> bytes:
        raw = json.dumps(metadata, separators=(",", ":"), sort_keys=True).encode()
        return seal(self._key, raw, self._ad("metadata", uid))

    def seal_embedding(self, uid: str, vector: npt.NDArray[np.float32]) -> bytes:
        return seal(self._key, np.asarray(vector, dtype="<f4").tobytes(), self._ad("embedding", uid))

    def open_text(self, uid: str, blob: bytes) -> str:
        return open_sealed(self._key, blob, self._ad("text", uid)).decode("utf-8")

    def open_metadata(self, uid: str, blob: bytes) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(open_sealed(self._key, blob, self._ad("metadata", uid)))
        return value

    def open_embedding(self, uid: str, blob: bytes) -> npt.NDArray[np.float32]:
        return np.frombuffer(open_sealed(self._key, blob, self._ad("embedding", uid)), dtype="<f4").astype(np.float32)
