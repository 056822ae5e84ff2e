"""The ``sealmem`` CLI, driven through typer's CliRunner with settings injected (no environment)."""

from __future__ import annotations

import base64

from typer.testing import CliRunner

from memory_store.db import make_engine
from memory_store.migrate import current_revision, head_revision
from service.cli import make_cli
from service.settings import Settings

runner = CliRunner()


def test_keygen_prints_a_fresh_32_byte_base64_key():
    cli = make_cli()
    first = runner.invoke(cli, ["keygen"])
    second = runner.invoke(cli, ["keygen"])
    assert first.exit_code == 0, first.output
    assert len(base64.b64decode(first.output.strip(), validate=True)) == 32
    assert first.output != second.output


def test_migrate_brings_an_empty_database_to_head(tmp_path):
    settings = Settings(data_dir=tmp_path)
    result = runner.invoke(make_cli(settings=settings), ["migrate"])
    assert result.exit_code == 0, result.output
    engine = make_engine(settings)
    try:
        assert current_revision(engine) == head_revision(engine)
        assert head_revision(engine) in result.output
    finally:
        engine.dispose()
    again = runner.invoke(make_cli(settings=settings), ["migrate"])
    assert again.exit_code == 0, again.output
