"""Print the Sealmem server's OpenAPI document (what ``GET /openapi.json`` serves) as JSON.

Run from the repository root with the project's virtual environment:

    .venv/bin/python clients/typescript/scripts/dump_openapi.py > clients/typescript/openapi.json

(``npm run schema`` in clients/typescript does this and regenerates ``src/schema.d.ts``.) The app is built with
a hashing embedder and a fake LLM, so nothing is loaded or opened: only the routes and models matter here.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def openapi_document() -> dict[str, Any]:
    from memory_store.embedder import HashingEmbedder
    from service.app import create_app
    from service.settings import Settings
    from tests.chat.fakes import FakeBackend

    with tempfile.TemporaryDirectory() as folder:  # never created on disk by create_app; only for Settings
        app = create_app(Settings(data_dir=Path(folder) / "unused"), embedder=HashingEmbedder(), llm=FakeBackend())
        document: dict[str, Any] = app.openapi()
    return document


def main() -> None:
    sys.stdout.write(json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
