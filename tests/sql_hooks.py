"""Provoking races and faults at one SQL statement: run an action in the thread that is about to execute it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event


@contextmanager
def on_statement(engine: Engine, *, thread: str, starts_with: str, action: Callable[[], object]) -> Iterator[None]:
    """While the block runs, ``action`` runs in the thread named ``thread`` just before each statement of
    ``engine`` that starts with ``starts_with`` (case-insensitive): a sleep slows it, an event holds it, an
    exception fails it."""
    prefix = starts_with.upper()

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread().name == thread and statement.lstrip().upper().startswith(prefix):
            action()

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", before)
