"""The storage core's owner-only helpers (issue #11, item 9): ``set_owner_only_umask``, ``restrict_data_dir``,
and the data directory ``make_engine`` creates. The service's use of them is tested in tests/service."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from memory_store.db import OWNER_ONLY_UMASK, Tightened, make_engine, restrict_data_dir, set_owner_only_umask
from memory_store.settings import StoreSettings


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize(("before", "after"), [(0o022, 0o077), (0o002, 0o077), (0o027, 0o077), (0o277, 0o277)])
def test_the_umask_gains_the_owner_only_bits_and_keeps_stricter_ones(before, after):
    os.umask(before)
    assert set_owner_only_umask() == before
    assert os.umask(before) == after
    assert after & OWNER_ONLY_UMASK == OWNER_ONLY_UMASK


def test_the_embedded_database_folder_is_created_owner_only(tmp_path):
    data = tmp_path / "new" / "data"
    make_engine(StoreSettings(data_dir=data, database_url=None)).dispose()
    assert mode(data) == 0o700


def test_a_tree_is_tightened_once_links_and_their_targets_untouched(tmp_path):
    data = tmp_path / "data"
    (data / "a" / "b").mkdir(parents=True)
    (data / "a" / "b" / "f").write_text("x")
    (data / "g").write_text("x")
    (data / "x").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "h").write_text("x")
    (data / "dir-link").symlink_to(outside)
    (data / "file-link").symlink_to(outside / "h")
    for path, bits in {data: 0o777, data / "a": 0o755, data / "a" / "b": 0o711, data / "x": 0o754}.items():
        path.chmod(bits)
    (data / "g").chmod(0o604)
    assert restrict_data_dir(data) == Tightened(changed=6, failed=0)
    assert [mode(p) for p in (data, data / "a", data / "a" / "b")] == [0o700] * 3
    assert [mode(p) for p in (data / "a" / "b" / "f", data / "g", data / "x")] == [0o600, 0o600, 0o700]
    assert mode(outside) == 0o755 and mode(outside / "h") == 0o644
    assert restrict_data_dir(data) == Tightened(0, 0)


def test_a_data_dir_that_is_a_link_is_followed(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (real / "sealmem.db").write_text("x")
    link = tmp_path / "data"
    link.symlink_to(real)
    assert restrict_data_dir(link) == Tightened(2, 0)
    assert mode(real) == 0o700 and mode(real / "sealmem.db") == 0o600


def test_a_missing_dir_is_nothing_to_do_and_a_file_is_refused(tmp_path):
    assert restrict_data_dir(tmp_path / "missing") == Tightened(0, 0)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        restrict_data_dir(tmp_path / "file")


def test_a_shared_sticky_folder_is_refused_untouched(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "f").write_text("x")
    with pytest.raises(ValueError, match="shared folder"):
        restrict_data_dir(shared)
    assert mode(shared) == 0o1777 and mode(shared / "f") == 0o644


def test_paths_that_cannot_be_changed_are_counted_and_the_walk_goes_on(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("theirs", "ours"):
        (data / name).write_text("x")
    real_chmod = os.chmod

    def chmod(path: str, bits: int) -> None:
        if Path(path).name == "theirs":
            raise PermissionError(1, "Operation not permitted", path)
        real_chmod(path, bits)

    monkeypatch.setattr(os, "chmod", chmod)
    assert restrict_data_dir(data) == Tightened(changed=2, failed=1)
    assert mode(data) == 0o700 and mode(data / "ours") == 0o600 and mode(data / "theirs") == 0o644
