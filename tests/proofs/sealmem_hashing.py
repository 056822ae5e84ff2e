"""``sealmem`` (the real CLI: ``serve``, ``tenant create``, ...) with a HashingEmbedder injected through the
CLI's own test seam (``make_cli(embedder=...)``), so process tests start in seconds and their vectors are
exactly reproducible: ``python -m tests.proofs.sealmem_hashing serve --port 8123``.

Everything else (settings from SEALMEM_*, secret files, migrations, uvicorn, the app factory) is what the
installed ``sealmem`` script runs.
"""

from __future__ import annotations

import sys

from memory_store.embedder import HashingEmbedder
from service.cli import make_cli

DIM = 384


def main() -> None:
    make_cli(embedder=HashingEmbedder(DIM))(sys.argv[1:], prog_name="sealmem")


if __name__ == "__main__":
    main()
