"""A queue in front of SQLite's write lock, for every process and thread writing to one database file.

SQLite has one write lock per database. A writer that finds it taken does not wait on it: its busy handler
sleeps and tries again, 1, 2, 5, 10, 15 ms and longer, so a lock held for 1-2 ms (a single add: the change-seq
bump to the commit's fsync) can cost the next writer 3-8 ms. Under the 70/30 wrk mix each worker's request
thread spent 13-18 % of its time waiting at its add's first write, and its audit writer about a quarter of its
time (``py-spy record --idle`` on both workers); with the queue, about a third less.

:func:`connection_factory` gives ``sqlite3.connect`` a connection class that, before a transaction's first write
statement, takes an exclusive ``flock`` on a lock file beside the database, and lets it go when the transaction
ends (commit, rollback, close). The kernel queues the writers on it and wakes the next one when the lock is
released, so a writer starts as soon as the one before it has committed. Within a process the threads queue on a
``threading.Lock`` first (one thread per process waits on the file), which keeps SQLite's time limit: a writer
that has waited ``timeout`` seconds goes on without the queue, to SQLite's own lock and busy handler, as every
writer did before. The one thread of a process that waits on the file waits as long as the holder, in another
process, keeps its transaction open.

Only a queue: SQLite's own lock still guards the data. A writer that does not take part (another program, a
statement this module does not recognise as a write) is kept out by SQLite as before, and the kernel releases
the file lock of a process that dies (kill -9) with it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

# A transaction's first statement that writes (the legacy transaction control of ``sqlite3`` opens the
# transaction right before it), or that opens a write transaction outright.
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "BEGIN IMMEDIATE", "BEGIN EXCLUSIVE", "CREATE", "DROP", "ALTER")


class _WriterQueue:
    """One lock file shared by the processes, one thread lock shared by this process's connections."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.threads = threading.Lock()
        self.holder: int | None = None  # thread id of the connection holding both locks
        self.fd = -1
        self.turns = 0  # write transactions that took their turn on the queue
        self.bypassed = 0  # that went on without it (waited too long, or the lock file is unusable)

    def enter(self) -> bool:
        """Wait for the write turn; False (no turn taken) when the wait ran out or the lock file is unusable."""
        me = threading.get_ident()
        if self.holder == me:
            return False  # this thread's other connection holds the turn: never wait on oneself
        if not self.threads.acquire(timeout=self.timeout):
            self.bypassed += 1
            return False
        try:
            if self.fd < 0:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except OSError:
            self.threads.release()
            self.bypassed += 1
            return False
        self.holder = me
        self.turns += 1
        return True

    def leave(self) -> None:
        self.holder = None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.threads.release()


class _QueuedCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> _QueuedCursor:
        return self._queued(super().execute, sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> _QueuedCursor:
        return self._queued(super().executemany, sql, seq_of_parameters)

    def _queued(self, run: Callable[[str, Any], sqlite3.Cursor], sql: str, arguments: Any) -> _QueuedCursor:
        connection: QueuedConnection = self.connection  # type: ignore[assignment]
        connection.before(sql)
        try:
            run(sql, arguments)
            return self
        finally:
            connection.after()


class QueuedConnection(sqlite3.Connection):
    """A ``sqlite3`` connection whose write transactions take turns on its class's :class:`_WriterQueue`."""

    queue: _WriterQueue

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turn = False

    def cursor(self, factory: Any = None) -> Any:
        return super().cursor(factory or _QueuedCursor)

    def before(self, sql: str) -> None:
        if not self._turn and not self.in_transaction and sql.lstrip()[:15].upper().startswith(_WRITES):
            self._turn = self.queue.enter()

    def after(self) -> None:
        if self._turn and not self.in_transaction:  # autocommit, or a failed BEGIN
            self._release()

    def _release(self) -> None:
        if self._turn:
            self._turn = False
            self.queue.leave()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            if not self.in_transaction:
                self._release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release()


_QUEUES: dict[Path, _WriterQueue] = {}
_QUEUES_LOCK = threading.Lock()


def connection_factory(database: Path, timeout: float) -> type[QueuedConnection]:
    """A connection class for ``sqlite3.connect(..., factory=...)`` whose writers queue on
    ``<database>-writers.lock``: one queue per database file in a process, however many engines open it, with
    the ``timeout`` of the first call for that file (the store's engines all pass SQLite's busy timeout)."""
    path = Path(os.path.abspath(database)).with_name(Path(database).name + "-writers.lock")
    with _QUEUES_LOCK:
        queue = _QUEUES.get(path)
        if queue is None:
            queue = _QUEUES[path] = _WriterQueue(path, timeout)
    return type("QueuedConnection", (QueuedConnection,), {"queue": queue})
