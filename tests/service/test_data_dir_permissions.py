"""Owner-only data directory (issue #11, item 9): whatever the process umask was, the service keeps the data
directory 0700 and the files in it 0600 (SQLite database and its -wal/-shm, index files, secret files), and it
tightens a directory another version left group/world readable when it starts."""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from memory_store.embedder import HashingEmbedder
from service.cli import make_cli
from service.settings import Settings
from tests.harness import Harness, fresh_data_dir
from tests.service.conftest import make_settings


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """Start from the common default umask 022 (a test before may have left the service's 077 in place)."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(data_dir: Path) -> dict[str, int]:
    """Permission bits of the directory and of every path under it (links left out), by relative path."""
    found = {".": stat.S_IMODE(data_dir.stat().st_mode)}
    for path in sorted(data_dir.rglob("*")):
        if not path.is_symlink():  # a link's own bits are always 0777 and mean nothing
            found[path.relative_to(data_dir).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_owner_only(data_dir: Path) -> dict[str, int]:
    found = modes(data_dir)
    open_to_others = {name: oct(mode) for name, mode in found.items() if mode & 0o077}
    assert not open_to_others, f"readable or writable by group/others: {open_to_others}"
    for name, mode in found.items():
        path = data_dir / name
        if path.is_dir():
            assert mode == 0o700, (name, oct(mode))
        else:
            assert mode & 0o600 == 0o600, (name, oct(mode))
    return found


def write_and_persist(api: Harness) -> None:
    """A tenant, an API key, memories through HTTP, then the index files written (what the periodic persist
    and the shutdown do)."""
    tenant = api.tenant("acme")
    for text in ("Lives in Lisbon.", "Has a dog named Biscuit."):
        api.add(tenant.app, "user-42", text)
    api.store.persist()


def test_a_fresh_data_dir_and_everything_the_service_writes_is_owner_only(tmp_path, migrated_db):
    data = fresh_data_dir(tmp_path / "data", migrated_db)  # 0755 folder, 0644 database: as umask 022 makes them
    assert stat.S_IMODE(data.stat().st_mode) == 0o755
    with Harness.start(make_settings(data), embedder=HashingEmbedder()) as api:
        write_and_persist(api)
        running = assert_owner_only(data)
        assert {"sealmem.db", "sealmem.db-wal", "sealmem.db-shm", "indexes"} <= set(running)
        assert any(name.startswith("indexes/") for name in running), "the index files were written"
        # What the process creates from now on is owner-only too, wherever it creates it.
        fresh = tmp_path / "created-later"
        fresh.mkdir()
        (fresh / "file").write_text("x")
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
        assert stat.S_IMODE((fresh / "file").stat().st_mode) == 0o600
    after_stop = assert_owner_only(data)  # the shutdown persists the indexes again
    assert set(running) - {"sealmem.db-wal", "sealmem.db-shm"} <= set(after_stop)


def test_sealmem_serve_on_a_new_data_dir_creates_everything_owner_only(tmp_path, monkeypatch):
    data = tmp_path / "data"
    settings = Settings(data_dir=data, chat_enabled=False, persist_interval_seconds=3600)
    served: list[Path] = []

    def run(app: FastAPI, **_options: object) -> None:
        """uvicorn.run's stand-in: the served app, driven in process."""
        with TestClient(app) as client:
            api = Harness(app, app.state.services.settings, client, "http://testserver", portal=client.portal)
            write_and_persist(api)
            served.append(api.settings.data_dir)

    monkeypatch.setattr("uvicorn.run", run)
    # `serve` points the root logger at its stderr, which CliRunner closes afterwards: keep pytest's logging.
    monkeypatch.setattr("service.cli.configure_logging", lambda _level: None)
    result = CliRunner().invoke(make_cli(settings=settings, embedder=HashingEmbedder()), ["serve"])
    assert result.exit_code == 0, result.output
    assert served == [data]
    found = assert_owner_only(data)
    assert {".", "master.key", "token.secret", "sealmem.db", "indexes"} <= set(found)
    assert any(name.startswith("indexes/") for name in found)


def test_an_existing_group_and_world_readable_data_dir_is_tightened_at_start(tmp_path, migrated_db, caplog):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(migrated_db, data / "sealmem.db")
    (data / "indexes").mkdir()
    (data / "indexes" / "left-over.tmp").write_bytes(b"index bytes")
    (data / "models" / "nested").mkdir(parents=True)
    (data / "models" / "nested" / "model.onnx").write_bytes(b"onnx")
    (data / "tool.sh").write_text("#!/bin/sh\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("not Sealmem's")
    (data / "link-to-outside").symlink_to(outside)
    for path, mode in {
        data: 0o755,
        data / "sealmem.db": 0o644,
        data / "indexes": 0o775,
        data / "indexes" / "left-over.tmp": 0o666,
        data / "models": 0o755,
        data / "models" / "nested": 0o750,
        data / "models" / "nested" / "model.onnx": 0o640,
        data / "tool.sh": 0o755,
        outside: 0o644,
    }.items():
        path.chmod(mode)

    with caplog.at_level(logging.INFO, logger="sealmem"), Harness.start(make_settings(data)) as api:
        found = assert_owner_only(data)
        write_and_persist(api)
    assert_owner_only(data)
    assert found["sealmem.db"] == 0o600 and found["indexes/left-over.tmp"] == 0o600
    assert found["tool.sh"] == 0o700, "owner bits are kept"
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644, "a link's target outside the data dir is not touched"
    assert (data / "link-to-outside").is_symlink()

    warnings = [r for r in caplog.records if r.name == "sealmem.app" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    message = warnings[0].getMessage()
    assert "8 files and folders" in message and "owner-only" in message
    for name in ("sealmem.db", "left-over", "model.onnx", "tool.sh", "outside", "user-42", "acme"):
        assert name not in message


def test_an_owner_only_data_dir_starts_without_a_warning(tmp_path, migrated_db, caplog):
    data = fresh_data_dir(tmp_path / "data", migrated_db)
    data.chmod(0o700)
    (data / "sealmem.db").chmod(0o600)
    with caplog.at_level(logging.INFO, logger="sealmem"), Harness.start(make_settings(data)):
        pass
    assert not [r for r in caplog.records if r.name == "sealmem.app" and r.levelno >= logging.WARNING]
    assert_owner_only(data)


def test_a_shared_data_dir_is_left_alone_with_a_warning(tmp_path, caplog):
    from service.app import protect_data_dir

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "someone-elses").write_text("x")
    (shared / "someone-elses").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="sealmem"):
        protect_data_dir(Settings(data_dir=shared))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "someone-elses").stat().st_mode) == 0o644
    assert any("left as they are" in r.getMessage() for r in caplog.records)
