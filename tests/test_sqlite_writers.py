"""The queue in front of SQLite's write lock (memory_store/sqlite_writers.py): writers of several processes and
threads take turns on it and every write commits; it is held exactly for a write transaction; a writer killed
with SIGKILL while holding it frees it; a thread never waits on its own turn; a writer that waits too long goes
on to SQLite's own lock as before; and the store's engine uses it."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from memory_store.db import make_engine
from memory_store.settings import StoreSettings
from memory_store.sqlite_writers import QueuedConnection, connection_factory

ROOT = Path(__file__).resolve().parents[1]


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + "-writers.lock")


def connect(db: Path, *, timeout: float = 10.0, busy_ms: int = 10_000) -> QueuedConnection:
    conn = sqlite3.connect(db, timeout=busy_ms / 1000, check_same_thread=False, factory=connection_factory(db, timeout))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    assert isinstance(conn, QueuedConnection)
    return conn


def file_lock_free(db: Path) -> bool:
    """Whether another open file description could take the queue's file lock now."""
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock when it was taken
    return True


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "queue.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        conn.execute("INSERT INTO counter VALUES (1, 0)")
        conn.execute("CREATE TABLE rows (writer TEXT NOT NULL, seq INTEGER NOT NULL, seen INTEGER NOT NULL)")
    return path


WRITER = textwrap.dedent(
    """
    import json, sys, threading
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from tests.test_sqlite_writers import connect
    db, name, threads, count = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    errors = []

    def work(t):
        conn = connect(db)
        try:
            for i in range(count):
                cur = conn.cursor()
                # read-modify-write inside the transaction: a lost update would show in the total
                cur.execute("UPDATE counter SET n = n + 1 WHERE id = 1")
                (seen,) = cur.execute("SELECT n FROM counter WHERE id = 1").fetchone()
                cur.execute("INSERT INTO rows VALUES (?, ?, ?)", (f"{name}-{t}", i, seen))
                if i % 7 == 3:
                    conn.rollback()  # some transactions end in a rollback, which must free the turn too
                else:
                    conn.commit()
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            conn.close()

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers: w.start()
    for w in workers: w.join()
    queue = connect(db).queue
    print(json.dumps({"errors": errors, "turns": queue.turns, "bypassed": queue.bypassed}))
    """
)


def test_writers_of_several_processes_and_threads_take_turns_and_all_commit(db: Path) -> None:
    processes, threads, count = 3, 3, 60
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(ROOT), str(db), f"p{p}", str(threads), str(count)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in range(processes)
    ]
    reports = [json.loads(child.communicate(timeout=300)[0].strip().splitlines()[-1]) for child in children]
    assert all(child.returncode == 0 for child in children)
    for report in reports:
        assert report["errors"] == []
        assert report["bypassed"] == 0
        assert report["turns"] == threads * count  # every write transaction, committed or rolled back, queued
    committed_each = sum(1 for i in range(count) if i % 7 != 3)
    with sqlite3.connect(db) as conn:
        (total,) = conn.execute("SELECT n FROM counter").fetchone()
        seen = sorted(n for (n,) in conn.execute("SELECT seen FROM rows"))
    assert total == processes * threads * committed_each
    assert seen == list(range(1, total + 1))  # each commit saw the one before it: no overlap, no lost update
    assert file_lock_free(db)


def test_the_turn_is_held_from_the_first_write_to_the_end_of_the_transaction(db: Path) -> None:
    conn = connect(db)
    conn.execute("SELECT n FROM counter").fetchall()
    conn.cursor().execute("SELECT n FROM counter").fetchall()
    assert file_lock_free(db)  # reads never take it
    for end in ("commit", "rollback", "close"):
        if end == "close":
            conn = connect(db)
        cur = conn.cursor()
        cur.execute("UPDATE counter SET n = n + 1")
        assert not file_lock_free(db)
        cur.execute("SELECT n FROM counter").fetchall()
        assert not file_lock_free(db)
        getattr(conn, end)()
        assert file_lock_free(db), end
    conn = connect(db)
    with pytest.raises(sqlite3.OperationalError):
        conn.cursor().execute("UPDATE no_such_table SET n = 1")  # fails before a transaction opens
    assert file_lock_free(db)
    conn.cursor().execute("CREATE TABLE ddl (x INTEGER)")  # DDL outside a transaction commits at once
    assert not conn.in_transaction
    assert file_lock_free(db)
    conn.close()


def test_a_writer_killed_while_holding_the_turn_frees_it(db: Path) -> None:
    holder = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        sys.path.insert(0, sys.argv[1])
        from tests.test_sqlite_writers import connect
        conn = connect(Path(sys.argv[2]))
        conn.cursor().execute("UPDATE counter SET n = n + 100")
        print("holding", flush=True)
        time.sleep(120)
        """
    )
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", holder, str(ROOT), str(db)], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "holding"
            assert not file_lock_free(db)
            done = threading.Event()

            def write(done: threading.Event = done) -> None:
                conn = connect(db)
                conn.cursor().execute("UPDATE counter SET n = n + 1")
                conn.commit()
                conn.close()
                done.set()

            writer = threading.Thread(target=write)
            writer.start()
            assert not done.wait(0.5)  # queued behind the holder
            os.kill(child.pid, signal.SIGKILL)
            writer.join(timeout=60)
            assert done.is_set()
        finally:
            child.kill()
            child.wait()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT n FROM counter").fetchone() == (3,)  # the killed writers' updates are gone
    assert file_lock_free(db)


def test_a_thread_never_waits_on_its_own_turn(db: Path) -> None:
    first, second = connect(db, busy_ms=200), connect(db, busy_ms=200)
    first.cursor().execute("UPDATE counter SET n = n + 1")
    before = first.queue.bypassed
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # SQLite's own answer, as without the queue
        second.cursor().execute("UPDATE counter SET n = n + 1")
    assert second.queue.bypassed == before  # did not queue at all
    first.commit()
    second.rollback()
    second.cursor().execute("UPDATE counter SET n = n + 1")
    second.commit()
    for conn in (first, second):
        conn.close()
    assert file_lock_free(db)


def test_a_writer_that_waits_too_long_goes_on_to_sqlites_own_lock(db: Path) -> None:
    holder = connect(db, timeout=0.3, busy_ms=300)
    holder.cursor().execute("UPDATE counter SET n = n + 1")
    outcome: list[str] = []

    def late_writer() -> None:
        conn = connect(db, timeout=0.3, busy_ms=300)
        try:
            conn.cursor().execute("UPDATE counter SET n = n + 1")
            outcome.append("wrote")
        except sqlite3.OperationalError as exc:
            outcome.append(str(exc))
        finally:
            conn.close()

    before = holder.queue.bypassed
    thread = threading.Thread(target=late_writer)
    thread.start()
    thread.join(timeout=30)
    assert outcome == ["database is locked"]
    assert holder.queue.bypassed == before + 1
    holder.commit()
    holder.close()
    assert file_lock_free(db)


def test_the_store_engine_queues_its_writers(tmp_path: Path) -> None:
    engine = make_engine(StoreSettings(data_dir=tmp_path / "data"))
    try:
        raw = engine.raw_connection()
        try:
            assert isinstance(raw.driver_connection, QueuedConnection)
        finally:
            raw.close()
    finally:
        engine.dispose()
    memory = make_engine(StoreSettings(data_dir=tmp_path / "mem", database_url="sqlite://"))
    try:
        raw = memory.raw_connection()
        try:
            assert not isinstance(raw.driver_connection, QueuedConnection)  # nothing to share in memory
        finally:
            raw.close()
    finally:
        memory.dispose()
