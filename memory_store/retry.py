"""Retries (tenacity) for transient database failures.

Writes are retried only on errors that guarantee the transaction did not commit (serialization failure,
deadlock, lock timeout, SQLite busy); reads are also retried when the connection dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from tenacity import before_sleep_log, retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from memory_store.errors import PolicyChangedError, WriteRacedError

log = logging.getLogger("sealmem.db")
F = TypeVar("F", bound=Callable[..., Any])
_NOT_COMMITTED = {"40001", "40P01", "55P03"}  # serialization_failure, deadlock_detected, lock_not_available


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_retryable_write(exc: BaseException) -> bool:
    if isinstance(exc, (PolicyChangedError, WriteRacedError)):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    return _sqlstate(exc) in _NOT_COMMITTED or "database is locked" in str(exc.orig)


def is_retryable_read(exc: BaseException) -> bool:
    return is_retryable_write(exc) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def _policy(predicate: Callable[[BaseException], bool]) -> Callable[[F], F]:
    decorator: Callable[[F], F] = retry(  # type: ignore[assignment]
        retry=retry_if_exception(predicate),
        stop=stop_after_attempt(5),
        wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
    return decorator


retry_write = _policy(is_retryable_write)
retry_read = _policy(is_retryable_read)
