"""Engine and session factory for SQLite (embedded) and PostgreSQL, and owner-only data-folder permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from memory_store.settings import StoreSettings
from memory_store.sqlite_writers import connection_factory

_BUSY_TIMEOUT_S = 10.0


def _sqlite_pragmas(synchronous: str) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache (the default is 2 MiB)
        cur.execute("PRAGMA mmap_size=268435456")  # read through a 256 MiB memory map
        # Freed pages are zeroed so deleted ciphertexts do not linger in the file.
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()

    return on_connect


def make_engine(settings: StoreSettings) -> Engine:
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        connect_args: dict[str, Any] = {"check_same_thread": False, "timeout": 30}
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            connect_args["factory"] = connection_factory(Path(database), _BUSY_TIMEOUT_S)
        engine = create_engine(url, connect_args=connect_args)
        event.listen(engine, "connect", _sqlite_pragmas(settings.sqlite_synchronous))
        return engine
    connect_args = {}
    if url.startswith("postgresql") and settings.db_statement_timeout_ms:
        connect_args["options"] = f"-c statement_timeout={settings.db_statement_timeout_ms}"
    return create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions for the store. Every unit of work, reads included, is ``with sessions.begin() as session:``, so it
    ends with COMMIT: psycopg 3 discards every statement it has prepared on a connection at each ROLLBACK (and
    sends ``DEALLOCATE ALL``), and reads that rolled back (a plain ``with sessions() as session:``) made
    PostgreSQL parse and plan the statements of every search and authentication again. A read changes nothing,
    so its COMMIT commits nothing; on SQLite a read opens no transaction, and neither ends one."""
    return sessionmaker(engine, expire_on_commit=False)


# ---- owner-only data folder ---------------------------------------------------------------------------------
# The data folder holds the SQLite database (subject ids, the audit trail, API key hashes), the index files, the
# master key and token secret files: nothing in it is for other local users. Neither function below is called
# by the storage core itself, since a library user's process and files are theirs to configure; the service
# (`sealmem serve`, every command that opens the store, and the app's lifespan) calls both when it starts.

OWNER_ONLY_UMASK = 0o077
"""Umask bits that keep group and others out of every file and folder a process creates."""


def set_owner_only_umask() -> int:
    """Add :data:`OWNER_ONLY_UMASK` to this process's umask (bits already set stay set), so everything it
    creates from now on (the SQLite database and its -wal/-shm files, index files, exported models) is 0600
    or 0700 at most. Process-wide and inherited by child processes; returns the previous umask."""
    previous = os.umask(OWNER_ONLY_UMASK)
    os.umask(previous | OWNER_ONLY_UMASK)
    return previous


class Tightened(NamedTuple):
    """What :func:`restrict_data_dir` did: paths whose group/other bits it removed, and paths it could not change."""

    changed: int
    failed: int


def restrict_data_dir(data_dir: Path) -> Tightened:
    """Remove every group and other permission bit from ``data_dir`` and from everything under it, so folders
    become 0700 and files 0600 at most (owner bits are kept as they are).

    ``data_dir`` must be dedicated to Sealmem: it is changed as a whole. It may itself be a symbolic link, but
    links inside it are neither followed nor changed, and nothing outside it is touched. The folder is changed
    before its contents, so no one else can swap an entry while the walk runs. A missing ``data_dir`` is
    no error (nothing to do); ``/`` and shared folders with the sticky bit (such as ``/tmp``) are refused with a
    :class:`ValueError` rather than locked. Paths that vanish meanwhile are skipped; paths that cannot be changed
    (owned by another user) are counted in ``failed``.
    """
    try:
        root = data_dir.resolve(strict=True)
        root_mode = root.stat().st_mode
    except FileNotFoundError:
        return Tightened(0, 0)
    if not stat.S_ISDIR(root_mode):
        raise NotADirectoryError(f"data directory {data_dir} is not a directory")
    if root == Path(root.anchor) or root_mode & stat.S_ISVTX:
        raise ValueError(f"data directory {data_dir} is a shared folder; give Sealmem a folder of its own")
    changed = failed = 0

    def tighten(path: str) -> None:
        nonlocal changed, failed
        try:
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode) or not stat.S_IMODE(mode) & OWNER_ONLY_UMASK:
                return
            os.chmod(path, stat.S_IMODE(mode) & ~OWNER_ONLY_UMASK)
            changed += 1
        except FileNotFoundError:
            return
        except OSError:
            failed += 1

    tighten(str(root))
    for folder, subfolders, files in os.walk(root, onerror=lambda _error: None):
        for name in (*subfolders, *files):
            tighten(os.path.join(folder, name))
    return Tightened(changed, failed)
