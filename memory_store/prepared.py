"""Work a search or an add can do before it needs the database: screening the text and embedding it.

The service runs it on its own threads while a request waits for the request thread, so the embeddings of many
waiting requests meet in the coalescing embedder and run as one batch (:mod:`memory_store.coalescing`). It is
only a head start: the store call checks that what was prepared is for the same input, under the same
desensitisation policy (and for a search, the same subject), and does the work itself otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from memory_store.sensitive.policy import SensitivePolicy
from memory_store.sensitive.vault import Screened

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EarlyVector:
    """A query's vector, embedded before the search read its subject: for the guessed internal subject id,
    ``text`` being the query as embedded (without the subject's speakers' names, by its cached index)."""

    subject_id: str
    text: str
    vector: Vector


@dataclass(frozen=True, kw_only=True)
class PreparedSearch:
    tenant_id: str
    subject: str
    query: str
    role: str | None
    strip_speakers: bool
    stored: str
    """The query as a write would store it (``MemoryStore.as_stored``)."""
    early: EarlyVector | None


@dataclass(frozen=True, kw_only=True)
class PreparedAdd:
    tenant_id: str
    texts: tuple[str, ...]
    policy: SensitivePolicy
    screened: tuple[Screened, ...]
    vectors: Vector
