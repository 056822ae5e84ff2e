"""The PostgreSQL 16 + pgvector server a bench runs on (pgserver, in the bench's work folder), sized as a
deployment would size it.

pgserver's ``initdb`` leaves PostgreSQL's built-in ``shared_buffers`` of 128 MB, less than the 100k-memory stores
of ``bench/store_speed.py`` (three databases), so a search reads some of its candidates' rows through the OS
(docs/deploy.md, "PostgreSQL sizing"). The benches therefore give the server the ``shared_buffers`` of
``docker-compose.yml`` (``PG_SHARED_BUFFERS``, 1 GB by default), set with ``ALTER SYSTEM`` and a restart;
``--pg-shared-buffers 128MB`` measures the built-in default.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

SHARED_BUFFERS = "1GB"  # docker-compose.yml's default (PG_SHARED_BUFFERS)


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pg-shared-buffers",
        default=SHARED_BUFFERS,
        help="PostgreSQL shared_buffers for the bench's server (docker-compose.yml's default; 128MB: the built-in)",
    )


def start(folder: Path, shared_buffers: str = SHARED_BUFFERS) -> tuple[Any, str]:
    """The server with its data in ``folder`` (created, or reopened as a previous run left it), running with
    ``shared_buffers``; returns it and the SQLAlchemy URL of its ``postgres`` database."""
    import pgserver
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]
    from pgserver.utils import PostmasterInfo

    server = pgserver.get_server(str(folder), cleanup_mode="stop")  # type: ignore[attr-defined]
    url = server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    if not _runs_with(url, shared_buffers):
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"ALTER SYSTEM SET shared_buffers = '{_size(shared_buffers)}'"))
        admin.dispose()
        # pg_ctl restart keeps the options pgserver started it with (its socket folder, no TCP); pgserver stops
        # the server at exit by the postmaster it knows, so it must learn the new one.
        pg_ctl(["-w", "restart"], pgdata=server.pgdata, user=server.system_user)
        server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)
        if not _runs_with(url, shared_buffers):
            raise RuntimeError(f"shared_buffers is not {shared_buffers} after the restart")
    return server, url


def postmaster_pid(server: Any) -> int:
    """The server's postmaster: its descendants are every backend and helper process of the server."""
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(server.pgdata)
    if info is None:
        raise RuntimeError(f"no postmaster.pid in {server.pgdata}: the server is not running")
    return int(info.pid)


def database(url: str, name: str) -> str:
    """A new, empty database ``name`` on the server of ``url``; its URL."""
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{_identifier(name)}"'))
    admin.dispose()
    return url.replace("/postgres?", f"/{name}?", 1)


def _runs_with(url: str, shared_buffers: str) -> bool:
    """Whether the server's ``shared_buffers`` is the size ``shared_buffers`` (e.g. ``1GB``, ``1024MB``)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        same = conn.execute(
            text("SELECT pg_size_bytes(current_setting('shared_buffers')) = pg_size_bytes(:v)"), {"v": shared_buffers}
        ).scalar_one()
    engine.dispose()
    return bool(same)


def _size(value: str) -> str:
    if not re.fullmatch(r"\d+(?:kB|MB|GB|TB)?", value):
        raise ValueError(f"not a PostgreSQL size such as 1GB: {value!r}")
    return value


def _identifier(name: str) -> str:
    if not name or '"' in name or "\x00" in name:
        raise ValueError(f"not a database name: {name!r}")
    return name
