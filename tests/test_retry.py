"""Transient database errors are retried only when the transaction certainly did not commit."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from memory_store.retry import is_retryable_read, is_retryable_write, retry_write


class _PgError(Exception):
    def __init__(self, sqlstate):
        super().__init__(f"pg error {sqlstate}")
        self.sqlstate = sqlstate


def _db_error(orig, invalidated=False):
    return OperationalError("UPDATE tenants ...", {}, orig, connection_invalidated=invalidated)


def test_classification():
    assert is_retryable_write(_db_error(_PgError("40001")))
    assert is_retryable_write(_db_error(_PgError("40P01")))
    assert is_retryable_write(_db_error(Exception("database is locked")))
    assert not is_retryable_write(_db_error(_PgError("23505")))  # unique violation: a real conflict
    assert not is_retryable_write(_db_error(Exception("server closed the connection"), invalidated=True))
    assert is_retryable_read(_db_error(Exception("server closed the connection"), invalidated=True))
    assert not is_retryable_write(ValueError("not a db error"))


def test_write_is_retried_after_a_deadlock_then_succeeds():
    calls = []

    @retry_write
    def write():
        calls.append(1)
        if len(calls) < 3:
            raise _db_error(_PgError("40P01"))
        return "ok"

    assert write() == "ok" and len(calls) == 3


def test_non_transient_error_is_raised_at_once():
    calls = []

    @retry_write
    def write():
        calls.append(1)
        raise _db_error(_PgError("23505"))

    with pytest.raises(OperationalError):
        write()
    assert len(calls) == 1
