"""What the client's tests share: where the repository is, and the live server they run against."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:  # the repository's own test helpers (tests.proofs, tests.chat)
    sys.path.insert(0, str(REPO))

from tests.proofs.process import ServerProcess  # noqa: E402


@dataclass(frozen=True)
class Live:
    url: str
    admin_key: str
    app_key: str
    reader_key: str
    server: ServerProcess
