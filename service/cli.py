"""The ``sealmem`` command line: operator tasks on the same settings and data as ``sealmem serve``."""

from __future__ import annotations

import typer

from memory_store.crypto import encode_key, generate_key
from memory_store.db import make_engine
from memory_store.embedder import Embedder
from memory_store.errors import StoreError
from memory_store.migrate import current_revision, upgrade
from service.settings import Settings


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=1)


def make_cli(*, embedder: Embedder | None = None, settings: Settings | None = None) -> typer.Typer:
    """Build the CLI. ``embedder`` and ``settings`` are injected by tests; by default both come from the
    environment (``SEALMEM_*``), exactly as for ``sealmem serve``."""
    cli = typer.Typer(no_args_is_help=True, add_completion=False, help="Sealmem operator commands.")

    def load_settings() -> Settings:
        if settings is not None:
            return settings
        try:
            return Settings()
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise _fail(f"invalid settings: {exc}") from exc

    @cli.command()
    def keygen() -> None:
        """Print a new random 32-byte key, base64-encoded (for SEALMEM_MASTER_KEY or SEALMEM_TOKEN_SECRET)."""
        typer.echo(encode_key(generate_key()))

    @cli.command()
    def migrate() -> None:
        """Upgrade the database schema to the newest revision."""
        engine = make_engine(load_settings())
        try:
            upgrade(engine)
            typer.echo(f"database schema at revision {current_revision(engine)}")
        except StoreError as exc:
            raise _fail(str(exc)) from exc
        finally:
            engine.dispose()

    return cli


def main() -> None:
    """Entry point of the ``sealmem`` script."""
    make_cli()()
